//! The live WebSocket of a channel (`GET /channels/{id}/messages/ws`),
//! end to end against the real binary: live delivery and subtopic filters,
//! publishing with acknowledgements and error frames, rights checked
//! before the upgrade, problem documents for plain requests, and a device's
//! socket closed when the device is revoked or quarantined.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::device::{client_config as cert_client_config, openssl_csr};
use common::messages::{Publisher, device, publish};
use common::{Api, Server};
use futures_util::{SinkExt, StreamExt};
use rustls_pki_types::ServerName;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{self, Message};

type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// How long any one expected frame may take.
const FRAME_WAIT: Duration = Duration::from_secs(10);
/// The most frames a test skips looking for the one it wants.
const MAX_SKIPPED: usize = 50;

/// Opens the live socket of `channel` with `auth` as the `Authorization`
/// header; `query` is appended as is.
async fn connect(server: &Server, channel: &str, query: &str, auth: Option<&str>) -> Ws {
    let pem = std::fs::read_to_string(server.ca_path()).unwrap();
    let tls = moat_pki::tls::client_config(&pem).unwrap();
    try_connect(server, channel, query, auth, tls)
        .await
        .unwrap_or_else(|e| panic!("websocket to channel {channel}: {e}"))
}

async fn try_connect(
    server: &Server,
    channel: &str,
    query: &str,
    auth: Option<&str>,
    tls: rustls::ClientConfig,
) -> Result<Ws, tungstenite::Error> {
    let addr = server.url.strip_prefix("https://").unwrap();
    let tcp = TcpStream::connect(addr).await.unwrap();
    let stream = TlsConnector::from(Arc::new(tls))
        .connect(ServerName::try_from("127.0.0.1").unwrap(), tcp)
        .await
        .unwrap();
    let mut req = format!("wss://{addr}/api/v1/channels/{channel}/messages/ws{query}")
        .into_client_request()
        .unwrap();
    if let Some(a) = auth {
        req.headers_mut()
            .insert("authorization", a.parse().unwrap());
    }
    let (ws, _) = tokio::time::timeout(FRAME_WAIT, tokio_tungstenite::client_async(req, stream))
        .await
        .expect("the handshake finishes")?;
    Ok(ws)
}

/// The status a refused handshake got.
async fn refused_status(server: &Server, channel: &str, auth: &str) -> u16 {
    let pem = std::fs::read_to_string(server.ca_path()).unwrap();
    let tls = moat_pki::tls::client_config(&pem).unwrap();
    match try_connect(server, channel, "", Some(auth), tls).await {
        Err(tungstenite::Error::Http(res)) => res.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected a refusal, got a socket"),
    }
}

/// The next JSON text frame.
async fn next_json(ws: &mut Ws) -> Value {
    for _ in 0..MAX_SKIPPED {
        let frame = tokio::time::timeout(FRAME_WAIT, ws.next())
            .await
            .expect("a frame within the wait")
            .expect("the socket is open")
            .expect("a good frame");
        match frame {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON frames"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text frame, got {other:?}"),
        }
    }
    panic!("no text frame among {MAX_SKIPPED} frames");
}

/// The next frame of `kind` (`message`, `ack`, `error`), skipping others.
async fn next_of(ws: &mut Ws, kind: &str) -> Value {
    for _ in 0..MAX_SKIPPED {
        let v = next_json(ws).await;
        if v["type"] == kind {
            return v;
        }
    }
    panic!("no {kind} frame among {MAX_SKIPPED} frames");
}

/// Every JSON frame that arrives within `window`.
async fn frames_within(ws: &mut Ws, window: Duration) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + window;
    let mut seen = Vec::new();
    while let Ok(Some(Ok(frame))) = tokio::time::timeout_at(deadline, ws.next()).await {
        if let Message::Text(t) = frame {
            seen.push(serde_json::from_str(t.as_str()).unwrap());
        }
        assert!(seen.len() < MAX_SKIPPED, "a flood of frames: {seen:?}");
    }
    seen
}

/// The close frame the server sends, within `wait`.
async fn close_frame(ws: &mut Ws, wait: Duration) -> CloseFrame {
    let deadline = tokio::time::Instant::now() + wait;
    for _ in 0..MAX_SKIPPED {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Ok(Some(Ok(Message::Close(Some(frame))))) => return frame,
            Ok(Some(Ok(_))) => continue,
            Ok(other) => panic!("the socket ended without a close frame: {other:?}"),
            Err(_) => panic!("no close frame within {wait:?}"),
        }
    }
    panic!("no close frame among {MAX_SKIPPED} frames");
}

