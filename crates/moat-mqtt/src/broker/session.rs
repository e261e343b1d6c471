//! A session: what the broker keeps of a client between its connections
//! (MQTT 5.0 §4.1) — its subscriptions (in the broker's trie, under the
//! session's id), its queue of messages not yet sent, the QoS 1 and 2
//! packets sent but not acknowledged, and its will while one is pending.
//!
//! Sessions are keyed by the client id *within* the authenticated device
//! ([`ClientKey`]): two devices that both call themselves `sensor` never
//! take over each other's session.

use std::collections::HashSet;

use mqtt_protocol_core::mqtt::common::HashSet as EngineSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use moat_core::authz::Principal;
use moat_core::{ChannelId, DeviceId};
use mqtt_protocol_core::mqtt::ArcPayload;
use mqtt_protocol_core::mqtt::packet::{MessageExpiryInterval, Property, StorePacket, v5_0};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

use super::Delivery;
use crate::platform_topics::TopicTarget;

/// Which session a CONNECT names: its client id, within its device (or
/// among anonymous clients in development mode).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) struct ClientKey {
    pub owner: Option<DeviceId>,
    pub client_id: String,
}

/// A will message (MQTT 5.0 §3.1.2.5), published when the connection ends
/// without a normal DISCONNECT, after its delay.
#[derive(Debug, Clone)]
pub(crate) struct Will {
    pub topic: String,
    pub payload: ArcPayload,
    pub qos: u8,
    pub retain: bool,
    pub props: Vec<Property>,
    pub delay: Duration,
}

/// The live connection of a session, as a newer connection sees it: how to
/// take the session over, and when the old connection has handed it back.
pub(crate) struct Live {
    pub takeover: Arc<Notify>,
    pub done: oneshot::Receiver<()>,
}

/// What a connection takes from its session while it runs, and gives back
/// when it ends.
#[derive(Default)]
pub(crate) struct SessionState {
    /// The session's queue; `None` while a connection holds it.
    pub rx: Option<mpsc::Receiver<Delivery>>,
    /// QoS 1 and 2 packets sent and not yet acknowledged.
    pub stored: Vec<StorePacket>,
    /// QoS 2 packet ids received whose PUBREL has not come yet.
    pub qos2_handled: EngineSet<u16>,
    pub live: Option<Live>,
    pub expiry: Duration,
    /// Bumped at every connection, so that a stale expiry timer knows.
    pub generation: u64,
    /// A will waiting for its delay; resuming the session cancels it.
    pub pending_will: Option<tokio::task::AbortHandle>,
    /// When its last connection ended: how long `stored` has waited.
    pub ended: Option<Instant>,
}

/// The QoS 1 and 2 PUBLISHes of `stored` as they go out again after
/// waiting `waited`: an MQTT 5 one's Message Expiry Interval less the
/// wait (§3.3.2.3.3), and one whose interval ran out meanwhile not sent
/// again. PUBRELs and MQTT 3.1.1 packets as they were.
pub(crate) fn aged(stored: Vec<StorePacket>, waited: Duration) -> Vec<StorePacket> {
    let waited = waited.as_secs();
    if waited == 0 {
        return stored;
    }
    stored
        .into_iter()
        .filter_map(|packet| {
            let StorePacket::V5_0Publish(p) = &packet else {
                return Some(packet);
            };
            let Some(interval) = p.props.iter().find_map(|x| match x {
                Property::MessageExpiryInterval(e) => Some(u64::from(e.val())),
                _ => None,
            }) else {
                return Some(packet);
            };
            if interval <= waited {
                metrics::counter!("moat_mqtt_dropped_total", "reason" => "expired").increment(1);
                return None;
            }
            if p.topic_name().is_empty() {
                // Sent with a topic alias only: left as it was.
                return Some(packet);
            }
            let left = u32::try_from(interval - waited).unwrap_or(u32::MAX);
            let props: Vec<Property> = p
                .props
                .iter()
                .map(|x| match x {
                    Property::MessageExpiryInterval(_) => MessageExpiryInterval::new(left)
                        .map(Property::MessageExpiryInterval)
                        .unwrap_or_else(|_| x.clone()),
                    other => other.clone(),
                })
                .collect();
            let mut b = v5_0::Publish::builder()
                .qos(p.qos())
                .retain(p.retain())
                .dup(p.dup())
                .payload(p.payload().clone())
                .props(props);
            if let Some(id) = p.packet_id() {
                b = b.packet_id(id);
            }
            let rebuilt = b
                .topic_name(p.topic_name())
                .and_then(|b| b.build())
                .ok()
                .and_then(|p| StorePacket::try_from(p).ok());
            Some(rebuilt.unwrap_or(packet))
        })
        .collect()
}

