//! Messages over HTTP against the real server: publishing as devices (with
//! curl, as a device's firmware would) and apps, every refusal, reading
//! back with filters and cursors, aggregates and exports.

mod common;

use std::io::Read;

use common::messages::{all_messages, device, publish};
use common::{Api, Server, user_in};
use serde_json::{Value, json};

const SENML: &str = "application/senml+json";

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

#[tokio::test]
async fn a_device_publishes_with_curl_and_an_app_reads_it_back() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "meters"})).await;
    let meter = device(&admin, &channel, "meter-1", true, false).await;

    let pack = r#"[{"bn":"urn:dev:meter-1:","bu":"W","n":"power","v":1200.5},{"n":"energy","u":"kWh","v":3.25},{"n":"on","vb":true}]"#;
    let out = tokio::process::Command::new("curl")
        .args(["-sS", "--cacert"])
        .arg(server.ca_path())
        .args(["-H", &format!("Authorization: Device {}", meter.key)])
        .args(["-H", "Content-Type: application/senml+json"])
        .args(["--data-binary", pack, "-w", "\n%{http_code}"])
        .arg(server.api(&format!("/channels/{channel}/messages")))
        .output()
        .await
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, status) = text.rsplit_once('\n').unwrap();
    assert_eq!(
        status,
        "202",
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ack: Value = serde_json::from_str(body).unwrap();
    assert_eq!(ack["records"], 3);
    assert!(ack["seq"].as_i64().unwrap() > 0);

    // As it was sent, with who sent it and how.
    let page = admin.get(&format!("/channels/{channel}/messages")).await;
    assert_eq!(page.status, 200, "{page:?}");
    let m = &page.body["messages"][0];
    assert_eq!(m["id"], ack["id"]);
    assert_eq!(m["seq"], ack["seq"]);
    assert_eq!(m["publisher"], format!("device:{}", meter.device));
    assert_eq!(m["protocol"], "http");
    assert_eq!(m["content_type"], SENML);
    assert_eq!(m["payload"][1]["n"], "energy");
    assert_eq!(m["received_at"], ack["received_at"]);
    assert!(page.body.get("next_cursor").is_none());

    // Its records, resolved: base name and unit applied.
    let recs = admin
        .get(&format!("/channels/{channel}/messages?view=records"))
        .await;
    assert_eq!(recs.status, 200, "{recs:?}");
    let names: Vec<&str> = recs.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["n"].as_str().unwrap())
        .collect();
    assert_eq!(names.len(), 3);
    assert!(names.contains(&"urn:dev:meter-1:power"));
    let power = admin
        .get(&format!(
            "/channels/{channel}/messages?name=urn:dev:meter-1:power"
        ))
        .await;
    assert_eq!(power.body["records"][0]["v"], 1200.5);
    assert_eq!(power.body["records"][0]["u"], "W");
    let on = admin
        .get(&format!(
            "/channels/{channel}/messages?name=urn:dev:meter-1:on"
        ))
        .await;
    assert_eq!(on.body["records"][0]["vb"], true);

    // A viewer may read; the device itself, without a subscribe right, may not.
    let tenant = admin.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let viewer = user_in(&server, &admin, &tenant, "watcher", "viewer").await;
    assert_eq!(
        viewer
            .get(&format!("/channels/{channel}/messages"))
            .await
            .status,
        200
    );
    let own = Api::device(&server, &meter.key)
        .get(&format!("/channels/{channel}/messages"))
        .await;
    assert_eq!(own.status, 403, "{own:?}");
    // …nor publish: viewers only read.
    let r = publish(
        &server,
        viewer.auth.as_deref().unwrap(),
        &channel,
        "",
        SENML,
        pack,
    )
    .await;
    assert_eq!(r.status, 403, "{r:?}");
}

