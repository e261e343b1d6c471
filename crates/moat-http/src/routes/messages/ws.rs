//! The live WebSocket of a channel: `GET /channels/{id}/messages/ws` streams
//! the channel's messages as they are stored, and takes publishes on the
//! same socket.
//!
//! The handler decides everything a plain request could be refused for
//! (credentials, the subtopic filter, access) before it upgrades, so that
//! those refusals are problem documents like every other route's. After
//! the upgrade one task serves the socket: it forwards live messages from a
//! bounded bus subscription, runs the client's publishes one at a time
//! through the same path as HTTP's (`open_channel`, `publish_one`), pings,
//! and closes the socket when the bus cuts it off, when the client stops
//! answering, or when the session registry cuts the device it belongs to.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::extract::ws::close_code;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message as Frame, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Version, header};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use moat_core::authz::{self, Decision, MessageAccess, Subject};
use moat_core::message::bus::{Filter, Subscription};
use moat_core::message::{self, ContentType, Incoming, Message, Protocol};
use moat_core::sessions::{CutReason, SessionGuard};
use moat_core::{Channel, ChannelId, DeviceState};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::watch;
use tracing::Instrument;
use utoipa::IntoParams;

use super::{MessageView, Published, open_channel, publish_one};
use crate::auth::{Caller, DeviceCredential};
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::routes::TAG_MESSAGES;
use crate::state::AppState;

/// Live messages a socket may fall behind by; one more and the bus cuts it
/// off (ADR 004: a slow subscriber is dropped, never waited for).
pub const QUEUE: usize = 1024;
/// The largest WebSocket message (and frame) a client may send: the
/// largest payload, base64-encoded, with room for the envelope around it.
pub const MAX_MESSAGE: usize = message::MAX_PAYLOAD.div_ceil(3) * 4 + 64 * 1024;
/// A write the client does not take within this has stalled the socket.
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a socket the server closes waits for the client's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct LiveParams {
    /// Only live messages whose subtopic matches this MQTT-style filter
    /// (`+` one segment, `#` as the last segment: the rest); empty: the
    /// channel itself only; absent: everything. In a URL, `+` is written
    /// `%2B` and `#` `%23`.
    pub subtopic: Option<String>,
}

/// Streams a channel's live messages over a WebSocket, and takes publishes.
///
/// Authenticate as for any route (`Authorization` header, or a device's
/// client certificate); the caller needs the right to read (`subscribe`) or
/// to publish. Refusals come before the upgrade, as problem documents; so
/// does 426 for a request that is not a WebSocket upgrade.
///
/// **Server to client**, text frames of JSON:
/// - `{"type":"message", "id", "channel_id", "subtopic", "publisher",
///   "protocol", "content_type", "received_at", "payload" | "payload_base64"}`:
///   a message as `GET /channels/{id}/messages` shows it, without `seq`
///   (read the stored page for that). Only to callers that may subscribe,
///   and only those matching `subtopic`; the socket's own publishes too.
/// - `{"type":"ack", "ref", "id", "seq", "received_at", "records"}`: a
///   publish is durable.
/// - `{"type":"error", "ref", "status", "detail"}`: a publish was refused;
///   `status` as HTTP's (400 malformed envelope, 403 no publish right, 413
///   too large, 415 unknown content type, 422 invalid payload or subtopic).
///   The socket stays open.
///
/// **Client to server**:
/// - a text frame `{"type":"publish", "ref": any JSON (optional, echoed),
///   "subtopic": "a/b" (optional), "content_type": "application/senml+json"
///   (optional; without it the channel's policy decides), "payload": a JSON
///   value}`, or with `"payload_base64"` instead of `"payload"` for binary
///   content. A JSON `payload` is published as its text.
/// - a binary frame: its bytes, published to the channel itself (no
///   subtopic) with no declared content type.
///
/// Publishes are handled in order, one at a time: the next frame is read
/// once the previous publish is acknowledged or refused. A message may be
/// at most about 1.4 MB (a 1 MiB payload in base64 plus its envelope).
///
/// **Closing.** The server pings every 30 s (`websocket_ping_interval`) and closes a socket that has
/// not answered by the next ping. A subscriber that falls 1024 messages
/// behind is closed with code 1008, `slow consumer`; a device's socket
/// closes with 1008 when the device is revoked or quarantined or its key
/// is withdrawn, and, at the next ping, any socket with 1008, `access
/// withdrawn`, when the caller loses the rights it subscribed with or its
/// credential stops working (a user disabled or signed out everywhere, an
/// API key revoked).
#[utoipa::path(get, path = "/channels/{id}/messages/ws", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path), LiveParams),
    responses((status = 101, description = "Switched to the WebSocket protocol"),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem), (status = 426, body = Problem)))]
