//! The group-commit writer: one thread owns the write connection, takes
//! every append waiting in its queue, writes them in one transaction (a
//! chunk row per channel, ADR 008) and acknowledges them all once the
//! commit is durable (ADR 004).
//!
//! The queue is a bounded tokio channel of requests, not of messages. Async
//! callers `send().await` into it, so a full queue makes publishers wait
//! without tying up a blocking-pool thread each; the writer thread, which is
//! no async task, blocks on the queue when idle. An idle writer commits a
//! lone append at once. Under load, batches form from the requests that
//! arrive while the previous commit syncs, and a small one waits up to
//! [`LINGER`] for company first: at a moderate rate each commit otherwise
//! carries a few messages, and its fixed cost (WAL frames encrypted and
//! written, the fsync, waking the writer) dominates. Measured with
//! `bench/mqtt.sh --scenarios qos1cost` (docs/benchmarks.md): the server's
//! CPU per QoS 1 publish at 20,000 msg/s
//! went from 49 to 29 µs. The wait ends early once the batch holds as many
//! appends as the largest of the last [`LINGER_MEMORY`] batches: callers
//! that append again only once their last append is durable (an MQTT
//! connection) are then all back, and more waiting would only idle. While
//! it waits, the thread sleeps in short slices rather than on the queue, so
//! that the requests arriving meanwhile do not each have to wake it. A lone
//! caller appending one message after another never waits.
//!
//! Expiry runs on this thread too, a chunk per transaction, with the appends
//! that arrived meanwhile committed between chunks; that way it never fights
//! the writer for SQLite's lock (a second writing connection would wait in
//! the busy handler, polling), and it holds appends up for one chunk at most.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use moat_core::message::Message;
use moat_core::store::StoreError;
use moat_core::{ChannelId, TenantId};
use rusqlite::{Connection, TransactionBehavior, params};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use super::chunk;
use super::columns::{self, value_columns};
use crate::backend;

/// Requests the queue holds; when it is full, `append` waits (backpressure).
const QUEUE: usize = 1024;
/// Messages one transaction takes at most; a larger single append is never
/// split, and goes alone.
const MAX_BATCH: usize = 8192;
/// A writer is under load when its last commit, of appends from more than
/// one caller, ended less than this ago.
const BUSY_WITHIN: Duration = Duration::from_millis(2);
/// Under load, a batch of fewer messages than this waits [`LINGER`] for
/// more before it commits.
const LINGER_BELOW: usize = 512;
pub(super) const LINGER: Duration = Duration::from_millis(1);
/// A lingering batch looks for company this often.
const LINGER_SLICE: Duration = Duration::from_micros(100);
/// How many recent batches a lingering batch remembers: it stops waiting
/// once it holds as many appends as the largest of them.
const LINGER_MEMORY: usize = 16;
/// Messages (with their records) one expiry transaction deletes at most.
pub(super) const EXPIRE_CHUNK: usize = 1000;

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

enum Request {
    Append(Append),
    Expire(Expiry),
    Job(Job),
}

/// Other work on the write connection — the broker's retained messages and
/// sessions: small and rare next to appends, so each runs (in its own
/// transaction) after the batch it arrived with. It answers its caller
/// itself.
type Job = Box<dyn FnOnce(&mut Connection) + Send>;

struct Append {
    messages: Vec<Arc<Message>>,
    reply: Reply<Vec<i64>>,
}

struct Expiry {
    channel: ChannelId,
    before: i64,
    /// Messages deleted by the chunks so far.
    deleted: u64,
    reply: Reply<u64>,
}

/// The handle the store keeps; dropping it closes the queue, lets the thread
/// drain what is already queued, and joins it.
pub(super) struct Writer {
    queue: mpsc::Sender<Request>,
    batches: Arc<AtomicU64>,
    // Only dropped. Declared after `queue`: fields drop in order, so the
    // queue is closed before the join waits for the thread to see it.
    _thread: JoinOnDrop,
}

