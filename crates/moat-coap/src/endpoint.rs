//! One UDP socket, many peers: datagrams are demultiplexed by source
//! address to a task per peer. With DTLS, an address gets state only for a
//! ClientHello carrying a valid cookie, and only while fewer than
//! `max_handshakes` handshakes are in progress; until the cookie round trip
//! proves the address, the endpoint answers each ClientHello with a
//! HelloVerifyRequest smaller than it and keeps nothing (hello.rs), so an
//! unproven (perhaps forged) address costs no state and never gets more
//! bytes than it sent.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use moat_core::authz::Principal;
use moat_core::{DeviceId, authn};
use openssl::ssl::{ErrorCode, SslStream};
use tokio::net::UdpSocket;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, broadcast, mpsc, watch};
use tokio::time::{Instant, sleep, sleep_until};

use crate::Coap;
use crate::dtls::{self, Chan, DtlsContext, SharedSlot};
use crate::hello::ClientHello;
use crate::session::Session;

/// Datagrams queued for one peer's task; more are dropped (counted).
const PEER_QUEUE: usize = 64;
/// How often a handshake in progress is driven without news from the
/// peer, so that OpenSSL's retransmission timer can fire.
const HANDSHAKE_TICK: Duration = Duration::from_millis(250);
/// The largest datagram read (UDP's limit).
const DATAGRAM: usize = 65_535;

/// The receive buffer asked for (the kernel caps it at
/// `net.core.rmem_max`): a fan-out to thousands of observers brings their
/// acknowledgements back at once, and the default (about 200 KiB) drops
/// some, each costing a retransmission.
const RECEIVE_BUFFER: usize = 4 << 20;

/// A UDP socket for the endpoint, bound to `addr`, with a receive buffer
/// sized for bursts.
pub fn bind(addr: SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if let Err(e) = socket.set_recv_buffer_size(RECEIVE_BUFFER) {
        tracing::warn!(error = %e, "could not enlarge the CoAP receive buffer");
    }
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

/// How the endpoint's socket is secured.
#[derive(Clone)]
pub enum Security {
    Dtls(Arc<DtlsContext>),
    /// Plain CoAP, for development only (`--insecure-dev`).
    Plain,
}

/// A peer task's end: its address, and a datagram to hand to a new task
/// for that address (a client that restarted its handshake).
type Gone = (SocketAddr, Option<Vec<u8>>);

struct PeerCtx {
    coap: Arc<Coap>,
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
    rx: mpsc::Receiver<Vec<u8>>,
    shutdown: watch::Receiver<bool>,
    rights: broadcast::Receiver<DeviceId>,
}

/// Serves CoAP on `socket` until `shutdown` turns true.
pub async fn run(
    socket: UdpSocket,
    coap: Arc<Coap>,
    security: Security,
    mut shutdown: watch::Receiver<bool>,
) {
    let socket = Arc::new(socket);
    let (gone_tx, mut gone_rx) = mpsc::unbounded_channel::<Gone>();
    let handshakes = Arc::new(Semaphore::new(coap.config.max_handshakes.max(1)));
    let (rights_tx, _) = broadcast::channel::<DeviceId>(256);
    {
        let tx = rights_tx.clone();
        coap.sessions.on_rights_changed(move |d| {
            let _ = tx.send(d);
        });
    }
    let mut peers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>> = HashMap::new();
    let mut buf = vec![0u8; DATAGRAM];
    let peer_shutdown = shutdown.clone();
    let transport = match security {
        Security::Dtls(_) => "dtls",
        Security::Plain => "udp",
    };
    let spawn_peer = |addr: SocketAddr,
                      first: Vec<u8>,
                      permit: Option<OwnedSemaphorePermit>|
     -> mpsc::Sender<Vec<u8>> {
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let _ = tx.try_send(first);
        let ctx = PeerCtx {
            coap: Arc::clone(&coap),
            socket: Arc::clone(&socket),
            addr,
            rx,
            shutdown: peer_shutdown.clone(),
            rights: rights_tx.subscribe(),
        };
        let gone = gone_tx.clone();
        let security = security.clone();
        tokio::spawn(async move {
            metrics::gauge!("moat_coap_peers", "transport" => transport).increment(1.0);
            let replay = match security {
                Security::Dtls(dtls) => dtls_peer(ctx, dtls, permit).await,
                Security::Plain => {
                    plain_peer(ctx).await;
                    None
                }
            };
            metrics::gauge!("moat_coap_peers", "transport" => transport).decrement(1.0);
            let _ = gone.send((addr, replay));
        });
        tx
    };
    let gate = Gate {
        socket: &socket,
        security: &security,
        coap: &coap,
        handshakes: &handshakes,
    };
    loop {
        let (datagram, from) = tokio::select! {
            biased;
            _ = shutdown.changed() => {
                if *shutdown.borrow() { break; }
                continue;
            }
            Some((addr, replay)) = gone_rx.recv() => {
                peers.remove(&addr);
                match replay {
                    Some(d) => (d, addr),
                    None => continue,
                }
            }
            r = socket.recv_from(&mut buf) => match r {
                Ok((n, from)) => (buf[..n].to_vec(), from),
                // ICMP errors surface here on some systems; the socket
                // itself is fine.
                Err(e) => {
                    tracing::debug!(error = %e, "UDP receive error");
                    continue;
                }
            },
        };
        metrics::counter!("moat_coap_datagrams_total", "transport" => transport).increment(1);
        if let Some(tx) = peers.get(&from) {
            match tx.try_send(datagram) {
                Ok(()) => continue,
                Err(mpsc::error::TrySendError::Full(_)) => {
                    metrics::counter!("moat_coap_dropped_total", "reason" => "peer_queue_full")
                        .increment(1);
                    continue;
                }
                // The task is ending; its address is free again.
                Err(mpsc::error::TrySendError::Closed(d)) => {
                    peers.remove(&from);
                    new_peer(&mut peers, from, d, &gate, &spawn_peer);
                    continue;
                }
            }
        }
        new_peer(&mut peers, from, datagram, &gate, &spawn_peer);
    }
    tracing::debug!("CoAP endpoint stopped");
}

/// What admitting a new peer needs from the endpoint.
struct Gate<'a> {
    socket: &'a UdpSocket,
    security: &'a Security,
    coap: &'a Coap,
    handshakes: &'a Arc<Semaphore>,
}

