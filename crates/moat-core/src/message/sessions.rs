//! MQTT persistent sessions kept across restarts: the store's side. The
//! broker owns what a session means (its subscriptions' options, its queue's
//! packets) and holds sessions in memory; the store keeps a copy of those
//! that outlive their connection, to rebuild them at the next start
//! (ADR 007).

use async_trait::async_trait;

use crate::ids::DeviceId;
use crate::store::StoreError;

/// Which session: a client id within its device (`None`: an anonymous
/// client, development mode only).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct SessionKey {
    pub owner: Option<DeviceId>,
    pub client_id: String,
}

/// One subscription of a session, as the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSubscription {
    pub filter: String,
    /// The subscription's options, packed by the broker; opaque here.
    pub options: u8,
    /// Its MQTT 5 Subscription Identifier.
    pub id: Option<u32>,
}

/// A session as it was kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredSession {
    pub key: SessionKey,
    /// The Session Expiry Interval, in seconds.
    pub expiry: u32,
    /// When its last connection ended, µs since the Unix epoch; `None` if
    /// it was connected when the server stopped without saying so.
    pub ended_at: Option<i64>,
    pub subscriptions: Vec<StoredSubscription>,
    /// What it held when its last connection ended (or at the last
    /// graceful stop) — its queue and unacknowledged packets, encoded by
    /// the broker; `None` if nothing.
    pub queue: Option<Vec<u8>>,
    /// Deliveries queued for it since, offline, in order; encoded by the
    /// broker.
    pub queued: Vec<Vec<u8>>,
    /// Its will, waiting for its delay.
    pub will: Option<StoredWill>,
}

/// A will waiting for its delay (MQTT 5 Will Delay Interval).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredWill {
    /// The will message, encoded by the broker.
    pub message: Vec<u8>,
    /// When it is due, µs since the Unix epoch.
    pub at: i64,
}

/// One change to the sessions kept.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SessionChange {
    /// A connection began or resumed the session, and took what it held.
    /// `fresh`: a new session, which forgets what an older one of the
    /// same key had.
    Connected {
        key: SessionKey,
        expiry: u32,
        fresh: bool,
    },
    /// Adds a subscription, or replaces the one with the same filter.
    Subscribed {
        key: SessionKey,
        subscription: StoredSubscription,
    },
    Unsubscribed {
        key: SessionKey,
        filter: String,
    },
    /// Its connection ended at `at` (µs since the Unix epoch); the session
    /// lasts `expiry` seconds from then.
    Disconnected {
        key: SessionKey,
        at: i64,
        expiry: u32,
    },
    /// Everything the session holds, saved when its connection ends and
    /// at a graceful stop: replaces what was saved and queued before.
    Saved {
        key: SessionKey,
        queue: Vec<u8>,
    },
    /// One delivery queued for the session while it is offline, after
    /// those before it.
    Queued {
        key: SessionKey,
        delivery: Vec<u8>,
    },
    /// The session's will waits for its delay, until `at`.
    WillPending {
        key: SessionKey,
        will: StoredWill,
    },
    /// The will was published or cancelled.
    WillGone(SessionKey),
    /// The session ended: it and its subscriptions go.
    Ended(SessionKey),
}

#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    /// Applies `changes` in their order, in one transaction; returns once
    /// they are durable. A change to a session the store does not have
    /// (other than `Connected`) does nothing.
    async fn apply_sessions(&self, changes: Vec<SessionChange>) -> Result<(), StoreError>;
    /// Every session kept, with its subscriptions, what it held and what
    /// was queued for it since. They stay in the store until a connection
    /// takes the session (`Connected`) or it ends.
    async fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError>;
}
