//! A peer's CoAP state, whatever carries its datagrams (DTLS or, in
//! development, plain UDP): deduplication by message id, Observe
//! registrations and their notifications, block-wise uploads and
//! downloads, and the retransmission of our confirmable notifications with
//! the RFC's timers (RFC 7252 §4.2, §4.8; RFC 7641 §4.5).
//!
//! Requests of one peer are handled one at a time, in order (a constrained
//! client has one outstanding request, NSTART = 1); a duplicate of one
//! already answered gets the same answer again without being handled again.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use coap_lite::{CoapOption, MessageType, RequestType, ResponseType};
use moat_core::authz::{MessageAccess, Principal};
use moat_core::message::Message;
use moat_core::message::bus::{Filter, check_filter};
use moat_core::{Channel, ChannelId, authn};
use rand::Rng;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::Coap;
use crate::block::{self, Piece, Upload};
use crate::message::{Incoming, Request, Response, code_label, empty, parse_request};
use crate::resources::{self, Target};

/// RFC 7252 §4.8 transmission parameters.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
const ACK_RANDOM_FACTOR: f64 = 1.5;
const MAX_RETRANSMIT: u32 = 4;
/// How long a message id is remembered for deduplication.
const EXCHANGE_LIFETIME: Duration = Duration::from_secs(247);
/// Message ids remembered per peer at most.
const DEDUP_ENTRIES: usize = 256;
/// Uploads and downloadable representations a peer may have at once.
const TRANSFERS: usize = 4;
/// Messages a subscription may hold for a slow peer before it is cut off.
const OBSERVE_QUEUE: usize = 64;
/// A notification is confirmable every this many, or when the last
/// confirmable one is this old (RFC 7641 §4.5: the server learns whether
/// the client is still there).
const CON_EVERY: u32 = 20;
const CON_AFTER: Duration = Duration::from_secs(60);
/// How long a channel decision of an authenticated session is reused
/// (as the MQTT broker's), so that a device posting often does not read the
/// channel, its tenant and its connection from the store each time. A
/// change of the device's rights clears them at once (`recheck`).
const DECISION_TTL: Duration = Duration::from_secs(1);
/// Decisions a session keeps at most.
const DECISIONS: usize = 64;
/// Observe sequence numbers are 24 bits.
const OBSERVE_MASK: u32 = 0x00ff_ffff;

/// A notification source's output.
pub(crate) enum Note {
    Message(Vec<u8>, Arc<Message>),
    /// The subscription ended (the peer fell behind, or the bus stopped).
    Ended(Vec<u8>),
}

struct Observation {
    channel: ChannelId,
    path: Vec<String>,
    forward: JoinHandle<()>,
}

impl Drop for Observation {
    fn drop(&mut self) {
        self.forward.abort();
    }
}

/// A representation too large for one datagram, kept for the client to
/// fetch block by block.
struct Representation {
    path: Vec<String>,
    etag: Vec<u8>,
    content_format: u16,
    body: Vec<u8>,
}

/// Our confirmable message awaiting its ACK.
struct Pending {
    mid: u16,
    token: Vec<u8>,
    bytes: Vec<u8>,
    attempts: u32,
    timeout: Duration,
    at: Instant,
}

pub(crate) struct Session {
    coap: Arc<Coap>,
    peer: SocketAddr,
    /// The device DTLS authenticated; `None` on plain CoAP, where each
    /// request carries a device key.
    principal: Option<Principal>,
    answered: HashMap<u16, (Instant, Vec<u8>)>,
    answered_order: VecDeque<u16>,
    observations: HashMap<Vec<u8>, Observation>,
    notes_tx: mpsc::Sender<Note>,
    notes_rx: mpsc::Receiver<Note>,
    observe_seq: u32,
    since_con: u32,
    last_con: Instant,
    uploads: VecDeque<Upload>,
    representations: VecDeque<Representation>,
    pending: Option<Pending>,
    next_mid: u16,
    /// (channel, publish?) → the channel, when allowed, and when decided.
    decisions: HashMap<(ChannelId, bool), (Instant, Channel)>,
}

