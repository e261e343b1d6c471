//! One MQTT connection: bytes in through the packet guard into
//! mqtt-protocol-core's server `Connection` (ADR 005), its events out —
//! packets written, timers armed, packets handed to the broker.
//!
//! One task per connection runs [`serve`]. It reads, and while it handles a
//! read's packets it does not read again: a publisher waits for its
//! messages to be durable (that is the backpressure). Between reads it
//! sends what the session's queue holds, as far as the client's window
//! allows. Writes are bounded by [`WRITE_TIMEOUT`], so a client that stops
//! reading is disconnected instead of holding the task.

mod connect;
mod inbound;
mod outbound;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use moat_core::DeviceId;
use moat_core::authz::Principal;
use moat_core::sessions::{CutReason, SessionGuard};
use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::{Event, TimerKind};
use mqtt_protocol_core::mqtt::packet::{GenericPacket, GenericPacketTrait, Property, v5_0};
use mqtt_protocol_core::mqtt::result_code::{DisconnectReasonCode, MqttError};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Notify, mpsc, oneshot, watch};
use tokio::time::Instant;
use tracing::Instrument;

use crate::broker::{Broker, DecisionCache, Delivery, Session, Will};
use crate::protocol::{self, Frame};

type Server = mqtt::Connection<mqtt::role::Server>;

/// How long one write to a client may take before it counts as stalled.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Read buffer sizes: idle connections (most of them) keep a small one.
const READ_IDLE: usize = 512;
const READ_BUSY: usize = 16 * 1024;
/// Deliveries sent per turn of the loop before reading again.
const SEND_BATCH: usize = 64;

/// Who is at the other end, as the listener established it.
#[derive(Debug, Clone)]
pub struct Peer {
    pub addr: SocketAddr,
    /// The device a verified client certificate names, if any.
    pub certificate_device: Option<DeviceId>,
    /// `tcp`, `tls` or `websocket`, for logs and metrics.
    pub transport: &'static str,
}

/// Why the connection ends, when the broker ends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// The client disconnected, or the protocol engine asked to close.
    Closed,
    /// A protocol violation; v5 clients are told with this reason code.
    Violation(u8),
    /// Revoked, quarantined or withdrawn device: 0x98 Administrative action.
    Cut,
    /// Another connection took the session: 0x8E.
    TakenOver,
    /// The broker is shutting down: 0x8B.
    Shutdown,
}

/// Serves one connection until it ends; `shutdown` turning true ends it
/// with DISCONNECT 0x8B.
pub async fn serve<S>(broker: Arc<Broker>, stream: S, peer: Peer, shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let span = tracing::debug_span!(
        "mqtt",
        peer = %peer.addr,
        transport = peer.transport,
        client_id = tracing::field::Empty,
        device = tracing::field::Empty,
    );
    metrics::counter!("moat_mqtt_connections_total", "transport" => peer.transport).increment(1);
    metrics::gauge!("moat_mqtt_connections").increment(1.0);
    async move {
        let (reader, writer) = tokio::io::split(stream);
        let mut conn = Conn::new(broker, peer, writer);
        conn.run(reader, shutdown).await;
        conn.finish().await;
    }
    .instrument(span)
    .await;
    metrics::gauge!("moat_mqtt_connections").decrement(1.0);
}

/// A connection's state beside the protocol engine.
pub(crate) struct Conn<W> {
    broker: Arc<Broker>,
    mqtt: Server,
    writer: W,
    out: Vec<u8>,
    peer: Peer,
    /// Set once CONNECT is accepted.
    open: Option<Open>,
    /// Whether a CONNECT has been read (the first packet must be one).
    connect_seen: bool,
    /// When the keep-alive runs out, if armed.
    keep_alive: Option<Instant>,
    ending: Option<Ending>,
    /// Packet ids of QoS 1 and 2 deliveries sent and not yet acknowledged.
    inflight: HashSet<u16>,
    /// A delivery taken from the queue that the client's window could not
    /// take yet; sent before anything else.
    held: Option<Delivery>,
    decisions: DecisionCache,
    /// Token bucket for the publish rate: tokens and when last refilled.
    tokens: f64,
    refilled: Instant,
    /// Resolved once: counting a delivery should not look up a metric.
    delivered: metrics::Counter,
}

