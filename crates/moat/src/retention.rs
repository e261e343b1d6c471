//! Retention: a background task that deletes each channel's messages older
//! than its `retention_days`, and everything kept for channels deleted
//! since the last run — their stored messages and records, and the retained
//! MQTT messages on their topics. Deletion runs on the message store's
//! writer in small transactions, so ingest keeps committing while it works.
//!
//! A deleted channel is found here, not told by whoever deleted it: a crash
//! between a deletion and the clean-up loses nothing, since the next run
//! finds the channel gone, and no way of deleting one can forget to say so.

use std::sync::Arc;
use std::time::Duration;

use moat_core::ChannelId;
use moat_core::message::MessageStore;
use moat_core::store::{Store, StoreError};
use moat_mqtt::Broker;

const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Applies retention every `every`, starting at once.
pub(crate) async fn run(
    store: Arc<dyn Store>,
    messages: Arc<dyn MessageStore>,
    broker: Arc<Broker>,
    every: Duration,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(
            store.as_ref(),
            messages.as_ref(),
            Some(&broker),
            now_micros(),
        )
        .await
        {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "retention deleted messages"),
            Err(e) => tracing::error!(error = %e, "retention failed; retrying later"),
        }
    }
}

/// Deletes, in every channel with a retention, the messages received
/// before `now` minus its days, then what is kept for deleted channels;
/// returns how many messages went. (The message writer counts them in
/// `moat_messages_expired_total`.)
pub(crate) async fn sweep(
    store: &dyn Store,
    messages: &dyn MessageStore,
    broker: Option<&Broker>,
    now: i64,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for (channel, days) in store.retained_channels().await? {
        let before = now - i64::from(days) * DAY_MICROS;
        total += messages.expire(channel, before).await?;
    }
    Ok(total + forget_deleted(store, messages, broker).await?)
}

