//! The store's side of MQTT retained messages (ADR 007): table `retained`
//! of the message database, written on the writer thread, each job in its
//! own small transaction after the batch of appends it arrived with.

use async_trait::async_trait;
use moat_core::message::retained::{RetainedChange, RetainedMessage, RetainedStore};
use moat_core::store::StoreError;
use rusqlite::{Connection, TransactionBehavior, params};

use super::SqliteMessageStore;

#[async_trait]
impl RetainedStore for SqliteMessageStore {
    async fn apply_retained(&self, changes: Vec<RetainedChange>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.writer
            .run("store retained messages", move |c| apply(c, &changes))
            .await
    }

    async fn load_retained(&self, now: i64) -> Result<Vec<RetainedMessage>, StoreError> {
        self.writer
            .run("load retained messages", move |c| load(c, now))
            .await
    }
}

/// Applies `changes` in order, in one transaction.
fn apply(conn: &mut Connection, changes: &[RetainedChange]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut keep = tx.prepare_cached(
            "INSERT INTO retained (topic, qos, payload, properties, expires_at) \
             VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (topic) DO UPDATE SET \
             qos = excluded.qos, payload = excluded.payload, \
             properties = excluded.properties, expires_at = excluded.expires_at",
        )?;
        let mut clear = tx.prepare_cached("DELETE FROM retained WHERE topic = ?1")?;
        for c in changes {
            match c {
                RetainedChange::Keep(m) => {
                    keep.execute(params![
                        m.topic,
                        m.qos,
                        m.payload,
                        m.properties,
                        m.expires_at
                    ])?;
                }
                RetainedChange::Clear(topic) => {
                    clear.execute(params![topic])?;
                }
            }
        }
    }
    tx.commit()
}

/// Deletes the expired retained messages and returns the others.
fn load(conn: &mut Connection, now: i64) -> rusqlite::Result<Vec<RetainedMessage>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    tx.execute("DELETE FROM retained WHERE expires_at <= ?1", params![now])?;
    let kept = tx
        .prepare("SELECT topic, qos, payload, properties, expires_at FROM retained ORDER BY topic")?
        .query_map([], |r| {
            Ok(RetainedMessage {
                topic: r.get(0)?,
                qos: r.get(1)?,
                payload: r.get(2)?,
                properties: r.get(3)?,
                expires_at: r.get(4)?,
            })
        })?
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(kept)
}
