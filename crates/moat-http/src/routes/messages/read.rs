//! Reading stored messages back: pages of messages or of their records,
//! aggregates over time buckets, and exports (CSV, NDJSON, a zstd archive)
//! streamed page by page, never holding a whole result in memory.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use moat_core::authz::{MessageAccess, Subject};
use moat_core::message::{
    Aggregate, Bucket, Comparator, MessageQuery, MessageStore, RecordQuery, Stored, StoredRecord,
};
use moat_core::senml::Value;
use moat_core::{Channel, ChannelId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{MessageView, micros_rfc3339, open_channel};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::routes::TAG_MESSAGES;
use crate::state::AppState;

/// A JSON page's default and largest size.
pub const DEFAULT_PAGE: u32 = 100;
pub const MAX_PAGE: u32 = 1000;
/// Rows an export reads from the store at a time.
const EXPORT_CHUNK: u32 = 1000;
/// The most buckets one aggregation answers.
pub const MAX_BUCKETS: i64 = 100_000;
/// zstd's level for archives: its default, fast and a good ratio.
const ZSTD_LEVEL: i32 = 3;

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum View {
    /// Whole messages, in the order they were stored.
    Messages,
    /// SenML records (and flat JSON members), by time.
    Records,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// One page, with a cursor to the next.
    Json,
    /// Every match, one JSON object per line, streamed.
    Ndjson,
    /// Every match, as CSV with a header row, streamed.
    Csv,
}

#[derive(Clone, Copy, Debug, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AggregateParam {
    Count,
    Min,
    Max,
    Avg,
    Sum,
}

impl From<AggregateParam> for Aggregate {
    fn from(a: AggregateParam) -> Self {
        match a {
            AggregateParam::Count => Aggregate::Count,
            AggregateParam::Min => Aggregate::Min,
            AggregateParam::Max => Aggregate::Max,
            AggregateParam::Avg => Aggregate::Avg,
            AggregateParam::Sum => Aggregate::Sum,
        }
    }
}

#[derive(Debug, Default, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ReadParams {
    /// Start, inclusive: RFC 3339 or Unix seconds (fractions allowed).
    pub from: Option<String>,
    /// End, exclusive: RFC 3339 or Unix seconds.
    pub to: Option<String>,
    /// Only from this publisher: `device:<id>`, `user:<id>` or `apikey:<id>`.
    pub publisher: Option<String>,
    /// Only this exact subtopic (empty: the channel itself).
    pub subtopic: Option<String>,
    /// Only records of this name (implies `view=records`).
    pub name: Option<String>,
    /// `messages` (default) or `records`; `name`, value comparisons and
    /// aggregates read records.
    pub view: Option<View>,
    /// Only numeric values below this.
    pub value_lt: Option<f64>,
    /// Only numeric values at most this.
    pub value_le: Option<f64>,
    /// Only numeric values equal to this.
    pub value_eq: Option<f64>,
    /// Only numeric values at least this.
    pub value_ge: Option<f64>,
    /// Only numeric values above this.
    pub value_gt: Option<f64>,
    /// Aggregate records' values per `interval` instead of listing them.
    pub aggregate: Option<AggregateParam>,
    /// Bucket width for `aggregate`: `30s`, `15m`, `1h`, `1d`…; needs `from`.
    pub interval: Option<String>,
    /// `json` (default, one page), `ndjson` or `csv` (everything, streamed).
    pub format: Option<Format>,
    /// Page size for `json` (1 to 1000, default 100); for exports, the most
    /// rows to export (default: all).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    pub cursor: Option<String>,
}