pub(crate) struct Session {
    pub id: u64,
    pub key: ClientKey,
    /// `None`: an anonymous client (development mode only).
    pub principal: Option<Principal>,
    tx: mpsc::Sender<Delivery>,
    online: AtomicBool,
    /// Whether the store keeps it (it outlives its connection, and the
    /// broker keeps sessions in a store).
    pub persisted: AtomicBool,
    pub state: Mutex<SessionState>,
    /// Held by a connection while it claims the session (takeover).
    pub claim: tokio::sync::Mutex<()>,
    /// Channels the device may read, for subscriptions whose wildcard
    /// stands for the channel (`channels/+/messages`, `#`).
    readable: RwLock<HashSet<ChannelId>>,
    /// Changes of the device's rights so far: a refresh of `readable`
    /// applies only if none started after it.
    rights_changes: AtomicU64,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(
        id: u64,
        key: ClientKey,
        principal: Option<Principal>,
        queue: usize,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::channel(queue.max(1));
        Arc::new(Self {
            id,
            key,
            principal,
            tx,
            online: AtomicBool::new(false),
            persisted: AtomicBool::new(false),
            state: Mutex::new(SessionState {
                rx: Some(rx),
                ..SessionState::default()
            }),
            claim: tokio::sync::Mutex::new(()),
            readable: RwLock::default(),
            rights_changes: AtomicU64::new(0),
        })
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, SessionState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn set_online(&self, online: bool) {
        self.online.store(online, Ordering::Release);
    }

    pub(crate) fn is_online(&self) -> bool {
        self.online.load(Ordering::Acquire)
    }

    /// The device this session belongs to.
    pub(crate) fn device(&self) -> Option<DeviceId> {
        self.key.owner
    }

    /// Queues a delivery without waiting; true if it was queued. QoS 0
    /// messages are not kept for an offline session (as Mosquitto does by
    /// default); a full queue drops the message, counted.
    pub(crate) fn offer(&self, d: Delivery) -> bool {
        if d.qos == 0 && !self.is_online() {
            metrics::counter!("moat_mqtt_dropped_total", "reason" => "offline_qos0").increment(1);
            return false;
        }
        self.requeue(d)
    }

    /// Queues a delivery the session already had (from its connection,
    /// or from the store), QoS 0 included; true if it was queued.
    pub(crate) fn requeue(&self, d: Delivery) -> bool {
        match self.tx.try_send(d) {
            Ok(()) => true,
            Err(mpsc::error::TrySendError::Full(_)) => {
                metrics::counter!("moat_mqtt_dropped_total", "reason" => "queue_full").increment(1);
                false
            }
            Err(mpsc::error::TrySendError::Closed(_)) => false,
        }
    }

    /// Whether a message on `target` may reach this session's subscriber:
    /// channel messages only from channels it may read, maintenance topics
    /// only its own device's, other topics only in development mode.
    pub(crate) fn may_receive(&self, target: &TopicTarget<'_>, open_topics: bool) -> bool {
        let Some(device) = self.device() else {
            // Anonymous clients exist only in development mode.
            return true;
        };
        match target {
            TopicTarget::Channel { channel, .. } => self
                .readable
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .contains(channel),
            TopicTarget::Device { device: d, .. } => *d == device,
            TopicTarget::Other => open_topics,
        }
    }

    /// A change of the device's rights begins; returns its number, for
    /// [`Self::set_readable`].
    pub(crate) fn rights_changing(&self) -> u64 {
        self.rights_changes.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// Replaces the channels the session may read with those read for
    /// rights change `change`, unless a later change began meanwhile (its
    /// own answer will come).
    pub(crate) fn set_readable(&self, change: u64, channels: HashSet<ChannelId>) {
        let mut readable = self.readable.write().unwrap_or_else(|p| p.into_inner());
        if self.rights_changes.load(Ordering::Acquire) == change {
            *readable = channels;
        }
    }

    pub(crate) fn add_readable(&self, channels: impl IntoIterator<Item = ChannelId>) {
        self.readable
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .extend(channels);
    }
}

#[cfg(test)]
mod tests {
    use moat_core::authz::Subject;
    use moat_core::{TenantId, TenantPath};

    use super::*;

    fn device_session() -> Arc<Session> {
        let device = DeviceId::new();
        let principal = Principal {
            subject: Subject::Device(device),
            tenant: TenantPath::root(TenantId::new()),
            role: None,
        };
        let key = ClientKey {
            owner: Some(device),
            client_id: "c".into(),
        };
        Session::new(1, key, Some(principal), 4)
    }

    fn reads(s: &Session, channel: ChannelId) -> bool {
        let target = TopicTarget::Channel {
            channel,
            subtopic: "",
        };
        s.may_receive(&target, false)
    }

    /// Two changes of a device's rights in quick succession: the answer to
    /// the first, should it come last, does not undo the second.
    #[test]
    fn a_stale_rights_refresh_does_not_overwrite_a_newer_one() {
        let s = device_session();
        let (old, new) = (ChannelId::new(), ChannelId::new());
        let first = s.rights_changing();
        let second = s.rights_changing();
        s.set_readable(second, HashSet::from([new]));
        s.set_readable(first, HashSet::from([old]));
        assert!(reads(&s, new));
        assert!(!reads(&s, old));
    }
}