/// A datagram from an address without a task: a new peer, if allowed.
fn new_peer(
    peers: &mut HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
    from: SocketAddr,
    datagram: Vec<u8>,
    gate: &Gate<'_>,
    spawn_peer: &impl Fn(SocketAddr, Vec<u8>, Option<OwnedSemaphorePermit>) -> mpsc::Sender<Vec<u8>>,
) {
    let Gate {
        socket,
        security,
        coap,
        handshakes,
    } = gate;
    if peers.len() >= coap.config.max_peers {
        metrics::counter!("moat_coap_dropped_total", "reason" => "too_many_peers").increment(1);
        return;
    }
    let permit = match security {
        Security::Dtls(ctx) => {
            let Some(hello) = ClientHello::parse(&datagram) else {
                // Not a whole ClientHello, from an address without a
                // session.
                metrics::counter!("moat_coap_malformed_total", "reason" => "no_dtls_session")
                    .increment(1);
                return;
            };
            if !ctx.cookie_is_current(&from, hello.cookie) {
                // No cookie yet (or an old one): a HelloVerifyRequest, and
                // no state (see hello.rs).
                let answer = hello.verify_request(&ctx.cookie(&from));
                if let Err(e) = socket.try_send_to(&answer, from) {
                    tracing::debug!(error = %e, "could not send a HelloVerifyRequest");
                }
                handshake_outcome("cookie_sent");
                return;
            }
            match Arc::clone(handshakes).try_acquire_owned() {
                Ok(p) => Some(p),
                Err(_) => {
                    metrics::counter!("moat_coap_dropped_total", "reason" => "too_many_handshakes")
                        .increment(1);
                    return;
                }
            }
        }
        Security::Plain => None,
    };
    peers.insert(from, spawn_peer(from, datagram, permit));
}

