//! CONNECT: authentication, the session (new, resumed or taken over), the
//! CONNACK; and at the end of a connection, handing the session back, its
//! expiry and the will.
//!
//! A device authenticates with its client certificate (the TLS listener
//! verified it and named the device), or with its id as the user name and
//! a device key as the password. Anonymous clients are let in only in
//! development mode (`open_topics`).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::authn::{self, DeviceAuthError};
use moat_core::authz::{Principal, Subject};
use moat_core::{Device, DeviceId};
use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::ArcPayload;
use mqtt_protocol_core::mqtt::packet::{
    AssignedClientIdentifier, MaximumPacketSize, Property, ReceiveMaximum, ServerKeepAlive,
    SessionExpiryInterval, TopicAliasMaximum, v3_1_1, v5_0,
};
use mqtt_protocol_core::mqtt::result_code::{ConnectReasonCode, ConnectReturnCode};
use tokio::io::AsyncWrite;
use tokio::sync::{Notify, oneshot};

use super::{Conn, Ending, Open};
use crate::broker::{ClientKey, Delivery, Session, Will};

/// The longest client id accepted, in bytes (MQTT 5.0 §3.1.3.1 lets the
/// server choose; Mosquitto's default is 65,535, we keep ids log-sized).
const MAX_CLIENT_ID: usize = 256;

/// A CONNECT of either version, as the broker reads it.
pub(super) struct Connect {
    version: mqtt::Version,
    client_id: String,
    clean_start: bool,
    keep_alive: u16,
    user_name: Option<String>,
    password: Option<Vec<u8>>,
    will: Option<Will>,
    /// v5 Session Expiry Interval, seconds; v3.1.1: 0 with clean session,
    /// "forever" without.
    session_expiry: u32,
    receive_maximum: Option<u16>,
    problem_info: bool,
    /// An MQTT 5 Authentication Method (enhanced authentication), which
    /// the broker does not offer.
    auth_method: bool,
}

impl Connect {
    pub(super) fn v3(c: &v3_1_1::Connect) -> Self {
        Self {
            version: mqtt::Version::V3_1_1,
            client_id: c.client_id().to_owned(),
            clean_start: c.clean_session(),
            keep_alive: c.keep_alive(),
            user_name: c.user_name().map(str::to_owned),
            password: c.password().map(<[u8]>::to_vec),
            will: c.will_topic().map(|topic| Will {
                topic: topic.to_owned(),
                payload: payload_of(c.will_payload().unwrap_or_default()),
                qos: c.will_qos() as u8,
                retain: c.will_retain(),
                props: Vec::new(),
                delay: Duration::ZERO,
            }),
            session_expiry: if c.clean_session() { 0 } else { u32::MAX },
            receive_maximum: None,
            problem_info: false,
            auth_method: false,
        }
    }

    pub(super) fn v5(c: &v5_0::Connect) -> Self {
        let mut session_expiry = 0;
        let mut receive_maximum = None;
        let mut problem_info = true;
        let mut auth_method = false;
        for p in &c.props {
            match p {
                Property::AuthenticationMethod(_) => auth_method = true,
                Property::SessionExpiryInterval(v) => session_expiry = v.val(),
                Property::ReceiveMaximum(v) => receive_maximum = Some(v.val()),
                Property::RequestProblemInformation(v) => problem_info = v.val() != 0,
                _ => {}
            }
        }
        let will = c.will_topic().map(|topic| {
            let mut delay = Duration::ZERO;
            let mut props = Vec::new();
            for p in &c.will_props {
                match p {
                    Property::WillDelayInterval(v) => {
                        delay = Duration::from_secs(u64::from(v.val()))
                    }
                    other => props.push(other.clone()),
                }
            }
            Will {
                topic: topic.to_owned(),
                payload: payload_of(c.will_payload().unwrap_or_default()),
                qos: c.will_qos() as u8,
                retain: c.will_retain(),
                props,
                delay,
            }
        });
        Self {
            version: mqtt::Version::V5_0,
            client_id: c.client_id().to_owned(),
            clean_start: c.clean_start(),
            keep_alive: c.keep_alive(),
            user_name: c.user_name().map(str::to_owned),
            password: c.password().map(<[u8]>::to_vec),
            will,
            session_expiry,
            receive_maximum,
            problem_info,
            auth_method,
        }
    }
}

fn payload_of(bytes: &[u8]) -> ArcPayload {
    let data: Arc<[u8]> = Arc::from(bytes);
    ArcPayload::new(data, 0, bytes.len())
}