async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.unwrap();
}

/// Publishes over HTTP, as a device does; asserts 202.
async fn http_publish(server: &Server, auth: &str, channel: &str, subtopic: &str, body: &str) {
    let r = publish(
        server,
        auth,
        channel,
        subtopic,
        "application/senml+json",
        body.to_owned(),
    )
    .await;
    assert_eq!(r.status, 202, "{r:?}");
}

async fn setup() -> (Server, Api, String) {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let channel = admin
        .create("/channels", json!({"name": "telemetry"}))
        .await;
    (server, admin, channel)
}

#[tokio::test]
async fn apps_receive_what_devices_publish_filtered_by_subtopic() {
    let (server, admin, channel) = setup().await;
    let token = admin.auth.clone().unwrap();
    let Publisher {
        device: device_id,
        key,
        ..
    } = device(&admin, &channel, "meter", true, false).await;
    let mut all = connect(&server, &channel, "", Some(&token)).await;
    // `+` in a query string is a space: it travels as %2B.
    let mut filtered = connect(&server, &channel, "?subtopic=a/%2B", Some(&token)).await;

    let device_auth = format!("Device {key}");
    http_publish(
        &server,
        &device_auth,
        &channel,
        "c",
        r#"[{"n":"temp","v":1}]"#,
    )
    .await;
    http_publish(
        &server,
        &device_auth,
        &channel,
        "a/b",
        r#"[{"n":"temp","v":21.5}]"#,
    )
    .await;

    let first = next_of(&mut all, "message").await;
    assert_eq!(first["subtopic"], "c");
    let m = next_of(&mut all, "message").await;
    assert_eq!(m["subtopic"], "a/b");
    assert_eq!(m["channel_id"], channel);
    assert_eq!(m["publisher"], format!("device:{device_id}"));
    assert_eq!(m["protocol"], "http");
    assert_eq!(m["content_type"], "application/senml+json");
    assert_eq!(m["payload"], json!([{"n": "temp", "v": 21.5}]));
    assert!(m.get("seq").is_none(), "live messages carry no seq: {m}");

    // Published in order, fanned out in order: `c` was skipped, not late.
    let f = next_of(&mut filtered, "message").await;
    assert_eq!(f["subtopic"], "a/b", "{f}");

    // An invalid filter is refused before the upgrade.
    let r = admin
        .get(&format!("/channels/{channel}/messages/ws?subtopic=a/%23/b"))
        .await;
    assert_eq!(r.status, 422, "{r:?}");
    assert_eq!(r.headers["content-type"], "application/problem+json");
}

