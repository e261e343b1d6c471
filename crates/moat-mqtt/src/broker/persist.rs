//! Persistent sessions across restarts (ADR 007). Sessions live in memory;
//! once the broker is given a [`SessionStore`] ([`Broker::keep_sessions`])
//! every change to a session that outlives its connection (Session Expiry
//! Interval above zero) is written behind, in order: its start, its
//! subscriptions, the end of its connection with what it held then (its
//! queue, the deliveries it had not acknowledged), each delivery queued
//! for it while offline, and its end. A graceful stop saves what each one
//! holds once more ([`Broker::save_sessions`]). At the next start the
//! sessions come back offline, each device checked again (a device revoked
//! meanwhile has no session), each subscription authorized again as at
//! SUBSCRIBE, each expiry counting on from when the connection ended, and
//! each queue as it was. What a session holds stays in the store until a
//! connection takes it.
//!
//! Written behind means a crash loses the last few milliseconds of
//! changes, and what connected sessions had in flight (their clients
//! resend, or read the channel's archive over HTTP).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use moat_core::authn::{self, DeviceAuthError};
use moat_core::message::sessions::{
    SessionChange, SessionKey, SessionStore, StoredSession, StoredSubscription, StoredWill,
};
use moat_core::store::StoreError;
use mqtt_protocol_core::mqtt::common::HashSet as EngineSet;
use mqtt_protocol_core::mqtt::packet::{
    GenericPacket, GenericPacketTrait, Property, StorePacket, v3_1_1, v5_0,
};
use tokio::time::Instant;

use super::{Broker, ClientKey, Delivery, Routed, Session, SubOptions, Will};
use crate::platform_topics;
use crate::protocol::{Frame, frame};

/// What a saved queue holds, entry by entry: a tag, the length (4 bytes,
/// big-endian) and the bytes.
mod tag {
    /// A packet sent and not acknowledged, as the engine keeps it: an
    /// MQTT 3.1.1 PUBLISH or PUBREL on the wire.
    pub(super) const SENT_V3: u8 = 1;
    /// The same, MQTT 5.
    pub(super) const SENT_V5: u8 = 2;
    /// A QoS 2 packet id received whose PUBREL has not come (2 bytes).
    pub(super) const RECEIVED_QOS2: u8 = 3;
    /// A queued delivery, as an MQTT 5 PUBLISH (its Subscription
    /// Identifiers and the Message Expiry Interval left among its
    /// properties).
    pub(super) const QUEUED: u8 = 4;
    /// When the entries after it were written, µs since the Unix epoch (8
    /// bytes, big-endian): what the expiry intervals left count from, so
    /// that the time the server was down counts too.
    pub(super) const WRITTEN_AT: u8 = 5;
}

/// A saved queue's entries at most: a bound on what a corrupt one makes
/// the broker hold.
const MAX_ENTRIES: usize = 1 << 20;

/// What a session holds between connections, in the store's form.
#[derive(Debug, Default)]
pub(crate) struct Held {
    pub stored: Vec<StorePacket>,
    pub qos2: EngineSet<u16>,
    pub queued: Vec<Delivery>,
}

impl Session {
    /// Its key in the store.
    fn store_key(&self) -> SessionKey {
        SessionKey {
            owner: self.key.owner,
            client_id: self.key.client_id.clone(),
        }
    }
}

/// A subscription's options in a byte: QoS (bits 0–1), no local (2),
/// retain as published (3), retain handling (4–5).
pub(crate) fn pack(o: &SubOptions) -> u8 {
    o.qos.min(2)
        | u8::from(o.no_local) << 2
        | u8::from(o.retain_as_published) << 3
        | o.retain_handling.min(2) << 4
}

