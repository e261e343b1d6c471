//! The MQTT broker end to end against the real binary, with clients written
//! by others: Debian's mosquitto_pub/mosquitto_sub over mutual TLS, rumqttc
//! (MQTT 5 and 3.1.1), and paho-mqtt from Python (tests/mqtt_paho.py).
//!
//! What is checked: messages from MQTT land in the platform's store and
//! messages from HTTP reach MQTT subscribers; refusals carry MQTT 5 reason
//! codes (and close a 3.1.1 connection); retained messages, persistent
//! sessions with their offline queue, takeover and wills; revocation cuts
//! a session within a second; malformed packets end the connection and are
//! counted.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::messages::{all_messages, connect, device, opaque_channel, opaque_channel_and_device};
use common::mqtt::*;
use common::{Api, Options, Server};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    ConnectReturnCode, LastWill, Packet, PubAckReason, SubscribeReasonCode,
};
use serde_json::json;

const SENML: &str = r#"[{"n":"temp","u":"Cel","v":21.5}]"#;

async fn admin(server: &Server) -> Api {
    Api::bearer(server, &server.admin_token().await)
}

/// Waits for a v5 packet matching `want`, skipping others (at most 20).
async fn expect_v5(
    events: &mut rumqttc::v5::EventLoop,
    what: &str,
    want: impl Fn(&Packet) -> bool,
) -> Packet {
    for _ in 0..20 {
        match next_v5(events, 10).await {
            Ok(p) if want(&p) => return p,
            Ok(_) => {}
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
    panic!("no {what} among 20 packets")
}

fn is_puback(p: &Packet) -> bool {
    matches!(p, Packet::PubAck(_))
}

/// Expects a PUBLISH of `payload` on `topic`, and then nothing for two
/// seconds (`nothing_else` says what should not have come).
async fn only_publish(
    events: &mut rumqttc::v5::EventLoop,
    payload: &str,
    topic: &str,
    nothing_else: &str,
) {
    let got = expect_v5(events, "PUBLISH", |p| matches!(p, Packet::Publish(_))).await;
    let Packet::Publish(got) = got else {
        unreachable!()
    };
    assert_eq!(got.payload, payload);
    assert_eq!(got.topic, Bytes::from(topic.to_owned()));
    assert!(next_v5(events, 2).await.is_err(), "{nothing_else}");
}

#[tokio::test]
async fn mosquitto_over_mutual_tls_reaches_the_platform_and_hears_http() {
    let server = Server::start();
    let admin = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let channel = admin
        .create("/channels", json!({"name": "telemetry"}))
        .await;
    let (sensor, _, _) = device_with_cert(&admin, dir.path(), "sensor").await;
    let (display, _, _) = device_with_cert(&admin, dir.path(), "display").await;
    connect(&admin, &channel, &sensor, true, false).await;
    connect(&admin, &channel, &display, false, true).await;

    // The display listens with mosquitto_sub (MQTT 5) for two messages.
    let mut sub_args = mosquitto_tls(&server, dir.path(), "display");
    sub_args.extend(
        [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-v",
            "-C",
            "2",
            "-W",
            "20",
            "-i",
            "display-1",
            "-t",
        ]
        .map(String::from),
    );
    sub_args.push(format!("channels/{channel}/messages/#"));
    let sub = Command::new("mosquitto_sub")
        .args(&sub_args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("mosquitto_sub runs (scripts/install-test-deps)");
    // Until the subscription is in place a QoS 0 probe goes nowhere; wait
    // for the broker to count it.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !server
        .metrics()
        .await
        .contains("moat_mqtt_subscriptions_total 1")
    {
        assert!(Instant::now() < deadline, "mosquitto_sub never subscribed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // The sensor publishes SenML at QoS 1 with its certificate.
    let mut pub_args = mosquitto_tls(&server, dir.path(), "sensor");
    pub_args.extend(
        [
            "-V",
            "mqttv5",
            "-q",
            "1",
            "-D",
            "publish",
            "content-type",
            "application/senml+json",
            "-m",
            SENML,
            "-t",
        ]
        .map(String::from),
    );
    pub_args.push(format!("channels/{channel}/messages/room/1"));
    let out = mosquitto("mosquitto_pub", &pub_args);
    assert!(out.status.success(), "{out:?}");

    // An operator publishes over HTTP; the MQTT subscriber hears it too.
    let http = common::messages::publish(
        &server,
        &format!("Bearer {}", server.admin_token().await),
        &channel,
        "hall",
        "application/senml+json",
        SENML,
    )
    .await;
    assert_eq!(http.status, 202, "{http:?}");

    let out = sub.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines,
        [
            format!("channels/{channel}/messages/room/1 {SENML}"),
            format!("channels/{channel}/messages/hall {SENML}"),
        ],
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    // Both are stored, the MQTT one with its subtopic, records and protocol.
    let stored = all_messages(&admin, &channel).await;
    assert_eq!(stored.len(), 2, "{stored:?}");
    assert_eq!(stored[0]["protocol"], "mqtt");
    assert_eq!(stored[0]["subtopic"], "room/1");
    assert_eq!(stored[0]["publisher"], format!("device:{sensor}"));
    assert_eq!(stored[1]["protocol"], "http");

    // A device without a publish right is refused with 0x87; mosquitto_pub
    // reports the failure.
    let mut denied = mosquitto_tls(&server, dir.path(), "display");
    denied.extend(["-V", "mqttv5", "-q", "1", "-m", SENML, "-t"].map(String::from));
    denied.push(format!("channels/{channel}/messages"));
    let out = mosquitto("mosquitto_pub", &denied);
    let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
    assert!(err.contains("not authorized"), "{out:?}");
    assert_eq!(all_messages(&admin, &channel).await.len(), 2);
}

#[tokio::test]
async fn mqtt5_refusals_carry_reason_codes_and_change_nothing() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "a"})).await;
    let other = admin.create("/channels", json!({"name": "b"})).await;
    let dev = device(&admin, &channel, "meter", true, false).await;
    let stranger = admin.create("/devices", json!({"name": "stranger"})).await;

    let opts = v5_with_key(&server, "meter-1", &dev.device, &dev.key);
    let (client, mut events) = rumqttc::v5::AsyncClient::new(opts, 16);
    let connack = next_v5(&mut events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.code == ConnectReturnCode::Success),
        "{connack:?}"
    );

    let cases: Vec<(String, &str, PubAckReason)> = vec![
        (
            format!("channels/{channel}/messages/x"),
            SENML,
            PubAckReason::Success,
        ),
        (
            format!("channels/{channel}/messages"),
            "not senml",
            PubAckReason::PayloadFormatInvalid,
        ),
        (
            format!("channels/{other}/messages"),
            SENML,
            PubAckReason::NotAuthorized,
        ),
        (
            format!("devices/{stranger}/config/reported"),
            "{}",
            PubAckReason::NotAuthorized,
        ),
        (
            format!("devices/{}/config", dev.device),
            "{}",
            PubAckReason::NotAuthorized,
        ),
        (
            "some/open/topic".to_owned(),
            "x",
            PubAckReason::NotAuthorized,
        ),
        (
            "channels/not-a-uuid/messages".to_owned(),
            "x",
            PubAckReason::NotAuthorized,
        ),
    ];
    for (topic, payload, want) in &cases {
        client
            .publish(
                topic.as_str(),
                QoS::AtLeastOnce,
                false,
                payload.as_bytes().to_vec(),
            )
            .await
            .unwrap();
        let ack = expect_v5(&mut events, "PUBACK", is_puback).await;
        let Packet::PubAck(ack) = ack else {
            unreachable!()
        };
        assert_eq!(&ack.reason, want, "{topic}");
    }
    // Only the valid one was stored.
    let stored = all_messages(&admin, &channel).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["subtopic"], "x");

    // Subscribing without a subscribe right: 0x87, per filter.
    client
        .subscribe(format!("channels/{channel}/messages/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let suback = expect_v5(&mut events, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    let Packet::SubAck(suback) = suback else {
        unreachable!()
    };
    assert_eq!(suback.return_codes, [SubscribeReasonCode::NotAuthorized]);

    // Every denial was counted.
    let m = server.metrics().await;
    assert!(m.contains("moat_mqtt_denied_total"), "{m}");
    assert!(
        m.contains("moat_messages_rejected_total{protocol=\"mqtt\",reason=\"senml\"}"),
        "{m}"
    );
}