#[tokio::test]
async fn publishes_over_the_socket_are_acknowledged_once_stored() {
    let (server, admin, channel) = setup().await;
    let token = admin.auth.clone().unwrap();
    let mut ws = connect(&server, &channel, "", Some(&token)).await;

    send_json(
        &mut ws,
        json!({"type": "publish", "ref": {"n": 1}, "subtopic": "room/1",
               "content_type": "application/senml+json",
               "payload": [{"n": "temp", "u": "Cel", "v": 20.25}]}),
    )
    .await;
    let ack = next_of(&mut ws, "ack").await;
    assert_eq!(ack["ref"], json!({"n": 1}), "{ack}");
    assert_eq!(ack["records"], 1);
    let seq = ack["seq"].as_i64().expect("a seq");
    let id = ack["id"].as_str().unwrap().to_owned();

    let page = admin.get(&format!("/channels/{channel}/messages")).await;
    assert_eq!(page.status, 200, "{page:?}");
    let stored = page.body["messages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["id"] == id.as_str())
        .unwrap_or_else(|| panic!("{id} stored: {page:?}"))
        .clone();
    assert_eq!(stored["seq"], seq);
    assert_eq!(stored["subtopic"], "room/1");
    assert_eq!(stored["protocol"], "websocket");
    assert_eq!(
        stored["payload"],
        json!([{"n": "temp", "u": "Cel", "v": 20.25}])
    );

    // Refusals are error frames; the socket keeps working after each.
    send_json(
        &mut ws,
        json!({"type": "publish", "ref": "bad-senml", "payload": {"not": "senml"}}),
    )
    .await;
    let e = next_of(&mut ws, "error").await;
    assert_eq!(
        (e["ref"].as_str(), e["status"].as_u64()),
        (Some("bad-senml"), Some(422)),
        "{e}"
    );

    ws.send(Message::text("not json")).await.unwrap();
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["status"], 400, "{e}");

    send_json(&mut ws, json!({"type": "publish", "ref": 7})).await;
    let e = next_of(&mut ws, "error").await;
    assert_eq!(
        (e["ref"].as_u64(), e["status"].as_u64()),
        (Some(7), Some(422)),
        "{e}"
    );

    send_json(
        &mut ws,
        json!({"type": "publish", "ref": 8, "content_type": "text/plain", "payload": 1}),
    )
    .await;
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["status"], 415, "{e}");

    // Binary content travels as base64, and binary frames as they are.
    use base64::Engine;
    let senml = br#"[{"n":"b64","v":2}]"#;
    send_json(
        &mut ws,
        json!({"type": "publish", "ref": 9, "content_type": "application/senml+json",
               "payload_base64": base64::engine::general_purpose::STANDARD.encode(senml)}),
    )
    .await;
    let ack = next_of(&mut ws, "ack").await;
    assert_eq!(ack["ref"], 9, "{ack}");
    ws.send(Message::binary(br#"[{"n":"raw","v":3}]"#.to_vec()))
        .await
        .unwrap();
    let ack = next_of(&mut ws, "ack").await;
    assert!(
        ack.get("ref").is_none() && ack["seq"].as_i64() > Some(seq),
        "{ack}"
    );

    // The socket's own publishes reach it live, too.
    let m = next_of(&mut ws, "message").await;
    assert_eq!(m["protocol"], "websocket", "{m}");

    let metrics = server.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("moat_messages_rejected_total")
                && l.contains(r#"protocol="websocket""#)
                && l.contains(r#"reason="envelope""#)),
        "malformed envelopes are counted"
    );
}

#[tokio::test]
async fn rights_decide_who_connects_publishes_and_receives() {
    let (server, admin, channel) = setup().await;
    let Publisher {
        device: _,
        key: publisher,
        ..
    } = device(&admin, &channel, "pub-only", true, false).await;
    let Publisher {
        device: _,
        key: reader,
        ..
    } = device(&admin, &channel, "sub-only", false, true).await;
    let Publisher {
        device: _,
        key: stranger,
        ..
    } = device(&admin, &channel, "unconnected", false, false).await;

    // A publish-only device may connect and publish, but hears nothing.
    let mut p = connect(&server, &channel, "", Some(&format!("Device {publisher}"))).await;
    let mut r = connect(&server, &channel, "", Some(&format!("Device {reader}"))).await;
    send_json(
        &mut p,
        json!({"type": "publish", "ref": 1, "payload": [{"n": "x", "v": 1}]}),
    )
    .await;
    assert_eq!(next_json(&mut p).await["type"], "ack");
    let heard = next_of(&mut r, "message").await;
    assert_eq!(heard["payload"], json!([{"n": "x", "v": 1}]));
    http_publish(
        &server,
        &admin.auth.clone().unwrap(),
        &channel,
        "",
        r#"[{"n":"y","v":2}]"#,
    )
    .await;
    assert_eq!(
        next_of(&mut r, "message").await["payload"],
        json!([{"n": "y", "v": 2}])
    );
    let extra = frames_within(&mut p, Duration::from_millis(500)).await;
    assert!(extra.is_empty(), "a publish-only device got {extra:?}");

    // A subscribe-only device's publishes are refused, frame by frame.
    send_json(
        &mut r,
        json!({"type": "publish", "ref": 2, "payload": [{"n": "z", "v": 3}]}),
    )
    .await;
    let e = next_of(&mut r, "error").await;
    assert_eq!(
        (e["ref"].as_u64(), e["status"].as_u64()),
        (Some(2), Some(403)),
        "{e}"
    );

    // No connection: 403 before any upgrade, as a problem document.
    let stranger = format!("Device {stranger}");
    assert_eq!(refused_status(&server, &channel, &stranger).await, 403);
    let plain = Api {
        auth: Some(stranger),
        ..Api::anonymous(&server)
    };
    let res = plain.get(&format!("/channels/{channel}/messages/ws")).await;
    assert_eq!(res.status, 403, "{res:?}");
    assert_eq!(res.headers["content-type"], "application/problem+json");

    // Another tenant's channel does not exist, for the socket as for the rest.
    let acme = admin.create("/tenants", json!({"name": "acme"})).await;
    let globex = admin.create("/tenants", json!({"name": "globex"})).await;
    let theirs = admin
        .create("/channels", json!({"name": "secret", "tenant_id": globex}))
        .await;
    let alice = common::user_in(&server, &admin, &acme, "alice", "admin").await;
    let alice_auth = alice.auth.clone().unwrap();
    assert_eq!(refused_status(&server, &theirs, &alice_auth).await, 404);
    let res = alice.get(&format!("/channels/{theirs}/messages/ws")).await;
    assert_eq!(res.status, 404, "{res:?}");
    // Without credentials: 401.
    let res = Api::anonymous(&server)
        .get(&format!("/channels/{channel}/messages/ws"))
        .await;
    assert_eq!(res.status, 401, "{res:?}");
}

#[tokio::test]
async fn a_request_that_is_no_upgrade_gets_a_problem_document() {
    let (server, admin, channel) = setup().await;
    let res = admin.get(&format!("/channels/{channel}/messages/ws")).await;
    assert_eq!(res.status, 426, "{res:?}");
    assert_eq!(res.headers["content-type"], "application/problem+json");
    assert_eq!(res.body["status"], 426);
    assert_eq!(res.headers["upgrade"], "websocket");

    // A broken attempt at one (no Sec-WebSocket-Key) is a bad request.
    let res = server
        .client()
        .get(server.api(&format!("/channels/{channel}/messages/ws")))
        .header("authorization", admin.auth.clone().unwrap())
        .header("connection", "upgrade")
        .header("upgrade", "websocket")
        .header("sec-websocket-version", "13")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), 400);
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    // The socket's path does not hide the subtopic `ws` from publishers.
    http_publish(
        &server,
        &admin.auth.clone().unwrap(),
        &channel,
        "ws",
        r#"[{"n":"w","v":1}]"#,
    )
    .await;
    let page = admin
        .get(&format!("/channels/{channel}/messages?subtopic=ws"))
        .await;
    assert_eq!(page.body["messages"][0]["subtopic"], "ws", "{page:?}");
}

