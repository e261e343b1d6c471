//! Aggregation over many stored records: the API's
//! `?aggregate=avg&interval=1h` beside the same aggregate in raw SQL on the
//! same file.
//!
//! A first server creates the channel; the records are then loaded through
//! `SqliteMessageStore::append` (the layout the server writes, in batches
//! of the writer's cap): messages of three SenML records (`temp`, `hum`,
//! `pres`) from 32 devices, one a second, ending an hour or so ago. A second
//! server then serves that file, and two queries are timed, each once
//! untimed to warm the caches and then `--reps` times (the median counts):
//! - one name (`name=temp`): a third of the records, one contiguous range
//!   of the clustered `records` table;
//! - every name (no `name`): all of them, through `records_channel_time`.
//!
//! Each runs over HTTPS (the whole request: authentication, the query, the
//! JSON answer; a 408 from the server's request timeout is reported as
//! such), then, once the server stopped, as raw SQL (`SELECT time /
//! interval, count(*), avg(v) … GROUP BY 1`) on a connection of this
//! process and through the store alone (`SqliteMessageStore::aggregate`,
//! what the handler calls). The answers are checked to agree.
//! Every time is printed, not only the median: the store's reader
//! connections take turns, and a turn can differ from the next.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use moat_core::authz::Subject;
use moat_core::message::{Aggregate, ContentType, Message, MessageStore, Protocol, RecordQuery};
use moat_core::senml::{Record, Value};
use moat_core::{ChannelId, DeviceId, MessageId, TenantId};
use moat_store::SqliteMessageStore;
use serde_json::{Value as Json, json};

use crate::api::Api;
use crate::rows::now_micros;
use crate::server::Server;
use crate::{BENCH_MASTER_KEY, BENCH_PASSWORD, db};

/// The bucket width, one hour in microseconds, as `interval=1h`.
const HOUR: i64 = 3_600_000_000;
/// One message a second.
const SPACING: i64 = 1_000_000;
/// Messages an append carries while loading: the writer's batch cap.
const LOAD_BATCH: u64 = 8192;
/// Devices the messages come from.
const DEVICES: usize = 32;
const NAMES: [(&str, &str, f64); 3] = [
    ("temp", "Cel", 20.0),
    ("hum", "%RH", 40.0),
    ("pres", "hPa", 1000.0),
];
const MAX_RECORDS: u64 = 50_000_000;
const MAX_REPS: usize = 50;
/// What a loaded work directory holds, so that a later run can reuse it.
const MARKER: &str = "agg.json";

#[derive(clap::Args)]
pub(crate) struct Args {
    /// The moat binary to serve with.
    #[arg(long, default_value = "target/release/moat")]
    moat: PathBuf,
    /// Where the data directory goes. By default a fresh one in the system's
    /// temporary directory, removed at the end; a directory given here is
    /// kept, and a later run with the same --records reuses its data.
    #[arg(long)]
    work_dir: Option<PathBuf>,
    /// Records to store, three a message.
    #[arg(long, default_value_t = 10_000_000)]
    records: u64,
    /// Timed repetitions of each query, after one untimed warm-up.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Seconds after which a query is not repeated any more (it still runs
    /// once after its warm-up).
    #[arg(long, default_value_t = 120)]
    budget: u64,
    /// The master key (64 hex digits or base64).
    #[arg(long, env = "MOAT_MASTER_KEY", hide_env_values = true, default_value = BENCH_MASTER_KEY)]
    master_key: String,
}

/// What was loaded, kept in the work directory's [`MARKER`].
struct Loaded {
    channel: ChannelId,
    records: u64,
    /// The first message's time, µs: the queries' `from`.
    start: i64,
}

/// One query, as the API and as raw SQL.
struct Query {
    label: &'static str,
    name: Option<&'static str>,
    /// Records it reads.
    records: u64,
}

/// How often to time a query: `reps` times after a warm-up, but no more
/// once `budget` has passed.
#[derive(Clone, Copy)]
struct Timing {
    reps: usize,
    budget: Duration,
}

/// The buckets of one answer, reduced to compare answers.
#[derive(Debug, PartialEq)]
struct Answer {
    buckets: usize,
    count: u64,
}

pub(crate) async fn run(a: Args) -> anyhow::Result<()> {
    ensure!(
        (3..=MAX_RECORDS).contains(&a.records),
        "--records must be between 3 and {MAX_RECORDS}"
    );
    ensure!(
        (1..=MAX_REPS).contains(&a.reps),
        "--reps must be between 1 and {MAX_REPS}"
    );
    let (work, remove) = match &a.work_dir {
        Some(d) => (d.clone(), false),
        None => (
            std::env::temp_dir().join(format!("moat-bench-agg-{}", std::process::id())),
            true,
        ),
    };
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let result = measure(&a, &work).await;
    if remove {
        let _ = std::fs::remove_dir_all(&work);
    }
    result
}