/// A page of messages.
#[derive(Serialize, ToSchema)]
pub struct MessagePage {
    pub messages: Vec<MessageView>,
    /// Pass as `cursor` for the next page; absent on the last.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A stored record in SenML's terms, with where it came from.
#[derive(Serialize, ToSchema)]
pub struct RecordView {
    /// Name (base name resolved).
    pub n: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub u: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub v: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vs: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vb: Option<bool>,
    /// Data value, base64url without padding (RFC 8428 §4.3).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vd: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub s: Option<f64>,
    /// Seconds since the Unix epoch.
    pub t: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ut: Option<f64>,
    pub publisher: String,
    pub subtopic: String,
    /// The message's `seq`.
    pub seq: i64,
}

impl From<&StoredRecord> for RecordView {
    fn from(r: &StoredRecord) -> Self {
        let rec = &r.record;
        let (mut v, mut vs, mut vb, mut vd) = (None, None, None, None);
        match &rec.value {
            Some(Value::Number(x)) => v = Some(*x),
            Some(Value::String(x)) => vs = Some(x.clone()),
            Some(Value::Bool(x)) => vb = Some(*x),
            Some(Value::Data(x)) => {
                vd = Some(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(x));
            }
            None => {}
        }
        Self {
            n: rec.name.clone(),
            u: rec.unit.clone(),
            v,
            vs,
            vb,
            vd,
            s: rec.sum,
            t: rec.time,
            ut: rec.update_time,
            publisher: r.publisher.clone(),
            subtopic: r.subtopic.clone(),
            seq: r.seq,
        }
    }
}

/// A page of records.
#[derive(Serialize, ToSchema)]
pub struct RecordPage {
    pub records: Vec<RecordView>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub struct BucketView {
    /// Start of the interval.
    pub start: String,
    /// Records in it, numeric or not.
    pub count: u64,
    /// The aggregate of its numeric values; absent when it has none.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

/// Aggregates over time buckets, oldest first; empty buckets are left out.
#[derive(Serialize, ToSchema)]
pub struct Aggregated {
    pub aggregate: String,
    pub interval_seconds: f64,
    pub buckets: Vec<BucketView>,
}

/// Reads a channel's stored messages or records.
///
/// By default a JSON page of messages in the order they were stored, with
/// `next_cursor` to the next page. `name` or a `value_*` comparison reads
/// records (or say `view=records`), ordered by time. `aggregate` with
/// `interval` answers buckets instead. `format=csv|ndjson` streams every
/// match. Devices need a `subscribe` connection; users and API keys any role.
#[utoipa::path(get, path = "/channels/{id}/messages", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path), ReadParams),
    responses(
        (status = 200, description = "A page of messages, of records, or aggregates (JSON); or every match as CSV or NDJSON",
            content((MessagePage = "application/json"), (RecordPage = "application/json"), (Aggregated = "application/json"),
                (String = "text/csv"), (String = "application/x-ndjson"))),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    Query(p): Query<ReadParams>,
) -> Result<Response, ApiError> {
    let plan = Plan::of(id, &p)?;
    let channel = open_channel(&s, &caller, id, MessageAccess::Subscribe).await?;
    let store = Arc::clone(&s.messages);
    let format = p.format.unwrap_or(Format::Json);
    Ok(match plan {
        Plan::Aggregate {
            query,
            agg,
            interval,
        } => {
            let buckets = store.aggregate(&query, agg.into(), interval).await?;
            aggregated(agg, interval, &buckets, format)
        }
        Plan::Messages(mut q) => match format {
            Format::Json => {
                let page = store.messages(&q).await?;
                let next_cursor = (page.len() == q.limit as usize)
                    .then(|| page.last().map(|m| format!("m{}", m.seq)))
                    .flatten();
                let messages = page
                    .iter()
                    .map(|m| MessageView::new(m.seq, &m.message))
                    .collect();
                Json(MessagePage {
                    messages,
                    next_cursor,
                })
                .into_response()
            }
            f => {
                let total = p.limit.map(u64::from);
                q.limit = EXPORT_CHUNK;
                stream(
                    f,
                    export_name(&channel, "messages", f),
                    message_rows(store, q, total, f),
                )
            }
        },
        Plan::Records(mut q) => match format {
            Format::Json => {
                let page = store.records(&q).await?;
                let next_cursor = (page.len() == q.limit as usize)
                    .then(|| {
                        page.last()
                            .map(|r| format!("r{}.{}.{}", micros(r), r.seq, r.index))
                    })
                    .flatten();
                let records = page.iter().map(RecordView::from).collect();
                Json(RecordPage {
                    records,
                    next_cursor,
                })
                .into_response()
            }
            f => {
                let total = p.limit.map(u64::from);
                q.limit = EXPORT_CHUNK;
                stream(
                    f,
                    export_name(&channel, "records", f),
                    record_rows(store, q, total, f),
                )
            }
        },
    })
}

/// A raw archive of a channel's messages: every message as a line of
/// NDJSON (as `format=ndjson`: JSON payloads as they were sent, others in
/// base64), in the order stored, compressed with zstd and streamed.
#[utoipa::path(get, path = "/channels/{id}/archive", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path),
        ("from" = Option<String>, Query, description = "Start, inclusive: RFC 3339 or Unix seconds"),
        ("to" = Option<String>, Query, description = "End, exclusive: RFC 3339 or Unix seconds")),
    responses((status = 200, description = "zstd-compressed NDJSON, one message per line", content_type = "application/zstd", body = Vec<u8>),
        (status = 400, body = Problem), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn archive(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    Query(window): Query<Window>,
) -> Result<Response, ApiError> {
    let q = MessageQuery {
        channel: id,
        from: window
            .from
            .as_deref()
            .map(|t| parse_time("from", t))
            .transpose()?,
        to: window
            .to
            .as_deref()
            .map(|t| parse_time("to", t))
            .transpose()?,
        limit: EXPORT_CHUNK,
        ..MessageQuery::default()
    };
    let channel = open_channel(&s, &caller, id, MessageAccess::Subscribe).await?;
    let rows = message_rows(Arc::clone(&s.messages), q, None, Format::Ndjson);
    let encoder = zstd::stream::write::Encoder::new(Vec::new(), ZSTD_LEVEL)
        .map_err(|_| ApiError::internal())?;
    let body = Body::from_stream(zstd_stream(rows_boxed(rows), encoder));
    let mut res = body.into_response();
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/zstd"),
    );
    if let Ok(v) = HeaderValue::from_str(&format!(
        "attachment; filename=\"{}\"",
        archive_name(&channel)
    )) {
        h.insert(header::CONTENT_DISPOSITION, v);
    }
    Ok(res)
}

#[derive(Debug, Default, Deserialize)]
pub struct Window {
    pub from: Option<String>,
    pub to: Option<String>,
}

/// What a read asks of the store, checked before anything is read.
enum Plan {
    Messages(MessageQuery),
    Records(RecordQuery),
    Aggregate {
        query: RecordQuery,
        agg: AggregateParam,
        interval: i64,
    },
}

impl Plan {
    fn of(channel: ChannelId, p: &ReadParams) -> Result<Self, ApiError> {
        let from = p
            .from
            .as_deref()
            .map(|t| parse_time("from", t))
            .transpose()?;
        let to = p.to.as_deref().map(|t| parse_time("to", t)).transpose()?;
        let publisher = match &p.publisher {
            Some(s) => Some(
                s.parse::<Subject>()
                    .map_err(|()| {
                        ApiError::unprocessable(
                            "publisher",
                            "must be device:<id>, user:<id> or apikey:<id>",
                        )
                    })?
                    .to_string(),
            ),
            None => None,
        };
        let value: Vec<(Comparator, f64)> = [
            (Comparator::Lt, p.value_lt, "value_lt"),
            (Comparator::Le, p.value_le, "value_le"),
            (Comparator::Eq, p.value_eq, "value_eq"),
            (Comparator::Ge, p.value_ge, "value_ge"),
            (Comparator::Gt, p.value_gt, "value_gt"),
        ]
        .into_iter()
        .filter_map(|(c, v, field)| v.map(|v| (c, v, field)))
        .map(|(c, v, field)| {
            if v.is_finite() {
                Ok((c, v))
            } else {
                Err(ApiError::unprocessable(field, "must be a finite number"))
            }
        })
        .collect::<Result<_, _>>()?;
        let format = p.format.unwrap_or(Format::Json);
        let limit = match (format, p.limit) {
            (Format::Json, l) => {
                let l = l.unwrap_or(DEFAULT_PAGE);
                if !(1..=MAX_PAGE).contains(&l) {
                    return Err(ApiError::unprocessable(
                        "limit",
                        format!("must be between 1 and {MAX_PAGE}"),
                    ));
                }
                l
            }
            (_, Some(0)) => return Err(ApiError::unprocessable("limit", "must be at least 1")),
            (_, _) => EXPORT_CHUNK,
        };
        let records = p.name.is_some() || !value.is_empty() || p.aggregate.is_some();
        let view = match (p.view, records) {
            (Some(View::Messages), true) => {
                return Err(ApiError::unprocessable(
                    "view",
                    "name, value comparisons and aggregates read records, not messages",
                ));
            }
            (Some(v), _) => v,
            (None, true) => View::Records,
            (None, false) => View::Messages,
        };
        if let (Some(from), Some(to)) = (from, to)
            && from >= to
        {
            return Err(ApiError::unprocessable("to", "must be after from"));
        }
        if p.interval.is_some() && p.aggregate.is_none() {
            return Err(ApiError::unprocessable("interval", "only with aggregate"));
        }
        if let Some(agg) = p.aggregate {
            if p.cursor.is_some() {
                return Err(ApiError::unprocessable(
                    "cursor",
                    "aggregates come in one answer",
                ));
            }
            let interval = p
                .interval
                .as_deref()
                .ok_or_else(|| ApiError::unprocessable("interval", "aggregate needs an interval"))
                .and_then(parse_interval)?;
            let from = from.ok_or_else(|| {
                ApiError::unprocessable("from", "aggregate needs the start of its window")
            })?;
            let end = to.unwrap_or_else(|| chrono::Utc::now().timestamp_micros());
            if end > from && (end - from) / interval > MAX_BUCKETS {
                return Err(ApiError::unprocessable(
                    "interval",
                    format!(
                        "the window holds more than {MAX_BUCKETS} intervals; widen the interval or narrow the window"
                    ),
                ));
            }
            let query = RecordQuery {
                channel,
                name: p.name.clone(),
                publisher,
                subtopic: p.subtopic.clone(),
                from: Some(from),
                to,
                value,
                after: None,
                limit: 0,
            };
            return Ok(Plan::Aggregate {
                query,
                agg,
                interval,
            });
        }
        Ok(match view {
            View::Messages => Plan::Messages(MessageQuery {
                channel,
                from,
                to,
                publisher,
                subtopic: p.subtopic.clone(),
                after: p.cursor.as_deref().map(message_cursor).transpose()?,
                limit,
            }),
            View::Records => Plan::Records(RecordQuery {
                channel,
                name: p.name.clone(),
                publisher,
                subtopic: p.subtopic.clone(),
                from,
                to,
                value,
                after: p.cursor.as_deref().map(record_cursor).transpose()?,
                limit,
            }),
        })
    }
}

fn bad_cursor() -> ApiError {
    ApiError::unprocessable("cursor", "not a cursor from this list")
}

fn message_cursor(c: &str) -> Result<i64, ApiError> {
    c.strip_prefix('m')
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad_cursor)
}

fn record_cursor(c: &str) -> Result<(i64, i64, u32), ApiError> {
    let mut parts = c.strip_prefix('r').ok_or_else(bad_cursor)?.split('.');
    let mut next = || parts.next().ok_or_else(bad_cursor);
    let time = next()?.parse().map_err(|_| bad_cursor())?;
    let seq = next()?.parse().map_err(|_| bad_cursor())?;
    let idx = next()?.parse().map_err(|_| bad_cursor())?;
    Ok((time, seq, idx))
}

/// A record's time in the store's microseconds.
fn micros(r: &StoredRecord) -> i64 {
    (r.record.time * 1e6).round() as i64
}

/// RFC 3339, or Unix seconds with an optional fraction, to microseconds.
pub(crate) fn parse_time(field: &str, t: &str) -> Result<i64, ApiError> {
    if let Ok(secs) = t.parse::<f64>() {
        // Years 0 to 9999, as RFC 3339 can say.
        if secs.is_finite() && (-62_167_219_200.0..253_402_300_800.0).contains(&secs) {
            return Ok((secs * 1e6).round() as i64);
        }
        return Err(ApiError::unprocessable(field, "out of range"));
    }
    chrono::DateTime::parse_from_rfc3339(t)
        .map(|d| d.timestamp_micros())
        .map_err(|_| {
            ApiError::unprocessable(
                field,
                "must be RFC 3339 (2026-01-02T03:04:05Z) or Unix seconds",
            )
        })
}

/// `30s`, `15m`, `1h`, `7d`… to microseconds; at least a millisecond.
fn parse_interval(s: &str) -> Result<i64, ApiError> {
    let d: Duration = humantime::parse_duration(s).map_err(|_| {
        ApiError::unprocessable("interval", "must be a duration such as 30s, 15m, 1h or 1d")
    })?;
    let us = i64::try_from(d.as_micros()).unwrap_or(i64::MAX);
    if us < 1000 {
        return Err(ApiError::unprocessable("interval", "must be at least 1ms"));
    }
    Ok(us)
}

fn aggregated(agg: AggregateParam, interval: i64, buckets: &[Bucket], format: Format) -> Response {
    let name = match agg {
        AggregateParam::Count => "count",
        AggregateParam::Min => "min",
        AggregateParam::Max => "max",
        AggregateParam::Avg => "avg",
        AggregateParam::Sum => "sum",
    };
    let views = buckets.iter().map(|b| BucketView {
        start: micros_rfc3339(b.start),
        count: b.count,
        value: b.value,
    });
    match format {
        Format::Json => Json(Aggregated {
            aggregate: name.to_owned(),
            interval_seconds: interval as f64 / 1e6,
            buckets: views.collect(),
        })
        .into_response(),
        Format::Ndjson => {
            let mut out = Vec::new();
            for v in views {
                ndjson_line(&mut out, &v);
            }
            typed(Body::from(out), Format::Ndjson)
        }
        Format::Csv => {
            let mut w = csv::Writer::from_writer(Vec::new());
            let _ = w.write_record(["start", "count", name]);
            for v in views {
                let value = v.value.map(|x| x.to_string()).unwrap_or_default();
                let _ = w.write_record([v.start, v.count.to_string(), value]);
            }
            typed(Body::from(w.into_inner().unwrap_or_default()), Format::Csv)
        }
    }
}

fn ndjson_line(out: &mut Vec<u8>, v: &impl Serialize) {
    if serde_json::to_writer(&mut *out, v).is_ok() {
        out.push(b'\n');
    }
}

fn typed(body: Body, format: Format) -> Response {
    let mut res = body.into_response();
    res.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(match format {
            Format::Csv => "text/csv; charset=utf-8",
            _ => "application/x-ndjson",
        }),
    );
    res
}