#[tokio::test]
async fn revoking_a_device_closes_its_socket() {
    let (server, admin, channel) = setup().await;
    let Publisher {
        device: id, key, ..
    } = device(&admin, &channel, "meter", true, true).await;
    let mut ws = connect(&server, &channel, "", Some(&format!("Device {key}"))).await;
    send_json(
        &mut ws,
        json!({"type": "publish", "payload": [{"n": "x", "v": 1}]}),
    )
    .await;
    assert_eq!(next_of(&mut ws, "ack").await["type"], "ack");

    let r = admin
        .patch(&format!("/devices/{id}"), json!({"state": "revoked"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let frame = close_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "device revoked");
    // And the key no longer opens one.
    assert_eq!(
        refused_status(&server, &channel, &format!("Device {key}")).await,
        401
    );
}

#[tokio::test]
async fn quarantining_a_device_closes_its_certificate_socket() {
    let (server, admin, channel) = setup().await;
    let id = admin
        .create("/devices", json!({"name": "cert-meter"}))
        .await;
    let r = admin
        .put(
            &format!("/channels/{channel}/connections/{id}"),
            json!({"publish": true, "subscribe": true}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let dir = tempfile::tempdir().unwrap();
    let (key, csr) = openssl_csr(dir.path(), "meter");
    let issued = admin
        .post(&format!("/devices/{id}/certificates"), json!({"csr": csr}))
        .await;
    assert_eq!(issued.status, 201, "{issued:?}");
    let chain = issued.body["chain_pem"].as_str().unwrap();

    // The certificate alone authenticates the socket.
    let tls = cert_client_config(&server, chain, &key);
    let mut ws = try_connect(&server, &channel, "", None, tls)
        .await
        .expect("a certificate opens the socket");
    send_json(
        &mut ws,
        json!({"type": "publish", "ref": 1, "payload": [{"n": "x", "v": 1}]}),
    )
    .await;
    let ack = next_of(&mut ws, "ack").await;
    assert_eq!(ack["ref"], 1);
    let m = next_of(&mut ws, "message").await;
    assert_eq!(m["publisher"], format!("device:{id}"));

    let r = admin
        .patch(&format!("/devices/{id}"), json!({"state": "quarantined"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let frame = close_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "device quarantined");
}

#[tokio::test]
async fn a_message_beyond_the_limit_closes_the_socket_with_1009() {
    let (server, admin, channel) = setup().await;
    let token = admin.auth.clone().unwrap();
    let mut ws = connect(&server, &channel, "", Some(&token)).await;
    // Over the transport's limit (a 1 MiB payload in base64 and its envelope).
    let huge = "x".repeat(1_500_000);
    // The server may close before the client has written it all.
    let _ = ws.send(Message::text(huge)).await;
    let frame = close_frame(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(u16::from(frame.code), 1009, "{frame:?}");

    // Within the limit but over the channel's (64 KiB): an error frame.
    let mut ws = connect(&server, &channel, "", Some(&token)).await;
    let big = json!({"type": "publish", "ref": "big",
                     "payload": [{"n": "s", "vs": "y".repeat(100_000)}]});
    send_json(&mut ws, big).await;
    let e = next_of(&mut ws, "error").await;
    assert_eq!(e["status"], 413, "{e}");
}

#[tokio::test]
async fn apps_lose_their_sockets_when_their_credentials_or_rights_go() {
    // Pings (and the checks that come with them) every 200 ms.
    let server = Server::start_with(common::Options {
        env: vec![
            ("MOAT_ADMIN_PASSWORD".into(), common::ADMIN_PASSWORD.into()),
            ("MOAT_WEBSOCKET_PING_INTERVAL".into(), "200ms".into()),
        ],
        ..common::Options::default()
    });
    let admin = Api::bearer(&server, &server.admin_token().await);
    let channel = admin
        .create("/channels", json!({"name": "telemetry"}))
        .await;
    let tenant = admin.get("/auth/whoami").await.body["tenant_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // A user disabled.
    let viewer = common::user_in(&server, &admin, &tenant, "watcher", "viewer").await;
    let mut ws = connect(&server, &channel, "", viewer.auth.as_deref()).await;
    let me = viewer.get("/auth/whoami").await.body["subject"]["id"]
        .as_str()
        .unwrap()
        .to_owned();
    let r = admin
        .patch(&format!("/users/{me}"), json!({"disabled": true}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let frame = close_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "access withdrawn");

    // An API key revoked.
    let key = admin
        .post("/apikeys", json!({"name": "dashboard", "role": "viewer"}))
        .await;
    assert_eq!(key.status, 201, "{key:?}");
    let token = key.body["token"].as_str().unwrap();
    let mut ws = connect(&server, &channel, "", Some(&format!("Bearer {token}"))).await;
    let id = key.body["key"]["id"].as_str().unwrap();
    assert_eq!(admin.delete(&format!("/apikeys/{id}")).await.status, 204);
    let frame = close_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(frame.reason.as_str(), "access withdrawn", "{frame:?}");

    // A device disconnected from the channel.
    let Publisher {
        device: device_id,
        key: device_key,
        ..
    } = device(&admin, &channel, "meter", false, true).await;
    let mut ws = connect(&server, &channel, "", Some(&format!("Device {device_key}"))).await;
    let r = admin
        .delete(&format!("/channels/{channel}/connections/{device_id}"))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    let frame = close_frame(&mut ws, Duration::from_secs(3)).await;
    assert_eq!(frame.reason.as_str(), "access withdrawn", "{frame:?}");
}

#[tokio::test]
async fn a_client_that_does_not_answer_pings_is_closed() {
    let server = Server::start_with(common::Options {
        env: vec![
            ("MOAT_ADMIN_PASSWORD".into(), common::ADMIN_PASSWORD.into()),
            ("MOAT_WEBSOCKET_PING_INTERVAL".into(), "200ms".into()),
        ],
        ..common::Options::default()
    });
    let admin = Api::bearer(&server, &server.admin_token().await);
    let channel = admin
        .create("/channels", json!({"name": "telemetry"}))
        .await;
    let mut ws = connect(&server, &channel, "", admin.auth.as_deref()).await;
    // tungstenite answers a ping only while the socket is read: not reading
    // for a few intervals is a client that went silent.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let frame = close_frame(&mut ws, Duration::from_secs(5)).await;
    assert_eq!(u16::from(frame.code), 1008, "{frame:?}");
    assert_eq!(frame.reason.as_str(), "no answer to ping");
}
