//! The message store against a real encrypted file in a temporary directory.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use moat_core::authz::Subject;
use moat_core::message::*;
use moat_core::senml::{Record, Value};
use moat_core::store::StoreError;
use moat_core::*;
use rusqlite::{OpenFlags, params_from_iter};

use super::read::{self, Select};
use super::writer::{EXPIRE_CHUNK, EXPIRING};
use super::{SqliteMessageStore, chunk, columns};
use crate::connect;

const KEY: [u8; 32] = [3; 32];
/// 2023-11-14T22:13:20Z, a multiple of every interval used here.
const T0: i64 = 1_700_000_000_000_000;

fn open(dir: &Path) -> SqliteMessageStore {
    SqliteMessageStore::open(&dir.join("messages.db"), &KEY).expect("opens")
}

/// Seconds for `us` microseconds, computed as the store computes them, so
/// that times round-trip exactly.
fn secs(us: i64) -> f64 {
    columns::seconds(us)
}

fn device() -> Subject {
    Subject::Device(DeviceId::new())
}

/// A message of `channel`, in the tenant a channel belongs to here (the one
/// with the same id): the messages of one channel and one commit share a
/// chunk.
fn message(channel: ChannelId, received_at: i64, records: Vec<Record>) -> Message {
    Message {
        id: MessageId::new(),
        tenant_id: TenantId(channel.0),
        channel_id: channel,
        subtopic: String::new(),
        publisher: device(),
        protocol: Protocol::Http,
        content_type: ContentType::SenmlJson,
        payload: b"[]".to_vec(),
        received_at,
        records,
    }
}

fn number(name: &str, time_us: i64, v: f64) -> Record {
    record(name, time_us, Some(Value::Number(v)))
}

fn record(name: &str, time_us: i64, value: Option<Value>) -> Record {
    Record {
        name: name.into(),
        unit: None,
        value,
        sum: None,
        time: secs(time_us),
        update_time: None,
    }
}

async fn append(store: &SqliteMessageStore, messages: Vec<Message>) -> Vec<i64> {
    let messages = messages.into_iter().map(Arc::new).collect();
    store.append(messages).await.expect("appends")
}

fn all_messages(channel: ChannelId) -> MessageQuery {
    MessageQuery {
        channel,
        limit: 100_000,
        ..MessageQuery::default()
    }
}

fn all_records(channel: ChannelId) -> RecordQuery {
    RecordQuery {
        channel,
        limit: 100_000,
        ..RecordQuery::default()
    }
}