pub async fn live(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    Query(params): Query<LiveParams>,
    version: Version,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    if let Some(f) = &params.subtopic {
        message::bus::check_filter(f).map_err(|why| ApiError::unprocessable("subtopic", why))?;
    }
    let rights = open_live(&s, &caller, id).await?;
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(r) => return Ok(not_an_upgrade(r, version)),
    };
    let session = Session::join(&s, &caller).await?;
    // Subscribing before the upgrade completes: nothing published from the
    // 101 onwards is missed.
    let sub = rights.subscribe.then(|| {
        s.bus.subscribe(
            Filter {
                channel: id,
                subtopic: params.subtopic,
            },
            QUEUE,
        )
    });
    let span = tracing::info_span!("ws", channel = %id, subject = %caller.principal.subject);
    let live = Live {
        s,
        caller: Arc::new(caller),
        channel: id,
        rights,
        sub,
        session,
        opened: Utc::now(),
    };
    Ok(upgrade
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .on_upgrade(move |socket| serve(socket, live).instrument(span)))
}

/// Publishes a message to the subtopic `ws`, as `POST
/// /channels/{id}/messages/{subtopic}` does for any other: the live
/// socket's path would otherwise shadow that one subtopic.
#[utoipa::path(post, path = "/channels/{id}/messages/ws", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path)),
    request_body(content = Vec<u8>, content_type = "application/senml+json",
        description = "The payload; `application/senml+cbor`, `application/json` and `application/octet-stream` too"),
    responses((status = 202, body = Published), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)))]
pub async fn publish_ws_subtopic(
    state: State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    super::publish_subtopic(state, caller, Path((id, "ws".to_owned())), headers, body).await
}

/// What a caller may do on a channel's socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rights {
    publish: bool,
    subscribe: bool,
}

/// The caller's rights on channel `id`, if it may subscribe or publish;
/// otherwise `open_channel`'s refusal, counted and audited once.
async fn open_live(s: &AppState, caller: &Caller, id: ChannelId) -> Result<Rights, ApiError> {
    if let Some((_, rights)) = decide(s, caller, id).await? {
        if rights.publish || rights.subscribe {
            return Ok(rights);
        }
    }
    open_channel(s, caller, id, MessageAccess::Subscribe).await?;
    // Granted since `decide` looked.
    Ok(Rights {
        publish: false,
        subscribe: true,
    })
}

/// Both of the caller's rights on channel `id`, silently (neither counted
/// nor audited); `None` if the channel does not exist.
async fn decide(
    s: &AppState,
    caller: &Caller,
    id: ChannelId,
) -> Result<Option<(Channel, Rights)>, ApiError> {
    let Some(channel) = s.store.channel(id).await? else {
        return Ok(None);
    };
    let path = s.tenant_path(channel.tenant_id).await?;
    let connection = match caller.principal.subject {
        Subject::Device(device) => s.store.connection(id, device).await?,
        _ => None,
    };
    let may = |access| {
        authz::authorize_messages(&caller.principal, access, &path, id, connection.as_ref())
            == Decision::Allow
    };
    let rights = Rights {
        publish: may(MessageAccess::Publish),
        subscribe: may(MessageAccess::Subscribe),
    };
    Ok(Some((channel, rights)))
}

