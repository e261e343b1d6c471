//! The store's side of MQTT persistent sessions (ADR 007): tables
//! `mqtt_sessions` and `mqtt_subscriptions` of the message database,
//! written on the writer thread like the retained messages.

use std::collections::HashMap;

use async_trait::async_trait;
use moat_core::DeviceId;
use moat_core::message::sessions::{
    SessionChange, SessionKey, SessionStore, StoredSession, StoredSubscription, StoredWill,
};
use moat_core::store::StoreError;
use rusqlite::{Connection, TransactionBehavior, params};
use uuid::Uuid;

use super::SqliteMessageStore;

#[async_trait]
impl SessionStore for SqliteMessageStore {
    async fn apply_sessions(&self, changes: Vec<SessionChange>) -> Result<(), StoreError> {
        if changes.is_empty() {
            return Ok(());
        }
        self.writer
            .run("store MQTT sessions", move |c| apply(c, &changes))
            .await
    }

    async fn load_sessions(&self) -> Result<Vec<StoredSession>, StoreError> {
        self.writer.run("load MQTT sessions", load).await
    }
}

/// The owner column: the device id's bytes, empty for an anonymous client.
fn owner(key: &SessionKey) -> Vec<u8> {
    key.owner
        .map(|d| d.0.as_bytes().to_vec())
        .unwrap_or_default()
}

fn apply(conn: &mut Connection, changes: &[SessionChange]) -> rusqlite::Result<()> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    for c in changes {
        match c {
            SessionChange::Connected { key, expiry, fresh } => {
                let o = owner(key);
                if *fresh {
                    forget(&tx, &o, &key.client_id)?;
                } else {
                    drop_queued(&tx, &o, &key.client_id)?;
                }
                tx.prepare_cached(
                    "INSERT INTO mqtt_sessions (owner, client_id, expiry, ended_at) \
                     VALUES (?1, ?2, ?3, NULL) ON CONFLICT (owner, client_id) DO UPDATE SET \
                     expiry = excluded.expiry, ended_at = NULL, queue = NULL, \
                     will = NULL, will_at = NULL",
                )?
                .execute(params![o, key.client_id, expiry])?;
            }
            SessionChange::Subscribed { key, subscription } => {
                let o = owner(key);
                // Only for a session the store has.
                tx.prepare_cached(
                    "INSERT INTO mqtt_subscriptions (owner, client_id, filter, options, id) \
                     SELECT ?1, ?2, ?3, ?4, ?5 FROM mqtt_sessions \
                     WHERE owner = ?1 AND client_id = ?2 \
                     ON CONFLICT (owner, client_id, filter) DO UPDATE SET \
                     options = excluded.options, id = excluded.id",
                )?
                .execute(params![
                    o,
                    key.client_id,
                    subscription.filter,
                    subscription.options,
                    subscription.id
                ])?;
            }
            SessionChange::Unsubscribed { key, filter } => {
                tx.prepare_cached(
                    "DELETE FROM mqtt_subscriptions WHERE owner = ?1 AND client_id = ?2 \
                     AND filter = ?3",
                )?
                .execute(params![owner(key), key.client_id, filter])?;
            }
            SessionChange::Disconnected { key, at, expiry } => {
                tx.prepare_cached(
                    "UPDATE mqtt_sessions SET ended_at = ?3, expiry = ?4 \
                     WHERE owner = ?1 AND client_id = ?2",
                )?
                .execute(params![owner(key), key.client_id, at, expiry])?;
            }
            SessionChange::Saved { key, queue } => {
                let o = owner(key);
                drop_queued(&tx, &o, &key.client_id)?;
                tx.prepare_cached(
                    "UPDATE mqtt_sessions SET queue = ?3 WHERE owner = ?1 AND client_id = ?2",
                )?
                .execute(params![o, key.client_id, queue])?;
            }
            SessionChange::Queued { key, delivery } => {
                tx.prepare_cached(
                    "INSERT INTO mqtt_queue (owner, client_id, position, delivery) \
                     SELECT ?1, ?2, coalesce((SELECT max(position) FROM mqtt_queue \
                     WHERE owner = ?1 AND client_id = ?2), 0) + 1, ?3 \
                     FROM mqtt_sessions WHERE owner = ?1 AND client_id = ?2",
                )?
                .execute(params![owner(key), key.client_id, delivery])?;
            }
            SessionChange::WillPending { key, will } => {
                tx.prepare_cached(
                    "UPDATE mqtt_sessions SET will = ?3, will_at = ?4 \
                     WHERE owner = ?1 AND client_id = ?2",
                )?
                .execute(params![
                    owner(key),
                    key.client_id,
                    will.message,
                    will.at
                ])?;
            }
            SessionChange::WillGone(key) => {
                tx.prepare_cached(
                    "UPDATE mqtt_sessions SET will = NULL, will_at = NULL \
                     WHERE owner = ?1 AND client_id = ?2",
                )?
                .execute(params![owner(key), key.client_id])?;
            }
            SessionChange::Ended(key) => forget(&tx, &owner(key), &key.client_id)?,
        }
    }
    tx.commit()
}