#[tokio::test]
async fn mqtt311_refuses_bad_credentials_and_closes_on_a_refused_publish() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = admin.create("/channels", json!({"name": "a"})).await;
    let other = admin.create("/channels", json!({"name": "b"})).await;
    let dev = device(&admin, &channel, "meter", true, true).await;

    // A wrong key: CONNACK 0x04.
    let wrong = format!("{}{}", &dev.key[..dev.key.len() - 4], "0000");
    let (_c, mut events) =
        rumqttc::AsyncClient::new(v3_with_key(&server, "m", &dev.device, &wrong), 4);
    let err = next_v3(&mut events, 10).await.unwrap_err();
    assert!(err.contains("BadUserNamePassword"), "{err}");

    // No credentials at all: CONNACK 0x05.
    let (host, port) = server.mqtt.rsplit_once(':').unwrap();
    let mut anon = rumqttc::MqttOptions::new("anon", host, port.parse().unwrap());
    anon.set_transport(rumqttc::Transport::tls_with_config(
        tls_without_cert(&server).into(),
    ));
    let (_c, mut events) = rumqttc::AsyncClient::new(anon, 4);
    let err = next_v3(&mut events, 10).await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");

    // The right key works; subscribing to a channel without a right gets
    // 0x80, to its own channel QoS 1.
    let (client, mut events) =
        rumqttc::AsyncClient::new(v3_with_key(&server, "m", &dev.device, &dev.key), 4);
    let connack = next_v3(&mut events, 10).await.unwrap();
    assert!(
        matches!(connack, rumqttc::Packet::ConnAck(_)),
        "{connack:?}"
    );
    client
        .subscribe_many([
            rumqttc::SubscribeFilter::new(
                format!("channels/{other}/messages"),
                rumqttc::QoS::AtLeastOnce,
            ),
            rumqttc::SubscribeFilter::new(
                format!("channels/{channel}/messages"),
                rumqttc::QoS::AtLeastOnce,
            ),
        ])
        .await
        .unwrap();
    let suback = next_v3(&mut events, 10).await.unwrap();
    let rumqttc::Packet::SubAck(suback) = suback else {
        panic!("{suback:?}")
    };
    assert_eq!(
        suback.return_codes,
        [
            rumqttc::SubscribeReasonCode::Failure,
            rumqttc::SubscribeReasonCode::Success(rumqttc::QoS::AtLeastOnce)
        ]
    );

    // A publish to a channel it may not write: 3.1.1 cannot say no, so the
    // connection closes (docs/mqtt.md).
    client
        .publish(
            format!("channels/{other}/messages"),
            rumqttc::QoS::AtLeastOnce,
            false,
            SENML,
        )
        .await
        .unwrap();
    let closed = loop {
        match next_v3(&mut events, 10).await {
            Ok(rumqttc::Packet::PubAck(_)) => panic!("a refused publish was acknowledged"),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(!closed.contains("timed out"), "{closed}");
    assert!(all_messages(&admin, &other).await.is_empty());
}

#[tokio::test]
async fn retained_messages_persistent_sessions_takeover_and_wills() {
    let server = Server::start();
    let admin = admin(&server).await;
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = |sub: &str| format!("channels/{channel}/messages/{sub}");

    // A retained message, published before anyone listens.
    let (pubc, mut pub_events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "publisher", &dev.device, &dev.key), 16);
    next_v5(&mut pub_events, 10).await.unwrap();
    pubc.publish(topic("state"), QoS::AtLeastOnce, true, "on")
        .await
        .unwrap();
    expect_v5(&mut pub_events, "PUBACK", is_puback).await;

    // A persistent session subscribes and gets the retained message.
    let mut opts = v5_with_key(&server, "listener", &dev.device, &dev.key);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (sub, mut sub_events) = rumqttc::v5::AsyncClient::new(opts.clone(), 16);
    let connack = next_v5(&mut sub_events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if !c.session_present),
        "{connack:?}"
    );
    sub.subscribe(format!("channels/{channel}/messages/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    let retained = expect_v5(&mut sub_events, "retained PUBLISH", |p| {
        matches!(p, Packet::Publish(_))
    })
    .await;
    let Packet::Publish(retained) = retained else {
        unreachable!()
    };
    assert!(retained.retain);
    assert_eq!(retained.payload, Bytes::from("on"));

    // It goes away; three QoS 1 messages arrive meanwhile; on return the
    // session is there and delivers them.
    sub.disconnect().await.unwrap();
    let _ = next_v5(&mut sub_events, 2).await;
    drop(sub_events);
    for i in 0..3 {
        pubc.publish(topic("queued"), QoS::AtLeastOnce, false, format!("m{i}"))
            .await
            .unwrap();
        expect_v5(&mut pub_events, "PUBACK", is_puback).await;
    }
    let (_sub, mut sub_events) = rumqttc::v5::AsyncClient::new(opts.clone(), 16);
    let connack = next_v5(&mut sub_events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.session_present),
        "{connack:?}"
    );
    let mut got = Vec::new();
    while got.len() < 3 {
        if let Packet::Publish(p) = expect_v5(&mut sub_events, "queued PUBLISH", |p| {
            matches!(p, Packet::Publish(_))
        })
        .await
        {
            got.push(String::from_utf8_lossy(&p.payload).into_owned());
        }
    }
    assert_eq!(got, ["m0", "m1", "m2"]);

    // The same client id connects again: the first connection is told
    // 0x8E and the newcomer has the session.
    let (_sub2, mut sub2_events) = rumqttc::v5::AsyncClient::new(opts, 16);
    let connack = next_v5(&mut sub2_events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.session_present),
        "{connack:?}"
    );
    // rumqttc reports a server's DISCONNECT as an error carrying its code.
    let taken = loop {
        match next_v5(&mut sub_events, 10).await {
            Ok(Packet::Disconnect(d)) => break format!("{:?}", d.reason_code),
            Ok(_) => {}
            Err(e) => break e,
        }
    };
    assert!(taken.contains("SessionTakenOver"), "{taken}");

    // A client with a will vanishes without DISCONNECT: the will is
    // published to the subscribers (and stored, being on a channel).
    let mut opts = v5_with_key(&server, "fragile", &dev.device, &dev.key);
    opts.set_last_will(LastWill::new(
        topic("status"),
        "offline",
        QoS::AtLeastOnce,
        false,
        None,
    ));
    let (fragile, mut fragile_events) = rumqttc::v5::AsyncClient::new(opts, 4);
    next_v5(&mut fragile_events, 10).await.unwrap();
    drop(fragile);
    drop(fragile_events);
    let will = expect_v5(
        &mut sub2_events,
        "will",
        |p| matches!(p, Packet::Publish(p) if p.payload == "offline"),
    )
    .await;
    let Packet::Publish(will) = will else {
        unreachable!()
    };
    assert_eq!(will.topic, Bytes::from(topic("status")));
    let stored = all_messages(&admin, &channel).await;
    assert!(
        stored.iter().any(|m| m["subtopic"] == "status"),
        "{stored:?}"
    );
}