impl Writer {
    /// Starts the thread; a small batch under load waits up to `linger`
    /// for company ([`LINGER`] but in tests).
    pub(super) fn start(conn: Connection, linger: Duration) -> Result<Self, StoreError> {
        let (queue, requests) = mpsc::channel(QUEUE);
        let batches = Arc::new(AtomicU64::new(0));
        let batches_seen = Arc::clone(&batches);
        let handle = std::thread::Builder::new()
            .name("moat-message-writer".into())
            .spawn(move || {
                let thread = Thread {
                    conn,
                    linger,
                    recent: VecDeque::with_capacity(LINGER_MEMORY),
                    requests,
                    expiries: VecDeque::new(),
                    jobs: Vec::new(),
                    batches: batches_seen,
                };
                thread.run();
            })
            .map_err(|e| StoreError::Backend(format!("cannot start the message writer: {e}")))?;
        let handle = JoinOnDrop(Some(handle));
        Ok(Self {
            queue,
            batches,
            _thread: handle,
        })
    }

    /// Queues `messages` and waits for their commit. A caller that gives up
    /// waiting does not withdraw them: once queued, they are written.
    pub(super) async fn append(&self, messages: Vec<Arc<Message>>) -> Result<Vec<i64>, StoreError> {
        let (reply, done) = oneshot::channel();
        self.request(Request::Append(Append { messages, reply }), done)
            .await
    }

    pub(super) async fn expire(&self, channel: ChannelId, before: i64) -> Result<u64, StoreError> {
        let (reply, done) = oneshot::channel();
        let expiry = Expiry {
            channel,
            before,
            deleted: 0,
            reply,
        };
        self.request(Request::Expire(expiry), done).await
    }

    /// Runs `job` on the write connection, after the batch of appends it
    /// arrives with, and returns what it returned; `what` names it in the
    /// log should it fail.
    pub(super) async fn run<T: Send + 'static>(
        &self,
        what: &'static str,
        job: impl FnOnce(&mut Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let (reply, done) = oneshot::channel();
        let job: Job = Box::new(move |conn| {
            let r = job(conn).map_err(|e| {
                tracing::error!(error = %e, "cannot {what}");
                backend(e)
            });
            let _ = reply.send(r);
        });
        self.request(Request::Job(job), done).await
    }

    async fn request<T>(
        &self,
        request: Request,
        done: oneshot::Receiver<Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        self.queue.send(request).await.map_err(|_| stopped())?;
        done.await.map_err(|_| stopped())?
    }

    pub(super) fn batches(&self) -> u64 {
        self.batches.load(Ordering::Relaxed)
    }
}

fn stopped() -> StoreError {
    StoreError::Backend("the message writer has stopped".into())
}

struct JoinOnDrop(Option<JoinHandle<()>>);

impl Drop for JoinOnDrop {
    /// Waits for the thread to write what is still queued (appends whose
    /// callers gave up waiting: queued means written).
    fn drop(&mut self) {
        let Some(handle) = self.0.take() else { return };
        if handle.join().is_err() {
            tracing::error!("the message writer panicked");
        }
    }
}

/// What the writer thread owns.
struct Thread {
    conn: Connection,
    linger: Duration,
    /// How many appends (callers) each recent batch held, newest last.
    recent: VecDeque<usize>,
    requests: mpsc::Receiver<Request>,
    /// Expiries in progress, oldest first; one chunk of the first runs after
    /// each batch.
    expiries: VecDeque<Expiry>,
    /// Jobs taken with the current batch, in order.
    jobs: Vec<Job>,
    batches: Arc<AtomicU64>,
}

