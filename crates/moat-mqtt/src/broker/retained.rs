//! Retained messages: the last retained PUBLISH of each topic, sent to new
//! subscriptions whose filter matches (MQTT 5.0 §3.3.1.3). A retained
//! message with an empty payload clears its topic.
//!
//! Kept in memory, as Mosquitto does by default: they do not survive a
//! restart. The store is bounded; once full, retained messages for new
//! topics are not kept (counted), while existing topics still update.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use tokio::time::Instant;

use super::Routed;
use crate::topic::filter_matches;

/// Topics with a retained message, at most.
pub(crate) const MAX_RETAINED: usize = 100_000;

#[derive(Debug, Default)]
pub(crate) struct Retained {
    by_topic: RwLock<HashMap<Arc<str>, Arc<Routed>>>,
}

impl Retained {
    /// Keeps `msg` as its topic's retained message, or clears the topic
    /// when the payload is empty.
    pub(crate) fn put(&self, msg: &Arc<Routed>) {
        let mut map = self.by_topic.write().unwrap_or_else(|p| p.into_inner());
        if msg.payload.is_empty() {
            map.remove(&msg.topic);
            return;
        }
        if map.len() >= MAX_RETAINED && !map.contains_key(&msg.topic) {
            metrics::counter!("moat_mqtt_retained_refused_total").increment(1);
            return;
        }
        map.insert(Arc::clone(&msg.topic), Arc::clone(msg));
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

    pub(crate) fn len(&self) -> usize {
        self.by_topic
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .len()
    }
}
