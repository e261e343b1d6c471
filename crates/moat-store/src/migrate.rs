//! Schema migrations: numbered SQL scripts compiled in, applied in order,
//! each in its own transaction, tracked by `PRAGMA user_version`.

use moat_core::store::StoreError;
use rusqlite::Connection;

use crate::backend;

const MIGRATIONS: &[&str] = &[
    include_str!("../migrations/0001_init.sql"),
    include_str!("../migrations/0002_pki.sql"),
    include_str!("../migrations/0003_provisioning.sql"),
    include_str!("../migrations/0004_channel_payload_limit.sql"),
    include_str!("../migrations/0005_device_key_psk.sql"),
];

pub(crate) fn run(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    let known = MIGRATIONS.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version = i + 1, "applied a schema migration");
    }
    Ok(())
}
