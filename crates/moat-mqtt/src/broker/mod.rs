//! The broker's shared state: sessions by client id, the subscription trie,
//! retained messages, and the tap on the platform bus through which
//! messages published over HTTP, WebSocket or CoAP reach MQTT subscribers.
//!
//! Each connection task (`crate::connection`) owns its protocol state; what
//! outlives a connection — a persistent session's subscriptions, queue and
//! unacknowledged packets — lives in [`Session`], held here.
//!
//! Routing never waits: each session has a bounded queue, and a message for
//! a full queue is dropped and counted (`moat_mqtt_dropped_total`), so a
//! slow subscriber neither stalls the others nor grows memory.

mod access;
mod behind;
mod persist;
mod publish;
mod retained;
mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use moat_core::message::Message;
use moat_core::message::bus::Bus;
use moat_core::sessions::SessionRegistry;
use moat_core::store::Store;
use moat_core::throttle::{Policy, Throttle};
use mqtt_protocol_core::mqtt::ArcPayload;
use mqtt_protocol_core::mqtt::packet::{
    ContentType, MessageExpiryInterval, PayloadFormat, PayloadFormatIndicator, Property, Qos,
    SubscriptionIdentifier, v5_0,
};
use mqtt_protocol_core::mqtt::result_code::MqttError;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::deliveries::{Deliveries, SubscriptionOptions};
use crate::platform_topics;
use crate::trie::SubscriptionTrie;

pub(crate) use access::{DecisionCache, PublishTarget};
pub(crate) use publish::{
    bad_response_topic, expiry_of, forwarded, rejection_code, routed_topic, session_live,
    to_message,
};
pub(crate) use retained::Retained;
pub(crate) use session::{ClientKey, Session, Will, aged};

/// The broker's limits and switches; the binary fills it from its
/// configuration.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Open MQTT connections, over every listener together.
    pub max_connections: usize,
    /// The largest packet a client may send (fixed header included), and
    /// the Maximum Packet Size the CONNACK announces.
    pub max_packet_size: u32,
    /// Unacknowledged QoS 1 and 2 PUBLISHes a client may have in flight
    /// to the broker (Receive Maximum in the CONNACK; more is DISCONNECT
    /// 0x93).
    pub receive_maximum: u16,
    /// Unacknowledged QoS 1 and 2 PUBLISHes the broker keeps in flight to
    /// a client (the client's own Receive Maximum lowers it).
    pub max_inflight: u16,
    /// Messages queued per session, online or offline; beyond it new
    /// messages for that session are dropped and counted.
    pub max_queued: usize,
    /// The longest Session Expiry Interval granted; MQTT 3.1.1 persistent
    /// sessions (clean session 0) get this.
    pub max_session_expiry: Duration,
    /// The longest keep-alive granted; a client asking more, or none, gets
    /// this as the MQTT 5 Server Keep Alive.
    pub max_keep_alive: u16,
    /// PUBLISHes per second a client may send; beyond it the broker stops
    /// reading from that client until the rate falls (backpressure).
    /// 0 means unlimited.
    pub publish_rate: u32,
    /// Topic aliases a client may set up (Topic Alias Maximum).
    pub topic_alias_maximum: u16,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Development only: anonymous clients, and any topic outside the
    /// platform's (routed between MQTT clients, never stored).
    pub open_topics: bool,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            max_connections: 100_000,
            max_packet_size: (moat_core::message::MAX_PAYLOAD + 64 * 1024) as u32,
            receive_maximum: 100,
            max_inflight: 100,
            max_queued: 1000,
            max_session_expiry: Duration::from_secs(24 * 3600),
            max_keep_alive: 1200,
            publish_rate: 1000,
            topic_alias_maximum: 64,
            connect_timeout: Duration::from_secs(10),
            open_topics: false,
        }
    }
}

/// A message on its way to subscribers: shared by every delivery of it.
#[derive(Debug)]
pub(crate) struct Routed {
    /// The canonical topic name.
    pub topic: Arc<str>,
    pub payload: ArcPayload,
    pub qos: u8,
    pub retain: bool,
    /// MQTT 5 properties that travel with the message: payload format,
    /// content type, response topic, correlation data, user properties.
    pub props: Vec<Property>,
    /// From the Message Expiry Interval: dropped, not sent, once past.
    pub expires_at: Option<Instant>,
    /// The session that published it (for no-local); `None` from other
    /// protocols.
    pub origin: Option<u64>,
}

impl Routed {
    /// A message published over another protocol, as MQTT subscribers
    /// receive it: the channel topic, its payload, and on MQTT 5 its
    /// content type.
    fn from_message(m: &Message) -> Self {
        let payload: Arc<[u8]> = Arc::from(m.payload.as_slice());
        let len = payload.len();
        let mut props = Vec::new();
        if let Ok(ct) = ContentType::new(m.content_type.as_str()) {
            props.push(Property::ContentType(ct));
        }
        if matches!(
            m.content_type,
            moat_core::message::ContentType::Json | moat_core::message::ContentType::SenmlJson
        ) {
            if let Ok(p) = PayloadFormatIndicator::new(PayloadFormat::String) {
                props.push(Property::PayloadFormatIndicator(p));
            }
        }
        Self {
            topic: platform_topics::channel_topic(m.channel_id, &m.subtopic).into(),
            payload: ArcPayload::new(payload, 0, len),
            qos: 1,
            retain: false,
            props,
            expires_at: None,
            origin: None,
        }
    }
}