#[tokio::test]
async fn every_field_and_value_kind_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let channel = ChannelId::new();
    let t = T0 + 123_456;
    let senml = Message {
        subtopic: "floor/1".into(),
        payload: b"[{\"n\":\"t\"}]".to_vec(),
        records: vec![
            Record {
                unit: Some("Cel".into()),
                update_time: Some(60.5),
                ..number("urn:dev:temp", t, 21.25)
            },
            record("label", t + 1, Some(Value::String("hall".into()))),
            record("open", t + 2, Some(Value::Bool(true))),
            record("blob", t + 3, Some(Value::Data(vec![0, 1, 255]))),
            Record {
                sum: Some(3.5),
                ..record("energy", t - 7, None)
            },
            number("neg", -1_500_001, -0.5),
        ],
        ..message(channel, T0, vec![])
    };
    let others = [
        (
            Subject::User(UserId::new()),
            Protocol::Websocket,
            ContentType::SenmlCbor,
        ),
        (
            Subject::ApiKey(ApiKeyId::new()),
            Protocol::Mqtt,
            ContentType::Json,
        ),
        (device(), Protocol::Coap, ContentType::OctetStream),
    ]
    .map(|(publisher, protocol, content_type)| Message {
        publisher,
        protocol,
        content_type,
        payload: vec![0xff, 0],
        ..message(channel, T0 + 1, vec![])
    });
    let mut sent = vec![senml];
    sent.extend(others);
    let seqs = append(&store, sent.clone()).await;
    assert_eq!(seqs.len(), 4);
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");

    let read = store.messages(&all_messages(channel)).await.unwrap();
    let expected: Vec<Stored> = seqs
        .iter()
        .zip(&sent)
        .map(|(&seq, m)| Stored {
            seq,
            message: Message {
                records: vec![],
                ..m.clone()
            },
        })
        .collect();
    assert_eq!(read, expected);

    let mut expected: Vec<StoredRecord> = sent[0]
        .records
        .iter()
        .enumerate()
        .map(|(i, r)| StoredRecord {
            seq: seqs[0],
            index: i as u32,
            publisher: sent[0].publisher.to_string(),
            subtopic: "floor/1".into(),
            record: r.clone(),
        })
        .collect();
    expected.sort_by_key(|r| (columns::micros(r.record.time), r.seq, r.index));
    assert_eq!(
        store.records(&all_records(channel)).await.unwrap(),
        expected
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_appends_are_committed_in_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(dir.path()));
    let channel = ChannelId::new();
    // Hold SQLite's write lock from another connection, so that the appends
    // pile up in the queue behind the first one, whatever the disk's speed.
    let blocker = connect(
        &dir.path().join("messages.db"),
        &KEY,
        OpenFlags::SQLITE_OPEN_READ_WRITE,
    )
    .unwrap();
    blocker.execute_batch("BEGIN IMMEDIATE").unwrap();
    let tasks: Vec<_> = (0..200)
        .map(|i| {
            let store = Arc::clone(&store);
            tokio::spawn(async move {
                let m = message(channel, T0 + i, vec![number("n", T0 + i, i as f64)]);
                append(&store, vec![m]).await
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    blocker.execute_batch("ROLLBACK").unwrap();
    let mut seqs = Vec::new();
    for t in tasks {
        seqs.extend(t.await.unwrap());
    }
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(seqs.len(), 200);
    let batches = store.batches();
    assert!((1..200).contains(&batches), "{batches} batches");
    let stored = store.messages(&all_messages(channel)).await.unwrap();
    assert_eq!(stored.len(), 200);
    assert_eq!(
        store.records(&all_records(channel)).await.unwrap().len(),
        200
    );
}

/// Callers whose next append waits for their last one's commit (as an
/// MQTT connection's do) are committed as soon as they are all back, not at
/// the end of the writer's linger: with a two-second linger, 400 appends
/// from 8 such callers would otherwise take 50 rounds of two seconds each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_stops_waiting_for_company_once_its_callers_are_back() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        SqliteMessageStore::open_with(
            &dir.path().join("messages.db"),
            &KEY,
            Duration::from_secs(2),
        )
        .unwrap(),
    );
    let channel = ChannelId::new();
    let done = Arc::new(AtomicUsize::new(0));
    let callers: Vec<_> = (0..8)
        .map(|i| {
            let (store, done) = (Arc::clone(&store), Arc::clone(&done));
            tokio::spawn(async move {
                loop {
                    append(&store, vec![message(channel, T0 + i, Vec::new())]).await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let all_in = tokio::time::timeout(Duration::from_secs(30), async {
        while done.load(Ordering::Relaxed) < 400 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    for c in &callers {
        c.abort();
    }
    all_in.expect("400 appends within 30 s: no batch waited out its linger");
    let batches = store.batches();
    assert!(batches < 300, "{batches} batches: the appends were grouped");
}

#[tokio::test]
async fn appended_messages_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let channel = ChannelId::new();
    let sent = vec![
        message(channel, T0, vec![number("a", T0, 1.0)]),
        message(channel, T0 + 1, vec![]),
    ];
    let store = open(dir.path());
    let seqs = append(&store, sent.clone()).await;
    drop(store);

    let store = open(dir.path());
    let read = store.messages(&all_messages(channel)).await.unwrap();
    assert_eq!(read.iter().map(|s| s.seq).collect::<Vec<_>>(), seqs);
    assert_eq!(read[1].message, sent[1]);
    let records = store.records(&all_records(channel)).await.unwrap();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].record, sent[0].records[0]);
    // Seqs keep growing across restarts.
    let more = append(&store, vec![message(channel, T0 + 2, vec![])]).await;
    assert!(more[0] > seqs[1]);
}

#[tokio::test]
async fn a_wrong_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    drop(open(dir.path()));
    let path = dir.path().join("messages.db");
    assert!(matches!(
        SqliteMessageStore::open(&path, &[4; 32]),
        Err(StoreError::WrongKey)
    ));
}

#[tokio::test]
async fn message_queries_filter_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let (p1, p2) = (device(), device());
    // Ten messages on `a`, received a second apart, alternating publisher
    // and subtopic, interleaved with `b`'s; then one on `a` that was
    // received first but committed last.
    let mut sent = Vec::new();
    for i in 0..10 {
        sent.push(Message {
            publisher: if i % 2 == 0 { p1 } else { p2 },
            subtopic: if i < 5 { "x" } else { "y" }.into(),
            ..message(a, T0 + i * 1_000_000, vec![])
        });
        sent.push(message(b, T0 + i * 1_000_000, vec![]));
    }
    sent.push(message(a, T0 - 1, vec![]));
    append(&store, sent).await;

    let check = |q: MessageQuery, expected: Vec<i64>| {
        let store = &store;
        async move {
            let got: Vec<i64> = store
                .messages(&q)
                .await
                .unwrap()
                .iter()
                .map(|s| (s.message.received_at - T0).div_euclid(1_000_000))
                .collect();
            assert_eq!(got, expected, "{q:?}");
        }
    };
    let all = all_messages(a);
    check(all.clone(), vec![0, 1, 2, 3, 4, 5, 6, 7, 8, 9, -1]).await;
    check(all_messages(ChannelId::new()), vec![]).await;
    let q = MessageQuery {
        from: Some(T0 + 3_000_000),
        to: Some(T0 + 6_000_000),
        ..all.clone()
    };
    check(q, vec![3, 4, 5]).await;
    let q = MessageQuery {
        to: Some(T0 + 1),
        ..all.clone()
    };
    check(q, vec![0, -1]).await;
    let q = MessageQuery {
        from: Some(T0 + 20_000_000),
        ..all.clone()
    };
    check(q, vec![]).await;
    let q = MessageQuery {
        publisher: Some(p2.to_string()),
        ..all.clone()
    };
    check(q, vec![1, 3, 5, 7, 9]).await;
    let q = MessageQuery {
        subtopic: Some("y".into()),
        from: Some(T0 + 6_000_000),
        ..all.clone()
    };
    check(q, vec![6, 7, 8, 9]).await;
    let q = MessageQuery {
        limit: 3,
        ..all.clone()
    };
    check(q, vec![0, 1, 2]).await;

    // Paging by the cursor, with and without a window, neither repeats nor
    // skips.
    for window in [None, Some((T0 - 1, T0 + 4_000_001))] {
        let q = MessageQuery {
            from: window.map(|w| w.0),
            to: window.map(|w| w.1),
            ..all.clone()
        };
        let whole = store.messages(&q).await.unwrap();
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = MessageQuery {
                after,
                limit: 3,
                ..q.clone()
            };
            let page = store.messages(&page).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some(last.seq);
            paged.extend(page);
        }
        assert_eq!(paged, whole);
        assert_eq!(whole.len(), if window.is_some() { 6 } else { 11 });
    }
}

#[tokio::test]
async fn record_queries_filter_compare_and_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let p2 = device();
    let s = 1_000_000;
    // Temperature and humidity at the same times, a label, and a second
    // message with temperatures at the same times as the first's.
    let first = Message {
        subtopic: "x".into(),
        ..message(
            a,
            T0,
            vec![
                number("temp", T0, 20.0),
                number("hum", T0, 40.0),
                number("temp", T0 + s, 22.0),
                number("hum", T0 + s, 45.0),
                record("label", T0 + s, Some(Value::String("x".into()))),
                number("temp", T0 + 2 * s, 25.0),
            ],
        )
    };
    let second = Message {
        publisher: p2,
        subtopic: "y".into(),
        ..message(
            a,
            T0,
            vec![number("temp", T0, 30.0), number("temp", T0 + 3 * s, 18.0)],
        )
    };
    let other = message(b, T0, vec![number("temp", T0, 99.0)]);
    let seqs = append(&store, vec![first, second, other]).await;
    let (m1, m2) = (seqs[0], seqs[1]);

    let check = |q: RecordQuery, expected: Vec<(i64, u32)>| {
        let store = &store;
        async move {
            let got: Vec<(i64, u32)> = store
                .records(&q)
                .await
                .unwrap()
                .iter()
                .map(|r| (r.seq, r.index))
                .collect();
            assert_eq!(got, expected, "{q:?}");
        }
    };
    let all = all_records(a);
    let everything = vec![
        (m1, 0),
        (m1, 1),
        (m2, 0),
        (m1, 2),
        (m1, 3),
        (m1, 4),
        (m1, 5),
        (m2, 1),
    ];
    check(all.clone(), everything.clone()).await;
    let temp = RecordQuery {
        name: Some("temp".into()),
        ..all.clone()
    };
    check(
        temp.clone(),
        vec![(m1, 0), (m2, 0), (m1, 2), (m1, 5), (m2, 1)],
    )
    .await;
    let q = RecordQuery {
        from: Some(T0 + s),
        to: Some(T0 + 3 * s),
        ..temp.clone()
    };
    check(q, vec![(m1, 2), (m1, 5)]).await;
    let q = RecordQuery {
        from: Some(T0 + s),
        to: Some(T0 + 2 * s),
        ..all.clone()
    };
    check(q, vec![(m1, 2), (m1, 3), (m1, 4)]).await;
    let q = RecordQuery {
        publisher: Some(p2.to_string()),
        ..all.clone()
    };
    check(q, vec![(m2, 0), (m2, 1)]).await;
    let q = RecordQuery {
        subtopic: Some("x".into()),
        ..temp.clone()
    };
    check(q, vec![(m1, 0), (m1, 2), (m1, 5)]).await;

    // Comparators hold together, and never match a value that is no number.
    use Comparator::*;
    for (value, expected) in [
        (vec![(Gt, 22.0)], vec![(m1, 1), (m2, 0), (m1, 3), (m1, 5)]),
        (vec![(Ge, 22.0), (Lt, 30.0)], vec![(m1, 2), (m1, 5)]),
        (vec![(Le, 20.0)], vec![(m1, 0), (m2, 1)]),
        (vec![(Eq, 45.0)], vec![(m1, 3)]),
        (vec![(Lt, 0.0)], vec![]),
    ] {
        check(
            RecordQuery {
                value,
                ..all.clone()
            },
            expected,
        )
        .await;
    }

    // Paging, across names and within one, neither repeats nor skips.
    let later = RecordQuery {
        from: Some(T0 + s),
        ..all.clone()
    };
    for q in [all.clone(), temp.clone(), later] {
        let whole = store.records(&q).await.unwrap();
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = RecordQuery {
                after,
                limit: 2,
                ..q.clone()
            };
            let page = store.records(&page).await.unwrap();
            let Some(last) = page.last() else { break };
            after = Some((columns::micros(last.record.time), last.seq, last.index));
            paged.extend(page);
        }
        assert_eq!(paged, whole);
    }
    assert_eq!(store.records(&all).await.unwrap().len(), everything.len());
}