async fn measure(a: &Args, work: &Path) -> anyhow::Result<()> {
    let data = work.join("data");
    let cacert = data.join("ca.pem");
    let key = db::messages_key(&a.master_key)?;
    let loaded = match read_marker(work)? {
        Some(l) if l.records == a.records => {
            println!("reusing {} records loaded in {}", l.records, work.display());
            l
        }
        Some(l) => bail!(
            "{} holds {} records, not {}: use another --work-dir",
            work.display(),
            l.records,
            a.records
        ),
        None => {
            let server = Server::start(&a.moat, &data, &a.master_key, BENCH_PASSWORD)?;
            let api = Api::login(&server.url, &cacert, BENCH_PASSWORD).await?;
            let created = api.post("/channels", &json!({"name": "agg"})).await?;
            server.stop()?;
            let id = |field: &str| {
                created[field]
                    .as_str()
                    .with_context(|| format!("a channel without {field}"))?
                    .parse::<uuid::Uuid>()
                    .map_err(anyhow::Error::from)
            };
            let (channel, tenant) = (ChannelId(id("id")?), TenantId(id("tenant_id")?));
            let l = load(&data.join("messages.db"), &key, channel, tenant, a.records).await?;
            write_marker(work, &l)?;
            l
        }
    };

    let messages = a.records.div_ceil(3);
    let queries = [
        Query {
            label: "one name (temp)",
            name: Some("temp"),
            records: messages,
        },
        Query {
            label: "all names",
            name: None,
            records: a.records,
        },
    ];

    let timing = Timing {
        reps: a.reps,
        budget: Duration::from_secs(a.budget),
    };
    // HTTP first, then the server stops: a request it timed out goes on
    // reading on its blocking pool, and must not run beside the others.
    let server = Server::start(&a.moat, &data, &a.master_key, BENCH_PASSWORD)?;
    let api = Api::login(&server.url, &cacert, BENCH_PASSWORD).await?;
    let mut http = Vec::new();
    for q in &queries {
        http.push(time_http(&api, &loaded, q, timing).await?);
    }
    server.stop()?;
    let conn = db::open(&data.join("messages.db"), &key, true)?;
    let mut raw = Vec::new();
    for q in &queries {
        raw.push(time_raw(&conn, &loaded, q, timing)?);
    }
    drop(conn);
    let store = SqliteMessageStore::open(&data.join("messages.db"), &key)?;
    let mut direct = Vec::new();
    for q in &queries {
        direct.push(time_store(&store, &loaded, q, timing).await?);
    }
    drop(store);

    println!(
        "\naggregate=avg, interval=1h, median of up to {} after a warm-up ({} s budget a query); {} records stored",
        a.reps, a.budget, loaded.records
    );
    println!(
        "{:<18} {:>10} {:>9} {:>9} {:>9} {:>10} {:>10}",
        "query", "records", "HTTP s", "store s", "raw s", "HTTP/raw", "store/raw"
    );
    for (i, q) in queries.iter().enumerate() {
        let (s, r) = (&direct[i], &raw[i]);
        ensure!(
            s.0 == r.0 && http[i].as_ref().is_none_or(|h| h.0 == r.0),
            "{}: the answers differ: HTTP {:?}, store {:?}, raw SQL {:?}",
            q.label,
            http[i].as_ref().map(|h| &h.0),
            s.0,
            r.0
        );
        let (s, r) = (s.1.as_secs_f64(), r.1.as_secs_f64());
        // A timed-out request shows as the timeout, a lower bound.
        let (h, shown) = match &http[i] {
            Some(h) => (h.1.as_secs_f64(), format!("{:.3}", h.1.as_secs_f64())),
            None => (f64::NAN, "timeout".to_owned()),
        };
        println!(
            "{:<18} {:>10} {:>9} {:>9.3} {:>9.3} {:>10.2} {:>10.2}",
            q.label,
            q.records,
            shown,
            s,
            r,
            h / r,
            s / r
        );
        println!(
            "RESULT agg query={} records={} buckets={} http_s={h:.3} store_s={s:.3} raw_s={r:.3} http_over_raw={:.2} store_over_raw={:.2}",
            q.name.unwrap_or("all"),
            q.records,
            raw[i].0.buckets,
            h / r,
            s / r
        );
    }
    Ok(())
}