/// The answer to a request that is not a WebSocket upgrade: 426 (400 for a
/// broken attempt at one), saying what to send.
fn not_an_upgrade(r: WebSocketUpgradeRejection, version: Version) -> Response {
    let status = match r {
        WebSocketUpgradeRejection::WebSocketKeyHeaderMissing(_) => StatusCode::BAD_REQUEST,
        _ => StatusCode::UPGRADE_REQUIRED,
    };
    let detail = format!(
        "{}: this endpoint speaks WebSocket (RFC 6455) only; send GET with `Connection: Upgrade` and `Upgrade: websocket`",
        r.body_text()
    );
    let mut res = ApiError::new(status, detail).into_response();
    let h = res.headers_mut();
    h.insert(
        header::SEC_WEBSOCKET_VERSION,
        HeaderValue::from_static("13"),
    );
    // `Upgrade` is a connection header, which HTTP/2 does not have.
    if version < Version::HTTP_2 {
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    }
    res
}

/// A device's place in the session registry, for as long as its socket
/// lives; `cut` reports the registry cutting it.
struct Session {
    _guard: Option<SessionGuard>,
    /// Kept so that `cut` waits forever for callers that are not devices.
    _tx: Arc<watch::Sender<Option<CutReason>>>,
    cut: watch::Receiver<Option<CutReason>>,
}

impl Session {
    async fn join(s: &AppState, caller: &Caller) -> Result<Self, ApiError> {
        let (tx, cut) = watch::channel(None);
        let tx = Arc::new(tx);
        let Subject::Device(device) = caller.principal.subject else {
            return Ok(Self {
                _guard: None,
                _tx: tx,
                cut,
            });
        };
        let on_cut = Arc::clone(&tx);
        let guard = s.sessions.join(device, move |r| {
            on_cut.send_replace(Some(r));
        });
        // A revocation between authentication and joining found no session
        // to cut: look again, now that there is one.
        let active = s
            .store
            .device(device)
            .await?
            .is_some_and(|d| d.state == DeviceState::Active);
        let key_usable = match caller.credential {
            DeviceCredential::Key(key) => s
                .store
                .device_key(key)
                .await?
                .is_some_and(|k| k.is_usable(Utc::now())),
            _ => true,
        };
        if !(active && key_usable) {
            return Err(ApiError::unauthorized(
                "the device's credentials were withdrawn",
            ));
        }
        Ok(Self {
            _guard: Some(guard),
            _tx: tx,
            cut,
        })
    }

    /// Resolves once the registry cut the session.
    async fn cut(&mut self) -> CutReason {
        let reason = match self.cut.wait_for(Option::is_some).await {
            Ok(r) => *r,
            // The sender lives as long as `self`.
            Err(_) => None,
        };
        match reason {
            Some(r) => r,
            None => std::future::pending().await,
        }
    }
}

/// One socket's state.
struct Live {
    s: Arc<AppState>,
    caller: Arc<Caller>,
    channel: ChannelId,
    /// The rights it was opened with; checked again at every ping.
    rights: Rights,
    /// Live messages, for callers that may subscribe.
    sub: Option<Box<dyn Subscription>>,
    session: Session,
    /// When the socket opened: a user signed out everywhere after it loses
    /// the socket too.
    opened: chrono::DateTime<Utc>,
}

/// Why a socket ended.
#[derive(Debug)]
enum End {
    /// The client closed it or went away.
    Client,
    SlowConsumer,
    /// The bus ended every subscription: the server is stopping.
    BusClosed,
    Cut(CutReason),
    AccessWithdrawn,
    NoPong,
    /// A write waited `WRITE_TIMEOUT` for the client.
    Stalled,
    /// A frame broke the protocol or the size limit; the close code says
    /// which.
    BadFrame(u16),
}