#[tokio::test]
async fn aggregates_fill_epoch_aligned_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let channel = ChannelId::new();
    let s = 1_000_000;
    let records = vec![
        // Bucket T0: 1, 3, 5.
        number("temp", T0 + s, 1.0),
        number("temp", T0 + 2 * s, 3.0),
        number("temp", T0 + 9 * s + 999_999, 5.0),
        // Bucket T0 + 10 s: 10 and a string, which counts but has no value.
        number("temp", T0 + 15 * s, 10.0),
        record("temp", T0 + 15 * s, Some(Value::String("x".into()))),
        // Bucket T0 + 20 s: no number at all. Nothing in T0 + 30 s.
        record("temp", T0 + 20 * s, Some(Value::Bool(true))),
        // Bucket T0 + 40 s.
        number("temp", T0 + 40 * s, -2.0),
        number("temp", T0 + 41 * s, 4.0),
        // Another name, in bucket T0.
        number("hum", T0, 50.0),
    ];
    append(&store, vec![message(channel, T0, records)]).await;
    let temp = RecordQuery {
        name: Some("temp".into()),
        ..all_records(channel)
    };
    let interval = 10 * s;
    let check = |q: RecordQuery, agg: Aggregate, expected: Vec<(i64, u64, Option<f64>)>| {
        let store = &store;
        async move {
            let got = store.aggregate(&q, agg, interval).await.unwrap();
            let expected: Vec<Bucket> = expected
                .into_iter()
                .map(|(start, count, value)| Bucket {
                    start: T0 + start * s,
                    count,
                    value,
                })
                .collect();
            assert_eq!(got, expected, "{agg:?}");
        }
    };
    use Aggregate::*;
    check(
        temp.clone(),
        Count,
        vec![
            (0, 3, Some(3.0)),
            (10, 2, Some(2.0)),
            (20, 1, Some(1.0)),
            (40, 2, Some(2.0)),
        ],
    )
    .await;
    check(
        temp.clone(),
        Min,
        vec![
            (0, 3, Some(1.0)),
            (10, 2, Some(10.0)),
            (20, 1, None),
            (40, 2, Some(-2.0)),
        ],
    )
    .await;
    check(
        temp.clone(),
        Max,
        vec![
            (0, 3, Some(5.0)),
            (10, 2, Some(10.0)),
            (20, 1, None),
            (40, 2, Some(4.0)),
        ],
    )
    .await;
    check(
        temp.clone(),
        Sum,
        vec![
            (0, 3, Some(9.0)),
            (10, 2, Some(10.0)),
            (20, 1, None),
            (40, 2, Some(2.0)),
        ],
    )
    .await;
    check(
        temp.clone(),
        Avg,
        vec![
            (0, 3, Some(3.0)),
            (10, 2, Some(10.0)),
            (20, 1, None),
            (40, 2, Some(1.0)),
        ],
    )
    .await;
    // Across names, and with the query's filters.
    check(
        all_records(channel),
        Sum,
        vec![
            (0, 4, Some(59.0)),
            (10, 2, Some(10.0)),
            (20, 1, None),
            (40, 2, Some(2.0)),
        ],
    )
    .await;
    let q = RecordQuery {
        from: Some(T0 + 2 * s),
        to: Some(T0 + 41 * s),
        value: vec![(Comparator::Lt, 5.0)],
        ..temp.clone()
    };
    check(q, Avg, vec![(0, 1, Some(3.0)), (40, 1, Some(-2.0))]).await;

    // Before the epoch, buckets still start at multiples of the interval.
    let old = ChannelId::new();
    append(
        &store,
        vec![message(old, T0, vec![number("t", -1_500_000, 7.0)])],
    )
    .await;
    let got = store
        .aggregate(&all_records(old), Aggregate::Max, s)
        .await
        .unwrap();
    assert_eq!(
        got,
        vec![Bucket {
            start: -2_000_000,
            count: 1,
            value: Some(7.0)
        }]
    );
    assert!(store.aggregate(&temp, Aggregate::Max, 0).await.is_err());
}