/// What an accepted CONNECT established.
struct Open {
    version: mqtt::Version,
    session: Arc<Session>,
    rx: mpsc::Receiver<Delivery>,
    principal: Option<Principal>,
    will: Option<Will>,
    /// Whether the client asked for reason strings (MQTT 5 Request Problem
    /// Information, default yes).
    problem_info: bool,
    /// The client's Receive Maximum, capped by ours.
    max_inflight: u16,
    takeover: Arc<Notify>,
    /// Told when this connection has handed the session back.
    done: Option<oneshot::Sender<()>>,
    cut: Arc<Notify>,
    cut_reason: Arc<Mutex<Option<CutReason>>>,
    _registered: Option<SessionGuard>,
    /// A DISCONNECT with reason 0x00 discards the will (§3.1.2.5).
    discard_will: bool,
}

impl<W: AsyncWrite + Unpin + Send> Conn<W> {
    fn new(broker: Arc<Broker>, peer: Peer, writer: W) -> Self {
        let options = mqtt_options(broker.config.max_packet_size, broker.config.receive_maximum);
        let mut mqtt = Server::with_options(mqtt::Version::Undetermined, options);
        // PUBACK and PUBREC go out once the message is durable; PINGRESP
        // is the engine's.
        mqtt.set_auto_pub_response(false);
        mqtt.set_auto_ping_response(true);
        let rate = f64::from(broker.config.publish_rate);
        Self {
            broker,
            mqtt,
            writer,
            // Small until used: most devices are idle most of the time, and
            // idle connections are what a broker holds by the ten thousand.
            out: Vec::new(),
            peer,
            open: None,
            connect_seen: false,
            keep_alive: None,
            ending: None,
            inflight: HashSet::new(),
            held: None,
            decisions: DecisionCache::default(),
            tokens: rate,
            refilled: Instant::now(),
            delivered: metrics::counter!("moat_mqtt_delivered_total"),
        }
    }

    async fn run<R: AsyncRead + Unpin>(
        &mut self,
        mut reader: R,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let mut buf: Vec<u8> = Vec::with_capacity(READ_IDLE);
        let connect_deadline = Instant::now() + self.broker.config.connect_timeout;
        let max = self.broker.config.max_packet_size as usize;
        // Whether the last read filled the buffer: a busy client gets a
        // large buffer, an idle one a small one.
        let mut busy = false;
        while self.ending.is_none() {
            if buf.capacity() - buf.len() < 256 {
                buf.reserve(if busy { READ_BUSY } else { READ_IDLE });
            } else if !busy && buf.is_empty() && buf.capacity() > READ_BUSY {
                buf = Vec::with_capacity(READ_IDLE);
            }
            let spare = buf.capacity() - buf.len();
            let can_send = self.open.is_some() && self.held.is_none();
            let keep_alive = self.keep_alive;
            let deadline = if self.open.is_none() {
                Some(connect_deadline)
            } else {
                keep_alive
            };
            let (takeover, cut) = match &self.open {
                Some(o) => (Arc::clone(&o.takeover), Arc::clone(&o.cut)),
                None => (Arc::new(Notify::new()), Arc::new(Notify::new())),
            };
            tokio::select! {
                biased;
                () = stopped(&mut shutdown) => self.ending = Some(Ending::Shutdown),
                () = cut.notified() => self.ending = Some(Ending::Cut),
                () = takeover.notified() => self.ending = Some(Ending::TakenOver),
                () = sleep_until(deadline) => {
                    if self.open.is_none() {
                        tracing::debug!("no CONNECT in time");
                        metrics::counter!("moat_mqtt_protocol_errors_total", "reason" => "connect_timeout").increment(1);
                        self.ending = Some(Ending::Closed);
                    } else {
                        self.keep_alive = None;
                        metrics::counter!("moat_mqtt_keep_alive_timeouts_total").increment(1);
                        let events = self.mqtt.notify_timer_fired(TimerKind::PingreqRecv);
                        self.handle(events).await;
                        // v3.1.1 has no DISCONNECT from the server; either
                        // way the connection ends.
                        self.ending.get_or_insert(Ending::Closed);
                    }
                }
                r = reader.read_buf(&mut buf) => match r {
                    Ok(0) | Err(_) => self.ending = Some(Ending::Closed),
                    Ok(n) => {
                        busy = n >= spare;
                        self.on_bytes(&mut buf, max).await;
                    }
                },
                d = recv_delivery(&mut self.open), if can_send => {
                    if let Some(d) = d {
                        self.send_delivery(d).await;
                        self.send_queued().await;
                    }
                }
            }
            if !self.flush().await {
                self.ending.get_or_insert(Ending::Closed);
            }
            self.throttle().await;
        }
    }

