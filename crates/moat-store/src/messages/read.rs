//! Reads: the SQL each query runs, built apart from running it so that the
//! tests can check its plan, and the rows turned back into messages,
//! records and buckets.
//!
//! The plans these statements are written for (checked in the tests):
//! - messages page by seq, a chunk at a time, on
//!   `message_chunks_channel_seq` — the seq order is the commit order, so a
//!   reader that follows the cursor never misses a message committed after
//!   it looked, even one received earlier; a time window reads only the
//!   chunks that start at most a second before it (ADR 008);
//! - records with a name read the primary key's `(channel, name, time, …)`
//!   range, and without one `records_channel_time`, both already in cursor
//!   order, so a page reads as many rows as it returns (plus those its
//!   filters skip) and never sorts.

use moat_core::authz::Subject;
use moat_core::message::*;
use moat_core::senml::Record;
use moat_core::store::StoreError;
use moat_core::{ChannelId, TenantId};
use rusqlite::types::Value as SqlValue;
use rusqlite::{Connection, Row, params_from_iter};
use uuid::Uuid;

use super::{chunk, columns};
use crate::backend;

/// A statement and its arguments, in the order of its `?` placeholders.
#[derive(Debug)]
pub(super) struct Select {
    pub(super) sql: String,
    pub(super) args: Vec<SqlValue>,
}

impl Select {
    fn new(sql: &str, channel: ChannelId) -> Self {
        Self {
            sql: format!("{sql} WHERE channel = ?"),
            args: vec![uuid_arg(channel.0)],
        }
    }

    /// Adds `AND cond`; its `?`s take `args` in order.
    fn and(&mut self, cond: &str, args: impl IntoIterator<Item = SqlValue>) -> &mut Self {
        self.sql.push_str(" AND ");
        self.sql.push_str(cond);
        self.args.extend(args);
        self
    }

    fn and_some<T: Into<SqlValue>>(&mut self, cond: &str, arg: Option<T>) -> &mut Self {
        if let Some(a) = arg {
            self.and(cond, [a.into()]);
        }
        self
    }

    fn then(&mut self, tail: &str) -> &mut Self {
        self.sql.push(' ');
        self.sql.push_str(tail);
        self
    }
}

fn uuid_arg(u: Uuid) -> SqlValue {
    SqlValue::Blob(u.as_bytes().to_vec())
}

/// Chunks read per statement while a page of messages fills (a chunk holds
/// a commit's messages of the channel: from one to a few hundred).
const CHUNKS_AT_ONCE: i64 = 4;

/// The `first_seq` range of the chunks that may hold messages of `q`'s
/// time window (those starting at most [`chunk::MAX_SPAN`] before it), or
/// `None` without a window: one range of `message_chunks_channel_time`.
pub(super) fn window_sql(q: &MessageQuery) -> Option<Select> {
    if q.from.is_none() && q.to.is_none() {
        return None;
    }
    let mut s = Select::new(
        "SELECT min(first_seq), max(first_seq) FROM message_chunks \
         INDEXED BY message_chunks_channel_time",
        q.channel,
    );
    s.and_some(
        "first_received_at >= ?",
        q.from.map(|f| f.saturating_sub(chunk::MAX_SPAN)),
    )
    .and_some("first_received_at < ?", q.to);
    Some(s)
}

/// The next chunks of `q`'s channel that may hold messages of its page,
/// in seq order: from the one holding `from_seq` (found with one seek,
/// since a chunk's seqs run from its `first_seq`) to the one starting at
/// `upto`, the end of the window if there is one, skipping those wholly
/// outside the window.
pub(super) fn chunks_sql(q: &MessageQuery, from_seq: i64, upto: Option<i64>) -> Select {
    let mut s = Select::new(
        "SELECT tenant, first_seq, body FROM message_chunks INDEXED BY message_chunks_channel_seq",
        q.channel,
    );
    s.and(
        "first_seq >= coalesce((SELECT max(first_seq) FROM message_chunks \
         WHERE channel = ? AND first_seq <= ?), 0)",
        [uuid_arg(q.channel.0), from_seq.into()],
    )
    .and_some("first_seq <= ?", upto)
    .and_some(
        "first_received_at >= ?",
        q.from.map(|f| f.saturating_sub(chunk::MAX_SPAN)),
    )
    .and_some("first_received_at < ?", q.to)
    // A chunk that ends before the window starts is not decoded.
    .and_some("last_received_at >= ?", q.from)
    .then("ORDER BY first_seq LIMIT ?");
    s.args.push(CHUNKS_AT_ONCE.into());
    s
}