impl Session {
    pub(crate) fn new(coap: Arc<Coap>, peer: SocketAddr, principal: Option<Principal>) -> Self {
        let (notes_tx, notes_rx) = mpsc::channel(OBSERVE_QUEUE);
        Self {
            coap,
            peer,
            principal,
            answered: HashMap::new(),
            answered_order: VecDeque::new(),
            observations: HashMap::new(),
            notes_tx,
            notes_rx,
            observe_seq: 2,
            // Sessions that start together (a fleet after an outage) would
            // otherwise all send their confirmable notification on the same
            // message, and their acknowledgements would arrive at once.
            since_con: rand::random::<u32>() % CON_EVERY,
            last_con: Instant::now(),
            uploads: VecDeque::new(),
            representations: VecDeque::new(),
            pending: None,
            next_mid: rand::thread_rng().r#gen(),
            decisions: HashMap::new(),
        }
    }

    /// Handles one datagram from the peer; returns what to send back.
    pub(crate) async fn on_datagram(&mut self, datagram: &[u8]) -> Vec<Vec<u8>> {
        let incoming = match parse_request(datagram) {
            Ok(i) => i,
            Err(e) => {
                metrics::counter!("moat_coap_malformed_total", "reason" => e.label()).increment(1);
                tracing::debug!(peer = %self.peer, error = %e, "dropped a datagram");
                return Vec::new();
            }
        };
        match incoming {
            Incoming::Ack(mid) => {
                if self.pending.as_ref().is_some_and(|p| p.mid == mid) {
                    self.pending = None;
                }
                Vec::new()
            }
            Incoming::Reset(mid) => {
                // A reset answering a notification cancels its observation.
                if let Some(p) = self.pending.take_if(|p| p.mid == mid) {
                    self.observations.remove(&p.token);
                }
                Vec::new()
            }
            Incoming::Ping(mid) => vec![empty(MessageType::Reset, mid)],
            Incoming::Refused {
                confirmable,
                mid,
                token,
                code,
                why,
            } => {
                metrics::counter!("moat_coap_malformed_total", "reason" => "refused_option")
                    .increment(1);
                let reply_mid = if confirmable { mid } else { self.mid() };
                let answer = Response::error(code, why).answer(confirmable, reply_mid, &token);
                vec![self.remember(mid, answer)]
            }
            Incoming::Request(r) => {
                self.forget_old();
                if let Some((_, bytes)) = self.answered.get(&r.mid) {
                    metrics::counter!("moat_coap_duplicates_total").increment(1);
                    return vec![bytes.clone()];
                }
                let (confirmable, mid, token) = (r.confirmable, r.mid, r.token.clone());
                let method = method_label(r.method);
                let response = self.request(r).await;
                metrics::counter!(
                    "moat_coap_requests_total",
                    "method" => method,
                    "code" => code_label(response.code)
                )
                .increment(1);
                let reply_mid = if confirmable { mid } else { self.mid() };
                vec![self.remember(mid, response.answer(confirmable, reply_mid, &token))]
            }
        }
    }

    fn remember(&mut self, mid: u16, bytes: Vec<u8>) -> Vec<u8> {
        if self.answered_order.len() >= DEDUP_ENTRIES {
            if let Some(old) = self.answered_order.pop_front() {
                self.answered.remove(&old);
            }
        }
        self.answered.insert(mid, (Instant::now(), bytes.clone()));
        self.answered_order.push_back(mid);
        bytes
    }

    fn forget_old(&mut self) {
        while let Some(mid) = self.answered_order.front() {
            match self.answered.get(mid) {
                Some((at, _)) if at.elapsed() < EXCHANGE_LIFETIME => break,
                _ => {
                    let mid = *mid;
                    self.answered.remove(&mid);
                    self.answered_order.pop_front();
                }
            }
        }
    }

    fn mid(&mut self) -> u16 {
        self.next_mid = self.next_mid.wrapping_add(1);
        self.next_mid
    }

    /// The principal a request acts as: the DTLS session's device, or on
    /// plain CoAP the device whose key is in the `auth` query.
    async fn principal(&self, r: &Request) -> Result<Principal, Response> {
        if let Some(p) = &self.principal {
            return Ok(p.clone());
        }
        let unauthorized = |why| Err(Response::error(ResponseType::Unauthorized, why));
        let Some(token) = r.query.iter().find_map(|q| q.strip_prefix("auth=")) else {
            return unauthorized("authenticate with DTLS, or ?auth=<device key> on plain CoAP");
        };
        let store = &*self.coap.store;
        match authn::device_key(store, token, None, chrono::Utc::now()).await {
            Ok((device, _)) => match moat_core::access::device_principal(store, &device).await {
                Ok(Some(p)) => Ok(p),
                Ok(None) => unauthorized("the device's tenant is gone"),
                Err(_) => Err(resources::unavailable()),
            },
            Err(authn::DeviceAuthError::Refused(refusal)) => {
                metrics::counter!("moat_coap_auth_failures_total", "reason" => refusal.reason)
                    .increment(1);
                unauthorized("invalid device key")
            }
            Err(authn::DeviceAuthError::Store(_)) => Err(resources::unavailable()),
        }
    }