async fn send_all(socket: &UdpSocket, addr: SocketAddr, out: impl IntoIterator<Item = Vec<u8>>) {
    for d in out {
        if let Err(e) = socket.send_to(&d, addr).await {
            metrics::counter!("moat_coap_send_failures_total").increment(1);
            tracing::debug!(error = %e, %addr, "UDP send failed");
        }
    }
}

async fn flush(socket: &UdpSocket, addr: SocketAddr, stream: &mut SslStream<Chan>) {
    let out: Vec<Vec<u8>> = stream.get_mut().outbox.drain(..).collect();
    send_all(socket, addr, out).await;
}

fn handshake_outcome(outcome: &'static str) {
    metrics::counter!("moat_coap_handshakes_total", "outcome" => outcome).increment(1);
}

/// A DTLS peer: the handshake (with the PSK looked up as it arrives), the
/// device it proves, then its CoAP session until it goes quiet, closes, is
/// cut, or the server stops. Returns a datagram that opens a new handshake
/// from the same address, for a new task.
async fn dtls_peer(
    mut p: PeerCtx,
    ctx: Arc<DtlsContext>,
    permit: Option<OwnedSemaphorePermit>,
) -> Option<Vec<u8>> {
    let slot: SharedSlot = Arc::default();
    let mut stream = match ctx.stream(p.addr, Arc::clone(&slot)) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot make a DTLS session");
            return None;
        }
    };
    let deadline = Instant::now() + p.coap.config.handshake_timeout;
    let mut psk_device: Option<DeviceId> = None;
    // The endpoint admitted this peer for a ClientHello with a valid
    // cookie; the session first sees that hello as it was before the
    // cookie, and its HelloVerifyRequest is dropped (see hello.rs).
    let Ok(first) = p.rx.try_recv() else {
        return None;
    };
    if let Some(hello) = ClientHello::parse(&first) {
        stream.get_mut().inbox.push_back(hello.without_cookie());
        let _ = stream.accept();
        stream.get_mut().outbox.clear();
    }
    stream.get_mut().inbox.push_back(first);
    loop {
        match stream.accept() {
            Ok(()) => break,
            Err(e) if matches!(e.code(), ErrorCode::WANT_READ | ErrorCode::WANT_WRITE) => {}
            Err(e) => {
                flush(&p.socket, p.addr, &mut stream).await;
                tracing::debug!(peer = %p.addr, error = %e, "DTLS handshake failed");
                handshake_outcome("failed");
                return None;
            }
        }
        flush(&p.socket, p.addr, &mut stream).await;
        tokio::select! {
            d = p.rx.recv() => match d {
                None => return None,
                Some(d) => {
                    if let Some(identity) = dtls::psk_identity(&d) {
                        let identity = identity.to_vec();
                        let psk = p.coap.credentials.psk(&identity, p.addr).await;
                        psk_device = psk.as_ref().map(|k| k.device);
                        let mut s = slot.lock().unwrap_or_else(|e| e.into_inner());
                        s.identity = identity;
                        s.key = psk.map(|k| k.key);
                    }
                    stream.get_mut().inbox.push_back(d);
                }
            },
            () = sleep(HANDSHAKE_TICK) => {}
            () = sleep_until(deadline) => {
                handshake_outcome("timeout");
                return None;
            }
            _ = p.shutdown.changed() => return None,
        }
    }
    flush(&p.socket, p.addr, &mut stream).await;
    drop(permit);
    // Who the handshake proved: the PSK's device, or the certificate's.
    let device = if stream.ssl().psk_identity().is_some() {
        psk_device
    } else if let Some(leaf) = stream.ssl().peer_certificate() {
        let leaf = leaf.to_der().unwrap_or_default();
        let mut chain = vec![leaf];
        if let Some(rest) = stream.ssl().peer_cert_chain() {
            for c in rest {
                let der = c.to_der().unwrap_or_default();
                if der != chain[0] {
                    chain.push(der);
                }
            }
        }
        p.coap.credentials.certificate(&chain, p.addr).await
    } else {
        None
    };
    let kind = if psk_device.is_some() {
        "dtls_psk"
    } else {
        "client_certificate"
    };
    let principal = match device {
        Some(d) => principal_of(&p.coap, d, kind).await,
        None => None,
    };
    let Some(principal) = principal else {
        handshake_outcome("refused");
        let _ = stream.shutdown();
        flush(&p.socket, p.addr, &mut stream).await;
        return None;
    };
    handshake_outcome("ok");
    let device = device.expect("a principal comes from a device");
    let cut = Arc::new(tokio::sync::Notify::new());
    let _guard = {
        let cut = Arc::clone(&cut);
        p.coap
            .sessions
            .join(device, move |_reason| cut.notify_one())
    };
    let mut session = Session::new(Arc::clone(&p.coap), p.addr, Some(principal));
    let mut idle = Instant::now() + p.coap.config.idle_timeout;
    let mut plain = vec![0u8; DATAGRAM];
    loop {
        let retransmit = session.retransmit_at();
        let mut out: Vec<Vec<u8>> = Vec::new();
        tokio::select! {
            biased;
            _ = p.shutdown.changed() => {
                let _ = stream.shutdown();
                flush(&p.socket, p.addr, &mut stream).await;
                return None;
            }
            () = cut.notified() => {
                metrics::counter!("moat_coap_sessions_cut_total").increment(1);
                let _ = stream.shutdown();
                flush(&p.socket, p.addr, &mut stream).await;
                return None;
            }
            d = p.rx.recv() => {
                let d = d?;
                if dtls::is_client_hello(&d) {
                    // The client lost its session (a reboot) and starts over.
                    return Some(d);
                }
                idle = Instant::now() + p.coap.config.idle_timeout;
                stream.get_mut().inbox.push_back(d);
                loop {
                    match stream.ssl_read(&mut plain) {
                        Ok(n) => out.extend(session.on_datagram(&plain[..n]).await),
                        Err(e) if e.code() == ErrorCode::WANT_READ => break,
                        Err(e) if e.code() == ErrorCode::ZERO_RETURN => {
                            flush(&p.socket, p.addr, &mut stream).await;
                            return None;
                        }
                        Err(e) => {
                            tracing::debug!(peer = %p.addr, error = %e, "DTLS read failed");
                            flush(&p.socket, p.addr, &mut stream).await;
                            return None;
                        }
                    }
                }
            }
            note = session.next_note() => out = session.on_note(note),
            () = sleep_until(retransmit.unwrap_or(idle)), if retransmit.is_some() => {
                out = session.on_retransmit();
            }
            r = p.rights.recv() => match r {
                Ok(d) if d != device => {}
                _ => out = session.recheck().await,
            },
            () = sleep_until(idle) => {
                let _ = stream.shutdown();
                flush(&p.socket, p.addr, &mut stream).await;
                return None;
            }
        }
        for m in out {
            if let Err(e) = stream.ssl_write(&m) {
                tracing::debug!(peer = %p.addr, error = %e, "DTLS write failed");
            }
        }
        flush(&p.socket, p.addr, &mut stream).await;
    }
}

