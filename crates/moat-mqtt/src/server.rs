//! MQTT listeners: accept, TLS handshake with its own timeout (the client
//! certificate names the device), then one task per connection
//! ([`crate::serve`]). The broker's semaphore caps connections over all
//! listeners; at the cap the loop stops accepting and the kernel's backlog
//! holds new peers.
//!
//! [`run`] takes a bound listener and a shutdown signal, so tests bind port
//! 0 and stop at will. Shutdown stops accepting, tells every connection to
//! end (MQTT 5 clients get DISCONNECT 0x8B), and waits up to the drain
//! timeout.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::DeviceId;
use rustls_pki_types::CertificateDer;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::broker::Broker;
use crate::connection::{Peer, serve};

/// Turns a verified client certificate into a device; the binary
/// implements it with the platform's PKI (certificate index, revocation,
/// audit of refusals).
#[async_trait]
pub trait IdentifyDevice: Send + Sync + 'static {
    /// The device `leaf` belongs to; `Ok(None)` when refused (already
    /// audited by the implementation).
    async fn identify(
        &self,
        leaf: &CertificateDer<'static>,
        peer: SocketAddr,
    ) -> Result<Option<DeviceId>, String>;
    /// Records a handshake the certificate verifier refused.
    async fn refused(&self, error: &rustls::Error, peer: SocketAddr);
}

/// How a listener serves.
#[derive(Clone)]
pub struct ListenerOptions {
    /// `None`: plain MQTT (only with `--insecure-dev`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub identify: Option<Arc<dyn IdentifyDevice>>,
    pub handshake_timeout: Duration,
    /// How long open connections get after shutdown begins.
    pub drain_timeout: Duration,
}

impl std::fmt::Debug for ListenerOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ListenerOptions")
            .field("tls", &self.tls.is_some())
            .field("handshake_timeout", &self.handshake_timeout)
            .finish_non_exhaustive()
    }
}

/// Serves MQTT on `listener` until `shutdown` turns true, then drains.
pub async fn run(
    listener: TcpListener,
    broker: Arc<Broker>,
    opts: ListenerOptions,
    mut shutdown: watch::Receiver<bool>,
) {
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let mut tasks = JoinSet::new();
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&broker.connections).acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = stopped(&mut shutdown) => break,
        };
        let (stream, addr) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "mqtt accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = stopped(&mut shutdown) => break,
        };
        // Reap finished connection tasks so the set stays small.
        while tasks.try_join_next().is_some() {}
        let _ = stream.set_nodelay(true);
        let broker = Arc::clone(&broker);
        let acceptor = acceptor.clone();
        let identify = opts.identify.clone();
        let handshake_timeout = opts.handshake_timeout;
        let shutdown = shutdown.clone();
        tasks.spawn(async move {
            let _permit = permit;
            let Some(acceptor) = acceptor else {
                let peer = Peer {
                    addr,
                    certificate_device: None,
                    transport: "tcp",
                };
                return serve(broker, stream, peer, shutdown).await;
            };
            let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream)).await {
                Ok(Ok(tls)) => tls,
                Ok(Err(e)) => {
                    metrics::counter!("moat_tls_handshake_failures_total").increment(1);
                    tracing::debug!(error = %e, peer = %addr, "mqtt tls handshake failed");
                    let err = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                    if let (Some(id), Some(err)) = (&identify, err) {
                        id.refused(err, addr).await;
                    }
                    return;
                }
                Err(_) => {
                    metrics::counter!("moat_tls_handshake_failures_total").increment(1);
                    return;
                }
            };
            let leaf = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| c.clone().into_owned());
            let certificate_device = match (&identify, leaf) {
                (Some(id), Some(leaf)) => match id.identify(&leaf, addr).await {
                    Ok(Some(device)) => Some(device),
                    Ok(None) => return,
                    Err(e) => {
                        tracing::error!(error = %e, "could not identify a device certificate");
                        return;
                    }
                },
                _ => None,
            };
            let peer = Peer {
                addr,
                certificate_device,
                transport: "tls",
            };
            serve(broker, tls, peer, shutdown).await;
        });
    }
    drop(listener);
    let drained = tokio::time::timeout(opts.drain_timeout, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!("mqtt connections still open after the drain timeout; closing them");
        tasks.abort_all();
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}