#[tokio::test]
async fn expiry_removes_only_a_channels_older_messages_and_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let (a, b) = (ChannelId::new(), ChannelId::new());
    // More than two chunks' worth on `a`.
    let n = 2 * EXPIRE_CHUNK as i64 + 500;
    let sent_a: Vec<Message> = (0..n)
        .map(|i| {
            message(
                a,
                T0 + i,
                vec![number("t", T0, i as f64), number("u", T0 + i, 0.0)],
            )
        })
        .collect();
    let sent_b: Vec<Message> = (0..10)
        .map(|i| message(b, T0 + i, vec![number("t", T0 + i, i as f64)]))
        .collect();
    append(&store, sent_a).await;
    append(&store, sent_b).await;

    let cut = n - 300;
    assert_eq!(store.expire(a, T0 + cut).await.unwrap(), cut as u64);
    let left = store.messages(&all_messages(a)).await.unwrap();
    assert_eq!(left.len(), 300);
    assert!(left.iter().all(|s| s.message.received_at >= T0 + cut));
    let records = store.records(&all_records(a)).await.unwrap();
    assert_eq!(records.len(), 600);
    assert!(records.iter().all(|r| left.iter().any(|s| s.seq == r.seq)));
    assert_eq!(store.messages(&all_messages(b)).await.unwrap().len(), 10);
    assert_eq!(store.records(&all_records(b)).await.unwrap().len(), 10);

    assert_eq!(store.expire(a, T0 + cut).await.unwrap(), 0);
    assert_eq!(store.expire(ChannelId::new(), i64::MAX).await.unwrap(), 0);
    // Appends made after an expiry get fresh seqs, even when it deleted the
    // newest messages.
    let before = store.messages(&all_messages(b)).await.unwrap();
    assert_eq!(store.expire(b, i64::MAX).await.unwrap(), 10);
    let seq = append(&store, vec![message(b, T0, vec![])]).await[0];
    assert!(seq > before.last().unwrap().seq);
}