fn export_name(channel: &Channel, what: &str, format: Format) -> String {
    let ext = if format == Format::Csv {
        "csv"
    } else {
        "ndjson"
    };
    format!("{}-{what}.{ext}", channel.id)
}

fn archive_name(channel: &Channel) -> String {
    format!("{}-messages.ndjson.zst", channel.id)
}

type Chunks =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<Bytes, ExportError>> + Send>>;

/// A store failure in the middle of a stream: the response is already on
/// its way, so the connection is cut and the client sees a short transfer.
#[derive(Debug, thiserror::Error)]
#[error("export failed: {0}")]
pub struct ExportError(String);

fn rows_boxed(
    s: impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send + 'static,
) -> Chunks {
    Box::pin(s)
}

fn stream(
    format: Format,
    filename: String,
    rows: impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send + 'static,
) -> Response {
    let mut res = typed(Body::from_stream(rows), format);
    if let Ok(v) = HeaderValue::from_str(&format!("attachment; filename=\"{filename}\"")) {
        res.headers_mut().insert(header::CONTENT_DISPOSITION, v);
    }
    res
}

/// Pages through the store, one chunk of rows per item, until it runs out
/// or `total` rows went.
fn pages<Q, T, F, Fut>(
    q: Q,
    total: Option<u64>,
    fetch: F,
    cursor: fn(&T) -> Option<Q>,
    render: impl Fn(&[T], bool) -> Bytes + Send + 'static,
) -> impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send
where
    Q: Send + 'static,
    T: Send + 'static,
    F: Fn(Q) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = Result<(Vec<T>, u32), moat_core::store::StoreError>> + Send,
{
    futures_util::stream::unfold(
        (Some(q), total, true, fetch, render),
        move |(q, left, first, fetch, render)| async move {
            let q = q?;
            if left == Some(0) {
                return None;
            }
            let (mut rows, asked) = match fetch(q).await {
                Ok(r) => r,
                Err(e) => {
                    tracing::error!(error = %e, "an export failed reading the store");
                    return Some((
                        Err(ExportError(e.to_string())),
                        (None, left, false, fetch, render),
                    ));
                }
            };
            let full = rows.len() == asked as usize;
            let left = left.map(|l| {
                let keep = (l as usize).min(rows.len());
                rows.truncate(keep);
                l - keep as u64
            });
            let next = if full {
                rows.last().and_then(cursor)
            } else {
                None
            };
            let chunk = render(&rows, first);
            Some((Ok(chunk), (next, left, false, fetch, render)))
        },
    )
}

