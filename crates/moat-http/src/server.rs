//! The connection loop: accept, TLS handshake (with its own timeout), serve
//! HTTP/1.1 or HTTP/2 on one task per connection, and shut down gracefully.
//!
//! `run` takes a bound listener and a shutdown future, so tests bind port 0
//! and stop the server at will. A semaphore caps open connections: at the
//! cap the loop stops accepting (the kernel's backlog then holds or refuses
//! new peers) rather than exhausting memory.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tower::ServiceExt;
use tracing::Instrument;

/// How a listener serves.
#[derive(Clone)]
pub struct ServeOptions {
    /// `None` serves plain HTTP (only with `--insecure-dev`).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    pub max_connections: usize,
    pub handshake_timeout: Duration,
    /// How long open connections get to finish after shutdown begins.
    pub drain_timeout: Duration,
    /// Identifies devices by their client certificates, audits refused
    /// ones, and registers device connections for cutting.
    pub pki: Option<Arc<crate::pki::Pki>>,
    pub sessions: Option<Arc<moat_core::sessions::SessionRegistry>>,
}

/// The device a connection's client certificate belongs to, attached to
/// each of its requests; `fingerprint` names the certificate.
#[derive(Clone, Debug)]
pub struct PeerDevice {
    pub device_id: moat_core::DeviceId,
    pub fingerprint: String,
}

/// Serves `app` on `listener` until `shutdown` resolves, then drains.
pub async fn run(
    listener: TcpListener,
    app: Router,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()>,
) {
    let acceptor = opts.tls.clone().map(tokio_rustls::TlsAcceptor::from);
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    let builder = Builder::new(TokioExecutor::new());
    tokio::pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = Arc::clone(&permits).acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // Out of descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let app = app.clone();
        let acceptor = acceptor.clone();
        let builder = builder.clone();
        let watcher = graceful.watcher();
        let handshake_timeout = opts.handshake_timeout;
        let pki = opts.pki.clone();
        let sessions = opts.sessions.clone();
        let span = tracing::debug_span!("conn", %peer, device = tracing::field::Empty);
        tokio::spawn(
            async move {
                let _permit = permit;
                let Some(acceptor) = acceptor else {
                    let conn = builder.serve_connection_with_upgrades(
                        TokioIo::new(stream),
                        service_for(app, peer, None),
                    );
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(error = %e, "connection ended with an error");
                    }
                    return;
                };
                let tls = match tokio::time::timeout(handshake_timeout, acceptor.accept(stream))
                    .await
                {
                    Ok(Ok(tls)) => tls,
                    Ok(Err(e)) => {
                        metrics::counter!("moat_tls_handshake_failures_total").increment(1);
                        tracing::debug!(error = %e, "tls handshake failed");
                        let tls_error = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>());
                        if let (Some(pki), Some(err)) = (&pki, tls_error) {
                            pki.refused(err, peer).await;
                        }
                        return;
                    }
                    Err(_) => {
                        metrics::counter!("moat_tls_handshake_failures_total").increment(1);
                        tracing::debug!("tls handshake timed out");
                        return;
                    }
                };
                let leaf = tls
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .map(|c| c.clone().into_owned());
                let device = match (&pki, leaf) {
                    (Some(pki), Some(leaf)) => match pki.identify(&leaf, peer).await {
                        Ok(Some((device_id, fingerprint))) => Some(PeerDevice {
                            device_id,
                            fingerprint,
                        }),
                        Ok(None) => return,
                        Err(e) => {
                            tracing::error!(error = %e, "could not identify a device certificate");
                            return;
                        }
                    },
                    _ => None,
                };
                // A device's connection joins the session registry: revoking
                // or quarantining the device fires `cut` and drops it.
                let cut = Arc::new(tokio::sync::Notify::new());
                let _session = match (&device, &sessions) {
                    (Some(d), Some(reg)) => {
                        tracing::Span::current()
                            .record("device", tracing::field::display(d.device_id));
                        let cut = Arc::clone(&cut);
                        Some(reg.join(d.device_id, move |_| cut.notify_one()))
                    }
                    _ => None,
                };
                let conn = builder.serve_connection_with_upgrades(
                    TokioIo::new(tls),
                    service_for(app, peer, device),
                );
                tokio::select! {
                    r = watcher.watch(conn.into_owned()) => {
                        if let Err(e) = r {
                            tracing::debug!(error = %e, "connection ended with an error");
                        }
                    }
                    () = cut.notified() => {
                        metrics::counter!("moat_device_sessions_cut_total").increment(1);
                        tracing::info!("device session cut");
                    }
                }
            }
            .instrument(span),
        );
    }
    drop(listener);
    if tokio::time::timeout(opts.drain_timeout, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after the drain timeout; closing them");
    }
}

/// The router with the peer's address (and device) attached to every request.
fn service_for(
    app: Router,
    peer: SocketAddr,
    device: Option<PeerDevice>,
) -> TowerToHyperService<
    tower::util::MapRequest<
        Router,
        impl FnMut(hyper::Request<Incoming>) -> hyper::Request<Incoming> + Clone,
    >,
> {
    TowerToHyperService::new(app.map_request(move |mut req: hyper::Request<Incoming>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        if let Some(d) = &device {
            req.extensions_mut().insert(d.clone());
        }
        req
    }))
}