#[tokio::test]
async fn revoking_a_device_cuts_its_mqtt_session_within_a_second() {
    let server = Server::start();
    let admin = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let channel = admin.create("/channels", json!({"name": "t"})).await;
    let (id, chain, key) = device_with_cert(&admin, dir.path(), "doomed").await;
    connect(&admin, &channel, &id, true, true).await;
    let (_client, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_cert(&server, "doomed-1", &chain, &key), 4);
    let connack = next_v5(&mut events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.code == ConnectReturnCode::Success),
        "{connack:?}"
    );

    let started = Instant::now();
    let r = admin
        .patch(&format!("/devices/{id}"), json!({"state": "revoked"}))
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let cut = next_v5(&mut events, 5).await.unwrap_err();
    assert!(cut.contains("AdministrativeAction"), "{cut}");
    assert!(cut.contains("device revoked"), "{cut}");
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );

    // And it cannot come back.
    let (_client, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_cert(&server, "doomed-1", &chain, &key), 4);
    assert!(next_v5(&mut events, 10).await.is_err());
}

#[tokio::test]
async fn malformed_packets_end_the_connection_and_are_counted() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let server = Server::start_with(Options {
        args: vec![
            "--insecure-dev".into(),
            "--plain-listen".into(),
            "127.0.0.1:0".into(),
        ],
        ..Options::default()
    });
    let plain = server
        .mqtt_plain
        .clone()
        .expect("plain MQTT with --insecure-dev");
    let cases: [&[u8]; 4] = [
        // Reserved packet type 0.
        &[0x00, 0x00],
        // A remaining length in five bytes.
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        // CONNECT with the reserved flag set.
        b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00",
        // PUBLISH before CONNECT.
        b"\x30\x04\x00\x01ax",
    ];
    for bytes in cases {
        let mut s = tokio::net::TcpStream::connect(&plain).await.unwrap();
        s.write_all(bytes).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("the server closes on {bytes:?}"))
            .unwrap_or(0);
        assert_eq!(n, 0, "{bytes:?} got {:?}", &buf[..n]);
    }
    let m = server.metrics().await;
    assert!(
        m.contains("moat_mqtt_protocol_errors_total{reason=\"malformed_packet\"}"),
        "{m}"
    );
    // The broker still serves.
    let (_c, mut events) = rumqttc::v5::AsyncClient::new(
        {
            let (h, p) = plain.rsplit_once(':').unwrap();
            rumqttc::v5::MqttOptions::new("late", h, p.parse().unwrap())
        },
        4,
    );
    // No credentials and no open topics: refused, but answered.
    let err = next_v5(&mut events, 10).await.unwrap_err();
    assert!(err.contains("NotAuthorized"), "{err}");
}

