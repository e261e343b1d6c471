//! Moat's embedded store: the `Store` port on one SQLite file encrypted with
//! SQLCipher (ADR 001).
//!
//! One writer connection serializes writes (SQLite does anyway); a few
//! reader connections serve reads alongside it, which WAL allows. Every call
//! runs on tokio's blocking pool, so no async worker ever waits on the disk.
//! `synchronous=FULL` makes a committed transaction survive power loss: what
//! `apply` returns is durable.

pub mod messages;
mod migrate;
mod read;
mod rows;
mod write;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use moat_core::audit::AuditChain;
use moat_core::store::StoreError;
use rusqlite::{Connection, ErrorCode, OpenFlags};

pub use messages::SqliteMessageStore;

/// Reader connections kept open beside the writer.
const READERS: usize = 4;

pub struct SqliteStore {
    // std mutexes: each is held only inside a blocking task, never across
    // an await.
    writer: Arc<Mutex<Connection>>,
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    chain: Arc<AuditChain>,
}

impl SqliteStore {
    /// Opens (creating if absent) the database at `path` with the 32-byte
    /// SQLCipher key, and brings its schema up to date.
    pub fn open(path: &Path, db_key: &[u8; 32], chain: AuditChain) -> Result<Self, StoreError> {
        let mut writer = connect(
            path,
            db_key,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        writer
            .pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        migrate::run(&mut writer)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = connect(path, db_key, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            writer: Arc::new(Mutex::new(writer)),
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            chain: Arc::new(chain),
        })
    }

    /// Runs `f` on a reader connection on the blocking pool.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        tokio::task::spawn_blocking(move || {
            let conn = readers[i].lock().unwrap_or_else(|p| p.into_inner());
            f(&conn)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?
    }

    /// Runs `f` on the writer connection on the blocking pool.
    async fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &AuditChain) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let writer = Arc::clone(&self.writer);
        let chain = Arc::clone(&self.chain);
        tokio::task::spawn_blocking(move || {
            let mut conn = writer.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut conn, &chain)
        })
        .await
        .map_err(|e| StoreError::Backend(format!("write task failed: {e}")))?
    }
}

/// SQLCipher's page HMAC for the files Moat creates. HMAC-SHA256 rather
/// than SQLCipher 4's default HMAC-SHA512: the same 256-bit key, and the
/// hash runs on the SHA extensions most x86 and ARM server CPUs have (the
/// page HMAC was the largest single cost of the message writer, ADR 001).
/// SQLCipher does not record the setting in the file, so whoever opens a
/// Moat database with another tool must set it too.
pub const PAGE_HMAC_ALGORITHM: &str = "HMAC_SHA256";

/// One keyed connection to a Moat database file, as the stores open
/// theirs (page HMAC, synchronous commits, foreign keys): for tools that
/// read or write the file directly (the benchmarks' `moat-bench`).
pub fn open_connection(
    path: &Path,
    key: &[u8; 32],
    flags: OpenFlags,
) -> Result<Connection, StoreError> {
    connect(path, key, flags)
}

/// Opens one keyed connection and proves the key by reading the schema.
/// A file Moat created before the page HMAC was chosen (SQLCipher's
/// default, HMAC-SHA512) is opened with the default.
fn connect(path: &Path, key: &[u8; 32], flags: OpenFlags) -> Result<Connection, StoreError> {
    match connect_with(path, key, flags, Some(PAGE_HMAC_ALGORITHM)) {
        Err(StoreError::WrongKey) => connect_with(path, key, flags, None),
        r => r,
    }
}

fn connect_with(
    path: &Path,
    key: &[u8; 32],
    flags: OpenFlags,
    hmac: Option<&str>,
) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(path, flags | OpenFlags::SQLITE_OPEN_NO_MUTEX)
        .map_err(backend)?;
    // SQLCipher writes its own errors to stderr, around Moat's structured
    // log (a wrong key is one, and so is the first try on an older file);
    // every failure comes back as an SQLite error anyway.
    conn.pragma_update(None, "cipher_log_level", "NONE")
        .map_err(backend)?;
    conn.pragma_update(None, "key", format!("x'{}'", hex::encode(key)))
        .map_err(backend)?;
    if let Some(h) = hmac {
        conn.pragma_update(None, "cipher_hmac_algorithm", h)
            .map_err(backend)?;
    }
    match conn.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
        r.get::<_, i64>(0)
    }) {
        Ok(_) => {}
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == ErrorCode::NotADatabase => {
            return Err(StoreError::WrongKey);
        }
        Err(e) => return Err(backend(e)),
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(backend)?;
    conn.pragma_update(None, "foreign_keys", "ON")
        .map_err(backend)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))
        .map_err(backend)?;
    Ok(conn)
}

/// Any SQLite error that is not the client's doing.
pub(crate) fn backend(e: rusqlite::Error) -> StoreError {
    StoreError::Backend(e.to_string())
}

#[cfg(test)]
mod tests;