pub(crate) fn unpack(b: u8, id: Option<u32>) -> Option<SubOptions> {
    let (qos, retain_handling) = (b & 3, (b >> 4) & 3);
    if qos > 2 || retain_handling > 2 || b >> 6 != 0 {
        return None;
    }
    Some(SubOptions {
        qos,
        no_local: b & 4 != 0,
        retain_as_published: b & 8 != 0,
        retain_handling,
        id,
    })
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

fn entry(out: &mut Vec<u8>, tag: u8, bytes: &[u8]) {
    out.push(tag);
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

/// Encodes what a session holds: the packets sent and not acknowledged,
/// the QoS 2 packet ids received, the deliveries queued. Deliveries already
/// expired are left out.
pub(crate) fn encode(
    stored: &[StorePacket],
    qos2: &EngineSet<u16>,
    queued: &[Delivery],
) -> Vec<u8> {
    let mut out = Vec::new();
    for p in stored {
        let tag = match p {
            StorePacket::V3_1_1Publish(_) | StorePacket::V3_1_1Pubrel(_) => tag::SENT_V3,
            StorePacket::V5_0Publish(_) | StorePacket::V5_0Pubrel(_) => tag::SENT_V5,
        };
        let wire = GenericPacket::from(p.clone()).to_continuous_buffer();
        entry(&mut out, tag, &wire);
    }
    for id in qos2 {
        entry(&mut out, tag::RECEIVED_QOS2, &id.to_be_bytes());
    }
    let now = Instant::now();
    let mut dated = false;
    for d in queued {
        let remaining = match d.msg.expires_at {
            Some(at) if at <= now => continue,
            Some(at) => Some(at - now),
            None => None,
        };
        let packet_id = (d.qos > 0).then_some(1);
        if let Ok(p) = d.v5_publish(packet_id, remaining) {
            if !dated {
                entry(&mut out, tag::WRITTEN_AT, &now_micros().to_be_bytes());
                dated = true;
            }
            entry(&mut out, tag::QUEUED, &p.to_continuous_buffer());
        }
    }
    out
}

/// Decodes a saved queue; entries that do not decode are skipped and
/// counted in the second value. Deliveries whose expiry interval ran out
/// since they were written (the server down included) are left out.
pub(crate) fn decode(bytes: &[u8]) -> (Held, usize) {
    decode_at(bytes, now_micros())
}

/// [`decode`] at wall-clock time `now` (µs since the Unix epoch).
fn decode_at(bytes: &[u8], now: i64) -> (Held, usize) {
    let mut held = Held::default();
    // Since the entries that follow were written.
    let mut elapsed = Duration::ZERO;
    let mut skipped = 0;
    let mut rest = bytes;
    let mut entries = 0;
    while !rest.is_empty() && entries < MAX_ENTRIES {
        entries += 1;
        let Some((&tag, after)) = rest.split_first() else {
            break;
        };
        let Some(len) = after
            .get(..4)
            .map(|l| u32::from_be_bytes([l[0], l[1], l[2], l[3]]) as usize)
        else {
            skipped += 1;
            break;
        };
        let Some(body) = after.get(4..4 + len) else {
            skipped += 1;
            break;
        };
        rest = &after[4 + len..];
        let ok = match tag {
            tag::SENT_V3 | tag::SENT_V5 => match sent_packet(tag == tag::SENT_V5, body) {
                Some(p) => {
                    held.stored.push(p);
                    true
                }
                None => false,
            },
            tag::RECEIVED_QOS2 => match body {
                [a, b] => {
                    held.qos2.insert(u16::from_be_bytes([*a, *b]));
                    true
                }
                _ => false,
            },
            tag::QUEUED => match queued(body, elapsed) {
                Some(Some(d)) => {
                    held.queued.push(d);
                    true
                }
                // Expired meanwhile.
                Some(None) => true,
                None => false,
            },
            tag::WRITTEN_AT => match <[u8; 8]>::try_from(body) {
                Ok(b) => {
                    let since = now.saturating_sub(i64::from_be_bytes(b));
                    elapsed = Duration::from_micros(u64::try_from(since).unwrap_or(0));
                    true
                }
                Err(_) => false,
            },
            _ => false,
        };
        if !ok {
            skipped += 1;
        }
    }
    (held, skipped)
}

/// The flags and body of one whole packet on the wire.
fn split_packet(wire: &[u8]) -> Option<(u8, u8, &[u8])> {
    match frame(wire, wire.len().max(2)) {
        Frame::Packet {
            header_len,
            total_len,
        } if total_len == wire.len() => Some((wire[0] >> 4, wire[0] & 0x0f, &wire[header_len..])),
        _ => None,
    }
}

fn sent_packet(v5: bool, wire: &[u8]) -> Option<StorePacket> {
    const PUBLISH: u8 = 3;
    const PUBREL: u8 = 6;
    let (kind, flags, body) = split_packet(wire)?;
    match (kind, v5) {
        (PUBLISH, false) => {
            let (p, _) = v3_1_1::Publish::parse(flags, Arc::from(body)).ok()?;
            StorePacket::try_from(p).ok()
        }
        (PUBLISH, true) => {
            let (p, _) = v5_0::Publish::parse(flags, Arc::from(body)).ok()?;
            StorePacket::try_from(p).ok()
        }
        (PUBREL, false) => {
            let (p, _) = v3_1_1::Pubrel::parse(body).ok()?;
            StorePacket::try_from(p).ok()
        }
        (PUBREL, true) => {
            let (p, _) = v5_0::Pubrel::parse(body).ok()?;
            StorePacket::try_from(p).ok()
        }
        _ => None,
    }
}

/// A queued delivery written `elapsed` ago; `Some(None)` if its expiry
/// interval has run out since, `None` if it does not decode.
fn queued(wire: &[u8], elapsed: Duration) -> Option<Option<Delivery>> {
    let (kind, flags, body) = split_packet(wire)?;
    if kind != 3 {
        return None;
    }
    let (p, _) = v5_0::Publish::parse(flags, Arc::from(body)).ok()?;
    let mut subscription_ids = Vec::new();
    let mut expires_at = None;
    let mut props = Vec::new();
    for prop in p.props.iter() {
        match prop {
            Property::SubscriptionIdentifier(s) => subscription_ids.push(s.val()),
            Property::MessageExpiryInterval(e) => {
                let left = Duration::from_secs(u64::from(e.val())).checked_sub(elapsed);
                match left {
                    Some(left) if !left.is_zero() => expires_at = Some(Instant::now() + left),
                    _ => return Some(None),
                }
            }
            other => props.push(other.clone()),
        }
    }
    let qos = p.qos() as u8;
    let retain = p.retain();
    Some(Some(Delivery {
        msg: Arc::new(Routed {
            topic: p.topic_name().into(),
            payload: p.payload().clone(),
            qos,
            retain,
            props,
            expires_at,
            origin: None,
        }),
        qos,
        retain,
        subscription_ids,
    }))
}

/// A will in the store's form: an MQTT 5 PUBLISH with its properties;
/// `None` if it does not make one.
pub(crate) fn encode_will(w: &Will) -> Option<Vec<u8>> {
    let mut b = v5_0::Publish::builder()
        .qos(super::qos_of(w.qos))
        .retain(w.retain)
        .payload(w.payload.clone())
        .props(w.props.clone());
    if w.qos > 0 {
        b = b.packet_id(1);
    }
    let p = b.topic_name(w.topic.as_str()).ok()?.build().ok()?;
    Some(p.to_continuous_buffer())
}

/// A stored will, due after `delay`.
pub(crate) fn decode_will(wire: &[u8], delay: Duration) -> Option<Will> {
    let (kind, flags, body) = split_packet(wire)?;
    if kind != 3 {
        return None;
    }
    let (p, _) = v5_0::Publish::parse(flags, Arc::from(body)).ok()?;
    Some(Will {
        topic: p.topic_name().to_owned(),
        payload: p.payload().clone(),
        qos: p.qos() as u8,
        retain: p.retain(),
        props: p.props.clone(),
        delay,
    })
}

/// The expiry interval as the store keeps it.
fn seconds(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

impl Broker {
    /// Rebuilds the sessions `store` kept, and from now on writes every
    /// change to a persistent session behind into it. Call once, before
    /// the listeners start; returns how many sessions came back.
    pub async fn keep_sessions(
        self: &Arc<Self>,
        store: Arc<dyn SessionStore>,
    ) -> Result<usize, StoreError> {
        let kept = store.load_sessions().await?;
        let started = self.sessions_behind.start(move |changes| {
            let store = Arc::clone(&store);
            async move {
                let n = changes.len() as u64;
                match store.apply_sessions(changes).await {
                    Ok(()) => metrics::counter!("moat_mqtt_session_writes_total").increment(n),
                    Err(e) => {
                        metrics::counter!("moat_mqtt_session_write_failures_total").increment(n);
                        tracing::error!(error = %e, changes = n, "could not store MQTT sessions");
                    }
                }
            }
        });
        if !started {
            return Err(StoreError::Backend(
                "sessions are already kept in a store".into(),
            ));
        }
        let mut restored = 0;
        for s in kept {
            if self.restore(s).await {
                restored += 1;
            }
        }
        Ok(restored)
    }

    /// Brings one kept session back, offline; false if it is over (its
    /// expiry passed, its device is gone or no longer active), in which
    /// case the store forgets it.
    async fn restore(self: &Arc<Self>, s: StoredSession) -> bool {
        let now = now_micros();
        let expiry = Duration::from_secs(u64::from(s.expiry)).min(self.config.max_session_expiry);
        let ended_at = s.ended_at.unwrap_or(now);
        let ends_at =
            ended_at.saturating_add(i64::try_from(expiry.as_micros()).unwrap_or(i64::MAX));
        let key = s.key;
        if expiry.is_zero() || ends_at <= now {
            metrics::counter!("moat_mqtt_sessions_expired_total").increment(1);
            self.sessions_behind.send(SessionChange::Ended(key));
            return false;
        }
        let principal = match key.owner {
            None if self.config.open_topics => None,
            None => {
                self.sessions_behind.send(SessionChange::Ended(key));
                return false;
            }
            Some(device) => {
                match authn::active_device(self.store.as_ref(), device, "session").await {
                    Ok(d) => match self.principal_of(&d).await {
                        Ok(Some(p)) => Some(p),
                        Ok(None) => {
                            self.sessions_behind.send(SessionChange::Ended(key));
                            return false;
                        }
                        Err(e) => {
                            tracing::error!(error = %e, "could not read a tenant; a session stays kept, not restored");
                            return false;
                        }
                    },
                    Err(DeviceAuthError::Refused(_)) => {
                        self.sessions_behind.send(SessionChange::Ended(key));
                        return false;
                    }
                    Err(DeviceAuthError::Store(e)) => {
                        tracing::error!(error = %e, "could not read a device; a session stays kept, not restored");
                        return false;
                    }
                }
            }
        };
        let client_key = ClientKey {
            owner: key.owner,
            client_id: key.client_id.clone(),
        };
        let session = self.open_session(client_key, principal, expiry);
        session.persisted.store(true, Ordering::Relaxed);
        // Its unacknowledged packets have waited since the connection
        // ended, the time the server was down included.
        let waited = Duration::from_micros(u64::try_from(now - ended_at).unwrap_or(0));
        session.lock().ended = Instant::now().checked_sub(waited);
        for sub in s.subscriptions {
            if !self.resubscribe(&session, &sub).await {
                metrics::counter!("moat_mqtt_session_subscriptions_dropped_total").increment(1);
                self.sessions_behind.send(SessionChange::Unsubscribed {
                    key: key.clone(),
                    filter: sub.filter,
                });
            }
        }
        // What it held when its connection ended, then what was queued
        // for it since, in order.
        for bytes in s.queue.iter().chain(&s.queued) {
            let (held, skipped) = decode(bytes);
            if skipped > 0 {
                metrics::counter!("moat_mqtt_session_entries_unreadable_total")
                    .increment(skipped as u64);
            }
            {
                let mut st = session.lock();
                st.stored.extend(held.stored);
                st.qos2_handled.extend(held.qos2);
            }
            for d in held.queued {
                session.requeue(d);
            }
        }
        if s.ended_at.is_none() {
            // Connected when the server stopped without saying so: the
            // session counts from now.
            self.sessions_behind.send(SessionChange::Disconnected {
                key,
                at: now,
                expiry: seconds(expiry),
            });
        }
        if let Some(w) = s.will {
            self.restore_will(&session, w).await;
        }
        let left = u64::try_from(ends_at - now).unwrap_or(0);
        let generation = session.lock().generation;
        self.expire_later(&session, generation, Duration::from_micros(left));
        true
    }

    /// A will that was waiting for its delay: published now if it is due,
    /// else waits for the rest of it.
    async fn restore_will(self: &Arc<Self>, session: &Arc<Session>, w: StoredWill) {
        let left = u64::try_from(w.at.saturating_sub(now_micros())).unwrap_or(0);
        let Some(will) = decode_will(&w.message, Duration::from_micros(left)) else {
            metrics::counter!("moat_mqtt_session_entries_unreadable_total").increment(1);
            self.sessions_behind
                .send(SessionChange::WillGone(session.store_key()));
            return;
        };
        if left == 0 {
            self.publish_will(session.principal.clone(), will).await;
            self.sessions_behind
                .send(SessionChange::WillGone(session.store_key()));
        } else {
            let delay = will.delay;
            let handle = self.delay_will(Arc::clone(session), will, delay);
            session.lock().pending_will = Some(handle);
        }
    }

    /// `session`'s will now waits `delay` to be published.
    pub(crate) fn will_pending(&self, session: &Session, will: &Will, delay: Duration) {
        if !session.persisted.load(Ordering::Relaxed) {
            return;
        }
        let Some(message) = encode_will(will) else {
            return;
        };
        let at = now_micros().saturating_add(i64::try_from(delay.as_micros()).unwrap_or(i64::MAX));
        self.sessions_behind.send(SessionChange::WillPending {
            key: session.store_key(),
            will: StoredWill { message, at },
        });
    }

    /// `session`'s delayed will was published.
    pub(crate) fn will_gone(&self, session: &Session) {
        if session.persisted.load(Ordering::Relaxed) {
            self.sessions_behind
                .send(SessionChange::WillGone(session.store_key()));
        }
    }

    /// Puts a kept subscription back, authorized as at SUBSCRIBE; false if
    /// it no longer is (or no longer parses).
    async fn resubscribe(&self, session: &Session, sub: &StoredSubscription) -> bool {
        let Some(opts) = unpack(sub.options, sub.id) else {
            return false;
        };
        let Ok(parsed) = crate::check_filter(&sub.filter) else {
            return false;
        };
        let scope = platform_topics::filter_scope(parsed.filter);
        if self
            .authorize_subscribe(session, &sub.filter, &scope)
            .await
            .is_err()
        {
            return false;
        }
        self.trie
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .subscribe(session.id, &sub.filter, opts)
            .is_ok()
    }

    /// Queues `d` for `session`. For a persistent session that is offline
    /// the delivery is written behind too, so that a crash keeps it.
    pub(crate) fn offer(&self, session: &Session, d: Delivery) {
        if d.qos == 0 || session.is_online() || !session.persisted.load(Ordering::Relaxed) {
            session.offer(d);
            return;
        }
        // Under the session's lock, which a connection holds while it goes
        // online and writes `Connected` (which drops what was queued in
        // the store): nothing is written for it after that.
        let _st = session.lock();
        if session.is_online() {
            session.offer(d);
            return;
        }
        let delivery = encode(&[], &EngineSet::default(), std::slice::from_ref(&d));
        if session.offer(d) && !delivery.is_empty() {
            self.sessions_behind.send(SessionChange::Queued {
                key: session.store_key(),
                delivery,
            });
        }
    }

    /// A persistent session's connection ended (or the server stops)
    /// holding `stored` (sent, not acknowledged), `qos2` and `queued`:
    /// written behind whole, replacing what was kept of it before. Called
    /// under the session's lock.
    pub(crate) fn session_saved(
        &self,
        session: &Session,
        stored: &[StorePacket],
        qos2: &EngineSet<u16>,
        queued: &[Delivery],
    ) {
        if !session.persisted.load(Ordering::Relaxed)
            || (stored.is_empty() && qos2.is_empty() && queued.is_empty())
        {
            return;
        }
        self.sessions_behind.send(SessionChange::Saved {
            key: session.store_key(),
            queue: encode(stored, qos2, queued),
        });
    }

    /// A connection began (`fresh`) or resumed `session` and took what it
    /// held: kept from now on if it outlives its connection, forgotten if
    /// it no longer does. Called under the session's lock, as it goes
    /// online.
    pub(crate) fn session_connected(&self, session: &Session, expiry: Duration, fresh: bool) {
        if !self.sessions_behind.is_on() {
            return;
        }
        if expiry.is_zero() {
            if session.persisted.swap(false, Ordering::Relaxed) {
                self.sessions_behind
                    .send(SessionChange::Ended(session.store_key()));
            }
            return;
        }
        let first = !session.persisted.swap(true, Ordering::Relaxed);
        self.sessions_behind.send(SessionChange::Connected {
            key: session.store_key(),
            expiry: seconds(expiry),
            fresh: fresh || first,
        });
        if first && !fresh {
            // A session that until now did not outlive its connection,
            // resumed by one that asks it to: what it already has goes
            // into the store too.
            let trie = self.trie.read().unwrap_or_else(|p| p.into_inner());
            for (filter, opts) in trie.subscriptions_of(session.id) {
                self.session_subscribed(session, filter, opts);
            }
        }
    }

    pub(crate) fn session_subscribed(&self, session: &Session, filter: &str, opts: &SubOptions) {
        if session.persisted.load(Ordering::Relaxed) {
            self.sessions_behind.send(SessionChange::Subscribed {
                key: session.store_key(),
                subscription: StoredSubscription {
                    filter: filter.to_owned(),
                    options: pack(opts),
                    id: opts.id,
                },
            });
        }
    }

    pub(crate) fn session_unsubscribed(&self, session: &Session, filter: &str) {
        if session.persisted.load(Ordering::Relaxed) {
            self.sessions_behind.send(SessionChange::Unsubscribed {
                key: session.store_key(),
                filter: filter.to_owned(),
            });
        }
    }

    /// The connection of a session that outlives it ended now.
    pub(crate) fn session_disconnected(&self, session: &Session, expiry: Duration) {
        if session.persisted.load(Ordering::Relaxed) {
            self.sessions_behind.send(SessionChange::Disconnected {
                key: session.store_key(),
                at: now_micros(),
                expiry: seconds(expiry),
            });
        }
    }

    /// The session ended (called while the broker still maps its key to it).
    pub(crate) fn session_ended(&self, session: &Session) {
        if session.persisted.swap(false, Ordering::Relaxed) {
            self.sessions_behind
                .send(SessionChange::Ended(session.store_key()));
        }
    }

    /// At a graceful stop, once the connections are closed: saves what
    /// each persistent session holds — its queue, its unacknowledged
    /// packets — and waits until every change to the sessions is written.
    pub async fn save_sessions(&self) {
        if !self.sessions_behind.is_on() {
            return;
        }
        let sessions: Vec<Arc<Session>> = self
            .by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .filter(|s| s.persisted.load(Ordering::Relaxed))
            .cloned()
            .collect();
        for s in sessions {
            let mut st = s.lock();
            // A connection still open holds its own state.
            let Some(rx) = st.rx.as_mut() else { continue };
            let mut queued = Vec::new();
            while let Ok(d) = rx.try_recv() {
                queued.push(d);
            }
            self.session_saved(&s, &st.stored, &st.qos2_handled, &queued);
            // Back where they were, should the server go on.
            for d in queued {
                s.requeue(d);
            }
        }
        self.sessions_behind.flush().await;
    }
}

#[cfg(test)]
mod tests;