#[tokio::test]
async fn paho_python_clients_speak_both_versions_over_mutual_tls_and_websocket() {
    let server = Server::start();
    let admin = admin(&server).await;
    let dir = tempfile::tempdir().unwrap();
    let channel = admin
        .create("/channels", json!({"name": "p", "payload_policy": "json"}))
        .await;
    let (id, _, _) = device_with_cert(&admin, dir.path(), "paho").await;
    connect(&admin, &channel, &id, true, true).await;
    let (host, port) = server.mqtt.rsplit_once(':').unwrap();
    let https_port = server.url.rsplit_once(':').unwrap().1;
    for (version, transport, port) in [
        ("3.1.1", "tcp", port),
        ("5", "tcp", port),
        ("3.1.1", "websockets", https_port),
        ("5", "websockets", https_port),
    ] {
        let out = Command::new("python3")
            .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/mqtt_paho.py"))
            .args([host, port, &server.ca_path().display().to_string()])
            .arg(dir.path().join("paho.pem"))
            .arg(dir.path().join("paho.key"))
            .arg(format!("channels/{channel}/messages/paho"))
            .args([version, transport])
            .output()
            .expect("python3 runs (scripts/install-test-deps)");
        assert!(
            out.status.success(),
            "paho {version} over {transport}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let stored = all_messages(&admin, &channel).await;
    // Each client publishes at QoS 0, 1 and 2.
    assert_eq!(stored.len(), 12, "{stored:?}");
}

#[tokio::test]
async fn wildcards_reach_only_the_channels_a_device_may_read() {
    let server = Server::start();
    let admin = admin(&server).await;
    let mine = opaque_channel(&admin, "mine").await;
    let theirs = opaque_channel(&admin, "theirs").await;
    // Another tenant's channel, with its own device publishing.
    let tenant = admin.create("/tenants", json!({"name": "other-co"})).await;
    let foreign = admin
        .create(
            "/channels",
            json!({"name": "foreign", "payload_policy": "opaque", "tenant_id": tenant}),
        )
        .await;
    let dev = device(&admin, &mine, "curious", false, true).await;

    let (client, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "curious-1", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    client.subscribe("#", QoS::AtLeastOnce).await.unwrap();
    client
        .subscribe("channels/+/messages/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    for _ in 0..2 {
        let suback = expect_v5(&mut events, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
        assert!(
            matches!(&suback, Packet::SubAck(s) if s.return_codes == [SubscribeReasonCode::Success(QoS::AtLeastOnce)]),
            "{suback:?}"
        );
    }
    let token = format!("Bearer {}", server.admin_token().await);
    for (channel, body) in [(&theirs, "no"), (&foreign, "never"), (&mine, "yes")] {
        let r = common::messages::publish(&server, &token, channel, "x", "", body).await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    // Only its own channel's message arrives (once, though two filters match).
    only_publish(
        &mut events,
        "yes",
        &format!("channels/{mine}/messages/x"),
        "nothing else arrives",
    )
    .await;
}

#[tokio::test]
async fn a_withdrawn_subscribe_right_stops_deliveries_at_once_and_a_new_one_resumes_them() {
    let server = Server::start();
    let admin = admin(&server).await;
    let channel = opaque_channel(&admin, "c").await;
    let dev = device(&admin, &channel, "listener", false, true).await;
    let (client, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "l-1", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    client
        .subscribe(format!("channels/{channel}/messages/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    expect_v5(&mut events, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    let token = format!("Bearer {}", server.admin_token().await);
    let publish = |body: &'static str| {
        let (server, token, channel) = (&server, token.clone(), channel.clone());
        async move {
            let r = common::messages::publish(server, &token, &channel, "x", "", body).await;
            assert_eq!(r.status, 202, "{r:?}");
        }
    };
    let is_publish = |p: &Packet| matches!(p, Packet::Publish(_));

    publish("before").await;
    let Packet::Publish(p) = expect_v5(&mut events, "PUBLISH", is_publish).await else {
        unreachable!()
    };
    assert_eq!(p.payload, "before");

    // The connection goes: the next message does not reach the device.
    let r = admin
        .delete(&format!("/channels/{channel}/connections/{}", dev.device))
        .await;
    assert_eq!(r.status, 204, "{r:?}");
    publish("withdrawn").await;
    assert!(
        next_v5(&mut events, 2).await.is_err(),
        "nothing after the right is withdrawn"
    );

    // Given back, deliveries resume (the rights are re-read in the background).
    connect(&admin, &channel, &dev.device, false, true).await;
    let mut resumed = false;
    for _ in 0..20 {
        publish("again").await;
        if let Ok(Packet::Publish(p)) = next_v5(&mut events, 1).await {
            assert_eq!(p.payload, "again");
            resumed = true;
            break;
        }
    }
    assert!(resumed, "deliveries resumed once the right came back");
}

#[tokio::test]
async fn a_deleted_channels_messages_queued_for_an_offline_session_are_not_delivered() {
    let server = Server::start();
    let admin = admin(&server).await;
    let (doomed, kept) = (
        opaque_channel(&admin, "doomed").await,
        opaque_channel(&admin, "kept").await,
    );
    let dev = device(&admin, &doomed, "listener", false, true).await;
    connect(&admin, &kept, &dev.device, false, true).await;

    // A persistent session subscribes to both channels, then goes away.
    let mut opts = v5_with_key(&server, "listener-1", &dev.device, &dev.key);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(300));
    let (sub, mut events) = rumqttc::v5::AsyncClient::new(opts.clone(), 16);
    next_v5(&mut events, 10).await.unwrap();
    sub.subscribe("channels/+/messages/#", QoS::AtLeastOnce)
        .await
        .unwrap();
    expect_v5(&mut events, "SUBACK", |p| matches!(p, Packet::SubAck(_))).await;
    sub.disconnect().await.unwrap();
    let _ = next_v5(&mut events, 2).await;
    drop(events);

    // While it is offline, each channel gets a message; then one channel
    // is deleted.
    let token = format!("Bearer {}", server.admin_token().await);
    for (channel, body) in [(&doomed, "gone"), (&kept, "kept")] {
        let r = common::messages::publish(&server, &token, channel, "x", "", body).await;
        assert_eq!(r.status, 202, "{r:?}");
    }
    let r = admin.delete(&format!("/channels/{doomed}")).await;
    assert_eq!(r.status, 204, "{r:?}");

    // Back, it gets the kept channel's message only.
    let (_sub, mut events) = rumqttc::v5::AsyncClient::new(opts, 16);
    let connack = next_v5(&mut events, 10).await.unwrap();
    assert!(
        matches!(&connack, Packet::ConnAck(c) if c.session_present),
        "{connack:?}"
    );
    only_publish(
        &mut events,
        "kept",
        &format!("channels/{kept}/messages/x"),
        "nothing of the deleted channel arrives",
    )
    .await;
}