/// One session's copy of a routed message.
#[derive(Debug, Clone)]
pub(crate) struct Delivery {
    pub msg: Arc<Routed>,
    /// min(message QoS, the best matching subscription's QoS).
    pub qos: u8,
    /// The RETAIN flag to send: set for retained messages sent on
    /// subscribe, and for live ones to a retain-as-published subscription.
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// A QoS level as the engine names it (anything above 2 as 2).
pub(crate) fn qos_of(q: u8) -> Qos {
    match q {
        0 => Qos::AtMostOnce,
        1 => Qos::AtLeastOnce,
        _ => Qos::ExactlyOnce,
    }
}

impl Delivery {
    /// This delivery as an MQTT 5 PUBLISH: its subscription identifiers,
    /// and the expiry interval `remaining` (at least a second) among its
    /// properties.
    pub(crate) fn v5_publish(
        &self,
        packet_id: Option<u16>,
        remaining: Option<Duration>,
    ) -> Result<v5_0::Publish, MqttError> {
        let mut props = self.msg.props.clone();
        for id in &self.subscription_ids {
            if let Ok(s) = SubscriptionIdentifier::new(*id) {
                props.push(Property::SubscriptionIdentifier(s));
            }
        }
        if let Some(r) = remaining {
            let secs = r.as_secs().max(1).min(u64::from(u32::MAX)) as u32;
            if let Ok(e) = MessageExpiryInterval::new(secs) {
                props.push(Property::MessageExpiryInterval(e));
            }
        }
        let mut b = v5_0::Publish::builder()
            .qos(qos_of(self.qos))
            .retain(self.retain)
            .payload(self.msg.payload.clone())
            .props(props);
        if let Some(id) = packet_id {
            b = b.packet_id(id);
        }
        b.topic_name(&*self.msg.topic)?.build()
    }
}

/// A subscription's options as the trie keeps them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOptions {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    /// 0 send retained on subscribe, 1 only on a new subscription, 2 never.
    pub retain_handling: u8,
    pub id: Option<u32>,
}

impl SubscriptionOptions for SubOptions {
    fn qos(&self) -> u8 {
        self.qos
    }
    fn subscription_identifier(&self) -> Option<u32> {
        self.id
    }
    fn retain_as_published(&self) -> bool {
        self.retain_as_published
    }
}

pub struct Broker {
    pub(crate) config: BrokerConfig,
    pub(crate) store: Arc<dyn Store>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) registry: Arc<SessionRegistry>,
    /// Open connections over all listeners.
    pub(crate) connections: Arc<Semaphore>,
    /// Failed logins per source address, as HTTP counts them.
    pub(crate) sources: Throttle,
    next_session: AtomicU64,
    /// Sessions by client key, online or not; ordered, so that a device's
    /// sessions are one range (a rights change or a channel deletion looks
    /// them up for each device it concerns).
    clients: Mutex<BTreeMap<ClientKey, Arc<Session>>>,
    /// Sessions by their numeric id, which the trie stores.
    by_id: RwLock<HashMap<u64, Arc<Session>>>,
    pub(crate) trie: RwLock<SubscriptionTrie<u64, SubOptions>>,
    pub(crate) retained: Retained,
    /// Wills waiting for their delay, by session id.
    delayed_wills: Mutex<HashMap<u64, Will>>,
    /// Changes to persistent sessions, written behind once there is a
    /// store ([`Broker::keep_sessions`]).
    sessions_behind: behind::WriteBehind<moat_core::message::sessions::SessionChange>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The per-subscriber fold of one routing, kept per thread so that
    /// routing a message allocates nothing once warm.
    static DELIVERIES: std::cell::RefCell<Deliveries<u64>> =
        std::cell::RefCell::new(Deliveries::new());
}

/// Messages the bus tap may hold before the broker reads them: the tap only
/// routes (never waits), so it falls this far behind only under a burst.
const TAP_CAPACITY: usize = 65_536;

impl Broker {
    /// A broker on the platform's ports; [`start`](Self::start) it to
    /// receive what other protocols publish.
    pub fn new(
        config: BrokerConfig,
        store: Arc<dyn Store>,
        bus: Arc<dyn Bus>,
        registry: Arc<SessionRegistry>,
    ) -> Arc<Self> {
        Arc::new(Self {
            connections: Arc::new(Semaphore::new(config.max_connections)),
            config,
            store,
            bus,
            registry,
            sources: Throttle::new(Policy::SOURCE, 10_000),
            next_session: AtomicU64::new(1),
            clients: Mutex::default(),
            by_id: RwLock::default(),
            trie: RwLock::new(SubscriptionTrie::new()),
            retained: Retained::default(),
            delayed_wills: Mutex::default(),
            sessions_behind: behind::WriteBehind::default(),
        })
    }