/// A page of messages: chunks in seq order, decoded, and their messages
/// filtered, until the page is full or the chunks run out.
pub(super) fn messages(conn: &Connection, q: &MessageQuery) -> Result<Vec<Stored>, StoreError> {
    let limit = q.limit as usize;
    let mut next = q.after.map_or(0, |a| a.saturating_add(1));
    let mut upto = None;
    if let Some(w) = window_sql(q) {
        let mut stmt = conn.prepare_cached(&w.sql).map_err(backend)?;
        let bounds = stmt
            .query_row(params_from_iter(&w.args), |r| {
                Ok((r.get::<_, Option<i64>>(0)?, r.get::<_, Option<i64>>(1)?))
            })
            .map_err(backend)?;
        let (Some(lo), Some(hi)) = bounds else {
            // No chunk in the window.
            return Ok(Vec::new());
        };
        next = next.max(lo);
        upto = Some(hi);
    }
    let mut out = Vec::new();
    while out.len() < limit {
        let s = chunks_sql(q, next, upto);
        let mut stmt = conn.prepare_cached(&s.sql).map_err(backend)?;
        let chunks = stmt
            .query_map(params_from_iter(&s.args), |r| {
                Ok((
                    r.get::<_, [u8; 16]>(0)?,
                    r.get::<_, i64>(1)?,
                    r.get::<_, Vec<u8>>(2)?,
                ))
            })
            .map_err(backend)?
            .collect::<Result<Vec<_>, _>>()
            .map_err(backend)?;
        if chunks.is_empty() {
            break;
        }
        // Past the chunks read, whatever their messages.
        let mut past = next;
        for (tenant, first_seq, body) in chunks {
            if out.len() == limit {
                break;
            }
            let tenant = TenantId(Uuid::from_bytes(tenant));
            for e in chunk::decode(&body, first_seq, tenant, q.channel)? {
                past = past.max(e.seq + 1);
                if e.seq >= next && out.len() < limit && wanted(q, &e.message) {
                    out.push(Stored {
                        seq: e.seq,
                        message: e.message,
                    });
                }
            }
        }
        if past == next {
            // Only what was read before: nothing further.
            break;
        }
        next = past;
    }
    Ok(out)
}

fn wanted(q: &MessageQuery, m: &Message) -> bool {
    q.from.is_none_or(|f| m.received_at >= f)
        && q.to.is_none_or(|t| m.received_at < t)
        && q.subtopic.as_ref().is_none_or(|s| *s == m.subtopic)
        && q.publisher
            .as_ref()
            .is_none_or(|p| *p == m.publisher.to_string())
}

/// The version 3 table, read whole by the migration to version 4.
pub(super) const OLD_MESSAGES: &str = "SELECT seq, id, tenant, channel, subtopic, publisher, \
    protocol, content_type, received_at, payload FROM messages ORDER BY seq";

/// Each channel with a message: one seek into `message_chunks_channel_seq` per
/// channel (a loose index scan), however many messages each holds.
pub(super) const STORED_CHANNELS: &str = "WITH RECURSIVE stored(channel) AS (\
    SELECT min(channel) FROM message_chunks \
    UNION ALL \
    SELECT (SELECT min(channel) FROM message_chunks WHERE message_chunks.channel > stored.channel) \
    FROM stored WHERE stored.channel IS NOT NULL) \
    SELECT channel FROM stored WHERE channel IS NOT NULL";

