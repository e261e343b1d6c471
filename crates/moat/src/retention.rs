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