/// The plan SQLite picks for `s`, one line per step.
fn plan(conn: &rusqlite::Connection, s: &Select) -> String {
    let mut stmt = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {}", s.sql))
        .unwrap();
    let rows = stmt
        .query_map(params_from_iter(&s.args), |r| r.get::<_, String>(3))
        .unwrap();
    rows.map(Result::unwrap).collect::<Vec<_>>().join("\n")
}

#[tokio::test]
async fn stored_channels_are_listed_once_each_until_their_messages_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    assert!(store.stored_channels().await.unwrap().is_empty());
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let sent = (0..5)
        .flat_map(|i| [message(a, T0 + i, vec![]), message(b, T0 + i, vec![])])
        .collect();
    append(&store, sent).await;
    let mut listed = store.stored_channels().await.unwrap();
    listed.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(listed, both);
    assert_eq!(store.expire(a, i64::MAX).await.unwrap(), 5);
    assert_eq!(store.stored_channels().await.unwrap(), [b]);
    // One seek per channel, never a scan of every message.
    let conn = connect(
        &dir.path().join("messages.db"),
        &KEY,
        OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let plan = plan(
        &conn,
        &Select {
            sql: read::STORED_CHANNELS.into(),
            args: Vec::new(),
        },
    );
    assert!(
        plan.contains("SEARCH message_chunks USING COVERING INDEX"),
        "{plan}"
    );
    assert!(!plan.contains("SCAN message_chunks"), "{plan}");
}

#[tokio::test]
async fn queries_use_the_intended_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let path = dir.path().join("messages.db");
    let conn = connect(&path, &KEY, OpenFlags::SQLITE_OPEN_READ_ONLY).unwrap();
    let channel = ChannelId::new();
    let check = |s: Select, expected: &str| {
        let plan = plan(&conn, &s);
        assert!(plan.contains(expected), "{}\n{plan}", s.sql);
        assert!(!plan.contains("TEMP B-TREE"), "{}\n{plan}", s.sql);
    };

    let records = all_records(channel);
    let filtered = RecordQuery {
        from: Some(T0),
        to: Some(T0 + 1),
        after: Some((T0, 3, 1)),
        publisher: Some("device:x".into()),
        value: vec![(Comparator::Gt, 1.0)],
        ..records.clone()
    };
    for q in [records, filtered] {
        let named = RecordQuery {
            name: Some("temp".into()),
            ..q.clone()
        };
        check(
            read::records_sql(&named),
            "SEARCH records USING PRIMARY KEY (channel=? AND name=?",
        );
        check(
            read::aggregate_sql(&named),
            "SEARCH records USING PRIMARY KEY (channel=? AND name=?",
        );
        check(
            read::records_sql(&q),
            "SEARCH records USING INDEX records_channel_time (channel=?",
        );
        check(
            read::aggregate_sql(&q),
            "SEARCH records USING PRIMARY KEY (channel=?",
        );
    }
    let named = RecordQuery {
        name: Some("temp".into()),
        from: Some(T0),
        after: Some((T0, 3, 1)),
        ..all_records(channel)
    };
    check(
        read::records_sql(&named),
        "(channel=? AND name=? AND (time,seq,idx)>(?,?,?))",
    );

    let messages = MessageQuery {
        after: Some(7),
        from: Some(T0),
        to: Some(T0 + 1),
        subtopic: Some("x".into()),
        ..all_messages(channel)
    };
    check(
        read::chunks_sql(&messages, 8, Some(9000)),
        "SEARCH message_chunks USING INDEX message_chunks_channel_seq (channel=? AND first_seq>? AND first_seq<?)",
    );
    check(
        read::window_sql(&messages).unwrap(),
        "SEARCH message_chunks USING INDEX message_chunks_channel_time (channel=? AND first_received_at>? AND first_received_at<?)",
    );

    let expiring = Select {
        sql: EXPIRING.into(),
        args: vec![channel.0.as_bytes().to_vec().into(), T0.into()],
    };
    check(
        expiring,
        "SEARCH message_chunks USING INDEX message_chunks_channel_time (channel=? AND first_received_at<?)",
    );
    let delete = Select {
        sql: "DELETE FROM records WHERE seq = ?".into(),
        args: vec![1.into()],
    };
    check(delete, "SEARCH records USING INDEX records_seq (seq=?)");
    drop(store);
}

