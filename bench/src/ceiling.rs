//! The storage ceiling: how fast the same messages go into the same file
//! with nothing in front of the disk.
//!
//! Three measures, each appending `--messages` copies of the publishers'
//! own messages to the file the server wrote:
//! - raw SQL: the writer's own transaction (`write_batch`: chunks and
//!   records, ADR 008) of `--batch` messages each, fsynced at every commit
//!   (WAL, `synchronous = FULL`), messages made before the clock starts. A batch
//!   of N is the most a group commit can gather from N publishers that each
//!   wait for their acknowledgement; the writer's own cap (8192) is the
//!   bulk-load bound;
//! - the store: `SqliteMessageStore::append` from `--appenders` tasks, one
//!   message each, as the HTTP handlers call it: group commit, its queue
//!   and its acknowledgements, without HTTP, TLS or authentication;
//! - `message::accept` alone, per message: the SenML parse every publish
//!   pays before it is stored.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::ensure;
use chrono::Utc;
use moat_core::message::{self, ContentType, Incoming, Message, MessageStore, Protocol};
use moat_core::{Channel, PayloadPolicy};
use moat_store::SqliteMessageStore;
use moat_store::messages::write_batch;
use rusqlite::Connection;

use crate::BENCH_MASTER_KEY;
use crate::db;
use crate::rows::{self, Template};

/// Most messages one run inserts.
const MAX_MESSAGES: usize = 20_000_000;
/// `accept` calls timed.
const ACCEPT_RUNS: usize = 200_000;

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The messages.db to append to: the stopped server's, or a copy. A
    /// missing file is created with the store's schema.
    #[arg(long)]
    db: PathBuf,
    /// The master key (64 hex digits or base64).
    #[arg(long, env = "MOAT_MASTER_KEY", hide_env_values = true, default_value = BENCH_MASTER_KEY)]
    master_key: String,
    /// Messages each run inserts [default: as many as the file holds].
    #[arg(long)]
    messages: Option<usize>,
    /// Messages per transaction of the raw SQL runs; one run per value.
    #[arg(long = "batch", value_delimiter = ',', default_values_t = [32usize, 8192])]
    batches: Vec<usize>,
    /// Concurrent appenders through the store, one message per append; 0
    /// skips that run.
    #[arg(long, default_value_t = 32)]
    appenders: usize,
    /// Publishers to make up when the file holds no messages to copy.
    #[arg(long, default_value_t = 32)]
    publishers: usize,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    let key = db::messages_key(&a.master_key)?;
    let mut templates = {
        // Creates a missing file with the store's schema, and brings an
        // older one up to date.
        let store = SqliteMessageStore::open(&a.db, &key)?;
        rows::from_store(&store).await?
    };
    let mut conn = db::open(&a.db, &key, false)?;
    let (stored, _) = db::counts(&conn)?;
    if templates.is_empty() {
        templates = rows::synthetic(a.publishers.max(1))?;
    }
    let n = a.messages.unwrap_or(stored as usize);
    ensure!(
        (1..=MAX_MESSAGES).contains(&n),
        "--messages must be between 1 and {MAX_MESSAGES} (the file holds {stored})"
    );
    let records: usize = (0..n)
        .map(|i| templates[i % templates.len()].records.len())
        .sum();
    println!(
        "ceiling: {n} messages ({records} records) a run, copies of {} publishers' messages, into {} ({stored} messages already there)",
        templates.len(),
        a.db.display()
    );
    for &batch in &a.batches {
        ensure!(batch >= 1, "a batch holds at least one message");
        let took = raw(&mut conn, &templates, n, batch)?;
        report(&format!("mode=raw batch={batch}"), n, records, took, None);
    }
    drop(conn);
    if a.appenders > 0 {
        let (took, batches) = store(&a.db, &key, &templates, n, a.appenders).await?;
        let mean = n as f64 / batches.max(1) as f64;
        report(
            &format!("mode=store appenders={}", a.appenders),
            n,
            records,
            took,
            Some(mean),
        );
    }
    let per = accept_cost(&templates[0]);
    println!("message::accept: {per:.2} µs a message");
    println!("RESULT accept us_per_message={per:.2}");
    Ok(())
}