    /// Frames every whole packet in `buf`, guards it, feeds it to the
    /// engine and handles what comes out; keeps a partial packet.
    async fn on_bytes(&mut self, buf: &mut Vec<u8>, max: usize) {
        let mut consumed = 0;
        let mut events = Vec::new();
        while self.ending.is_none() {
            let rest = &buf[consumed..];
            // MQTT-3.1.0-1: CONNECT first; refused from its first byte.
            if !self.connect_seen && rest.first().is_some_and(|b| b >> 4 != 1) {
                self.violation(0x82, "the first packet is not CONNECT");
                break;
            }
            let total = match protocol::frame(rest, max) {
                Frame::NeedMore => break,
                Frame::Violation(v) => {
                    self.violation(v.reason_code(), &v.to_string());
                    break;
                }
                Frame::Packet { total_len, .. } => total_len,
            };
            let packet = &rest[..total];
            consumed += total;
            self.connect_seen = true;
            if let Err(v) = protocol::check_packet(packet) {
                self.packet_violation(packet, v);
                break;
            }
            let rewritten = match protocol::guard_connect_properties(packet) {
                Ok(r) => r,
                Err(v) => {
                    self.packet_violation(packet, v);
                    break;
                }
            };
            let packet = rewritten.as_deref().unwrap_or(packet);
            match feed(&mut self.mqtt, packet) {
                Some(e) => events.extend(e),
                None => {
                    metrics::counter!("moat_mqtt_engine_panics_total").increment(1);
                    tracing::error!("the MQTT engine panicked on a packet; closing");
                    self.violation(0x83, "implementation error");
                    break;
                }
            }
        }
        buf.drain(..consumed);
        self.handle(events).await;
    }

    /// Handles the engine's events in order. Consecutive PUBLISHes are
    /// gathered and made durable together (one bus call per read).
    async fn handle(&mut self, events: Vec<Event>) {
        let mut publishes = Vec::new();
        for event in events {
            match event {
                Event::NotifyPacketReceived(GenericPacket::V3_1_1Publish(p)) => {
                    publishes.push(inbound::Inbound::v3(p));
                }
                Event::NotifyPacketReceived(GenericPacket::V5_0Publish(p)) => {
                    publishes.push(inbound::Inbound::v5(p));
                }
                Event::NotifyPacketReceived(packet) => {
                    if !publishes.is_empty() {
                        self.publish_batch(std::mem::take(&mut publishes)).await;
                    }
                    if self.ending.is_none() {
                        self.on_packet(packet).await;
                    }
                }
                Event::RequestSendPacket { packet, .. } => self.write_packet(&packet),
                Event::NotifyPacketIdReleased(id) => {
                    self.inflight.remove(&id);
                }
                Event::RequestTimerReset {
                    kind: TimerKind::PingreqRecv,
                    duration_ms,
                } => {
                    self.keep_alive = Some(Instant::now() + Duration::from_millis(duration_ms));
                }
                Event::RequestTimerCancel(TimerKind::PingreqRecv) => self.keep_alive = None,
                Event::RequestTimerReset { .. } | Event::RequestTimerCancel(_) => {}
                Event::NotifyError(e) => self.engine_error(e),
                Event::RequestClose => {
                    self.ending.get_or_insert(Ending::Closed);
                }
            }
        }
        if !publishes.is_empty() && self.ending.is_none() {
            self.publish_batch(publishes).await;
        }
        // An acknowledgement may have opened the window.
        if self.held.is_some() && self.ending.is_none() {
            self.send_held().await;
            self.send_queued().await;
        }
    }