/// Deletes the stored messages of every channel that no longer exists, and
/// the broker's retained messages on its topics. A channel counts as
/// deleted only when the store says it has none by that id, never on an
/// error; ids are never reused.
async fn forget_deleted(
    store: &dyn Store,
    messages: &dyn MessageStore,
    broker: Option<&Broker>,
) -> Result<u64, StoreError> {
    let mut held: Vec<ChannelId> = messages.stored_channels().await?;
    if let Some(b) = broker {
        held.extend(b.retained_channels());
    }
    held.sort_unstable();
    held.dedup();
    let mut total = 0;
    for channel in held {
        if store.channel(channel).await?.is_some() {
            continue;
        }
        let n = messages.expire(channel, i64::MAX).await?;
        if n > 0 {
            tracing::info!(%channel, messages = n, "deleted the messages of a deleted channel");
        }
        if let Some(b) = broker {
            b.forget_channel(channel);
        }
        total += n;
    }
    Ok(total)
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use moat_core::audit::{AuditChain, now_millis};
    use moat_core::authz::Subject;
    use moat_core::message::retained::{RetainedChange, RetainedMessage, RetainedStore};
    use moat_core::message::{Incoming, MessageQuery, MessageStore, Protocol, accept};
    use moat_core::sessions::SessionRegistry;
    use moat_core::store::{Change, Store};
    use moat_core::*;
    use moat_mqtt::{Broker, BrokerConfig};
    use moat_store::{SqliteMessageStore, SqliteStore};

    use super::{DAY_MICROS, sweep};

    const TODAY: i64 = 1_900_000_000 * 1_000_000;

    /// Both stores in a temporary directory, with two channels of one
    /// tenant, their retention days as given.
    struct Fixture {
        _dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        messages: Arc<SqliteMessageStore>,
        channels: [Channel; 2],
    }

    async fn fixture(retention_days: [Option<u32>; 2]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(
            SqliteStore::open(
                &dir.path().join("moat.db"),
                &[1; 32],
                AuditChain::new([2; 32]),
            )
            .unwrap(),
        );
        let messages =
            Arc::new(SqliteMessageStore::open(&dir.path().join("messages.db"), &[3; 32]).unwrap());
        let tid = TenantId::new();
        let now = now_millis();
        let tenant = Tenant {
            id: tid,
            parent_id: None,
            path: TenantPath::root(tid),
            name: "t".into(),
            tags: vec![],
            metadata: serde_json::json!({}),
            created_at: now,
            updated_at: now,
        };
        let channels = retention_days.map(|retention_days| Channel {
            id: ChannelId::new(),
            tenant_id: tid,
            name: ChannelId::new().to_string(),
            tags: vec![],
            metadata: serde_json::json!({}),
            payload_policy: PayloadPolicy::Opaque,
            retention_days,
            max_payload: None,
            created_at: now,
            updated_at: now,
        });
        let mut changes = vec![Change::InsertTenant(tenant)];
        changes.extend(channels.iter().cloned().map(Change::InsertChannel));
        store.apply(changes, None).await.unwrap();
        Fixture {
            _dir: dir,
            store,
            messages,
            channels,
        }
    }

    impl Fixture {
        /// Stores a one-byte message per entry of `ages` (days before
        /// [`TODAY`]) in `channel`, the byte being its age.
        async fn append(&self, channel: &Channel, ages: &[i64]) {
            let batch = ages
                .iter()
                .map(|&age| {
                    let incoming = Incoming {
                        subtopic: "",
                        content_type: None,
                        payload: vec![age as u8],
                    };
                    let at = TODAY - age * DAY_MICROS;
                    let publisher = Subject::Device(DeviceId::new());
                    Arc::new(accept(channel, publisher, Protocol::Http, incoming, at).unwrap())
                })
                .collect();
            self.messages.append(batch).await.unwrap();
        }

        /// The bytes of `channel`'s stored messages, in order.
        async fn left(&self, channel: &Channel) -> Vec<u8> {
            let q = MessageQuery {
                channel: channel.id,
                limit: 100,
                ..MessageQuery::default()
            };
            let stored = self.messages.messages(&q).await.unwrap();
            stored.iter().map(|s| s.message.payload[0]).collect()
        }

        async fn sweep(&self, broker: Option<&Broker>) -> u64 {
            sweep(self.store.as_ref(), self.messages.as_ref(), broker, TODAY)
                .await
                .unwrap()
        }
    }

    #[tokio::test]
    async fn retention_deletes_only_what_is_older_than_each_channels_days() {
        let f = fixture([Some(7), None]).await;
        let [week, forever] = &f.channels;
        for c in [week, forever] {
            f.append(c, &[1, 6, 8, 30]).await;
        }
        assert_eq!(f.sweep(None).await, 2);
        assert_eq!(f.left(week).await, [1, 6]);
        assert_eq!(f.left(forever).await, [1, 6, 8, 30]);
        // Nothing more is due.
        assert_eq!(f.sweep(None).await, 0);
    }

    /// A deleted channel's messages (and records) go from the store, and
    /// the retained MQTT messages on its topics from the broker and its
    /// store; another channel's stay.
    #[tokio::test]
    async fn a_deleted_channels_messages_and_retained_messages_are_deleted() {
        let f = fixture([None, Some(365)]).await;
        let [gone, kept] = &f.channels;
        let mut retained = Vec::new();
        for c in [gone, kept] {
            f.append(c, &[0, 1, 2]).await;
            retained.push(RetainedChange::Keep(RetainedMessage {
                topic: format!("channels/{}/messages/state", c.id),
                qos: 1,
                payload: b"on".to_vec(),
                properties: vec![0],
                expires_at: None,
            }));
        }
        f.messages.apply_retained(retained).await.unwrap();
        let bus = moat_bus::LocalBus::new(Arc::clone(&f.messages) as Arc<dyn MessageStore>);
        let broker = Broker::new(
            BrokerConfig::default(),
            Arc::clone(&f.store),
            bus,
            SessionRegistry::new(),
        );
        let loaded = broker.keep_retained(Arc::clone(&f.messages) as _).await;
        assert_eq!(loaded.unwrap(), 2);

        f.store
            .apply(vec![Change::DeleteChannel(gone.id)], None)
            .await
            .unwrap();
        assert_eq!(f.sweep(Some(&broker)).await, 3);
        assert!(f.left(gone).await.is_empty());
        assert_eq!(f.left(kept).await, [0, 1, 2]);
        assert_eq!(f.messages.stored_channels().await.unwrap(), [kept.id]);
        assert_eq!(broker.retained_count(), 1);
        broker.flush_retained().await;
        let left = f.messages.load_retained(TODAY).await.unwrap();
        assert_eq!(left.len(), 1);
        assert!(left[0].topic.contains(&kept.id.to_string()));
        // Nothing more is due.
        assert_eq!(f.sweep(Some(&broker)).await, 0);
    }
}