impl Thread {
    fn run(mut self) {
        // An append taken from the queue that would have overflowed the
        // batch before it; it starts the next one.
        let mut carry: Option<Append> = None;
        // When the last commit ended, and whether its batch came from more
        // than one caller: a lone caller appending one message after the
        // other is not kept waiting for company that never comes.
        let mut last_commit: Option<(Instant, bool)> = None;
        loop {
            let first = match carry.take() {
                Some(a) => Some(Request::Append(a)),
                // Sleep only when there is nothing else to do; `None` means
                // the store was dropped and the queue is drained.
                None if self.expiries.is_empty() => match self.requests.blocking_recv() {
                    Some(r) => Some(r),
                    None => return,
                },
                None => None,
            };
            let (mut batch, mut size) = (Vec::new(), 0);
            self.gather(first, &mut carry, &mut batch, &mut size);
            let busy = last_commit.is_some_and(|(t, shared)| shared && t.elapsed() < BUSY_WITHIN);
            if busy && size > 0 && size < LINGER_BELOW && carry.is_none() {
                self.linger(&mut carry, &mut batch, &mut size);
            }
            if !batch.is_empty() {
                let shared = batch.len() > 1;
                if self.recent.len() == LINGER_MEMORY {
                    self.recent.pop_front();
                }
                self.recent.push_back(batch.len());
                self.commit(batch, size);
                last_commit = Some((Instant::now(), shared));
            }
            for job in std::mem::take(&mut self.jobs) {
                job(&mut self.conn);
            }
            self.expire_step();
        }
    }