/// A refused CONNECT: the v5 reason code and the v3.1.1 return code.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    v5: ConnectReasonCode,
    v3: ConnectReturnCode,
    reason: &'static str,
}

const BAD_CREDENTIALS: (ConnectReasonCode, ConnectReturnCode) = (
    ConnectReasonCode::BadUserNameOrPassword,
    ConnectReturnCode::BadUserNameOrPassword,
);
const NOT_AUTHORIZED: (ConnectReasonCode, ConnectReturnCode) = (
    ConnectReasonCode::NotAuthorized,
    ConnectReturnCode::NotAuthorized,
);
const UNAVAILABLE: (ConnectReasonCode, ConnectReturnCode) = (
    ConnectReasonCode::ServerUnavailable,
    ConnectReturnCode::ServerUnavailable,
);

fn refusal(codes: (ConnectReasonCode, ConnectReturnCode), reason: &'static str) -> Refusal {
    Refusal {
        v5: codes.0,
        v3: codes.1,
        reason,
    }
}

impl<W: AsyncWrite + Unpin + Send> Conn<W> {
    pub(super) async fn on_connect(&mut self, c: Connect) {
        if c.auth_method {
            // MQTT-4.12.0-1: an authentication method the server does not
            // support is refused and the connection closed.
            return self.refuse_connect(
                &c,
                Refusal {
                    v5: ConnectReasonCode::BadAuthenticationMethod,
                    v3: ConnectReturnCode::NotAuthorized,
                    reason: "enhanced authentication is not offered; use a client certificate or a device key",
                },
            );
        }
        let principal = match self.authenticate(&c).await {
            Ok(p) => p,
            Err(r) => return self.refuse_connect(&c, r),
        };
        let (client_id, assigned) = match (c.client_id.is_empty(), c.version) {
            (false, _) if c.client_id.len() > MAX_CLIENT_ID => {
                return self.refuse_connect(
                    &c,
                    Refusal {
                        v5: ConnectReasonCode::ClientIdentifierNotValid,
                        v3: ConnectReturnCode::IdentifierRejected,
                        reason: "client id longer than 256 bytes",
                    },
                );
            }
            (false, _) => (c.client_id.clone(), false),
            // MQTT-3.1.3-8: an empty id with a persistent session is refused
            // on 3.1.1; v5 assigns one either way.
            (true, mqtt::Version::V3_1_1) if !c.clean_start => {
                return self.refuse_connect(
                    &c,
                    Refusal {
                        v5: ConnectReasonCode::ClientIdentifierNotValid,
                        v3: ConnectReturnCode::IdentifierRejected,
                        reason: "an empty client id needs a clean session",
                    },
                );
            }
            (true, _) => (format!("moat-{}", uuid::Uuid::now_v7().simple()), true),
        };
        if let Some(w) = &c.will {
            if let Err(r) = self.authorize_will(principal.as_ref(), w).await {
                return self.refuse_connect(&c, r);
            }
        }
        let span = tracing::Span::current();
        span.record("client_id", client_id.as_str());
        let owner = match principal.as_ref().map(|p| p.subject) {
            Some(Subject::Device(d)) => {
                span.record("device", tracing::field::display(d));
                Some(d)
            }
            _ => None,
        };
        let key = ClientKey {
            owner,
            client_id: client_id.clone(),
        };
        let max_expiry = self.broker.config.max_session_expiry;
        let expiry = Duration::from_secs(u64::from(c.session_expiry)).min(max_expiry);
        let (session, session_present) = self
            .claim(key, principal.clone(), c.clean_start, expiry)
            .await;

        // The session's unacknowledged packets go back into the engine,
        // which resends them once the CONNACK is out.
        let (rx, stored, qos2, ended) = {
            let mut st = session.lock();
            (
                st.rx.take(),
                std::mem::take(&mut st.stored),
                std::mem::take(&mut st.qos2_handled),
                st.ended.take(),
            )
        };
        let Some(rx) = rx else {
            // Another connection holds the queue: a takeover that did not
            // finish in time.
            return self.refuse_connect(&c, refusal(UNAVAILABLE, "the session is busy"));
        };
        if session_present {
            let waited = ended.map_or(Duration::ZERO, |e| e.elapsed());
            self.mqtt
                .restore_packets(crate::broker::aged(stored, waited));
            self.mqtt.restore_qos2_publish_handled(qos2);
        }
        let cfg = &self.broker.config;
        let max_keep_alive = cfg.max_keep_alive;
        let server_keep_alive =
            (c.keep_alive == 0 || c.keep_alive > max_keep_alive).then_some(max_keep_alive);
        let events = match c.version {
            mqtt::Version::V5_0 => {
                let mut props = vec![
                    Property::ReceiveMaximum(
                        ReceiveMaximum::new(cfg.receive_maximum.max(1)).expect("non-zero"),
                    ),
                    Property::MaximumPacketSize(
                        MaximumPacketSize::new(cfg.max_packet_size.max(1)).expect("non-zero"),
                    ),
                ];
                if cfg.topic_alias_maximum > 0 {
                    props.push(Property::TopicAliasMaximum(
                        TopicAliasMaximum::new(cfg.topic_alias_maximum).expect("valid"),
                    ));
                }
                if assigned {
                    if let Ok(a) = AssignedClientIdentifier::new(client_id.as_str()) {
                        props.push(Property::AssignedClientIdentifier(a));
                    }
                }
                if let Some(k) = server_keep_alive {
                    if let Ok(k) = ServerKeepAlive::new(k) {
                        props.push(Property::ServerKeepAlive(k));
                    }
                }
                if u64::from(c.session_expiry) > expiry.as_secs() {
                    if let Ok(e) = SessionExpiryInterval::new(expiry.as_secs() as u32) {
                        props.push(Property::SessionExpiryInterval(e));
                    }
                }
                let connack = v5_0::Connack::builder()
                    .session_present(session_present)
                    .reason_code(ConnectReasonCode::Success)
                    .props(props)
                    .build();
                match connack {
                    Ok(p) => self.mqtt.checked_send(p),
                    Err(_) => Vec::new(),
                }
            }
            _ => {
                let connack = v3_1_1::Connack::builder()
                    .session_present(session_present)
                    .return_code(ConnectReturnCode::Accepted)
                    .build();
                match connack {
                    Ok(p) => self.mqtt.checked_send(p),
                    Err(_) => Vec::new(),
                }
            }
        };
        if c.version == mqtt::Version::V5_0 {
            self.mqtt.set_auto_map_topic_alias_send(true);
        }
        let takeover = Arc::new(Notify::new());
        let (done_tx, done_rx) = oneshot::channel();
        {
            let mut st = session.lock();
            st.live = Some(crate::broker::session_live(Arc::clone(&takeover), done_rx));
            // Under the lock, so that nothing is queued in the store for
            // the session after the store hears it was taken.
            session.set_online(true);
            self.broker
                .session_connected(&session, expiry, !session_present);
        }
        let cut = Arc::new(Notify::new());
        let cut_reason = Arc::new(Mutex::new(None));
        let registered = owner.map(|d| {
            let cut = Arc::clone(&cut);
            let reason = Arc::clone(&cut_reason);
            self.broker.registry.join(d, move |r| {
                *reason.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
                cut.notify_one();
            })
        });
        let max_inflight = c
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(self.broker.config.max_inflight)
            .max(1);
        self.open = Some(Open {
            version: c.version,
            session,
            rx,
            principal,
            will: c.will,
            problem_info: c.problem_info,
            max_inflight,
            takeover,
            done: Some(done_tx),
            cut,
            cut_reason,
            _registered: registered,
            discard_will: false,
        });
        metrics::counter!("moat_mqtt_connects_total", "outcome" => "accepted").increment(1);
        tracing::debug!(session_present, "connected");
        // Handles the CONNACK's events: the packet, keep-alive timer, and
        // the resent packets of a resumed session.
        Box::pin(self.handle(events)).await;
    }