#[tokio::test]
async fn a_read_whose_caller_stops_waiting_is_interrupted() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let channel = ChannelId::new();
    let batch = (0..2000)
        .map(|i| message(channel, T0 + i, vec![number("temp", T0 + i * 1000, 1.0)]))
        .collect();
    append(&store, batch).await;
    let q = all_records(channel);
    // Dropped at once: the read runs with its cancellation already set.
    let gone =
        tokio::time::timeout(Duration::ZERO, store.aggregate(&q, Aggregate::Sum, 1000)).await;
    assert!(gone.is_err(), "the read did not finish in no time");
    for _ in 0..500 {
        if store.cancelled_reads() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(store.cancelled_reads(), 1);
    // Every reader still answers, in full.
    for _ in 0..super::READERS {
        let buckets = store
            .aggregate(&q, Aggregate::Count, 1_000_000_000)
            .await
            .unwrap();
        assert_eq!(buckets.iter().map(|b| b.count).sum::<u64>(), 2000);
    }
    assert_eq!(store.cancelled_reads(), 1);
}

#[tokio::test]
async fn retained_messages_are_kept_per_topic_across_reopening_until_cleared_or_expired() {
    use moat_core::message::retained::{RetainedChange, RetainedMessage, RetainedStore};
    let dir = tempfile::tempdir().unwrap();
    let kept = |topic: &str, payload: &[u8], expires_at: Option<i64>| RetainedMessage {
        topic: topic.into(),
        qos: 1,
        payload: payload.to_vec(),
        properties: vec![0],
        expires_at,
    };
    {
        let store = open(dir.path());
        assert!(store.load_retained(T0).await.unwrap().is_empty());
        store
            .apply_retained(vec![
                RetainedChange::Keep(kept("a/1", b"first", None)),
                RetainedChange::Keep(kept("a/2", b"two", None)),
                RetainedChange::Keep(kept("a/3", b"expires", Some(T0 + 10))),
                RetainedChange::Keep(kept("a/4", b"later", Some(T0 + 1_000_000))),
                // The last change to a topic wins, in order.
                RetainedChange::Keep(kept("a/1", b"second", None)),
                RetainedChange::Clear("a/2".into()),
                RetainedChange::Clear("never/kept".into()),
            ])
            .await
            .unwrap();
    }
    let store = open(dir.path());
    let loaded = store.load_retained(T0 + 10).await.unwrap();
    assert_eq!(
        loaded,
        vec![
            kept("a/1", b"second", None),
            kept("a/4", b"later", Some(T0 + 1_000_000))
        ]
    );
    // The expired one is gone from the file, not just skipped.
    assert_eq!(store.load_retained(T0).await.unwrap().len(), 2);
}