    /// Waits up to `linger` ([`LINGER`]) for more appends to join a small
    /// batch, and no longer than it takes for the batch to hold as many
    /// appends as the largest recent one. Callers whose next append waits
    /// for the last one's commit (an MQTT connection: each read is
    /// acknowledged once stored) come back together; once they are all in,
    /// waiting longer only delays them.
    ///
    /// The thread sleeps in slices of [`LINGER_SLICE`] and takes what
    /// arrived after each, rather than wait on the queue: a request that
    /// arrives then need not wake it, which would cost the caller a system
    /// call and the writer a context switch per request (ADR 004).
    fn linger(&mut self, carry: &mut Option<Append>, batch: &mut Vec<Append>, size: &mut usize) {
        let expected = self.recent.iter().copied().max().unwrap_or(usize::MAX);
        let deadline = Instant::now() + self.linger;
        while batch.len() < expected && *size < LINGER_BELOW && carry.is_none() {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            std::thread::sleep(left.min(LINGER_SLICE));
            match self.requests.try_recv() {
                Ok(request) => self.gather(Some(request), carry, batch, size),
                Err(mpsc::error::TryRecvError::Empty) => {}
                // The store was dropped: write what we have.
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
    }

    /// Adds `first` and every request already queued to `batch` (the
    /// appends to commit together, `size` messages), up to [`MAX_BATCH`]
    /// messages. Expiries join the list in progress.
    fn gather(
        &mut self,
        first: Option<Request>,
        carry: &mut Option<Append>,
        batch: &mut Vec<Append>,
        size: &mut usize,
    ) {
        let mut next = first;
        while let Some(request) = next.take() {
            match request {
                Request::Append(a) if !batch.is_empty() && *size + a.messages.len() > MAX_BATCH => {
                    *carry = Some(a);
                    break;
                }
                Request::Append(a) => {
                    *size += a.messages.len();
                    batch.push(a);
                }
                Request::Expire(e) => self.expiries.push_back(e),
                Request::Job(j) => self.jobs.push(j),
            }
            if *size >= MAX_BATCH {
                break;
            }
            // Empty or closed: either way, write what we have.
            next = self.requests.try_recv().ok();
        }
    }

    /// Writes `batch` in one transaction and answers every append in it: its
    /// seqs, or the batch's error.
    fn commit(&mut self, batch: Vec<Append>, size: usize) {
        let messages: Vec<&[Arc<Message>]> = batch.iter().map(|a| a.messages.as_slice()).collect();
        match insert(&mut self.conn, &messages) {
            Ok(seqs) => {
                self.batches.fetch_add(1, Ordering::Relaxed);
                metrics::histogram!("moat_message_batch_size").record(size as f64);
                metrics::counter!("moat_messages_appended_total").increment(size as u64);
                for (append, seqs) in batch.into_iter().zip(seqs) {
                    // A caller that stopped waiting has nobody to tell.
                    let _ = append.reply.send(Ok(seqs));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, messages = size, "cannot store a batch of messages");
                metrics::counter!("moat_message_batch_failures_total").increment(1);
                let e = e.to_string();
                for append in batch {
                    let _ = append.reply.send(Err(StoreError::Backend(e.clone())));
                }
            }
        }
    }

    /// Runs one chunk of the oldest expiry, and answers it once a chunk
    /// comes back short.
    fn expire_step(&mut self) {
        let Some(job) = self.expiries.front_mut() else {
            return;
        };
        if job.reply.is_closed() {
            // Nobody waits for it: leave the rest to the next run.
            self.expiries.pop_front();
            return;
        }
        match expire_chunk(&mut self.conn, job.channel, job.before) {
            Ok(n) => {
                job.deleted += n as u64;
                if n < EXPIRE_CHUNK {
                    let job = self.expiries.pop_front().expect("front exists");
                    metrics::counter!("moat_messages_expired_total").increment(job.deleted);
                    let _ = job.reply.send(Ok(job.deleted));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, channel = %job.channel, "cannot expire messages");
                let job = self.expiries.pop_front().expect("front exists");
                let _ = job.reply.send(Err(backend(e)));
            }
        }
    }
}

/// The chunks of a channel holding a message received before a time, the
/// next to expire: a range of `message_chunks_channel_time`.
pub(super) const EXPIRING: &str = "SELECT chunk, tenant, first_seq, body FROM message_chunks \
    WHERE channel = ?1 AND first_received_at < ?2 LIMIT 64";

/// Deletes messages of `channel` received before `before`, and their
/// records, in one transaction, until about [`EXPIRE_CHUNK`] went; returns
/// how many. A chunk all of whose messages go is deleted; one that
/// straddles `before` is rewritten with the rest, which keep their seqs.
fn expire_chunk(conn: &mut Connection, channel: ChannelId, before: i64) -> rusqlite::Result<usize> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut deleted = 0;
    loop {
        let expiring = tx
            .prepare_cached(EXPIRING)?
            .query_map(params![channel.0.as_bytes(), before], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, [u8; 16]>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                ))
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        if expiring.is_empty() {
            break;
        }
        for (id, tenant, first_seq, body) in expiring {
            let entries = chunk::decode(
                &body,
                first_seq,
                TenantId(Uuid::from_bytes(tenant)),
                channel,
            )
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
            let (gone, kept): (Vec<_>, Vec<_>) = entries
                .into_iter()
                .partition(|e| e.message.received_at < before);
            let mut records = tx.prepare_cached("DELETE FROM records WHERE seq = ?1")?;
            for e in &gone {
                records.execute([e.seq])?;
            }
            deleted += gone.len();
            let Some(first) = kept.first() else {
                tx.prepare_cached("DELETE FROM message_chunks WHERE chunk = ?1")?
                    .execute([id])?;
                continue;
            };
            let first_seq = first.seq;
            let mut body = Vec::new();
            let (mut lo, mut hi) = (i64::MAX, i64::MIN);
            for e in &kept {
                let delta = u16::try_from(e.seq - first_seq).expect("a chunk's seqs are close");
                chunk::encode(&mut body, delta, &e.message);
                lo = lo.min(e.message.received_at);
                hi = hi.max(e.message.received_at);
            }
            tx.prepare_cached(
                "UPDATE message_chunks SET first_seq = ?2, first_received_at = ?3, \
                 last_received_at = ?4, count = ?5, body = ?6 WHERE chunk = ?1",
            )?
            .execute(params![id, first_seq, lo, hi, kept.len() as i64, body])?;
        }
        if deleted >= EXPIRE_CHUNK {
            break;
        }
    }
    tx.commit()?;
    Ok(deleted)
}

/// A chunk's row; the migration to version 4 writes its one-message
/// chunks with it too.
pub(super) const INSERT_CHUNK: &str = "INSERT INTO message_chunks \
    (chunk, tenant, channel, first_seq, first_received_at, last_received_at, count, body) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)";

const INSERT_RECORD: &str = "INSERT INTO records \
    (channel, name, time, seq, idx, publisher, subtopic, unit, v, vs, vb, vd, s, ut) \
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14)";

/// Where a message of the batch is: its append, and its place in it.
type At = (usize, usize);