fn report(what: &str, n: usize, records: usize, took: Duration, mean_batch: Option<f64>) {
    let secs = took.as_secs_f64();
    let (mps, rps) = (n as f64 / secs, records as f64 / secs);
    let batch = mean_batch.map_or(String::new(), |b| format!(" mean_batch={b:.1}"));
    println!(
        "ceiling {what}: {n} messages in {secs:.2} s: {mps:.0} messages/s, {rps:.0} records/s{}",
        mean_batch.map_or(String::new(), |b| format!(", {b:.1} messages a commit"))
    );
    println!(
        "RESULT ceiling {what} messages={n} seconds={secs:.3} msgs_per_s={mps:.0} records_per_s={rps:.0}{batch}"
    );
}

/// Inserts `n` copies of the templates, round robin, `batch` messages a
/// transaction, with the store's writer's own transaction
/// (`moat_store::messages::write_batch`); returns the time the inserts and
/// commits took.
fn raw(
    conn: &mut Connection,
    templates: &[Template],
    n: usize,
    batch: usize,
) -> anyhow::Result<Duration> {
    let messages: Vec<Arc<Message>> = (0..n)
        .map(|i| Arc::new(templates[i % templates.len()].message(rows::now_micros())))
        .collect();
    let start = Instant::now();
    for part in messages.chunks(batch) {
        write_batch(conn, part)?;
    }
    Ok(start.elapsed())
}

/// Appends `n` copies through the store from `appenders` tasks, one
/// message an append; returns the time taken and the writer's commits.
async fn store(
    path: &Path,
    key: &[u8; 32],
    templates: &[Template],
    n: usize,
    appenders: usize,
) -> anyhow::Result<(Duration, u64)> {
    let store = Arc::new(SqliteMessageStore::open(path, key)?);
    let now = rows::now_micros();
    let messages: Arc<Vec<Arc<Message>>> = Arc::new(
        (0..n)
            .map(|i| Arc::new(templates[i % templates.len()].message(now + i as i64)))
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let before = store.batches();
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..appenders {
        let (store, messages, next) =
            (Arc::clone(&store), Arc::clone(&messages), Arc::clone(&next));
        tasks.spawn(async move {
            // Bounded: every turn takes a message of the `n`.
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(m) = messages.get(i) else {
                    return Ok::<_, anyhow::Error>(());
                };
                store.append(vec![Arc::clone(m)]).await?;
            }
        });
    }
    while let Some(r) = tasks.join_next().await {
        r??;
    }
    let took = start.elapsed();
    let batches = store.batches() - before;
    // The last handle: dropping it joins the writer thread.
    drop(store);
    Ok((took, batches))
}

/// Microseconds `message::accept` takes for the template's payload.
fn accept_cost(t: &Template) -> f64 {
    let channel = Channel {
        id: t.channel,
        tenant_id: t.tenant,
        name: "bench".into(),
        tags: Vec::new(),
        metadata: serde_json::Value::Null,
        payload_policy: PayloadPolicy::Senml,
        retention_days: None,
        max_payload: None,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let now = rows::now_micros();
    let start = Instant::now();
    for i in 0..ACCEPT_RUNS {
        let incoming = Incoming {
            subtopic: "",
            content_type: Some(ContentType::SenmlJson),
            payload: t.payload.clone(),
        };
        let m = message::accept(
            &channel,
            t.publisher,
            Protocol::Http,
            incoming,
            now + i as i64,
        );
        std::hint::black_box(m.is_ok());
    }
    start.elapsed().as_secs_f64() * 1e6 / ACCEPT_RUNS as f64
}