    async fn on_packet(&mut self, packet: GenericPacket<u16>) {
        match packet {
            GenericPacket::V3_1_1Connect(c) => self.on_connect(connect::Connect::v3(&c)).await,
            GenericPacket::V5_0Connect(c) => self.on_connect(connect::Connect::v5(&c)).await,
            GenericPacket::V3_1_1Subscribe(s) => {
                let entries = s
                    .entries()
                    .iter()
                    .map(|e| (e.topic_filter().to_owned(), *e.sub_opts()))
                    .collect();
                self.on_subscribe(s.packet_id(), entries, None).await;
            }
            GenericPacket::V5_0Subscribe(s) => {
                let id = s.props().iter().find_map(|p| match p {
                    mqtt::packet::Property::SubscriptionIdentifier(i) => Some(i.val()),
                    _ => None,
                });
                let entries = s
                    .entries()
                    .iter()
                    .map(|e| (e.topic_filter().to_owned(), *e.sub_opts()))
                    .collect();
                self.on_subscribe(s.packet_id(), entries, id).await;
            }
            GenericPacket::V3_1_1Unsubscribe(u) => {
                let filters = u.entries().iter().map(|e| e.as_str().to_owned()).collect();
                self.on_unsubscribe(u.packet_id(), filters);
            }
            GenericPacket::V5_0Unsubscribe(u) => {
                let filters = u.entries().iter().map(|e| e.as_str().to_owned()).collect();
                self.on_unsubscribe(u.packet_id(), filters);
            }
            GenericPacket::V3_1_1Pubrel(p) => self.send_pubcomp(p.packet_id()),
            GenericPacket::V5_0Pubrel(p) => self.send_pubcomp(p.packet_id()),
            GenericPacket::V3_1_1Pubrec(p) => self.send_pubrel(p.packet_id(), true),
            GenericPacket::V5_0Pubrec(p) => {
                let ok = p.reason_code().is_none_or(|r| (r as u8) < 0x80);
                self.send_pubrel(p.packet_id(), ok);
            }
            GenericPacket::V3_1_1Disconnect(_) => {
                if let Some(o) = &mut self.open {
                    o.discard_will = true;
                }
                self.ending.get_or_insert(Ending::Closed);
            }
            GenericPacket::V5_0Disconnect(d) => {
                // A new Session Expiry Interval (§3.14.2.2.2): a session
                // connected without one may not be given one now — that is
                // no valid DISCONNECT, and the will stays due.
                let expiry = d.props.iter().flatten().find_map(|p| match p {
                    Property::SessionExpiryInterval(e) => Some(e.val()),
                    _ => None,
                });
                if let (Some(secs), Some(o)) = (expiry, &self.open) {
                    let max = self.broker.config.max_session_expiry;
                    let mut st = o.session.lock();
                    if st.expiry.is_zero() && secs > 0 {
                        drop(st);
                        return self.violation(
                            0x82,
                            "a DISCONNECT may not give a session expiry to a session connected without one",
                        );
                    }
                    st.expiry = Duration::from_secs(u64::from(secs)).min(max);
                }
                let with_will =
                    d.reason_code() == Some(DisconnectReasonCode::DisconnectWithWillMessage);
                if let Some(o) = &mut self.open {
                    o.discard_will = !with_will;
                }
                self.ending.get_or_insert(Ending::Closed);
            }
            // PUBACK, PUBCOMP and PINGREQ are the engine's; AUTH is not
            // offered (no authentication method is announced).
            GenericPacket::V5_0Auth(_) => {
                self.violation(0x82, "AUTH without an authentication method")
            }
            _ => {}
        }
    }