    async fn request(&mut self, r: Request) -> Response {
        let target = resources::route(&r.path);
        if target == Target::Unknown {
            return Response::error(ResponseType::NotFound, "no such resource");
        }
        let principal = match self.principal(&r).await {
            Ok(p) => p,
            Err(response) => return response,
        };
        match (target, r.method) {
            (Target::Core, RequestType::Get) => resources::core(&self.coap, Some(&principal)).await,
            (Target::Messages { channel, subtopic }, RequestType::Post) => {
                self.post(&principal, channel, &subtopic, r).await
            }
            (Target::Messages { channel, subtopic }, RequestType::Get) => {
                self.get(&principal, channel, &subtopic, r).await
            }
            _ => Response::error(ResponseType::MethodNotAllowed, "POST or GET"),
        }
    }

    /// POST: publishes the payload, or one block of it (Block1).
    async fn post(
        &mut self,
        principal: &Principal,
        id: ChannelId,
        subtopic: &str,
        r: Request,
    ) -> Response {
        let max = self.coap.config.max_body;
        let too_large = || {
            Response::error(ResponseType::RequestEntityTooLarge, "the body is too large")
                .option_uint(CoapOption::Size1, u32::try_from(max).unwrap_or(u32::MAX))
        };
        if r.size1.is_some_and(|s| s as usize > max) {
            return too_large();
        }
        let channel = match self.channel(principal, id, MessageAccess::Publish).await {
            Ok(c) => c,
            Err(response) => return response,
        };
        let Some(b1) = r.block1.clone() else {
            return resources::publish(
                &self.coap,
                principal,
                &channel,
                subtopic,
                r.content_format,
                r.payload,
            )
            .await;
        };
        let at = self.uploads.iter().position(|u| u.path == r.path);
        let mut upload = match at {
            Some(i) if b1.num > 0 => self.uploads.remove(i).expect("the position is in range"),
            Some(i) => {
                self.uploads.remove(i);
                Upload::new(r.path.clone(), r.content_format)
            }
            None => Upload::new(r.path.clone(), r.content_format),
        };
        match upload.add(&b1, &r.payload, max) {
            Piece::More => {
                if self.uploads.len() >= TRANSFERS {
                    self.uploads.pop_front();
                }
                self.uploads.push_back(upload);
                Response::new(ResponseType::Continue).option_block(CoapOption::Block1, b1)
            }
            Piece::Done => resources::publish(
                &self.coap,
                principal,
                &channel,
                subtopic,
                upload.content_format,
                upload.body,
            )
            .await
            .option_block(CoapOption::Block1, b1),
            Piece::OutOfOrder => Response::error(
                ResponseType::RequestEntityIncomplete,
                "blocks must come in order, of one size",
            ),
            Piece::TooLarge => too_large(),
        }
    }

    /// GET: Observe 0 registers, 1 deregisters; a later block of a large
    /// notification (Block2) comes from the kept representation.
    async fn get(
        &mut self,
        principal: &Principal,
        id: ChannelId,
        subtopic: &str,
        r: Request,
    ) -> Response {
        match r.observe {
            Some(0) => {}
            Some(1) => {
                self.observations.remove(&r.token);
                return Response::new(ResponseType::Content);
            }
            Some(_) => return Response::error(ResponseType::BadOption, "Observe is 0 or 1"),
            None => return self.block2(&r),
        }
        let filter = Filter {
            channel: id,
            subtopic: (!subtopic.is_empty()).then(|| subtopic.to_owned()),
        };
        if let Some(s) = &filter.subtopic {
            if let Err(why) = check_filter(s) {
                return Response::error(ResponseType::BadRequest, why);
            }
        }
        if let Err(response) = self.channel(principal, id, MessageAccess::Subscribe).await {
            return response;
        }
        if !self.observations.contains_key(&r.token)
            && self.observations.len() >= self.coap.config.max_observations
        {
            // RFC 7641 §4.1: a server that cannot add an observer answers
            // without the Observe option.
            metrics::counter!("moat_coap_dropped_total", "reason" => "too_many_observations")
                .increment(1);
            return Response::new(ResponseType::Content);
        }
        let mut sub = self.coap.bus.subscribe(filter, OBSERVE_QUEUE);
        let tx = self.notes_tx.clone();
        let token = r.token.clone();
        let forward = tokio::spawn(async move {
            while let Some(m) = sub.recv().await {
                if tx.send(Note::Message(token.clone(), m)).await.is_err() {
                    return;
                }
            }
            let _ = tx.send(Note::Ended(token)).await;
        });
        self.observations.insert(
            r.token.clone(),
            Observation {
                channel: id,
                path: r.path.clone(),
                forward,
            },
        );
        metrics::counter!("moat_coap_observations_total").increment(1);
        Response::new(ResponseType::Content).option_uint(CoapOption::Observe, self.next_seq())
    }

