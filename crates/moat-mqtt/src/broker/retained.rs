//! Retained messages: the last retained PUBLISH of each topic, sent to new
//! subscriptions whose filter matches (MQTT 5.0 §3.3.1.3). A retained
//! message with an empty payload clears its topic.
//!
//! Held in memory, where subscriptions read them. Once the broker is given
//! a [`RetainedStore`] ([`Broker::keep_retained`]) every change is also
//! written behind, in order, by one task, and the store's copy is loaded
//! at the next start: they survive a restart. Written behind means a
//! retained message is durable a few milliseconds after it was routed,
//! not before its PUBACK (the message itself, on a channel, is durable
//! before it, like every message). The store is bounded; once full,
//! retained messages for new topics are not kept (counted), while existing
//! topics still update.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use moat_core::ChannelId;
use moat_core::message::retained::{RetainedChange, RetainedMessage, RetainedStore};
use moat_core::store::StoreError;
use mqtt_protocol_core::mqtt::ArcPayload;
use mqtt_protocol_core::mqtt::packet::{
    Properties, PropertiesParse, Property, VariableByteInteger,
};
use tokio::time::Instant;

use super::behind::WriteBehind;
use super::{Broker, Routed};
use crate::platform_topics::{TopicTarget, topic_target};
use crate::topic::filter_matches;

/// Topics with a retained message, at most.
pub(crate) const MAX_RETAINED: usize = 100_000;
#[derive(Debug, Default)]
pub(crate) struct Retained {
    by_topic: RwLock<HashMap<Arc<str>, Arc<Routed>>>,
    /// Where changes go to be written behind, once there is a store.
    persist: WriteBehind<Behind>,
}

/// A change, as the write-behind task takes it.
#[derive(Debug)]
enum Behind {
    /// Converted for the store by the task, not on the publisher's path.
    Keep(Arc<Routed>),
    Clear(Arc<str>),
}

impl Retained {
    /// Keeps `msg` as its topic's retained message, or clears the topic
    /// when the payload is empty.
    pub(crate) fn put(&self, msg: &Arc<Routed>) {
        let mut map = self.by_topic.write().unwrap_or_else(|p| p.into_inner());
        let change = if msg.payload.is_empty() {
            if map.remove(&msg.topic).is_none() {
                return;
            }
            Behind::Clear(Arc::clone(&msg.topic))
        } else {
            if map.len() >= MAX_RETAINED && !map.contains_key(&msg.topic) {
                metrics::counter!("moat_mqtt_retained_refused_total").increment(1);
                return;
            }
            map.insert(Arc::clone(&msg.topic), Arc::clone(msg));
            Behind::Keep(Arc::clone(msg))
        };
        // Sent under the map's lock, so the store sees the changes in the
        // order the map took them.
        self.persist.send(change);
    }

    /// The retained messages whose topic `filter` matches, unexpired.
    pub(crate) fn matching(&self, filter: &str) -> Vec<Arc<Routed>> {
        let now = Instant::now();
        let map = self.by_topic.read().unwrap_or_else(|p| p.into_inner());
        map.values()
            .filter(|m| m.expires_at.is_none_or(|e| e > now))
            .filter(|m| filter_matches(filter, &m.topic))
            .cloned()
            .collect()
    }

    /// From now on, writes every change behind into `store`, in order,
    /// from one task.
    fn write_behind(&self, store: Arc<dyn RetainedStore>) -> Result<(), StoreError> {
        let started = self.persist.start(move |taken: Vec<Behind>| {
            let store = Arc::clone(&store);
            async move {
                let changes: Vec<RetainedChange> = taken
                    .into_iter()
                    .map(|b| match b {
                        Behind::Keep(m) => RetainedChange::Keep(to_stored(&m)),
                        Behind::Clear(t) => RetainedChange::Clear(t.to_string()),
                    })
                    .collect();
                let n = changes.len() as u64;
                match store.apply_retained(changes).await {
                    Ok(()) => {
                        metrics::counter!("moat_mqtt_retained_writes_total").increment(n);
                    }
                    Err(e) => {
                        metrics::counter!("moat_mqtt_retained_write_failures_total").increment(n);
                        tracing::error!(error = %e, changes = n, "could not store retained messages");
                    }
                }
            }
        });
        if started {
            Ok(())
        } else {
            Err(StoreError::Backend(
                "retained messages are already kept in a store".into(),
            ))
        }
    }