impl End {
    fn label(&self) -> &'static str {
        match self {
            End::Client => "client",
            End::SlowConsumer => "slow_consumer",
            End::BusClosed => "shutdown",
            End::Cut(_) => "device_cut",
            End::AccessWithdrawn => "access_withdrawn",
            End::NoPong => "no_pong",
            End::Stalled => "stalled",
            End::BadFrame(_) => "bad_frame",
        }
    }

    /// The close frame to send, if the client can still take one.
    fn close_frame(&self) -> Option<(u16, &'static str)> {
        Some(match self {
            End::Client | End::Stalled => return None,
            End::SlowConsumer => (close_code::POLICY, "slow consumer"),
            End::BusClosed => (close_code::AWAY, "server shutting down"),
            End::Cut(CutReason::Revoked) => (close_code::POLICY, "device revoked"),
            End::Cut(CutReason::Quarantined) => (close_code::POLICY, "device quarantined"),
            End::Cut(CutReason::Withdrawn) => (close_code::POLICY, "device credentials withdrawn"),
            End::AccessWithdrawn => (close_code::POLICY, "access withdrawn"),
            End::NoPong => (close_code::POLICY, "no answer to ping"),
            End::BadFrame(close_code::SIZE) => (close_code::SIZE, "message too big"),
            End::BadFrame(close_code::INVALID) => (close_code::INVALID, "text is not UTF-8"),
            End::BadFrame(code) => (*code, "protocol error"),
        })
    }
}

/// A publish under way: its answer, once durable or refused.
type Pending = Pin<Box<dyn Future<Output = Reply> + Send>>;

async fn serve(mut socket: WebSocket, mut live: Live) {
    metrics::gauge!("moat_websocket_connections").increment(1.0);
    let end = live.run(&mut socket).await;
    metrics::counter!("moat_websocket_closed_total", "reason" => end.label()).increment(1);
    match end {
        End::Cut(_) => tracing::info!(?end, "websocket cut"),
        _ => tracing::debug!(?end, "websocket ended"),
    }
    if let Some((code, reason)) = end.close_frame() {
        close(&mut socket, code, reason).await;
    }
    metrics::gauge!("moat_websocket_connections").decrement(1.0);
}

impl Live {
    async fn run(&mut self, socket: &mut WebSocket) -> End {
        // How often the server pings (`websocket_ping_interval`, 30 s by
        // default); a client that has not answered one ping by the next is
        // gone.
        let every = self.s.settings.websocket_ping;
        let start = tokio::time::Instant::now() + every;
        let mut ping = tokio::time::interval_at(start, every);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut awaiting_pong = false;
        // At most one publish at a time; while it is under way the socket
        // is not read, which is the backpressure on the client.
        let mut pending: Option<Pending> = None;
        loop {
            tokio::select! {
                reason = self.session.cut() => return End::Cut(reason),
                frame = socket.recv(), if pending.is_none() => {
                    // Any frame shows the client is there.
                    awaiting_pong = false;
                    match frame {
                        None => return End::Client,
                        Some(Err(e)) => return read_error(&e),
                        Some(Ok(Frame::Text(text))) => pending = Some(self.publish_text(text)),
                        Some(Ok(Frame::Binary(bytes))) => pending = Some(self.publish_binary(bytes)),
                        // tungstenite answers pings and close frames; the
                        // next `recv` sends a close's answer and ends.
                        Some(Ok(Frame::Ping(_) | Frame::Pong(_) | Frame::Close(_))) => {}
                    }
                }
                reply = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    // The socket went unread meanwhile; a pong may be waiting.
                    awaiting_pong = false;
                    if let Err(end) = send(socket, reply.frame()).await {
                        return end;
                    }
                }
                m = next_live(&mut self.sub) => match m {
                    Some(m) => {
                        if let Err(end) = send(socket, live_frame(&m)).await {
                            return end;
                        }
                    }
                    None if self.sub.as_ref().is_some_and(|s| s.cut_off()) => return End::SlowConsumer,
                    None => return End::BusClosed,
                },
                _ = ping.tick() => {
                    if pending.is_some() {
                        continue;
                    }
                    if awaiting_pong {
                        return End::NoPong;
                    }
                    if !self.still_allowed().await {
                        return End::AccessWithdrawn;
                    }
                    if let Err(end) = send(socket, Frame::Ping(Bytes::new())).await {
                        return end;
                    }
                    awaiting_pong = true;
                }
            }
        }
    }

    /// Whether the caller's credential still works (a user's role as it is
    /// now) and the caller still holds the rights the socket was opened
    /// with: a subscriber must still be allowed to subscribe, a publisher
    /// to publish (each publish is checked anew too). A device disconnected
    /// from the channel, or a channel deleted, ends the socket; a store
    /// that cannot answer ends nothing. (`&mut`: the subscription inside
    /// is `Send` but not `Sync`.)
    async fn still_allowed(&mut self) -> bool {
        match self.caller.current(&self.s, self.opened).await {
            Ok(Some(now)) => self.caller = Arc::new(now),
            Ok(None) => return false,
            Err(e) => {
                tracing::warn!(status = %e.status, "could not check a websocket's credential");
            }
        }
        match decide(&self.s, &self.caller, self.channel).await {
            Ok(Some((_, now))) => now.subscribe || (now.publish && !self.rights.subscribe),
            Ok(None) => false,
            Err(e) => {
                tracing::warn!(status = %e.status, "could not check a websocket's rights");
                true
            }
        }
    }

    fn publish_text(&self, text: Utf8Bytes) -> Pending {
        let (s, caller, channel) = (Arc::clone(&self.s), Arc::clone(&self.caller), self.channel);
        Box::pin(async move { publish_envelope(&s, &caller, channel, text.as_str()).await })
    }

    fn publish_binary(&self, bytes: Bytes) -> Pending {
        let (s, caller, channel) = (Arc::clone(&self.s), Arc::clone(&self.caller), self.channel);
        Box::pin(async move {
            let incoming = Incoming {
                subtopic: "",
                content_type: None,
                payload: bytes.to_vec(),
            };
            Reply::of(None, publish(&s, &caller, channel, incoming).await)
        })
    }
}