fn message_rows(
    store: Arc<dyn MessageStore>,
    q: MessageQuery,
    total: Option<u64>,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send {
    let template = q.clone();
    pages(
        (q, template),
        total,
        move |(q, template): (MessageQuery, MessageQuery)| {
            let store = Arc::clone(&store);
            async move {
                let rows = store.messages(&q).await?;
                Ok((
                    rows.into_iter().map(|m| (m, template.clone())).collect(),
                    q.limit,
                ))
            }
        },
        |(m, template): &(Stored, MessageQuery)| {
            Some((
                MessageQuery {
                    after: Some(m.seq),
                    ..template.clone()
                },
                template.clone(),
            ))
        },
        move |rows: &[(Stored, MessageQuery)], first| match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                if first {
                    let _ = w.write_record([
                        "seq",
                        "id",
                        "received_at",
                        "publisher",
                        "subtopic",
                        "protocol",
                        "content_type",
                        "payload",
                        "payload_base64",
                    ]);
                }
                for (m, _) in rows {
                    let v = MessageView::new(m.seq, &m.message);
                    let _ = w.write_record([
                        v.seq.to_string(),
                        v.id.to_string(),
                        v.received_at,
                        v.publisher,
                        v.subtopic,
                        v.protocol.as_str().to_owned(),
                        v.content_type.as_str().to_owned(),
                        v.payload.map(|p| p.get().to_owned()).unwrap_or_default(),
                        v.payload_base64.unwrap_or_default(),
                    ]);
                }
                Bytes::from(w.into_inner().unwrap_or_default())
            }
            _ => {
                let mut out = Vec::new();
                for (m, _) in rows {
                    ndjson_line(&mut out, &MessageView::new(m.seq, &m.message));
                }
                Bytes::from(out)
            }
        },
    )
}