/// Loads `records` records into the message file: returns what it holds.
async fn load(
    path: &Path,
    key: &[u8; 32],
    channel: ChannelId,
    tenant: TenantId,
    records: u64,
) -> anyhow::Result<Loaded> {
    let messages = records.div_ceil(3);
    let store = Arc::new(SqliteMessageStore::open(path, key)?);
    let devices: Vec<Subject> = (0..DEVICES)
        .map(|_| Subject::Device(DeviceId::new()))
        .collect();
    // Aligned to the hour, and the last message an hour or more ago.
    let hours = (messages * SPACING as u64).div_ceil(HOUR as u64) as i64;
    let start = (now_micros() / HOUR - 1 - hours) * HOUR;
    println!(
        "loading {records} records ({messages} messages) into {}",
        path.display()
    );
    let began = Instant::now();
    let mut pending: Option<tokio::task::JoinHandle<Result<Vec<i64>, _>>> = None;
    let mut done = 0;
    let mut next_report = 0;
    // Bounded: every turn loads up to LOAD_BATCH of the `messages`. The next
    // batch is built while the previous one commits.
    while done < messages {
        let end = (done + LOAD_BATCH).min(messages);
        let batch: Vec<Arc<Message>> = (done..end)
            .map(|i| {
                let n = (records - 3 * i).min(3) as usize;
                let at = start + i as i64 * SPACING;
                Arc::new(message(
                    i,
                    n,
                    channel,
                    tenant,
                    devices[i as usize % DEVICES],
                    at,
                ))
            })
            .collect();
        if let Some(p) = pending.take() {
            p.await??;
        }
        let s = Arc::clone(&store);
        pending = Some(tokio::spawn(async move { s.append(batch).await }));
        done = end;
        if done >= next_report {
            let secs = began.elapsed().as_secs_f64();
            eprintln!(
                "  {done} / {messages} messages, {:.0} s, {:.0} records/s",
                secs,
                (done * 3) as f64 / secs.max(1e-9)
            );
            next_report += (messages / 10).max(1);
        }
    }
    if let Some(p) = pending {
        p.await??;
    }
    // The last handle: dropping it joins the writer and checkpoints the WAL.
    drop(store);
    let secs = began.elapsed().as_secs_f64();
    let size = std::fs::metadata(path).map_or(0, |m| m.len());
    println!(
        "loaded {records} records in {secs:.1} s ({:.0} records/s); the file is {:.2} GB",
        records as f64 / secs,
        size as f64 / 1e9
    );
    println!(
        "RESULT agg_load records={records} seconds={secs:.1} records_per_s={:.0} bytes={size}",
        records as f64 / secs
    );
    Ok(Loaded {
        channel,
        records,
        start,
    })
}

