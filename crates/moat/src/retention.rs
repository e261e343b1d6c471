//! Retention: a background task that deletes each channel's messages older
//! than its `retention_days`. Expiry runs on the message store's writer in
//! small transactions, so ingest keeps committing while it works.

use std::sync::Arc;
use std::time::Duration;

use moat_core::message::MessageStore;
use moat_core::store::{Store, StoreError};

const DAY_MICROS: i64 = 24 * 3600 * 1_000_000;

/// Applies retention every `every`, starting at once.
pub(crate) async fn run(store: Arc<dyn Store>, messages: Arc<dyn MessageStore>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        match sweep(store.as_ref(), messages.as_ref(), now_micros()).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(messages = n, "retention deleted expired messages"),
            Err(e) => tracing::error!(error = %e, "retention failed; retrying later"),
        }
    }
}

/// Deletes, in every channel with a retention, the messages received
/// before `now` minus its days; returns how many went.
pub(crate) async fn sweep(
    store: &dyn Store,
    messages: &dyn MessageStore,
    now: i64,
) -> Result<u64, StoreError> {
    let mut total = 0;
    for (channel, days) in store.retained_channels().await? {
        let before = now - i64::from(days) * DAY_MICROS;
        let n = messages.expire(channel, before).await?;
        if n > 0 {
            metrics::counter!("moat_messages_expired_total").increment(n);
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
    use moat_core::message::{Incoming, MessageQuery, MessageStore, Protocol, accept};
    use moat_core::store::{Change, Store};
    use moat_core::*;
    use moat_store::{SqliteMessageStore, SqliteStore};

    use super::{DAY_MICROS, sweep};

    fn channel(tenant: TenantId, retention_days: Option<u32>) -> Channel {
        let now = now_millis();
        Channel {
            id: ChannelId::new(),
            tenant_id: tenant,
            name: format!("c{retention_days:?}"),
            tags: vec![],
            metadata: serde_json::json!({}),
            payload_policy: PayloadPolicy::Opaque,
            retention_days,
            max_payload: None,
            created_at: now,
            updated_at: now,
        }
    }

    #[tokio::test]
    async fn retention_deletes_only_what_is_older_than_each_channels_days() {
        let dir = tempfile::tempdir().unwrap();
        let store = SqliteStore::open(
            &dir.path().join("moat.db"),
            &[1; 32],
            AuditChain::new([2; 32]),
        )
        .unwrap();
        let messages = SqliteMessageStore::open(&dir.path().join("messages.db"), &[3; 32]).unwrap();
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
        let (week, forever) = (channel(tid, Some(7)), channel(tid, None));
        store
            .apply(
                vec![
                    Change::InsertTenant(tenant),
                    Change::InsertChannel(week.clone()),
                    Change::InsertChannel(forever.clone()),
                ],
                None,
            )
            .await
            .unwrap();
        let today = 1_900_000_000 * 1_000_000_i64;
        let mut batch = Vec::new();
        for c in [&week, &forever] {
            for age_days in [1, 6, 8, 30] {
                let incoming = Incoming {
                    subtopic: "",
                    content_type: None,
                    payload: vec![age_days as u8],
                };
                let at = today - age_days * DAY_MICROS;
                let m = accept(
                    c,
                    Subject::Device(DeviceId::new()),
                    Protocol::Http,
                    incoming,
                    at,
                )
                .unwrap();
                batch.push(Arc::new(m));
            }
        }
        messages.append(batch).await.unwrap();

        assert_eq!(sweep(&store, &messages, today).await.unwrap(), 2);
        let left = |c: ChannelId| {
            let messages = &messages;
            async move {
                let q = MessageQuery {
                    channel: c,
                    limit: 100,
                    ..MessageQuery::default()
                };
                messages
                    .messages(&q)
                    .await
                    .unwrap()
                    .iter()
                    .map(|s| s.message.payload[0])
                    .collect::<Vec<_>>()
            }
        };
        assert_eq!(left(week.id).await, [1, 6]);
        assert_eq!(left(forever.id).await, [1, 6, 8, 30]);
        // Nothing more is due.
        assert_eq!(sweep(&store, &messages, today).await.unwrap(), 0);
    }
}