    /// The channel if `principal` may use it for `access`: decided by the
    /// platform, reused for [`DECISION_TTL`] on an authenticated session
    /// (plain CoAP's principal changes with each request's key).
    async fn channel(
        &mut self,
        principal: &Principal,
        id: ChannelId,
        access: MessageAccess,
    ) -> Result<Channel, Response> {
        let key = (id, access == MessageAccess::Publish);
        let cacheable = self.principal.is_some();
        if let Some((at, c)) = self.decisions.get(&key) {
            if cacheable && at.elapsed() < DECISION_TTL {
                return Ok(c.clone());
            }
        }
        let c = resources::channel(&self.coap, principal, id, access).await?;
        if cacheable {
            if self.decisions.len() >= DECISIONS {
                self.decisions
                    .retain(|_, (at, _)| at.elapsed() < DECISION_TTL);
            }
            if self.decisions.len() < DECISIONS {
                self.decisions.insert(key, (Instant::now(), c.clone()));
            }
        }
        Ok(c)
    }

    fn block2(&self, r: &Request) -> Response {
        let Some(rep) = self.representations.iter().find(|x| x.path == r.path) else {
            return Response::error(
                ResponseType::BadRequest,
                "observe with Observe: 0; stored messages are read over HTTP",
            );
        };
        let size = block::block_size(self.coap.config.block_size, r.block2.as_ref());
        let num = r.block2.as_ref().map_or(0, |b| usize::from(b.num));
        match block::piece(&rep.body, num, size) {
            Some((data, value)) => Response::new(ResponseType::Content)
                .option_uint(CoapOption::ContentFormat, u32::from(rep.content_format))
                .option_block(CoapOption::Block2, value)
                .payload(data.to_vec())
                .with_etag(&rep.etag),
            None => Response::error(ResponseType::BadOption, "no such block"),
        }
    }

    fn next_seq(&mut self) -> u32 {
        self.observe_seq = (self.observe_seq + 1) & OBSERVE_MASK;
        self.observe_seq
    }

    /// The next notification source event; pending forever without
    /// observations.
    pub(crate) async fn next_note(&mut self) -> Note {
        match self.notes_rx.recv().await {
            Some(n) => n,
            // The session holds a sender, so the channel never closes.
            None => std::future::pending().await,
        }
    }

    /// A notification for `note`, if its observation is still on.
    pub(crate) fn on_note(&mut self, note: Note) -> Vec<Vec<u8>> {
        match note {
            Note::Message(token, m) => {
                if !self.observations.contains_key(&token) {
                    return Vec::new();
                }
                let path = self.observations[&token].path.clone();
                let size = block::block_size(self.coap.config.block_size, None);
                let format = m.content_type.coap_format();
                let mut response = Response::new(ResponseType::Content)
                    .option_uint(CoapOption::Observe, self.next_seq())
                    .option_uint(CoapOption::ContentFormat, u32::from(format));
                if m.payload.len() > size {
                    let etag = m.id.0.as_bytes()[8..].to_vec();
                    let (first, value) =
                        block::piece(&m.payload, 0, size).expect("block 0 of a large body");
                    response = response
                        .option_block(CoapOption::Block2, value)
                        .option_uint(
                            CoapOption::Size2,
                            u32::try_from(m.payload.len()).unwrap_or(u32::MAX),
                        )
                        .payload(first.to_vec())
                        .with_etag(&etag);
                    self.keep(Representation {
                        path,
                        etag,
                        content_format: format,
                        body: m.payload.clone(),
                    });
                } else {
                    response = response.payload(m.payload.clone());
                }
                metrics::counter!("moat_coap_notifications_total").increment(1);
                self.send_notification(token, response)
            }
            Note::Ended(token) => {
                if self.observations.remove(&token).is_none() {
                    return Vec::new();
                }
                metrics::counter!("moat_coap_dropped_total", "reason" => "observer_behind")
                    .increment(1);
                // A final notification with an error code ends it (RFC 7641
                // §3.2).
                let response = Response::error(
                    ResponseType::ServiceUnavailable,
                    "fell behind; observe again",
                );
                let mid = self.mid();
                vec![response.message(false, mid, &token)]
            }
        }
    }