    /// Starts the tap on the bus: every message published over another
    /// protocol is routed to the MQTT subscribers whose filters match; and
    /// listens for devices whose rights change, to refresh their sessions.
    /// Messages MQTT clients publish are routed by the connection that
    /// received them (with their MQTT properties), so the tap skips them.
    pub fn start(self: &Arc<Self>) -> tokio::task::JoinHandle<()> {
        let weak = Arc::downgrade(self);
        self.registry.on_rights_changed(move |device| {
            if let Some(b) = weak.upgrade() {
                b.rights_changed(device);
            }
        });
        let broker = Arc::downgrade(self);
        let bus = Arc::clone(&self.bus);
        tokio::spawn(async move {
            loop {
                let mut tap =
                    bus.subscribe_all(TAP_CAPACITY, Some(moat_core::message::Protocol::Mqtt));
                while let Some(m) = tap.recv().await {
                    let Some(b) = broker.upgrade() else { return };
                    b.route(Arc::new(Routed::from_message(&m)));
                }
                if !tap.cut_off() || broker.strong_count() == 0 {
                    return;
                }
                metrics::counter!("moat_mqtt_bus_tap_gaps_total").increment(1);
                tracing::warn!("the MQTT broker fell behind the bus; messages were missed");
            }
        })
    }

    fn next_session_id(&self) -> u64 {
        self.next_session.fetch_add(1, Ordering::Relaxed)
    }

    pub(crate) fn session(&self, id: u64) -> Option<Arc<Session>> {
        self.by_id
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned()
    }

    /// Every session (online or not) of `device`.
    pub(crate) fn sessions_of(&self, device: moat_core::DeviceId) -> Vec<Arc<Session>> {
        let first = ClientKey {
            owner: Some(device),
            client_id: String::new(),
        };
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .range(first..)
            .take_while(|(k, _)| k.owner == Some(device))
            .map(|(_, s)| Arc::clone(s))
            .collect()
    }

    /// The session of `key`, if any.
    pub(crate) fn find(&self, key: &ClientKey) -> Option<Arc<Session>> {
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// A new, empty session for `key`, registered.
    pub(crate) fn open_session(
        &self,
        key: ClientKey,
        principal: Option<moat_core::authz::Principal>,
        expiry: Duration,
    ) -> Arc<Session> {
        let s = Session::new(
            self.next_session_id(),
            key,
            principal,
            self.config.max_queued,
        );
        s.lock().expiry = expiry;
        self.insert(Arc::clone(&s));
        s
    }

    fn insert(&self, session: Arc<Session>) {
        self.by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id, Arc::clone(&session));
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.key.clone(), session);
        metrics::gauge!("moat_mqtt_sessions").increment(1.0);
    }

    /// Ends a session: its subscriptions go, and so does it, unless a newer
    /// session already took its key.
    pub(crate) fn remove(&self, session: &Session) {
        self.trie
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove_subscriber(session.id);
        let removed = self
            .by_id
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session.id)
            .is_some();
        {
            let mut clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
            if clients
                .get(&session.key)
                .is_some_and(|s| s.id == session.id)
            {
                clients.remove(&session.key);
                // Under the map's lock: a newer session of the same key
                // is written after this.
                self.session_ended(session);
            }
        }
        if removed {
            metrics::gauge!("moat_mqtt_sessions").decrement(1.0);
        }
    }

    /// The connection cap shared by every listener: a listener outside
    /// this crate (MQTT over WebSocket) takes a permit per connection.
    pub fn connection_slots(&self) -> &Arc<Semaphore> {
        &self.connections
    }

    /// Topics holding a retained message.
    pub fn retained_count(&self) -> usize {
        self.retained.len()
    }

    /// Sessions held, online or offline.
    pub fn session_count(&self) -> usize {
        self.by_id.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Offers `msg` to every session with a matching subscription that may
    /// receive it; retained messages are kept (or cleared) first.
    pub(crate) fn route(&self, msg: Arc<Routed>) {
        if msg.retain {
            self.retained.put(&msg);
        }
        let target = platform_topics::topic_target(&msg.topic);
        DELIVERIES.with_borrow_mut(|deliveries| {
            deliveries.clear();
            {
                let trie = self.trie.read().unwrap_or_else(|p| p.into_inner());
                trie.matches(&msg.topic, |s, o| {
                    if !(o.no_local && msg.origin == Some(s)) {
                        deliveries.add(s, o);
                    }
                });
            }
            for d in deliveries.as_slice() {
                let Some(session) = self.session(d.subscriber) else {
                    continue;
                };
                if !session.may_receive(&target, self.config.open_topics) {
                    continue;
                }
                self.offer(
                    &session,
                    Delivery {
                        msg: Arc::clone(&msg),
                        qos: d.qos.min(msg.qos),
                        retain: msg.retain && d.retain_as_published,
                        subscription_ids: d.subscription_identifiers.clone(),
                    },
                );
            }
        });
    }
}