#[tokio::test]
async fn filters_cursors_subtopics_and_publishers() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "rooms"})).await;
    let a = device(&admin, &channel, "sensor-a", true, true).await;
    let b = device(&admin, &channel, "sensor-b", true, false).await;
    let auth_a = format!("Device {}", a.key);
    let auth_b = format!("Device {}", b.key);

    // Explicit times, one hour apart, so that the time filters are exact.
    let t0 = 1_800_000_000.0_f64;
    for i in 0..6 {
        let (auth, sub) = if i % 2 == 0 {
            (&auth_a, "room/1")
        } else {
            (&auth_b, "room/2")
        };
        let pack =
            json!([{"bt": t0 + f64::from(i) * 3600.0, "n": "temp", "u": "Cel", "v": 20 + i}]);
        let r = publish(&server, auth, &channel, sub, SENML, pack.to_string()).await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    // An app publishes too, to the channel itself.
    let r = publish(
        &server,
        admin.auth.as_deref().unwrap(),
        &channel,
        "",
        SENML,
        json!([{"bt": t0, "n": "note", "vs": "from the app"}]).to_string(),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");

    // Pages of two, in the order stored, until the cursor runs out.
    let mut seen = Vec::new();
    let mut path = format!("/channels/{channel}/messages?limit=2");
    for _ in 0..10 {
        let page = admin.get(&path).await;
        assert_eq!(page.status, 200, "{page:?}");
        for m in page.body["messages"].as_array().unwrap() {
            seen.push(m["seq"].as_i64().unwrap());
        }
        match page.body["next_cursor"].as_str() {
            Some(c) => path = format!("/channels/{channel}/messages?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen.len(), 7);
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");

    let sub = admin
        .get(&format!("/channels/{channel}/messages?subtopic=room/2"))
        .await;
    assert_eq!(sub.body["messages"].as_array().unwrap().len(), 3);
    assert!(
        sub.body["messages"]
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["subtopic"] == "room/2")
    );
    let by_a = admin
        .get(&format!(
            "/channels/{channel}/messages?publisher=device:{}",
            a.device
        ))
        .await;
    assert_eq!(by_a.body["messages"].as_array().unwrap().len(), 3);

    // Records by name and time window, and value comparisons.
    let window = admin
        .get(&format!(
            "/channels/{channel}/messages?name=temp&from={}&to={}",
            t0 + 3600.0,
            t0 + 4.0 * 3600.0
        ))
        .await;
    let values: Vec<f64> = window.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["v"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [21.0, 22.0, 23.0]);
    let rfc = admin
        .get(&format!(
            "/channels/{channel}/messages?name=temp&from=2027-01-15T08:00:00Z&to=2027-01-15T09:00:00Z"
        ))
        .await;
    assert_eq!(rfc.body["records"].as_array().unwrap().len(), 1, "{rfc:?}");
    let hot = admin
        .get(&format!(
            "/channels/{channel}/messages?name=temp&value_ge=22&value_lt=25"
        ))
        .await;
    let values: Vec<f64> = hot.body["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["v"].as_f64().unwrap())
        .collect();
    assert_eq!(values, [22.0, 23.0, 24.0]);
    // Record pages follow their own cursor.
    let first = admin
        .get(&format!("/channels/{channel}/messages?name=temp&limit=4"))
        .await;
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let rest = admin
        .get(&format!(
            "/channels/{channel}/messages?name=temp&limit=4&cursor={cursor}"
        ))
        .await;
    assert_eq!(rest.body["records"].as_array().unwrap().len(), 2);
    assert_eq!(rest.body["records"][0]["v"], 24.0);
    let strings = admin
        .get(&format!("/channels/{channel}/messages?name=note"))
        .await;
    assert_eq!(strings.body["records"][0]["vs"], "from the app");
    let me = admin.get("/auth/whoami").await;
    assert_eq!(
        strings.body["records"][0]["publisher"],
        format!("user:{}", me.body["subject"]["id"].as_str().unwrap())
    );

    // Aggregates over hour buckets.
    let avg = admin
        .get(&format!(
            "/channels/{channel}/messages?name=temp&aggregate=avg&interval=2h&from={t0}"
        ))
        .await;
    assert_eq!(avg.status, 200, "{avg:?}");
    let buckets = avg.body["buckets"].as_array().unwrap();
    assert_eq!(buckets.len(), 3, "{avg:?}");
    assert_eq!(buckets[0]["count"], 2);
    for (agg, first) in [("min", 20.0), ("max", 21.0), ("sum", 41.0), ("avg", 20.5)] {
        let r = admin
            .get(&format!(
                "/channels/{channel}/messages?name=temp&aggregate={agg}&interval=2h&from={t0}"
            ))
            .await;
        assert_eq!(r.body["buckets"][0]["value"], first, "{agg}: {r:?}");
    }
    let count = admin
        .get(&format!(
            "/channels/{channel}/messages?aggregate=count&interval=1d&from={t0}"
        ))
        .await;
    let total: u64 = count.body["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["count"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 7);
}

#[tokio::test]
async fn exports_stream_csv_ndjson_and_a_zstd_archive() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "export"})).await;
    let d = device(&admin, &channel, "exporter", true, false).await;
    let auth = format!("Device {}", d.key);
    // More than one export chunk (1000 rows), so paging inside the stream runs.
    let mut sent = 0;
    for batch in 0..5 {
        let futures = (0..100).map(|i| {
            let pack = json!([{"n": "x", "v": batch * 100 + i}, {"n": "y", "v": 1}, {"n": "z", "vs": "a,\"b\""}]);
            publish(&server, &auth, &channel, "", SENML, pack.to_string())
        });
        for r in futures_util::future::join_all(futures).await {
            assert_eq!(r.status, 202, "{r:?}");
            sent += 1;
        }
    }
    let get = |q: String| {
        let client = server.client();
        let url = server.api(&format!("/channels/{channel}/{q}"));
        let auth = admin.auth.clone().unwrap();
        async move {
            let r = client
                .get(url)
                .header("authorization", auth)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let ct = r.headers()["content-type"].to_str().unwrap().to_owned();
            (ct, r.bytes().await.unwrap().to_vec())
        }
    };

    let (ct, csv) = get("messages?view=records&format=csv".into()).await;
    assert!(ct.starts_with("text/csv"), "{ct}");
    let mut reader = csv::Reader::from_reader(csv.as_slice());
    let headers = reader.headers().unwrap().clone();
    assert_eq!(&headers[1], "name");
    let rows: Vec<csv::StringRecord> = reader.records().map(Result::unwrap).collect();
    assert_eq!(rows.len(), sent * 3, "one row per record");
    assert!(rows.iter().any(|r| &r[4] == "a,\"b\""), "quoted as CSV");

    let (ct, nd) = get("messages?format=ndjson".into()).await;
    assert_eq!(ct, "application/x-ndjson");
    let lines: Vec<Value> = nd
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|l| serde_json::from_slice(l).unwrap())
        .collect();
    assert_eq!(lines.len(), sent);
    let seqs: Vec<i64> = lines.iter().map(|l| l["seq"].as_i64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]));
    let (_, limited) = get("messages?format=ndjson&limit=7".into()).await;
    assert_eq!(limited.iter().filter(|b| **b == b'\n').count(), 7);

    let (ct, zst) = get("archive".into()).await;
    assert_eq!(ct, "application/zstd");
    let mut text = String::new();
    zstd::stream::read::Decoder::new(zst.as_slice())
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    let archived: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(archived, lines, "the archive holds every message as NDJSON");

    let (ct, agg_csv) =
        get("messages?name=y&aggregate=sum&interval=1d&from=0&format=csv".into()).await;
    assert!(ct.starts_with("text/csv"));
    let text = String::from_utf8(agg_csv).unwrap();
    assert!(text.starts_with("start,count,sum\n"), "{text}");
    assert!(text.contains(&format!(",{sent},{sent}")), "{text}");
}