/// The next live message; never, without a subscription.
async fn next_live(sub: &mut Option<Box<dyn Subscription>>) -> Option<Arc<Message>> {
    match sub {
        Some(sub) => sub.recv().await,
        None => std::future::pending().await,
    }
}

/// Why reading failed. axum hides tungstenite's error type; its message
/// is all there is to tell a size limit from bad UTF-8 or another
/// violation of the protocol, and those from the connection failing.
fn read_error(e: &axum::Error) -> End {
    let text = e.to_string();
    let code = if text.starts_with("Space limit exceeded") {
        close_code::SIZE
    } else if text.starts_with("UTF-8") {
        close_code::INVALID
    } else if text.starts_with("WebSocket protocol error") {
        close_code::PROTOCOL
    } else {
        return End::Client;
    };
    End::BadFrame(code)
}

async fn send(socket: &mut WebSocket, frame: Frame) -> Result<(), End> {
    match tokio::time::timeout(WRITE_TIMEOUT, socket.send(frame)).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(End::Client),
        Err(_) => Err(End::Stalled),
    }
}

/// Sends a close frame and gives the client a moment to answer it.
async fn close(socket: &mut WebSocket, code: u16, reason: &'static str) {
    let frame = Frame::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }));
    let _ = tokio::time::timeout(CLOSE_GRACE, async {
        if socket.send(frame).await.is_ok() {
            while let Some(Ok(_)) = socket.recv().await {}
        }
    })
    .await;
}

/// A client's publish frame.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Envelope<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
    #[serde(default)]
    subtopic: Option<String>,
    #[serde(default)]
    content_type: Option<String>,
    #[serde(default, borrow)]
    payload: Option<&'a RawValue>,
    #[serde(default)]
    payload_base64: Option<String>,
}

/// Only the `ref` of an envelope that did not parse, to echo it.
#[derive(Deserialize)]
struct RefOnly {
    #[serde(rename = "ref", default)]
    reference: Option<serde_json::Value>,
}

