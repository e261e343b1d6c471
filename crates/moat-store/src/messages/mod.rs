//! The message store (ADR 004): published messages and their SenML records,
//! durable before anyone is told they were received.
//!
//! Messages live in their own SQLCipher file beside the identity database,
//! so the data path never waits on that database's lock. Writes go through
//! one thread that group-commits whatever appends are waiting
//! ([`writer`]); reads run on a few read-only connections on tokio's
//! blocking pool ([`read`]), which WAL lets run while the writer commits.
//! `synchronous = FULL` fsyncs the WAL at every commit, so what `append`
//! returns is durable. The layout is in `schema.sql` and the versions
//! after it (`schema_v4.sql`: messages in chunks, ADR 008); how fields
//! become columns in [`columns`], and a chunk's body in [`chunk`].

mod chunk;
mod columns;
mod read;
mod retained;
mod sessions;
mod writer;

use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use moat_core::ChannelId;
use moat_core::message::*;
use moat_core::store::StoreError;
use rusqlite::{Connection, OpenFlags};

use crate::{backend, connect};
use writer::Writer;

/// Reader connections.
const READERS: usize = 4;
/// Statements each reader keeps prepared: every combination of filters is
/// its own statement.
const READER_STATEMENTS: usize = 64;
/// Each reader's page cache, in KiB (SQLite's `cache_size` when negative).
/// SQLite's default of 2 MiB made a repeated aggregate over 300k records
/// thirty times slower on a connection that had not run it last
/// (docs/benchmarks.md); a cache is filled only as far as it is used.
const READER_CACHE_KIB: i64 = 64 * 1024;

/// The schema's versions, applied in order and tracked by `user_version`.
const SCHEMA: &[&str] = &[
    include_str!("schema.sql"),
    include_str!("schema_v2.sql"),
    include_str!("schema_v3.sql"),
    include_str!("schema_v4.sql"),
];

/// [`MessageStore`] on an SQLCipher file.
pub struct SqliteMessageStore {
    writer: Writer,
    // std mutexes: each is held only inside a blocking task, never across an
    // await.
    readers: Arc<Vec<Mutex<Connection>>>,
    next_reader: AtomicUsize,
    /// Reads stopped because their caller went away.
    cancelled: Arc<AtomicU64>,
}

/// SQLite virtual-machine steps between checks of a read's cancellation:
/// a few milliseconds of work.
const CANCEL_CHECK_STEPS: i32 = 10_000;

/// Marks a read cancelled when its future is dropped before it finished
/// (a request that timed out, a client that went away).
struct CancelOnDrop {
    cancel: Arc<AtomicBool>,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.cancel.store(true, Ordering::Relaxed);
        }
    }
}

impl SqliteMessageStore {
    /// Opens (creating if absent) the message database at `path` with its
    /// 32-byte SQLCipher key, brings its schema up to date and starts the
    /// writer thread.
    pub fn open(path: &Path, key: &[u8; 32]) -> Result<Self, StoreError> {
        Self::open_with(path, key, writer::LINGER)
    }