    /// Serializes a packet into the write buffer.
    fn write_packet(&mut self, packet: &GenericPacket<u16>) {
        for slice in packet.to_buffers() {
            self.out.extend_from_slice(&slice);
        }
    }

    /// Writes out what is buffered; false if the client is gone or stalled.
    async fn flush(&mut self) -> bool {
        if self.out.is_empty() {
            return true;
        }
        let ok = matches!(
            tokio::time::timeout(WRITE_TIMEOUT, async {
                self.writer.write_all(&self.out).await?;
                self.writer.flush().await
            })
            .await,
            Ok(Ok(()))
        );
        if !ok {
            metrics::counter!("moat_mqtt_write_failures_total").increment(1);
        }
        self.out.clear();
        if self.out.capacity() > 64 * 1024 {
            self.out.shrink_to(4096);
        }
        ok
    }

    /// Ends the connection for a protocol violation: DISCONNECT with
    /// `code` on an open v5 connection, a bare close otherwise.
    fn violation(&mut self, code: u8, what: &str) {
        metrics::counter!("moat_mqtt_protocol_errors_total", "reason" => reason_label(code))
            .increment(1);
        tracing::debug!(code, what, "protocol violation");
        self.ending.get_or_insert(Ending::Violation(code));
    }

    /// Ends the connection for what the guard found in `packet`. A v5
    /// CONNECT is answered with CONNACK and the reason code first
    /// (MQTT-4.13.1-1 lets the server say why; a DISCONNECT may not come
    /// before a CONNACK, MQTT-3.14.0-1).
    fn packet_violation(&mut self, packet: &[u8], v: protocol::Violation) {
        if self.open.is_none() && protocol::is_v5_connect(packet) {
            // CONNACK: no session present, the reason, no properties.
            self.out
                .extend_from_slice(&[0x20, 0x03, 0x00, v.reason_code(), 0x00]);
        }
        self.violation(v.reason_code(), &v.to_string());
    }

    fn engine_error(&mut self, e: MqttError) {
        let code = e as u16;
        if e == MqttError::UnsupportedProtocolVersion && self.open.is_none() {
            // MQTT-3.1.2-2: CONNACK 0x01 (unacceptable protocol level), then
            // close. The engine, its version undetermined, will not send
            // one; the 3.1.1 form is what any level can read (ADR 005).
            self.out.extend_from_slice(&[0x20, 0x02, 0x00, 0x01]);
            metrics::counter!("moat_mqtt_protocol_errors_total", "reason" => "unsupported_protocol_version").increment(1);
            self.ending.get_or_insert(Ending::Closed);
            return;
        }
        if code < 0x100 {
            // A protocol error the engine found in the client's packets; it
            // has already sent DISCONNECT (v5) and asked to close.
            metrics::counter!("moat_mqtt_protocol_errors_total", "reason" => reason_label(code as u8)).increment(1);
            tracing::debug!(error = ?e, "protocol error");
            self.ending.get_or_insert(Ending::Closed);
        } else {
            tracing::debug!(error = ?e, "engine refused an action");
        }
    }

    /// Sends the server's DISCONNECT (v5 only; v3.1.1 has none) with a
    /// reason string, and asks nothing more of the engine. (The reason
    /// string also keeps the property length present, which some clients,
    /// rumqttc 0.25 among them, need to parse a DISCONNECT.)
    fn disconnect(&mut self, code: u8, reason: &str) {
        if self
            .open
            .as_ref()
            .is_none_or(|o| o.version != mqtt::Version::V5_0)
        {
            return;
        }
        let Ok(rc) = DisconnectReasonCode::try_from(code) else {
            return;
        };
        let mut builder = v5_0::Disconnect::builder().reason_code(rc);
        if let Ok(r) = mqtt::packet::ReasonString::new(reason) {
            builder = builder.props(vec![mqtt::packet::Property::ReasonString(r)]);
        }
        if let Ok(d) = builder.build() {
            let events = self.mqtt.checked_send(d);
            for e in events {
                if let Event::RequestSendPacket { packet, .. } = e {
                    self.write_packet(&packet);
                }
            }
        }
    }