/// Inserts every message of `batch` (the appends' messages, in order) and
/// their records in one transaction, a chunk per channel (more where one
/// would hold over [`chunk::MAX_MESSAGES`] messages or span over
/// [`chunk::MAX_SPAN`]); returns each append's seqs once the commit is
/// durable.
pub(super) fn insert(
    conn: &mut Connection,
    batch: &[&[Arc<Message>]],
) -> rusqlite::Result<Vec<Vec<i64>>> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    let mut out: Vec<Vec<i64>> = batch.iter().map(|a| vec![0; a.len()]).collect();
    {
        let mut insert_chunk = tx.prepare_cached(INSERT_CHUNK)?;
        let mut record = tx.prepare_cached(INSERT_RECORD)?;
        let mut body = Vec::new();
        // Chunk ids are the writer's to hand out (it is the only one): the
        // next above any AUTOINCREMENT ever gave, so that each chunk's seqs
        // are known before its row is written.
        let mut next_id: i64 = tx.query_row(
            "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'message_chunks'), 0)",
            [],
            |r| r.get(0),
        )?;
        for part in chunks(batch) {
            let first = &batch[part[0].0][part[0].1];
            let (lo, hi) = part.iter().fold((i64::MAX, i64::MIN), |(lo, hi), &(a, m)| {
                let t = batch[a][m].received_at;
                (lo.min(t), hi.max(t))
            });
            body.clear();
            for (pos, &(a, m)) in part.iter().enumerate() {
                chunk::encode(&mut body, pos as u16, &batch[a][m]);
            }
            next_id += 1;
            let first_seq = next_id << chunk::POSITION_BITS;
            insert_chunk.execute(params![
                next_id,
                first.tenant_id.0.as_bytes(),
                first.channel_id.0.as_bytes(),
                first_seq,
                lo,
                hi,
                part.len() as i64,
                body,
            ])?;
            for (pos, &(a, mi)) in part.iter().enumerate() {
                let seq = first_seq + pos as i64;
                out[a][mi] = seq;
                let m = &batch[a][mi];
                if m.records.is_empty() {
                    continue;
                }
                let publisher = m.publisher.to_string();
                for (idx, r) in m.records.iter().enumerate() {
                    let v = value_columns(r.value.as_ref());
                    record.execute(params![
                        m.channel_id.0.as_bytes(),
                        r.name,
                        columns::micros(r.time),
                        seq,
                        idx as i64,
                        publisher,
                        m.subtopic,
                        r.unit,
                        v.v,
                        v.vs,
                        v.vb,
                        v.vd,
                        r.sum,
                        r.update_time,
                    ])?;
                }
            }
        }
    }
    tx.commit()?;
    Ok(out)
}

/// A chunk being filled: its channel and tenant, its messages, and their
/// earliest and latest receive times.
struct Filling {
    key: (ChannelId, TenantId),
    members: Vec<At>,
    lo: i64,
    hi: i64,
}

/// The batch's messages grouped into chunks: by channel (and tenant, which
/// a chunk records once: a message that said otherwise for its channel
/// would start a chunk of its own), in commit order, each at most
/// [`chunk::MAX_MESSAGES`] long and [`chunk::MAX_SPAN`] wide.
fn chunks(batch: &[&[Arc<Message>]]) -> Vec<Vec<At>> {
    let mut filling: Vec<Filling> = Vec::new();
    let mut done = Vec::new();
    for (a, messages) in batch.iter().enumerate() {
        for (mi, m) in messages.iter().enumerate() {
            let (key, t) = ((m.channel_id, m.tenant_id), m.received_at);
            if let Some(i) = filling.iter().position(|f| f.key == key) {
                let f = &mut filling[i];
                let fits = f.members.len() < chunk::MAX_MESSAGES
                    && t.max(f.hi).saturating_sub(t.min(f.lo)) <= chunk::MAX_SPAN;
                if fits {
                    f.members.push((a, mi));
                    (f.lo, f.hi) = (t.min(f.lo), t.max(f.hi));
                    continue;
                }
                done.push(filling.swap_remove(i).members);
            }
            filling.push(Filling {
                key,
                members: vec![(a, mi)],
                lo: t,
                hi: t,
            });
        }
    }
    done.extend(filling.into_iter().map(|f| f.members));
    done
}