/// Message `i`: its first `n` of temp, hum and pres, with values that vary.
fn message(
    i: u64,
    n: usize,
    channel: ChannelId,
    tenant: TenantId,
    publisher: Subject,
    at: i64,
) -> Message {
    let h = splitmix(i);
    let mut payload = String::from("[");
    let mut records = Vec::with_capacity(n);
    for (k, (name, unit, base)) in NAMES.iter().take(n).enumerate() {
        let v = base + ((h >> (16 * k)) % 1000) as f64 / 100.0;
        if k > 0 {
            payload.push(',');
        }
        payload.push_str(&format!(r#"{{"n":"{name}","u":"{unit}","v":{v}}}"#));
        records.push(Record {
            name: (*name).to_owned(),
            unit: Some((*unit).to_owned()),
            value: Some(Value::Number(v)),
            sum: None,
            time: at as f64 / 1e6,
            update_time: None,
        });
    }
    payload.push(']');
    Message {
        id: MessageId::new(),
        tenant_id: tenant,
        channel_id: channel,
        subtopic: String::new(),
        publisher,
        protocol: Protocol::Http,
        content_type: ContentType::SenmlJson,
        payload: payload.into_bytes(),
        received_at: at,
        records,
    }
}

fn splitmix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The median of `t`, after printing every time in it.
fn median(label: &str, mut t: Vec<Duration>) -> Duration {
    let shown: Vec<String> = t
        .iter()
        .map(|d| format!("{:.3}", d.as_secs_f64()))
        .collect();
    println!("  {label}: {} s", shown.join(", "));
    t.sort();
    t[t.len() / 2]
}

async fn time_http(
    api: &Api,
    l: &Loaded,
    q: &Query,
    t: Timing,
) -> anyhow::Result<Option<(Answer, Duration)>> {
    let mut path = format!(
        "/channels/{}/messages?aggregate=avg&interval=1h&from={}",
        l.channel,
        l.start / 1_000_000
    );
    if let Some(n) = q.name {
        path.push_str(&format!("&name={n}"));
    }
    let mut answer = None;
    let mut times = Vec::with_capacity(t.reps);
    let all = Instant::now();
    for rep in 0..=t.reps {
        let began = Instant::now();
        let Some(body) = api.get_or_timeout(&path).await? else {
            println!(
                "  HTTP, {}: the server timed out after {:.1} s (its request timeout)",
                q.label,
                began.elapsed().as_secs_f64()
            );
            return Ok(None);
        };
        let took = began.elapsed();
        let buckets = body["buckets"]
            .as_array()
            .context("an aggregate without buckets")?;
        answer = Some(Answer {
            buckets: buckets.len(),
            count: buckets.iter().filter_map(|b| b["count"].as_u64()).sum(),
        });
        if rep > 0 {
            times.push(took);
            if all.elapsed() > t.budget {
                break;
            }
        }
    }
    Ok(Some((
        answer.context("no answer")?,
        median(&format!("HTTP, {}", q.label), times),
    )))
}

fn time_raw(
    conn: &rusqlite::Connection,
    l: &Loaded,
    q: &Query,
    t: Timing,
) -> anyhow::Result<(Answer, Duration)> {
    let sql = format!(
        "SELECT time / ?1 AS bucket, count(*), avg(v) FROM records \
         WHERE channel = ?2 AND time >= ?3{} GROUP BY bucket ORDER BY bucket",
        if q.name.is_some() {
            " AND name = ?4"
        } else {
            ""
        }
    );
    let plan: Vec<String> = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?
        .query_map(rusqlite::params_from_iter(args(l, q).iter()), |r| {
            r.get::<_, String>(3)
        })?
        .collect::<Result<_, _>>()?;
    println!("raw SQL, {}: {sql}\n  plan: {}", q.label, plan.join("; "));
    let mut stmt = conn.prepare(&sql)?;
    let mut answer = None;
    let mut times = Vec::with_capacity(t.reps);
    let all = Instant::now();
    for rep in 0..=t.reps {
        let began = Instant::now();
        let mut buckets = 0;
        let mut count = 0;
        let mut rows = stmt.query(rusqlite::params_from_iter(args(l, q).iter()))?;
        while let Some(r) = rows.next()? {
            let n: i64 = r.get(1)?;
            let _avg: Option<f64> = r.get(2)?;
            buckets += 1;
            count += n as u64;
        }
        let took = began.elapsed();
        answer = Some(Answer { buckets, count });
        if rep > 0 {
            times.push(took);
            if all.elapsed() > t.budget {
                break;
            }
        }
    }
    Ok((
        answer.context("no answer")?,
        median(&format!("raw SQL, {}", q.label), times),
    ))
}

fn args(l: &Loaded, q: &Query) -> Vec<rusqlite::types::Value> {
    let mut v = vec![
        HOUR.into(),
        rusqlite::types::Value::Blob(l.channel.0.as_bytes().to_vec()),
        l.start.into(),
    ];
    if let Some(n) = q.name {
        v.push(n.to_owned().into());
    }
    v
}

async fn time_store(
    store: &SqliteMessageStore,
    l: &Loaded,
    q: &Query,
    t: Timing,
) -> anyhow::Result<(Answer, Duration)> {
    let query = RecordQuery {
        channel: l.channel,
        name: q.name.map(str::to_owned),
        from: Some(l.start),
        ..RecordQuery::default()
    };
    let mut answer = None;
    let mut times = Vec::with_capacity(t.reps);
    let all = Instant::now();
    for rep in 0..=t.reps {
        let began = Instant::now();
        let buckets = store.aggregate(&query, Aggregate::Avg, HOUR).await?;
        let took = began.elapsed();
        answer = Some(Answer {
            buckets: buckets.len(),
            count: buckets.iter().map(|b| b.count).sum(),
        });
        if rep > 0 {
            times.push(took);
            if all.elapsed() > t.budget {
                break;
            }
        }
    }
    Ok((
        answer.context("no answer")?,
        median(&format!("store, {}", q.label), times),
    ))
}

fn read_marker(work: &Path) -> anyhow::Result<Option<Loaded>> {
    let path = work.join(MARKER);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let v: Json = serde_json::from_str(&text)?;
    Ok(Some(Loaded {
        channel: v["channel"].as_str().context("no channel")?.parse()?,
        records: v["records"].as_u64().context("no records")?,
        start: v["start"].as_i64().context("no start")?,
    }))
}

fn write_marker(work: &Path, l: &Loaded) -> anyhow::Result<()> {
    let v = json!({"channel": l.channel, "records": l.records, "start": l.start});
    std::fs::write(work.join(MARKER), v.to_string())?;
    Ok(())
}