    /// Confirmable now and then (one outstanding at a time), otherwise
    /// non-confirmable.
    fn send_notification(&mut self, token: Vec<u8>, response: Response) -> Vec<Vec<u8>> {
        self.since_con += 1;
        let due = self.since_con >= CON_EVERY || self.last_con.elapsed() >= CON_AFTER;
        let mid = self.mid();
        if due && self.pending.is_none() {
            self.since_con = 0;
            self.last_con = Instant::now();
            let bytes = response.message(true, mid, &token);
            let timeout = ACK_TIMEOUT.mul_f64(rand::thread_rng().gen_range(1.0..ACK_RANDOM_FACTOR));
            self.pending = Some(Pending {
                mid,
                token,
                bytes: bytes.clone(),
                attempts: 0,
                timeout,
                at: Instant::now() + timeout,
            });
            vec![bytes]
        } else {
            vec![response.message(false, mid, &token)]
        }
    }

    /// When our confirmable message is due again, if one is outstanding.
    pub(crate) fn retransmit_at(&self) -> Option<Instant> {
        self.pending.as_ref().map(|p| p.at)
    }

    /// Sends the outstanding confirmable message again, doubling the
    /// timeout; after MAX_RETRANSMIT the client is taken to be gone and the
    /// observation ends.
    pub(crate) fn on_retransmit(&mut self) -> Vec<Vec<u8>> {
        let Some(p) = self.pending.as_mut() else {
            return Vec::new();
        };
        if p.attempts >= MAX_RETRANSMIT {
            let token = p.token.clone();
            self.pending = None;
            self.observations.remove(&token);
            metrics::counter!("moat_coap_dropped_total", "reason" => "unacknowledged").increment(1);
            return Vec::new();
        }
        p.attempts += 1;
        p.timeout *= 2;
        p.at = Instant::now() + p.timeout;
        metrics::counter!("moat_coap_retransmissions_total").increment(1);
        vec![p.bytes.clone()]
    }

    fn keep(&mut self, r: Representation) {
        self.representations.retain(|x| x.path != r.path);
        if self.representations.len() >= TRANSFERS {
            self.representations.pop_front();
        }
        self.representations.push_back(r);
    }

    /// Ends the observations of channels the device may no longer read
    /// (its rights changed), each with a final 4.03.
    pub(crate) async fn recheck(&mut self) -> Vec<Vec<u8>> {
        self.decisions.clear();
        let Some(principal) = self.principal.clone() else {
            return Vec::new();
        };
        let channels: Vec<(Vec<u8>, ChannelId)> = self
            .observations
            .iter()
            .map(|(t, o)| (t.clone(), o.channel))
            .collect();
        let mut out = Vec::new();
        for (token, channel) in channels {
            let allowed = matches!(
                moat_core::access::channel_access(
                    &*self.coap.store,
                    &principal,
                    channel,
                    MessageAccess::Subscribe
                )
                .await,
                Ok((Some(_), moat_core::authz::Decision::Allow))
            );
            if !allowed {
                self.observations.remove(&token);
                let mid = self.mid();
                out.push(
                    Response::error(ResponseType::Forbidden, "no subscribe connection any more")
                        .message(false, mid, &token),
                );
            }
        }
        out
    }
}

impl Response {
    fn with_etag(mut self, etag: &[u8]) -> Self {
        self.packet.clear_option(CoapOption::ETag);
        self.packet.add_option(CoapOption::ETag, etag.to_vec());
        self
    }
}

fn method_label(m: RequestType) -> &'static str {
    match m {
        RequestType::Get => "GET",
        RequestType::Post => "POST",
        RequestType::Put => "PUT",
        RequestType::Delete => "DELETE",
        RequestType::Fetch => "FETCH",
        RequestType::Patch => "PATCH",
        RequestType::IPatch => "iPATCH",
        RequestType::UnKnown => "other",
    }
}
