//! Retained messages kept across restarts: the store's side of MQTT's
//! retained messages. The broker owns what they mean (topics, properties,
//! expiry) and keeps them in memory; the store keeps a copy, the last one
//! per topic, to load at the next start.

use async_trait::async_trait;

use crate::store::StoreError;

/// A topic's retained message, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetainedMessage {
    pub topic: String,
    pub qos: u8,
    pub payload: Vec<u8>,
    /// The MQTT 5 properties that travel with it, encoded as in a packet
    /// (their length first); opaque to the store.
    pub properties: Vec<u8>,
    /// From its Message Expiry Interval: µs since the Unix epoch.
    pub expires_at: Option<i64>,
}

/// One change to the retained messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RetainedChange {
    /// Keeps the message as its topic's (replacing the one before).
    Keep(RetainedMessage),
    /// Clears a topic.
    Clear(String),
}

#[async_trait]
pub trait RetainedStore: Send + Sync + 'static {
    /// Applies `changes` in their order, in one transaction; returns once
    /// they are durable.
    async fn apply_retained(&self, changes: Vec<RetainedChange>) -> Result<(), StoreError>;
    /// Every message kept and not expired at `now` (µs since the Unix
    /// epoch); the expired ones are deleted.
    async fn load_retained(&self, now: i64) -> Result<Vec<RetainedMessage>, StoreError>;
}