/// The principal of an authenticated device, if it is active.
async fn principal_of(coap: &Coap, device: DeviceId, kind: &'static str) -> Option<Principal> {
    let store = &*coap.store;
    match authn::active_device(store, device, kind).await {
        Ok(d) => moat_core::access::device_principal(store, &d)
            .await
            .ok()
            .flatten(),
        Err(e) => {
            tracing::debug!(error = %e, "DTLS device refused");
            None
        }
    }
}

/// A plain CoAP peer (development only): each request carries its device
/// key; the session lives until the peer goes quiet or the server stops.
async fn plain_peer(mut p: PeerCtx) {
    let mut session = Session::new(Arc::clone(&p.coap), p.addr, None);
    let mut idle = Instant::now() + p.coap.config.idle_timeout;
    loop {
        let retransmit = session.retransmit_at();
        let out = tokio::select! {
            biased;
            _ = p.shutdown.changed() => return,
            d = p.rx.recv() => {
                let Some(d) = d else { return };
                idle = Instant::now() + p.coap.config.idle_timeout;
                session.on_datagram(&d).await
            }
            note = session.next_note() => session.on_note(note),
            () = sleep_until(retransmit.unwrap_or(idle)), if retransmit.is_some() => {
                session.on_retransmit()
            }
            () = sleep_until(idle) => return,
        };
        send_all(&p.socket, p.addr, out).await;
    }
}