    /// Waits while the client is over its publish rate.
    async fn throttle(&mut self) {
        let rate = f64::from(self.broker.config.publish_rate);
        if rate == 0.0 {
            return;
        }
        let now = Instant::now();
        self.tokens =
            (self.tokens + now.duration_since(self.refilled).as_secs_f64() * rate).min(rate);
        self.refilled = now;
        if self.tokens < 0.0 {
            metrics::counter!("moat_mqtt_throttled_total").increment(1);
            tokio::time::sleep(Duration::from_secs_f64(-self.tokens / rate)).await;
        }
    }

    /// After the loop: says why (v5), hands the session back or ends it,
    /// and publishes the will if it is due.
    async fn finish(&mut self) {
        let ending = self.ending.unwrap_or(Ending::Closed);
        match ending {
            Ending::Violation(code) => self.disconnect(code, "protocol violation"),
            Ending::Cut => {
                let reason = self
                    .open
                    .as_ref()
                    .and_then(|o| *o.cut_reason.lock().unwrap_or_else(|p| p.into_inner()));
                metrics::counter!("moat_device_sessions_cut_total").increment(1);
                tracing::info!(reason = ?reason, "device session cut");
                self.disconnect(
                    0x98,
                    match reason {
                        Some(CutReason::Revoked) => "device revoked",
                        Some(CutReason::Quarantined) => "device quarantined",
                        _ => "device credentials withdrawn",
                    },
                );
            }
            Ending::TakenOver => self.disconnect(0x8E, "another connection took the session"),
            Ending::Shutdown => self.disconnect(0x8B, "server shutting down"),
            Ending::Closed => {}
        }
        let _ = self.flush().await;
        let _ = self.writer.shutdown().await;
        let _ = self.mqtt.notify_closed();
        self.release(ending).await;
    }
}

/// Feeds one guarded packet to the engine, inside `catch_unwind` (ADR 005:
/// a panic ends this connection, never the broker); `None` if it panicked.
fn feed(mqtt: &mut Server, packet: &[u8]) -> Option<Vec<Event>> {
    std::panic::catch_unwind(AssertUnwindSafe(|| {
        let mut cursor = Cursor::new(packet);
        let mut events = Vec::new();
        // Each call consumes input or reports an error; bounded anyway.
        for _ in 0..=packet.len() {
            if cursor.position() as usize >= packet.len() {
                break;
            }
            let before = cursor.position();
            events.extend(mqtt.recv(&mut cursor));
            if cursor.position() == before {
                break;
            }
        }
        events
    }))
    .ok()
}

fn mqtt_options(max_packet_size: u32, receive_maximum: u16) -> mqtt::connection::ConnectionOptions {
    let mut o = mqtt::connection::ConnectionOptions::default();
    o.maximum_packet_size_recv = max_packet_size;
    o.receive_maximum = Some(receive_maximum);
    o
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

async fn recv_delivery(open: &mut Option<Open>) -> Option<Delivery> {
    match open {
        Some(o) => o.rx.recv().await,
        None => std::future::pending().await,
    }
}

fn reason_label(code: u8) -> &'static str {
    match code {
        0x81 => "malformed_packet",
        0x82 => "protocol_error",
        0x83 => "implementation_error",
        0x8D => "keep_alive_timeout",
        0x90 => "topic_name_invalid",
        0x93 => "receive_maximum_exceeded",
        0x94 => "topic_alias_invalid",
        0x95 => "packet_too_large",
        _ => "other",
    }
}