    /// Who the client is: the certificate's device, or the device whose
    /// id and key are the user name and password, or (development only)
    /// nobody.
    async fn authenticate(&mut self, c: &Connect) -> Result<Option<Principal>, Refusal> {
        let source = self.peer.addr.ip().to_string();
        if self
            .broker
            .sources
            .check(&source, std::time::Instant::now())
            .is_err()
        {
            return Err(refusal(
                UNAVAILABLE,
                "too many failed attempts from this address",
            ));
        }
        let store = self.broker.store.as_ref();
        let result: Result<Option<Device>, DeviceAuthError> = match (
            &self.peer.certificate_device,
            &c.password,
        ) {
            (Some(device), _) => authn::active_device(store, *device, "client_certificate")
                .await
                .map(Some),
            (None, Some(password)) => {
                let device = c
                    .user_name
                    .as_deref()
                    .and_then(|u| uuid::Uuid::try_parse(u).ok())
                    .map(DeviceId);
                match (device, std::str::from_utf8(password)) {
                    (Some(d), Ok(token)) => authn::device_key(store, token, Some(d), Utc::now())
                        .await
                        .map(|(device, _)| Some(device)),
                    _ => Err(DeviceAuthError::Refused(authn::Refusal {
                        kind: "device_key",
                        reason: "the user name must be the device id and the password its device key",
                    })),
                }
            }
            (None, None) if self.broker.config.open_topics => Ok(None),
            (None, None) => {
                self.audit_refusal(c, "credentials", "no client certificate and no device key")
                    .await;
                return Err(refusal(
                    NOT_AUTHORIZED,
                    "authenticate with a client certificate, or the device id and a device key",
                ));
            }
        };
        match result {
            Ok(None) => Ok(None),
            Ok(Some(device)) => {
                let principal = match self.broker.principal_of(&device).await {
                    Ok(Some(p)) => p,
                    Ok(None) => return Err(refusal(NOT_AUTHORIZED, "the device's tenant is gone")),
                    Err(e) => {
                        tracing::error!(error = %e, "could not read a tenant");
                        return Err(refusal(UNAVAILABLE, "the store is unavailable"));
                    }
                };
                self.broker.sources.success(&source);
                Ok(Some(principal))
            }
            Err(DeviceAuthError::Refused(r)) => {
                self.broker
                    .sources
                    .failure(&source, std::time::Instant::now());
                self.audit_refusal(c, r.kind, r.reason).await;
                Err(refusal(
                    if r.kind == "client_certificate" {
                        NOT_AUTHORIZED
                    } else {
                        BAD_CREDENTIALS
                    },
                    r.reason,
                ))
            }
            Err(DeviceAuthError::Store(e)) => {
                tracing::error!(error = %e, "could not authenticate");
                Err(refusal(UNAVAILABLE, "the store is unavailable"))
            }
        }
    }