    /// [`Self::open`], with a writer whose small batches under load wait up
    /// to `linger` for company.
    fn open_with(path: &Path, key: &[u8; 32], linger: Duration) -> Result<Self, StoreError> {
        let mut conn = connect(
            path,
            key,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(backend)?;
        migrate(&mut conn)?;
        let readers = (0..READERS)
            .map(|_| {
                let c = connect(path, key, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
                c.set_prepared_statement_cache_capacity(READER_STATEMENTS);
                c.pragma_update(None, "cache_size", -READER_CACHE_KIB)
                    .map_err(backend)?;
                Ok(Mutex::new(c))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        Ok(Self {
            writer: Writer::start(conn, linger)?,
            readers: Arc::new(readers),
            next_reader: AtomicUsize::new(0),
            cancelled: Arc::default(),
        })
    }

    /// Transactions the writer has committed: fewer than the appends means
    /// group commit is grouping.
    pub fn batches(&self) -> u64 {
        self.writer.batches()
    }

    /// Reads that were stopped because their caller stopped waiting.
    pub fn cancelled_reads(&self) -> u64 {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// Runs `f` on a reader connection on the blocking pool. Should the
    /// caller stop waiting (its future dropped: a request timed out, a
    /// client went away), SQLite interrupts the statement within a few
    /// milliseconds, rather than finishing a long aggregate for nobody
    /// while it holds a reader and a core.
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let readers = Arc::clone(&self.readers);
        let i = self.next_reader.fetch_add(1, Ordering::Relaxed) % readers.len();
        let mut guard = CancelOnDrop {
            cancel: Arc::new(AtomicBool::new(false)),
            done: false,
        };
        let cancel = Arc::clone(&guard.cancel);
        let cancelled = Arc::clone(&self.cancelled);
        let result = tokio::task::spawn_blocking(move || {
            let conn = readers[i].lock().unwrap_or_else(|p| p.into_inner());
            let flag = Arc::clone(&cancel);
            conn.progress_handler(
                CANCEL_CHECK_STEPS,
                Some(move || flag.load(Ordering::Relaxed)),
            );
            let out = f(&conn);
            conn.progress_handler(0, None::<fn() -> bool>);
            if cancel.load(Ordering::Relaxed) {
                cancelled.fetch_add(1, Ordering::Relaxed);
            }
            out
        })
        .await
        .map_err(|e| StoreError::Backend(format!("read task failed: {e}")))?;
        guard.done = true;
        result
    }
}

#[async_trait]
impl MessageStore for SqliteMessageStore {
    async fn append(&self, messages: Vec<Arc<Message>>) -> Result<Vec<i64>, StoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        self.writer.append(messages).await
    }

    /// Each message comes back with empty `records`: they are in the payload,
    /// and reading them back would take a lookup per message, since the
    /// records table is ordered by name and time. [`Self::records`] reads
    /// them.
    async fn messages(&self, q: &MessageQuery) -> Result<Vec<Stored>, StoreError> {
        let q = q.clone();
        self.read(move |c| read::messages(c, &q)).await
    }

    async fn records(&self, q: &RecordQuery) -> Result<Vec<StoredRecord>, StoreError> {
        let q = q.clone();
        self.read(move |c| read::records(c, &q)).await
    }

    async fn aggregate(
        &self,
        q: &RecordQuery,
        agg: Aggregate,
        interval: i64,
    ) -> Result<Vec<Bucket>, StoreError> {
        let q = q.clone();
        self.read(move |c| read::aggregate(c, &q, agg, interval))
            .await
    }

    /// Runs on the writer thread in transactions of at most
    /// [`writer::EXPIRE_CHUNK`] messages, appends committing between them.
    async fn expire(&self, channel: ChannelId, before: i64) -> Result<u64, StoreError> {
        self.writer.expire(channel, before).await
    }

    async fn stored_channels(&self) -> Result<Vec<ChannelId>, StoreError> {
        self.read(read::stored_channels).await
    }
}

/// Writes `messages` in one transaction on `conn` (the message database,
/// opened with [`crate::open_connection`]) exactly as the store's writer
/// does, chunks and records, without its queue or thread: the raw storage
/// ceiling `bench/messages.sh` measures against. Returns their seqs.
pub fn write_batch(
    conn: &mut Connection,
    messages: &[Arc<Message>],
) -> Result<Vec<i64>, StoreError> {
    let mut seqs = writer::insert(conn, &[messages]).map_err(backend)?;
    Ok(seqs.pop().unwrap_or_default())
}

/// Applies the schema versions `conn` lacks, each in its own transaction.
fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let current: i64 = conn
        .pragma_query_value(None, "user_version", |r| r.get(0))
        .map_err(backend)?;
    let known = SCHEMA.len() as i64;
    if current > known {
        return Err(StoreError::SchemaTooNew {
            found: current,
            known,
        });
    }
    for (i, sql) in SCHEMA.iter().enumerate().skip(current as usize) {
        let tx = conn.transaction().map_err(backend)?;
        tx.execute_batch(sql).map_err(backend)?;
        if i == 3 {
            messages_into_chunks(&tx)?;
        }
        tx.pragma_update(None, "user_version", i as i64 + 1)
            .map_err(backend)?;
        tx.commit().map_err(backend)?;
        tracing::info!(version = i + 1, "applied a message schema migration");
    }
    Ok(())
}

/// Version 4's move (ADR 008): each message of the version 3 table becomes
/// a chunk of its own with its seq, in seq order, and new seqs start above
/// every seq the old table ever handed out.
fn messages_into_chunks(tx: &rusqlite::Transaction<'_>) -> Result<(), StoreError> {
    let high: i64 = tx
        .query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0)",
            [],
            |r| r.get(0),
        )
        .map_err(backend)?;
    {
        let mut old = tx.prepare(read::OLD_MESSAGES).map_err(backend)?;
        let mut rows = old.query([]).map_err(backend)?;
        let mut insert = tx.prepare(writer::INSERT_CHUNK).map_err(backend)?;
        let mut body = Vec::new();
        while let Some(row) = rows.next().map_err(backend)? {
            let s = read::stored(row)?;
            let m = &s.message;
            body.clear();
            chunk::encode(&mut body, 0, m);
            // One chunk a message, its id AUTOINCREMENT's.
            insert
                .execute(rusqlite::params![
                    None::<i64>,
                    m.tenant_id.0.as_bytes(),
                    m.channel_id.0.as_bytes(),
                    s.seq,
                    m.received_at,
                    m.received_at,
                    1,
                    body,
                ])
                .map_err(backend)?;
        }
    }
    let floor = (high >> chunk::POSITION_BITS) + 1;
    tx.execute_batch("DROP TABLE messages").map_err(backend)?;
    // AUTOINCREMENT takes the next rowid above this.
    tx.execute_batch("DELETE FROM sqlite_sequence WHERE name = 'message_chunks'")
        .map_err(backend)?;
    tx.execute(
        "INSERT INTO sqlite_sequence (name, seq) \
         SELECT 'message_chunks', max(?1, coalesce(max(chunk), 0)) FROM message_chunks",
        [floor],
    )
    .map_err(backend)?;
    Ok(())
}

#[cfg(test)]
mod tests;