pub(super) fn stored_channels(conn: &Connection) -> Result<Vec<ChannelId>, StoreError> {
    let mut stmt = conn.prepare_cached(STORED_CHANNELS).map_err(backend)?;
    stmt.query_map([], |r| r.get::<_, [u8; 16]>(0))
        .map_err(backend)?
        .map(|id| {
            id.map(|id| ChannelId(Uuid::from_bytes(id)))
                .map_err(backend)
        })
        .collect()
}

pub(super) fn stored(r: &Row<'_>) -> Result<Stored, StoreError> {
    let publisher: String = r.get(5).map_err(backend)?;
    let message = Message {
        id: Uuid::from_bytes(r.get(1).map_err(backend)?).into(),
        tenant_id: Uuid::from_bytes(r.get(2).map_err(backend)?).into(),
        channel_id: Uuid::from_bytes(r.get(3).map_err(backend)?).into(),
        subtopic: r.get(4).map_err(backend)?,
        publisher: subject(&publisher)?,
        protocol: columns::protocol(r.get(6).map_err(backend)?)?,
        content_type: columns::content_type(r.get(7).map_err(backend)?)?,
        received_at: r.get(8).map_err(backend)?,
        payload: r.get(9).map_err(backend)?,
        records: Vec::new(),
    };
    Ok(Stored {
        seq: r.get(0).map_err(backend)?,
        message,
    })
}

fn subject(s: &str) -> Result<Subject, StoreError> {
    s.parse()
        .map_err(|()| StoreError::Backend(format!("stored publisher {s:?} is not a subject")))
}

/// The conditions records and aggregates share, after `SELECT … FROM`; the
/// lower time bound is left to each, as records weigh it against the cursor.
fn record_filter(head: &str, q: &RecordQuery) -> Select {
    let mut s = Select::new(head, q.channel);
    s.and_some("name = ?", q.name.clone())
        .and_some("time < ?", q.to)
        .and_some("publisher = ?", q.publisher.clone())
        .and_some("subtopic = ?", q.subtopic.clone());
    for (op, x) in &q.value {
        let cond = match op {
            Comparator::Lt => "v < ?",
            Comparator::Le => "v <= ?",
            Comparator::Eq => "v = ?",
            Comparator::Ge => "v >= ?",
            Comparator::Gt => "v > ?",
        };
        s.and(cond, [(*x).into()]);
    }
    s
}

pub(super) fn records_sql(q: &RecordQuery) -> Select {
    let mut s = record_filter(
        "SELECT name, time, seq, idx, publisher, subtopic, unit, v, vs, vb, vd, s, ut FROM records",
        q,
    );
    // One lower bound, so that SQLite seeks to it rather than scanning from
    // the other: the cursor, unless the window starts after it.
    match (q.from, q.after) {
        (Some(from), Some((time, _, _))) if from > time => {
            s.and("time >= ?", [from.into()]);
        }
        (_, Some((time, seq, idx))) => {
            s.and(
                "(time, seq, idx) > (?, ?, ?)",
                [time.into(), seq.into(), i64::from(idx).into()],
            );
        }
        (from, None) => {
            s.and_some("time >= ?", from);
        }
    }
    s.then("ORDER BY time, seq, idx LIMIT ?");
    s.args.push(i64::from(q.limit).into());
    s
}

pub(super) fn records(conn: &Connection, q: &RecordQuery) -> Result<Vec<StoredRecord>, StoreError> {
    let s = records_sql(q);
    let mut stmt = conn.prepare_cached(&s.sql).map_err(backend)?;
    let rows = stmt
        .query_map(params_from_iter(&s.args), |r| {
            let record = Record {
                name: r.get(0)?,
                time: columns::seconds(r.get(1)?),
                unit: r.get(6)?,
                value: columns::value(r.get(7)?, r.get(8)?, r.get(9)?, r.get(10)?),
                sum: r.get(11)?,
                update_time: r.get(12)?,
            };
            Ok(StoredRecord {
                seq: r.get(2)?,
                index: r.get(3)?,
                publisher: r.get(4)?,
                subtopic: r.get(5)?,
                record,
            })
        })
        .map_err(backend)?;
    rows.collect::<Result<_, _>>().map_err(backend)
}