    async fn audit_refusal(&self, c: &Connect, kind: &'static str, reason: &'static str) {
        metrics::counter!("moat_auth_failures_total", "kind" => kind).increment(1);
        tracing::info!(kind, reason, "mqtt authentication refused");
        let record = AuditRecord::new(
            "anonymous",
            format!("auth.mqtt.{kind}"),
            "-",
            Outcome::Failure,
        )
        .source(Some(self.peer.addr.ip().to_string()))
        .detail(serde_json::json!({
            "reason": reason,
            "user_name": c.user_name.as_deref().map(|u| u.chars().take(64).collect::<String>()),
        }));
        if let Err(e) = self.broker.store.append_audit(record).await {
            tracing::error!(error = %e, "could not audit an authentication failure");
        }
    }

    async fn authorize_will(
        &mut self,
        principal: Option<&Principal>,
        w: &Will,
    ) -> Result<(), Refusal> {
        if crate::check_topic_name(&w.topic).is_err() {
            return Err(Refusal {
                v5: ConnectReasonCode::TopicNameInvalid,
                v3: ConnectReturnCode::NotAuthorized,
                reason: "invalid will topic",
            });
        }
        if crate::broker::bad_response_topic(&w.props) {
            // MQTT-3.3.2-14, for the will's properties too.
            return Err(Refusal {
                v5: ConnectReasonCode::ProtocolError,
                v3: ConnectReturnCode::NotAuthorized,
                reason: "a Response Topic may not contain wildcards",
            });
        }
        match self
            .broker
            .authorize_publish(principal, &w.topic, &mut self.decisions)
            .await
        {
            Ok(_) => Ok(()),
            Err(r) => Err(refusal(NOT_AUTHORIZED, r.reason)),
        }
    }

    /// Answers a refused CONNECT and ends the connection.
    fn refuse_connect(&mut self, c: &Connect, r: Refusal) {
        metrics::counter!("moat_mqtt_connects_total", "outcome" => "refused").increment(1);
        tracing::debug!(reason = r.reason, "connect refused");
        let events = match c.version {
            mqtt::Version::V5_0 => {
                let mut b = v5_0::Connack::builder()
                    .session_present(false)
                    .reason_code(r.v5);
                if c.problem_info {
                    if let Ok(s) = mqtt::packet::ReasonString::new(r.reason) {
                        b = b.props(vec![Property::ReasonString(s)]);
                    }
                }
                b.build()
                    .map(|p| self.mqtt.checked_send(p))
                    .unwrap_or_default()
            }
            _ => v3_1_1::Connack::builder()
                .session_present(false)
                .return_code(r.v3)
                .build()
                .map(|p| self.mqtt.checked_send(p))
                .unwrap_or_default(),
        };
        for e in events {
            if let mqtt::connection::Event::RequestSendPacket { packet, .. } = e {
                self.write_packet(&packet);
            }
        }
        self.ending.get_or_insert(Ending::Closed);
    }