/// Sends the head of a SenML publish announcing `len` bytes of body, and
/// none of the body; returns the head of the server's answer.
async fn announce_body(server: &Server, path: &str, auth: &str, len: usize) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let addr = server.url.trim_start_matches("https://");
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(
        common::mqtt::tls_without_cert(server),
    ));
    let name = rustls_pki_types::ServerName::try_from("localhost").unwrap();
    let mut s = tls.connect(name, tcp).await.unwrap();
    let head = format!(
        "POST /api/v1{path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: {auth}\r\n\
         Content-Type: {SENML}\r\nContent-Length: {len}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut chunk = [0u8; 1024];
    while !answer.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("an answer before the body")
            .unwrap();
        if n == 0 {
            break;
        }
        answer.extend_from_slice(&chunk[..n]);
    }
    String::from_utf8_lossy(&answer).into_owned()
}

#[tokio::test]
async fn every_bad_publish_is_refused_clearly_and_stores_nothing() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin
        .create("/channels", json!({"name": "strict", "max_payload": 200}))
        .await;
    let json_channel = admin
        .create(
            "/channels",
            json!({"name": "json", "payload_policy": "json"}),
        )
        .await;
    let d = device(&admin, &channel, "d", true, true).await;
    let reader = device(&admin, &channel, "reader", false, true).await;
    let stranger = device(&admin, &channel, "stranger", false, false).await;
    let auth = format!("Device {}", d.key);
    let good = r#"[{"n":"t","v":1}]"#;

    let problem = |r: &common::Reply, status: u16, needle: &str| {
        assert_eq!(r.status, status, "{r:?}");
        assert_eq!(
            r.headers["content-type"], "application/problem+json",
            "{r:?}"
        );
        let detail = r.body["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{needle:?} not in {detail:?}");
    };

    let r = publish(&server, &auth, &channel, "", "text/plain", good).await;
    problem(&r, 415, "Content-Type");
    let r = publish(
        &server,
        &auth,
        &channel,
        "",
        "application/json",
        r#"{"t":1}"#,
    )
    .await;
    problem(
        &r,
        415,
        "payload policy senml does not accept application/json",
    );
    let r = publish(
        &server,
        &auth,
        &channel,
        "",
        SENML,
        r#"[{"n":"t","v":"x"}]"#,
    )
    .await;
    problem(&r, 422, "not SenML");
    let r = publish(
        &server,
        &auth,
        &channel,
        "",
        SENML,
        r#"[{"n":"bad name!","v":1}]"#,
    )
    .await;
    problem(&r, 422, "not SenML");
    let r = publish(&server, &auth, &channel, "", SENML, "[]").await;
    assert_eq!(r.status, 422, "an empty pack: {r:?}");
    let big = format!("[{}]", vec![r#"{"n":"t","v":1}"#; 20].join(","));
    let r = publish(&server, &auth, &channel, "", SENML, big).await;
    problem(&r, 413, "at most 200");
    // Over the transport limit: refused from its Content-Length, before a
    // byte of the body is read. (Sending the body too would race the
    // server's close against the client's write.)
    let head = announce_body(
        &server,
        &format!("/channels/{channel}/messages"),
        &auth,
        2 << 20,
    )
    .await;
    assert!(
        head.starts_with("HTTP/1.1 413"),
        "over the transport limit: {head}"
    );
    let head = head.to_ascii_lowercase();
    assert!(
        head.contains("application/problem+json") && head.contains("connection: close"),
        "{head}"
    );
    let r = publish(&server, &auth, &channel, "a//b", SENML, good).await;
    problem(&r, 422, "subtopic");
    let r = publish(&server, &auth, &channel, "a/%23", SENML, good).await;
    problem(&r, 422, "wildcards");

    // Credentials and rights.
    let r = publish(
        &server,
        "Device moat_dk_nonsense",
        &channel,
        "",
        SENML,
        good,
    )
    .await;
    problem(&r, 401, "");
    let r = publish(
        &server,
        &format!("Device {}", reader.key),
        &channel,
        "",
        SENML,
        good,
    )
    .await;
    problem(&r, 403, "publish connection");
    let r = publish(
        &server,
        &format!("Device {}", stranger.key),
        &channel,
        "",
        SENML,
        good,
    )
    .await;
    problem(&r, 403, "publish connection");
    let r = Api::device(&server, &stranger.key)
        .get(&format!("/channels/{channel}/messages"))
        .await;
    problem(&r, 403, "subscribe connection");
    let r = publish(&server, &auth, &json_channel, "", "application/json", good).await;
    problem(&r, 403, "publish connection");
    let r = publish(
        &server,
        &auth,
        &uuid::Uuid::new_v4().to_string(),
        "",
        SENML,
        good,
    )
    .await;
    problem(&r, 404, "channel");

    // Another tenant's channel is not there at all.
    let other = admin.create("/tenants", json!({"name": "other"})).await;
    let theirs = admin
        .create("/channels", json!({"name": "theirs", "tenant_id": other}))
        .await;
    let tenant = admin.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let op = user_in(&server, &admin, &tenant, "operator1", "operator").await;
    let r = publish(&server, &auth, &theirs, "", SENML, good).await;
    problem(&r, 404, "channel");
    let them = user_in(&server, &admin, &other, "them", "admin").await;
    let r = publish(
        &server,
        them.auth.as_deref().unwrap(),
        &channel,
        "",
        SENML,
        good,
    )
    .await;
    problem(&r, 404, "channel");
    let r = them.get(&format!("/channels/{channel}/messages")).await;
    problem(&r, 404, "channel");
    // An operator of the tenant may publish.
    let r = publish(
        &server,
        op.auth.as_deref().unwrap(),
        &channel,
        "",
        SENML,
        good,
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");

    // Flat JSON objects become records on a JSON channel; other JSON is kept.
    let admin_auth = admin.auth.clone().unwrap();
    let r = publish(
        &server,
        &admin_auth,
        &json_channel,
        "",
        "application/json",
        r#"{"temperature":21.5,"ok":true}"#,
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["records"], 2);
    let r = publish(&server, &admin_auth, &json_channel, "", "", "[1,2,3]").await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["records"], 0);
    let r = publish(
        &server,
        &admin_auth,
        &json_channel,
        "",
        "application/json",
        "{nope",
    )
    .await;
    problem(&r, 422, "not JSON");

    // Reading with bad parameters.
    for (q, field) in [
        ("limit=0", "limit"),
        ("limit=1001", "limit"),
        ("from=yesterday", "from"),
        ("cursor=zzz", "cursor"),
        ("name=t&cursor=m5", "cursor"),
        ("publisher=someone", "publisher"),
        ("view=messages&name=t", "view"),
        ("aggregate=avg&interval=1h", "from"),
        ("aggregate=avg&from=0", "interval"),
        ("aggregate=avg&interval=1s&from=0", "interval"),
        ("interval=1h", "interval"),
        ("from=10&to=5", "to"),
    ] {
        let r = admin
            .get(&format!("/channels/{channel}/messages?{q}"))
            .await;
        assert_eq!(r.status, 422, "{q}: {r:?}");
        assert_eq!(r.body["errors"][0]["field"], field, "{q}: {r:?}");
    }
    let r = admin
        .get(&format!(
            "/channels/{channel}/messages?aggregate=median&interval=1h&from=0"
        ))
        .await;
    assert_eq!(r.status, 400, "{r:?}");

    // Only the operator's message went in.
    assert_eq!(all_messages(&admin, &channel).await.len(), 1);
    let metrics = server.metrics().await;
    for reason in ["too_large", "content_type", "senml", "subtopic", "json"] {
        assert!(
            metrics.contains(&format!("reason=\"{reason}\"")),
            "{reason} counted in:\n{metrics}"
        );
    }
    // Refused publishes are audited.
    let audit = admin.get("/audit?action=message.publish").await;
    assert!(
        audit.body["items"]
            .as_array()
            .is_some_and(|a| a.iter().any(|e| e["outcome"] == "denied")),
        "{audit:?}"
    );
}

#[tokio::test]
async fn cbor_and_opaque_payloads_keep_their_bytes() {
    let server = Server::start();
    let admin = admin(&server).await;
    let senml = admin.create("/channels", json!({"name": "cbor"})).await;
    let opaque = admin
        .create(
            "/channels",
            json!({"name": "blobs", "payload_policy": "opaque"}),
        )
        .await;
    let auth = admin.auth.clone().unwrap();
    // RFC 8428 §6's example in CBOR: [{-2: "urn:dev:ow:10e2073a01080063", 2: 23.1, 1: "Cel"}]
    let cbor: Vec<u8> = vec![
        0x81, 0xa3, 0x21, 0x78, 0x1b, b'u', b'r', b'n', b':', b'd', b'e', b'v', b':', b'o', b'w',
        b':', b'1', b'0', b'e', b'2', b'0', b'7', b'3', b'a', b'0', b'1', b'0', b'8', b'0', b'0',
        b'6', b'3', 0x02, 0xfb, 0x40, 0x37, 0x19, 0x99, 0x99, 0x99, 0x99, 0x9a, 0x01, 0x63, b'C',
        b'e', b'l',
    ];
    let r = publish(
        &server,
        &auth,
        &senml,
        "",
        "application/senml+cbor",
        cbor.clone(),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
    assert_eq!(r.body["records"], 1);
    let recs = admin
        .get(&format!("/channels/{senml}/messages?view=records"))
        .await;
    assert_eq!(recs.body["records"][0]["n"], "urn:dev:ow:10e2073a01080063");
    assert_eq!(recs.body["records"][0]["v"], 23.1);
    let msgs = admin.get(&format!("/channels/{senml}/messages")).await;
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(&cbor);
    assert_eq!(msgs.body["messages"][0]["payload_base64"], b64.as_str());

    let blob: Vec<u8> = (0..=255u8).collect();
    let r = publish(&server, &auth, &opaque, "fw/chunk", "", blob.clone()).await;
    assert_eq!(r.status, 202, "{r:?}");
    let msgs = admin.get(&format!("/channels/{opaque}/messages")).await;
    let m = &msgs.body["messages"][0];
    assert_eq!(m["content_type"], "application/octet-stream");
    assert_eq!(m["subtopic"], "fw/chunk");
    let back = base64::engine::general_purpose::STANDARD
        .decode(m["payload_base64"].as_str().unwrap())
        .unwrap();
    assert_eq!(back, blob);
}