/// Every matching record's time and numeric value, in time order: the
/// buckets are folded from this stream as it comes, where a `GROUP BY` on
/// the bucket would sort the whole range first.
/// With a name, one primary-key range in time order. Without, the channel's
/// whole primary-key range (`INDEXED BY` its automatic index): name by name, each in time
/// order. Walking `records_channel_time` instead would give time order for
/// the price of a lookup into the table for every row's value, scattered
/// over the file: thirty times slower over ten million records.
pub(super) fn aggregate_sql(q: &RecordQuery) -> Select {
    let head = if q.name.is_some() {
        "SELECT time, v FROM records"
    } else {
        "SELECT time, v FROM records INDEXED BY sqlite_autoindex_records_1"
    };
    let mut s = record_filter(head, q);
    s.and_some("time >= ?", q.from);
    if q.name.is_some() {
        s.then("ORDER BY time");
    }
    s
}

pub(super) fn aggregate(
    conn: &Connection,
    q: &RecordQuery,
    agg: Aggregate,
    interval: i64,
) -> Result<Vec<Bucket>, StoreError> {
    if interval <= 0 {
        return Err(StoreError::Backend(format!(
            "an aggregation interval must be positive, not {interval}"
        )));
    }
    let s = aggregate_sql(q);
    let mut stmt = conn.prepare_cached(&s.sql).map_err(backend)?;
    let mut rows = stmt.query(params_from_iter(&s.args)).map_err(backend)?;
    // Rows come in time order within each name: the running bucket is
    // usually the one a row belongs to, and the map is touched only when
    // the bucket changes.
    let mut buckets: std::collections::BTreeMap<i64, Acc> = std::collections::BTreeMap::new();
    let mut acc: Option<Acc> = None;
    while let Some(row) = rows.next().map_err(backend)? {
        let time: i64 = row.get(0).map_err(backend)?;
        let v: Option<f64> = row.get(1).map_err(backend)?;
        // Aligned to the epoch, also before it.
        let start = time.div_euclid(interval) * interval;
        match &mut acc {
            Some(a) if a.start == start => a.add(v),
            _ => {
                if let Some(done) = acc.take() {
                    park(&mut buckets, done);
                }
                let mut a = buckets.remove(&start).unwrap_or_else(|| Acc::new(start));
                a.add(v);
                acc = Some(a);
            }
        }
    }
    if let Some(done) = acc {
        park(&mut buckets, done);
    }
    Ok(buckets.into_values().map(|a| a.bucket(agg)).collect())
}

fn park(buckets: &mut std::collections::BTreeMap<i64, Acc>, a: Acc) {
    buckets.insert(a.start, a);
}

/// One bucket's running aggregate.
struct Acc {
    start: i64,
    /// Every record, numeric or not.
    count: u64,
    /// Numeric values only.
    numbers: u64,
    sum: f64,
    min: f64,
    max: f64,
}

impl Acc {
    fn new(start: i64) -> Self {
        Self {
            start,
            count: 0,
            numbers: 0,
            sum: 0.0,
            min: f64::INFINITY,
            max: f64::NEG_INFINITY,
        }
    }

    fn add(&mut self, v: Option<f64>) {
        self.count += 1;
        if let Some(v) = v {
            self.numbers += 1;
            self.sum += v;
            self.min = self.min.min(v);
            self.max = self.max.max(v);
        }
    }

    fn bucket(self, agg: Aggregate) -> Bucket {
        let value = match agg {
            Aggregate::Count => Some(self.count as f64),
            _ if self.numbers == 0 => None,
            Aggregate::Min => Some(self.min),
            Aggregate::Max => Some(self.max),
            Aggregate::Sum => Some(self.sum),
            Aggregate::Avg => Some(self.sum / self.numbers as f64),
        };
        Bucket {
            start: self.start,
            count: self.count,
            value,
        }
    }
}