    /// The channels with a retained message on one of their topics.
    fn channels(&self) -> Vec<ChannelId> {
        let map = self.by_topic.read().unwrap_or_else(|p| p.into_inner());
        let mut ids: Vec<ChannelId> = map.keys().filter_map(|t| channel_of(t)).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Drops every retained message on `channel`'s topics, in memory and
    /// (behind) in the store; returns how many went.
    fn forget_channel(&self, channel: ChannelId) -> usize {
        let mut map = self.by_topic.write().unwrap_or_else(|p| p.into_inner());
        let gone: Vec<Arc<str>> = map
            .keys()
            .filter(|t| channel_of(t) == Some(channel))
            .cloned()
            .collect();
        for topic in &gone {
            map.remove(topic);
            self.persist.send(Behind::Clear(Arc::clone(topic)));
        }
        gone.len()
    }

    pub(crate) fn len(&self) -> usize {
        self.by_topic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}

/// The channel whose topic `topic` is, if it is one.
fn channel_of(topic: &str) -> Option<ChannelId> {
    match topic_target(topic) {
        TopicTarget::Channel { channel, .. } => Some(channel),
        _ => None,
    }
}

impl Broker {
    /// The channels with a retained message on one of their topics: where
    /// retention looks for channels deleted since.
    pub fn retained_channels(&self) -> Vec<ChannelId> {
        self.retained.channels()
    }

    /// Forgets the retained messages on a deleted channel's topics (nobody
    /// could subscribe to them any more); returns how many went.
    pub fn forget_channel(&self, channel: ChannelId) -> usize {
        let n = self.retained.forget_channel(channel);
        if n > 0 {
            tracing::info!(%channel, retained = n, "retained messages of a deleted channel forgotten");
        }
        n
    }

    /// Loads the retained messages `store` kept, and from now on writes
    /// every change to them behind into it. Call once, before the
    /// listeners start; returns how many were loaded.
    pub async fn keep_retained(
        self: &Arc<Self>,
        store: Arc<dyn RetainedStore>,
    ) -> Result<usize, StoreError> {
        let kept = store.load_retained(now_micros()).await?;
        let loaded = {
            let mut map = self
                .retained
                .by_topic
                .write()
                .unwrap_or_else(|p| p.into_inner());
            let mut loaded = 0;
            for m in kept {
                match from_stored(m) {
                    Some(r) if map.len() < MAX_RETAINED => {
                        map.insert(Arc::clone(&r.topic), Arc::new(r));
                        loaded += 1;
                    }
                    Some(_) => {}
                    None => {
                        metrics::counter!("moat_mqtt_retained_unreadable_total").increment(1);
                    }
                }
            }
            loaded
        };
        self.retained.write_behind(store)?;
        Ok(loaded)
    }

    /// Waits until every change to the retained messages made so far is in
    /// the store (or its write failed): at shutdown, once the connections
    /// are closed and their wills published.
    pub async fn flush_retained(&self) {
        self.retained.persist.flush().await;
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

/// The store's form of a retained message: its expiry as wall-clock time,
/// its properties encoded as in a packet.
fn to_stored(msg: &Routed) -> RetainedMessage {
    let expires_at = msg.expires_at.map(|e| {
        let left = e.saturating_duration_since(Instant::now());
        now_micros().saturating_add(i64::try_from(left.as_micros()).unwrap_or(i64::MAX))
    });
    RetainedMessage {
        topic: msg.topic.to_string(),
        qos: msg.qos,
        payload: msg.payload.as_slice().to_vec(),
        properties: encode_properties(&msg.props),
        expires_at,
    }
}

/// A stored retained message as the broker routes it; `None` if its
/// properties do not decode.
fn from_stored(m: RetainedMessage) -> Option<Routed> {
    let (props, _) = Properties::parse(&m.properties).ok()?;
    let expires_at = m.expires_at.map(|at| {
        let left = u64::try_from(at.saturating_sub(now_micros())).unwrap_or(0);
        Instant::now() + Duration::from_micros(left)
    });
    let payload: Arc<[u8]> = m.payload.into();
    let len = payload.len();
    Some(Routed {
        topic: m.topic.into(),
        payload: ArcPayload::new(payload, 0, len),
        qos: m.qos.min(2),
        retain: true,
        props,
        expires_at,
        origin: None,
    })
}

fn encode_properties(props: &[Property]) -> Vec<u8> {
    let body: Vec<u8> = props
        .iter()
        .flat_map(Property::to_continuous_buffer)
        .collect();
    let len = u32::try_from(body.len())
        .ok()
        .and_then(VariableByteInteger::from_u32);
    match len {
        Some(len) => {
            let mut out = len.to_continuous_buffer();
            out.extend_from_slice(&body);
            out
        }
        // Longer than any packet may be: not from a valid PUBLISH.
        None => vec![0],
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use mqtt_protocol_core::mqtt::packet::{ContentType, UserProperty};

    use super::*;

    /// A store that takes its time, and remembers what it was given.
    #[derive(Default)]
    struct SlowStore(Mutex<Vec<RetainedChange>>);

    #[async_trait]
    impl RetainedStore for SlowStore {
        async fn apply_retained(&self, changes: Vec<RetainedChange>) -> Result<(), StoreError> {
            tokio::time::sleep(Duration::from_millis(200)).await;
            self.0.lock().unwrap().extend(changes);
            Ok(())
        }

        async fn load_retained(&self, _now: i64) -> Result<Vec<RetainedMessage>, StoreError> {
            Ok(Vec::new())
        }
    }

    fn routed(topic: &str, payload: &'static [u8]) -> Arc<Routed> {
        let payload: Arc<[u8]> = Arc::from(payload);
        let len = payload.len();
        Arc::new(Routed {
            topic: topic.into(),
            payload: ArcPayload::new(payload, 0, len),
            qos: 1,
            retain: true,
            props: Vec::new(),
            expires_at: None,
            origin: None,
        })
    }

    #[tokio::test]
    async fn changes_are_written_behind_in_order_and_a_flush_waits_for_them() {
        let store = Arc::new(SlowStore::default());
        let retained = Retained::default();
        retained.write_behind(Arc::clone(&store) as _).unwrap();
        retained.put(&routed("a", b"1"));
        retained.put(&routed("a", b""));
        // Clearing a topic without a retained message changes nothing.
        retained.put(&routed("b", b""));
        retained.put(&routed("a", b"2"));
        // Served from memory at once; in the store only later.
        assert_eq!(retained.matching("#").len(), 1);
        assert!(store.0.lock().unwrap().is_empty());
        retained.persist.flush().await;
        let written = store.0.lock().unwrap().clone();
        let topics: Vec<_> = written
            .iter()
            .map(|c| match c {
                RetainedChange::Keep(m) => format!("keep {} {:?}", m.topic, m.payload),
                RetainedChange::Clear(t) => format!("clear {t}"),
            })
            .collect();
        assert_eq!(topics, ["keep a [49]", "clear a", "keep a [50]"]);
        // A second store is refused.
        assert!(retained.write_behind(store).is_err());
    }

    #[tokio::test]
    async fn a_deleted_channels_retained_messages_are_forgotten_in_memory_and_in_the_store() {
        let store = Arc::new(SlowStore::default());
        let retained = Retained::default();
        retained.write_behind(Arc::clone(&store) as _).unwrap();
        let (gone, kept) = (ChannelId::new(), ChannelId::new());
        retained.put(&routed(&format!("channels/{gone}/messages"), b"1"));
        retained.put(&routed(&format!("channels/{gone}/messages/a/b"), b"2"));
        retained.put(&routed(&format!("channels/{kept}/messages/a"), b"3"));
        retained.put(&routed("open/topic", b"4"));
        let mut both = vec![gone, kept];
        both.sort();
        assert_eq!(retained.channels(), both);

        assert_eq!(retained.forget_channel(gone), 2);
        assert_eq!(retained.channels(), [kept]);
        assert_eq!(retained.len(), 2);
        assert_eq!(retained.forget_channel(gone), 0);
        retained.persist.flush().await;
        let cleared: Vec<String> = store
            .0
            .lock()
            .unwrap()
            .iter()
            .filter_map(|c| match c {
                RetainedChange::Clear(t) => Some(t.clone()),
                RetainedChange::Keep(_) => None,
            })
            .collect();
        assert_eq!(cleared.len(), 2);
        assert!(cleared.iter().all(|t| t.contains(&gone.to_string())));
    }

    #[test]
    fn a_retained_message_round_trips_through_its_stored_form() {
        let payload: Arc<[u8]> = Arc::from(&b"21.5"[..]);
        let msg = Routed {
            topic: "channels/x/messages/t".into(),
            payload: ArcPayload::new(payload, 0, 4),
            qos: 1,
            retain: true,
            props: vec![
                Property::ContentType(ContentType::new("text/plain").unwrap()),
                Property::UserProperty(UserProperty::new("k", "v").unwrap()),
            ],
            expires_at: Some(Instant::now() + Duration::from_secs(60)),
            origin: Some(7),
        };
        let back = from_stored(to_stored(&msg)).unwrap();
        assert_eq!(back.topic, msg.topic);
        assert_eq!(back.payload.as_slice(), b"21.5");
        assert_eq!(back.qos, 1);
        assert!(back.retain);
        assert_eq!(back.props, msg.props);
        assert_eq!(back.origin, None);
        let left = back.expires_at.unwrap() - Instant::now();
        assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
        // No properties, no expiry.
        let bare = Routed {
            props: Vec::new(),
            expires_at: None,
            ..back
        };
        let again = from_stored(to_stored(&bare)).unwrap();
        assert!(again.props.is_empty() && again.expires_at.is_none());
        // Garbage properties are refused, not guessed at.
        let mut bad = to_stored(&bare);
        bad.properties = vec![5, 0xff];
        assert!(from_stored(bad).is_none());
    }
}