#[tokio::test]
async fn mqtt_sessions_are_kept_across_reopening_with_their_subscriptions_and_queues() {
    use moat_core::message::sessions::{
        SessionChange, SessionKey, SessionStore, StoredSession, StoredSubscription, StoredWill,
    };
    let dir = tempfile::tempdir().unwrap();
    let device: moat_core::DeviceId = uuid::Uuid::now_v7().into();
    let key = |owner: Option<moat_core::DeviceId>, id: &str| SessionKey {
        owner,
        client_id: id.into(),
    };
    let sub = |filter: &str, options: u8, id: Option<u32>| StoredSubscription {
        filter: filter.into(),
        options,
        id,
    };
    let subscribed = |k: SessionKey, s: StoredSubscription| SessionChange::Subscribed {
        key: k,
        subscription: s,
    };
    {
        let store = open(dir.path());
        assert!(store.load_sessions().await.unwrap().is_empty());
        store
            .apply_sessions(vec![
                SessionChange::Connected {
                    key: key(Some(device), "a"),
                    expiry: 60,
                    fresh: true,
                },
                subscribed(key(Some(device), "a"), sub("x/#", 1, Some(7))),
                subscribed(key(Some(device), "a"), sub("y", 0, None)),
                // Replaces the options of "y".
                subscribed(key(Some(device), "a"), sub("y", 2, None)),
                subscribed(key(Some(device), "a"), sub("z", 0, None)),
                SessionChange::Unsubscribed {
                    key: key(Some(device), "a"),
                    filter: "z".into(),
                },
                SessionChange::WillPending {
                    key: key(Some(device), "a"),
                    will: StoredWill {
                        message: b"cancelled".to_vec(),
                        at: T0,
                    },
                },
                SessionChange::WillGone(key(Some(device), "a")),
                SessionChange::WillPending {
                    key: key(Some(device), "a"),
                    will: StoredWill {
                        message: b"gone".to_vec(),
                        at: T0 + 5,
                    },
                },
                // The same client id without a device: another session.
                SessionChange::Connected {
                    key: key(None, "a"),
                    expiry: 5,
                    fresh: true,
                },
                subscribed(key(None, "a"), sub("dev/+", 0, None)),
                SessionChange::Disconnected {
                    key: key(None, "a"),
                    at: T0,
                    expiry: 10,
                },
                SessionChange::Queued {
                    key: key(None, "a"),
                    delivery: b"superseded".to_vec(),
                },
                // Replaces what was saved and queued before.
                SessionChange::Saved {
                    key: key(None, "a"),
                    queue: b"held".to_vec(),
                },
                SessionChange::Queued {
                    key: key(None, "a"),
                    delivery: b"q1".to_vec(),
                },
                SessionChange::Queued {
                    key: key(None, "a"),
                    delivery: b"q2".to_vec(),
                },
                SessionChange::Queued {
                    key: key(Some(device), "nobody"),
                    delivery: b"lost".to_vec(),
                },
                // Changes to sessions the store lacks do nothing.
                subscribed(key(Some(device), "nobody"), sub("q", 0, None)),
                SessionChange::Connected {
                    key: key(Some(device), "gone"),
                    expiry: 60,
                    fresh: true,
                },
                subscribed(key(Some(device), "gone"), sub("q", 0, None)),
                SessionChange::Ended(key(Some(device), "gone")),
            ])
            .await
            .unwrap();
    }
    let store = open(dir.path());
    let mut loaded = store.load_sessions().await.unwrap();
    loaded.sort_by_key(|s| s.key.owner.is_some());
    assert_eq!(
        loaded,
        vec![
            StoredSession {
                key: key(None, "a"),
                expiry: 10,
                ended_at: Some(T0),
                subscriptions: vec![sub("dev/+", 0, None)],
                queue: Some(b"held".to_vec()),
                queued: vec![b"q1".to_vec(), b"q2".to_vec()],
                will: None,
            },
            StoredSession {
                key: key(Some(device), "a"),
                expiry: 60,
                ended_at: None,
                subscriptions: vec![sub("x/#", 1, Some(7)), sub("y", 2, None)],
                queue: None,
                queued: Vec::new(),
                will: Some(StoredWill {
                    message: b"gone".to_vec(),
                    at: T0 + 5,
                }),
            },
        ]
    );
    // What a session holds stays until a connection takes it.
    assert_eq!(store.load_sessions().await.unwrap().len(), 2);
    let anonymous = |all: Vec<StoredSession>| all.into_iter().find(|s| s.key.owner.is_none());
    let again = anonymous(store.load_sessions().await.unwrap()).unwrap();
    assert_eq!((again.queue.is_some(), again.queued.len()), (true, 2));
    store
        .apply_sessions(vec![SessionChange::Connected {
            key: key(None, "a"),
            expiry: 10,
            fresh: false,
        }])
        .await
        .unwrap();
    let taken = anonymous(store.load_sessions().await.unwrap()).unwrap();
    assert_eq!((taken.queue, taken.queued.len()), (None, 0));
    assert_eq!(
        taken.subscriptions.len(),
        1,
        "resuming keeps the subscriptions"
    );
    // A fresh session of the same key forgets the old one's subscriptions.
    store
        .apply_sessions(vec![SessionChange::Connected {
            key: key(Some(device), "a"),
            expiry: 30,
            fresh: true,
        }])
        .await
        .unwrap();
    let fresh = store.load_sessions().await.unwrap();
    let a = fresh.iter().find(|s| s.key.owner.is_some()).unwrap();
    assert_eq!((a.expiry, a.subscriptions.len(), &a.will), (30, 0, &None));
}