/// Deletes the deliveries queued for a session.
fn drop_queued(
    tx: &rusqlite::Transaction<'_>,
    owner: &[u8],
    client_id: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached("DELETE FROM mqtt_queue WHERE owner = ?1 AND client_id = ?2")?
        .execute(params![owner, client_id])?;
    Ok(())
}

/// Deletes a session, its subscriptions and its queue.
fn forget(tx: &rusqlite::Transaction<'_>, owner: &[u8], client_id: &str) -> rusqlite::Result<()> {
    drop_queued(tx, owner, client_id)?;
    tx.prepare_cached("DELETE FROM mqtt_subscriptions WHERE owner = ?1 AND client_id = ?2")?
        .execute(params![owner, client_id])?;
    tx.prepare_cached("DELETE FROM mqtt_sessions WHERE owner = ?1 AND client_id = ?2")?
        .execute(params![owner, client_id])?;
    Ok(())
}

/// Every session with its subscriptions, what it held and what was
/// queued for it since.
fn load(conn: &mut Connection) -> rusqlite::Result<Vec<StoredSession>> {
    let tx = conn.transaction()?;
    let mut sessions = Vec::new();
    let mut index: HashMap<(Vec<u8>, String), usize> = HashMap::new();
    {
        let mut stmt = tx.prepare(
            "SELECT owner, client_id, expiry, ended_at, queue, will, will_at \
                 FROM mqtt_sessions",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let o: Vec<u8> = r.get(0)?;
            let Some(owner) = device(&o) else {
                tracing::warn!("skipping an MQTT session whose owner is not a device id");
                continue;
            };
            let client_id: String = r.get(1)?;
            index.insert((o, client_id.clone()), sessions.len());
            sessions.push(StoredSession {
                key: SessionKey { owner, client_id },
                expiry: r.get(2)?,
                ended_at: r.get(3)?,
                subscriptions: Vec::new(),
                queue: r.get(4)?,
                queued: Vec::new(),
                will: match (r.get(5)?, r.get(6)?) {
                    (Some(message), Some(at)) => Some(StoredWill { message, at }),
                    _ => None,
                },
            });
        }
    }
    {
        let mut stmt = tx.prepare(
            "SELECT owner, client_id, filter, options, id FROM mqtt_subscriptions \
             ORDER BY owner, client_id, filter",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?);
            if let Some(&i) = index.get(&key) {
                sessions[i].subscriptions.push(StoredSubscription {
                    filter: r.get(2)?,
                    options: r.get(3)?,
                    id: r.get(4)?,
                });
            }
        }
    }
    {
        let mut stmt = tx.prepare(
            "SELECT owner, client_id, delivery FROM mqtt_queue ORDER BY owner, client_id, position",
        )?;
        let mut rows = stmt.query([])?;
        while let Some(r) = rows.next()? {
            let key = (r.get::<_, Vec<u8>>(0)?, r.get::<_, String>(1)?);
            if let Some(&i) = index.get(&key) {
                sessions[i].queued.push(r.get(2)?);
            }
        }
    }
    tx.commit()?;
    Ok(sessions)
}

/// `Some(None)` for the empty (anonymous) owner, `None` if malformed.
fn device(owner: &[u8]) -> Option<Option<DeviceId>> {
    if owner.is_empty() {
        return Some(None);
    }
    Uuid::from_slice(owner).ok().map(|u| Some(u.into()))
}