async fn publish_envelope(s: &AppState, caller: &Caller, channel: ChannelId, text: &str) -> Reply {
    let envelope: Envelope<'_> = match serde_json::from_str(text) {
        Ok(e) => e,
        Err(e) => {
            let reference = serde_json::from_str::<RefOnly>(text)
                .ok()
                .and_then(|r| r.reference);
            let status = if e.is_data() {
                StatusCode::UNPROCESSABLE_ENTITY
            } else {
                StatusCode::BAD_REQUEST
            };
            return Reply::malformed(reference, status, format!("invalid envelope: {e}"));
        }
    };
    let reference = envelope.reference;
    if envelope.kind != "publish" {
        let detail = format!(
            "unknown type {:?}; a client sends only \"publish\"",
            envelope.kind
        );
        return Reply::malformed(reference, StatusCode::UNPROCESSABLE_ENTITY, detail);
    }
    let payload = match (envelope.payload, envelope.payload_base64) {
        (Some(json), None) => json.get().as_bytes().to_vec(),
        (None, Some(b64)) => {
            use base64::Engine;
            match base64::engine::general_purpose::STANDARD.decode(b64) {
                Ok(bytes) => bytes,
                Err(e) => {
                    let detail = format!("payload_base64 is not base64: {e}");
                    return Reply::malformed(reference, StatusCode::UNPROCESSABLE_ENTITY, detail);
                }
            }
        }
        _ => {
            let detail = "give exactly one of payload and payload_base64";
            return Reply::malformed(reference, StatusCode::UNPROCESSABLE_ENTITY, detail.into());
        }
    };
    let content_type = match envelope.content_type.as_deref() {
        None => None,
        Some(t) => match ContentType::parse(t) {
            Some(t) => Some(t),
            None => {
                let detail = "content_type must be application/senml+json, application/senml+cbor, application/json or application/octet-stream";
                return Reply::malformed(
                    reference,
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    detail.into(),
                );
            }
        },
    };
    let incoming = Incoming {
        subtopic: envelope.subtopic.as_deref().unwrap_or_default(),
        content_type,
        payload,
    };
    Reply::of(reference, publish(s, caller, channel, incoming).await)
}

/// HTTP's publish path: access, the channel's policy, the durable write.
async fn publish(
    s: &AppState,
    caller: &Caller,
    id: ChannelId,
    incoming: Incoming<'_>,
) -> Result<Published, ApiError> {
    let channel = open_channel(s, caller, id, MessageAccess::Publish).await?;
    publish_one(s, caller, &channel, Protocol::Websocket, incoming).await
}

/// The server's answer to one publish.
#[derive(Serialize)]
#[serde(tag = "type", rename_all = "lowercase")]
enum Reply {
    Ack {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<serde_json::Value>,
        #[serde(flatten)]
        published: Published,
    },
    Error {
        #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<serde_json::Value>,
        status: u16,
        detail: String,
    },
}

impl Reply {
    fn of(reference: Option<serde_json::Value>, r: Result<Published, ApiError>) -> Self {
        match r {
            Ok(published) => Reply::Ack {
                reference,
                published,
            },
            Err(e) => Reply::Error {
                reference,
                status: e.status.as_u16(),
                detail: e.detail,
            },
        }
    }

    /// A frame that is no publish at all, counted with the refused ones.
    fn malformed(reference: Option<serde_json::Value>, status: StatusCode, detail: String) -> Self {
        metrics::counter!("moat_messages_rejected_total", "protocol" => Protocol::Websocket.as_str(), "reason" => "envelope")
            .increment(1);
        Reply::Error {
            reference,
            status: status.as_u16(),
            detail,
        }
    }

    fn frame(&self) -> Frame {
        json_frame(self)
    }
}

/// A live message as the socket shows it: the stored view less its `seq`,
/// which the bus does not carry.
#[derive(Serialize)]
struct LiveMessage {
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(flatten)]
    view: ViewLessSeq,
}

#[derive(Serialize)]
struct ViewLessSeq {
    id: moat_core::MessageId,
    channel_id: ChannelId,
    subtopic: String,
    publisher: String,
    protocol: Protocol,
    content_type: ContentType,
    received_at: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload: Option<Box<RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    payload_base64: Option<String>,
}

fn live_frame(m: &Message) -> Frame {
    let v = MessageView::new(0, m);
    json_frame(&LiveMessage {
        kind: "message",
        view: ViewLessSeq {
            id: v.id,
            channel_id: v.channel_id,
            subtopic: v.subtopic,
            publisher: v.publisher,
            protocol: v.protocol,
            content_type: v.content_type,
            received_at: v.received_at,
            payload: v.payload,
            payload_base64: v.payload_base64,
        },
    })
}

fn json_frame(value: &impl Serialize) -> Frame {
    // Our own types, with string keys: serializing them cannot fail.
    let text = serde_json::to_string(value).unwrap_or_default();
    Frame::Text(text.into())
}