/// One append more than a chunk can hold, over more than the second a chunk
/// may span: it is split, and paging and time windows still see every
/// message once, in seq order.
#[tokio::test]
async fn a_batch_larger_and_wider_than_a_chunk_pages_and_windows_whole() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    let channel = ChannelId::new();
    let half = chunk::MAX_MESSAGES as i64;
    let later = T0 + 3_000_000;
    let sent: Vec<Message> = (0..half)
        .map(|i| message(channel, T0 + i, vec![]))
        .chain((0..half).map(|i| message(channel, later + i, vec![])))
        .collect();
    let seqs = append(&store, sent.clone()).await;
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    assert!(store.batches() >= 1);

    let mut read = Vec::new();
    let mut after = None;
    loop {
        let page = store
            .messages(&MessageQuery {
                after,
                limit: 1000,
                ..all_messages(channel)
            })
            .await
            .unwrap();
        let Some(last) = page.last() else { break };
        after = Some(last.seq);
        read.extend(page.into_iter().map(|s| (s.seq, s.message)));
    }
    let expected: Vec<(i64, Message)> = seqs.iter().copied().zip(sent).collect();
    assert_eq!(read, expected);

    let window = |from: i64, to: i64| {
        let store = &store;
        async move {
            store
                .messages(&MessageQuery {
                    from: Some(from),
                    to: Some(to),
                    ..all_messages(channel)
                })
                .await
                .unwrap()
                .into_iter()
                .map(|s| s.message.received_at)
                .collect::<Vec<_>>()
        }
    };
    assert_eq!(
        window(later, later + 100).await,
        (later..later + 100).collect::<Vec<_>>()
    );
    let across = window(T0 + half - 10, later + 10).await;
    assert_eq!(across.len(), 20);
    assert_eq!(window(T0 + half, later).await, Vec::<i64>::new());
}

/// A version 3 file: its messages move into chunks with their seqs, their
/// records stay theirs, and new messages get larger seqs than any the old
/// table handed out, expired ones included.
#[tokio::test]
async fn version_3_messages_move_into_chunks_keeping_their_seqs() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("messages.db");
    let (a, b) = (ChannelId::new(), ChannelId::new());
    let old: Vec<Message> = (0..5)
        .map(|i| {
            let c = if i % 2 == 0 { a } else { b };
            message(c, T0 + i, vec![number("t", T0 + i, i as f64)])
        })
        .collect();
    {
        let conn = connect(
            &path,
            &KEY,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_CREATE,
        )
        .unwrap();
        for sql in &super::SCHEMA[..3] {
            conn.execute_batch(sql).unwrap();
        }
        conn.pragma_update(None, "user_version", 3).unwrap();
        for (i, m) in old.iter().enumerate() {
            // Seqs 1, 3, 5, …: gaps, as expiry leaves them.
            let seq = 2 * i as i64 + 1;
            conn.execute(
                "INSERT INTO messages (seq, id, tenant, channel, subtopic, publisher, protocol, \
                 content_type, received_at, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                rusqlite::params![
                    seq,
                    m.id.0.as_bytes(),
                    m.tenant_id.0.as_bytes(),
                    m.channel_id.0.as_bytes(),
                    m.subtopic,
                    m.publisher.to_string(),
                    columns::protocol_code(m.protocol),
                    columns::content_type_code(m.content_type),
                    m.received_at,
                    m.payload,
                ],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO records (channel, name, time, seq, idx, publisher, subtopic, v) \
                 VALUES (?1, 't', ?2, ?3, 0, ?4, '', ?5)",
                rusqlite::params![
                    m.channel_id.0.as_bytes(),
                    m.received_at,
                    seq,
                    m.publisher.to_string(),
                    i as f64
                ],
            )
            .unwrap();
        }
        // The old table once handed out seqs up to 20,000 (since expired).
        conn.execute(
            "UPDATE sqlite_sequence SET seq = 20000 WHERE name = 'messages'",
            [],
        )
        .unwrap();
    }

    let store = open(dir.path());
    for (channel, expected) in [(a, [1, 5, 9]), (b, [3, 7, 0])] {
        let read = store.messages(&all_messages(channel)).await.unwrap();
        let want: Vec<i64> = expected.into_iter().filter(|&s| s > 0).collect();
        assert_eq!(read.iter().map(|s| s.seq).collect::<Vec<_>>(), want);
        for s in &read {
            // Read back without records, which are in the payload.
            let sent = Message {
                records: Vec::new(),
                ..old[(s.seq as usize - 1) / 2].clone()
            };
            assert_eq!(s.message, sent);
        }
        let records = store.records(&all_records(channel)).await.unwrap();
        assert_eq!(records.iter().map(|r| r.seq).collect::<Vec<_>>(), want);
        // A cursor from before the move still pages from where it was.
        let rest = store
            .messages(&MessageQuery {
                after: Some(want[0]),
                ..all_messages(channel)
            })
            .await
            .unwrap();
        assert_eq!(rest.len(), want.len() - 1);
    }
    let seq = append(&store, vec![message(a, T0 + 10, vec![])]).await[0];
    assert!(seq > 20_000, "{seq}");
    let read = store.messages(&all_messages(a)).await.unwrap();
    assert_eq!(read.last().unwrap().seq, seq);
}