    /// The session for `key`: a live connection holding it is taken over
    /// (DISCONNECT 0x8E) and waited for; with clean start the old session
    /// ends (its will, if pending, goes now) and a new one begins.
    async fn claim(
        &mut self,
        key: ClientKey,
        principal: Option<Principal>,
        clean_start: bool,
        expiry: Duration,
    ) -> (Arc<Session>, bool) {
        loop {
            let existing = self.broker.find(&key);
            let Some(old) = existing else {
                return (
                    self.broker
                        .open_session(key.clone(), principal.clone(), expiry),
                    false,
                );
            };
            let claim = old.claim.lock().await;
            let live = old.lock().live.take();
            if let Some(live) = live {
                live.takeover.notify_one();
                metrics::counter!("moat_mqtt_takeovers_total").increment(1);
                let _ = tokio::time::timeout(Duration::from_secs(5), live.done).await;
            }
            if self.broker.session(old.id).is_none() {
                // It ended while we waited (expiry); look again.
                drop(claim);
                continue;
            }
            let pending_will = {
                let mut st = old.lock();
                st.generation += 1;
                st.expiry = expiry;
                st.pending_will.take()
            };
            if clean_start || old.principal != principal {
                if let Some(w) = pending_will {
                    // The session ends now: a delayed will is due (§3.1.3.2.2).
                    w.abort();
                    if let Some(will) = self.broker.take_delayed_will(old.id) {
                        self.broker.publish_will(old.principal.clone(), will).await;
                    }
                }
                self.broker.remove(&old);
                drop(claim);
                return (
                    self.broker
                        .open_session(key.clone(), principal.clone(), expiry),
                    false,
                );
            }
            if let Some(w) = pending_will {
                // Resumed before the delay ran out: no will (§3.1.2.5).
                w.abort();
                self.broker.take_delayed_will(old.id);
            }
            drop(claim);
            return (old, true);
        }
    }

    /// Hands the session back (or ends it), and publishes the will when
    /// the connection ended without a normal DISCONNECT.
    pub(super) async fn release(&mut self, ending: Ending) {
        let Some(Open {
            session,
            rx,
            will,
            principal,
            done,
            discard_will,
            ..
        }) = self.open.take()
        else {
            return;
        };
        let persists = session.lock().expiry > Duration::ZERO;
        let generation = {
            let mut st = session.lock();
            session.set_online(false);
            st.ended = Some(tokio::time::Instant::now());
            if persists {
                st.stored = self.mqtt.get_stored_packets();
                st.qos2_handled = self.mqtt.get_qos2_publish_handled();
            }
            // What the connection had not sent goes back to the session:
            // first the delivery the window could not take, then the rest
            // of the queue, in order.
            let mut rx = rx;
            let mut queued: Vec<Delivery> = self.held.take().into_iter().collect();
            while let Ok(d) = rx.try_recv() {
                queued.push(d);
            }
            if persists && ending != Ending::TakenOver {
                self.broker
                    .session_saved(&session, &st.stored, &st.qos2_handled, &queued);
            }
            for d in queued {
                session.requeue(d);
            }
            st.rx = Some(rx);
            st.generation
        };
        // A cut device's will is not published: revocation is not a
        // network failure the fleet should hear about.
        let will = match ending {
            Ending::Cut => None,
            _ if discard_will => None,
            _ => will,
        };
        let expiry = session.lock().expiry;
        if let Some(will) = will {
            let delay = will.delay.min(expiry);
            if delay.is_zero() {
                self.broker.publish_will(principal, will).await;
            } else {
                let handle = self.broker.delay_will(Arc::clone(&session), will, delay);
                session.lock().pending_will = Some(handle);
            }
        }
        if let Some(done) = done {
            let _ = done.send(());
        }
        if ending == Ending::TakenOver {
            // The new connection continues or ends the session.
            return;
        }
        if !persists {
            self.broker.remove(&session);
        } else {
            self.broker.session_disconnected(&session, expiry);
            self.broker.expire_later(&session, generation, expiry);
        }
    }
}
