//! Wiring the MQTT broker into `moat serve`: its listeners (TLS always,
//! plain only with `--insecure-dev`) and the bridge from the platform's PKI
//! to the broker's certificate-to-device mapping.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use moat_core::DeviceId;
use moat_http::pki::Pki;
use moat_mqtt::server::IdentifyDevice;
use rustls_pki_types::CertificateDer;

/// The PKI, as the broker's listeners ask it who a certificate names.
pub(crate) struct PkiIdentify(pub(crate) Arc<Pki>);

#[async_trait]
impl IdentifyDevice for PkiIdentify {
    async fn identify(
        &self,
        leaf: &CertificateDer<'static>,
        peer: SocketAddr,
    ) -> Result<Option<DeviceId>, String> {
        self.0
            .identify(leaf, peer)
            .await
            .map(|found| found.map(|(device, _fingerprint)| device))
            .map_err(|e| e.to_string())
    }

    async fn refused(&self, error: &rustls::Error, peer: SocketAddr) {
        self.0.refused(error, peer).await;
    }
}

/// MQTT over WebSocket at `/mqtt` on the HTTPS listener (subprotocol
/// `mqtt`): each binary frame carries MQTT bytes, in any split (MQTT 5.0
/// §6). The socket is bridged to the broker's connection task through an
/// in-memory pipe, so the broker serves it exactly as it serves TLS.
pub(crate) fn websocket_router(
    broker: Arc<moat_mqtt::Broker>,
    shutdown: tokio::sync::watch::Receiver<bool>,
) -> axum::Router {
    let ctx = Arc::new(WsContext { broker, shutdown });
    axum::Router::new()
        .route("/mqtt", axum::routing::get(upgrade))
        .with_state(ctx)
}

struct WsContext {
    broker: Arc<moat_mqtt::Broker>,
    shutdown: tokio::sync::watch::Receiver<bool>,
}

/// Bytes buffered between the WebSocket and the broker, each way.
const PIPE: usize = 64 * 1024;

async fn upgrade(
    axum::extract::State(ctx): axum::extract::State<Arc<WsContext>>,
    axum::extract::ConnectInfo(addr): axum::extract::ConnectInfo<SocketAddr>,
    device: Option<axum::Extension<moat_http::server::PeerDevice>>,
    ws: axum::extract::ws::WebSocketUpgrade,
) -> axum::response::Response {
    let Ok(permit) = Arc::clone(ctx.broker.connection_slots()).try_acquire_owned() else {
        return axum::response::IntoResponse::into_response(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
        );
    };
    let peer = moat_mqtt::Peer {
        addr,
        certificate_device: device.map(|d| d.0.device_id),
        transport: "websocket",
    };
    ws.protocols(["mqtt"])
        .max_message_size(PIPE * 16)
        .on_upgrade(move |socket| async move {
            let _permit = permit;
            let (broker_end, bridge_end) = tokio::io::duplex(PIPE);
            let serving = tokio::spawn(moat_mqtt::serve(
                Arc::clone(&ctx.broker),
                broker_end,
                peer,
                ctx.shutdown.clone(),
            ));
            bridge(socket, bridge_end).await;
            let _ = serving.await;
        })
}

/// Pumps bytes between the WebSocket and the broker's end of the pipe
/// until either side closes.
async fn bridge(mut socket: axum::extract::ws::WebSocket, pipe: tokio::io::DuplexStream) {
    use axum::extract::ws::Message;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (mut from_broker, mut to_broker) = tokio::io::split(pipe);
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        tokio::select! {
            frame = socket.recv() => match frame {
                Some(Ok(Message::Binary(bytes))) => {
                    if to_broker.write_all(&bytes).await.is_err() {
                        break;
                    }
                }
                // MQTT is binary only (§6): a text frame ends the connection.
                Some(Ok(Message::Text(_))) => break,
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_)) | Err(_)) | None => break,
            },
            n = from_broker.read(&mut buf) => match n {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if socket.send(Message::Binary(buf[..n].to_vec().into())).await.is_err() {
                        break;
                    }
                }
            },
        }
    }
    let _ = to_broker.shutdown().await;
    let _ = socket.send(Message::Close(None)).await;
}