fn record_rows(
    store: Arc<dyn MessageStore>,
    q: RecordQuery,
    total: Option<u64>,
    format: Format,
) -> impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send {
    pages(
        q,
        total,
        move |q: RecordQuery| {
            let store = Arc::clone(&store);
            async move {
                let rows = store.records(&q).await?;
                Ok((rows.into_iter().map(|r| (r, q.clone())).collect(), q.limit))
            }
        },
        |(r, q): &(StoredRecord, RecordQuery)| {
            Some(RecordQuery {
                after: Some((micros(r), r.seq, r.index)),
                ..q.clone()
            })
        },
        move |rows: &[(StoredRecord, RecordQuery)], first| match format {
            Format::Csv => {
                let mut w = csv::Writer::from_writer(Vec::new());
                if first {
                    let _ = w.write_record([
                        "time",
                        "name",
                        "unit",
                        "value",
                        "string_value",
                        "bool_value",
                        "data_value",
                        "sum",
                        "publisher",
                        "subtopic",
                        "seq",
                    ]);
                }
                for (r, _) in rows {
                    let v = RecordView::from(r);
                    let opt = |x: Option<String>| x.unwrap_or_default();
                    let _ = w.write_record([
                        micros_rfc3339(micros(r)),
                        v.n,
                        opt(v.u),
                        opt(v.v.map(|x| x.to_string())),
                        opt(v.vs),
                        opt(v.vb.map(|x| x.to_string())),
                        opt(v.vd),
                        opt(v.s.map(|x| x.to_string())),
                        v.publisher,
                        v.subtopic,
                        v.seq.to_string(),
                    ]);
                }
                Bytes::from(w.into_inner().unwrap_or_default())
            }
            _ => {
                let mut out = Vec::new();
                for (r, _) in rows {
                    ndjson_line(&mut out, &RecordView::from(r));
                }
                Bytes::from(out)
            }
        },
    )
}

/// Compresses a stream of NDJSON chunks into one zstd frame, chunk by chunk.
fn zstd_stream(
    rows: Chunks,
    encoder: zstd::stream::write::Encoder<'static, Vec<u8>>,
) -> impl futures_util::Stream<Item = Result<Bytes, ExportError>> + Send {
    use std::io::Write;
    futures_util::stream::unfold((rows, Some(encoder)), |(mut rows, encoder)| async move {
        let mut encoder = encoder?;
        match futures_util::StreamExt::next(&mut rows).await {
            Some(Ok(chunk)) => {
                let out = encoder
                    .write_all(&chunk)
                    .and_then(|()| encoder.flush())
                    .map(|()| Bytes::from(std::mem::take(encoder.get_mut())))
                    .map_err(|e| ExportError(e.to_string()));
                let next = out.is_ok().then_some(encoder);
                Some((out, (rows, next)))
            }
            Some(Err(e)) => Some((Err(e), (rows, None))),
            None => {
                let out = encoder
                    .finish()
                    .map(Bytes::from)
                    .map_err(|e| ExportError(e.to_string()));
                Some((out, (rows, None)))
            }
        }
    })
}
