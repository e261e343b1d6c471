//! The message database as the server opens it: the SQLCipher key derived
//! from the master key for messages, WAL, and `synchronous = FULL` (what
//! `moat_store`'s own `connect` does), so that raw SQL here pays for the
//! same encryption and the same fsyncs as the store.

use std::path::Path;

use anyhow::{Context, bail};
use moat_pki::master::{MasterKey, Purpose};
use rusqlite::{Connection, OpenFlags};

/// The messages.db key of the master key `master` (64 hex digits or base64).
pub(crate) fn messages_key(master: &str) -> anyhow::Result<[u8; 32]> {
    let master = MasterKey::parse(master).context("the master key")?;
    Ok(master.derive(Purpose::Messages))
}

/// Opens the message database at `path`, read-write or read-only; it must
/// exist and the key must fit.
pub(crate) fn open(path: &Path, key: &[u8; 32], read_only: bool) -> anyhow::Result<Connection> {
    if !path.exists() {
        bail!("no message database at {}", path.display());
    }
    let flags = if read_only {
        OpenFlags::SQLITE_OPEN_READ_ONLY
    } else {
        OpenFlags::SQLITE_OPEN_READ_WRITE
    };
    let conn = moat_store::open_connection(path, key, flags)
        .with_context(|| format!("reading {} (wrong master key?)", path.display()))?;
    if !read_only {
        conn.pragma_update(None, "journal_mode", "WAL")?;
    }
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Messages and records stored.
pub(crate) fn counts(conn: &Connection) -> anyhow::Result<(i64, i64)> {
    let messages = conn.query_row(
        "SELECT coalesce(sum(count), 0) FROM message_chunks",
        [],
        |r| r.get(0),
    )?;
    let records = conn.query_row("SELECT count(*) FROM records", [], |r| r.get(0))?;
    Ok((messages, records))
}
