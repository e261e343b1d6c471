//! What the MQTT broker keeps across a restart of the real binary, written
//! behind into the message database and loaded at start: retained
//! messages, with their MQTT 5 properties and expiry; persistent sessions
//! with their subscriptions, and — after a graceful stop — their queues
//! and unacknowledged deliveries.

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::messages::opaque_channel_and_device;
use common::mqtt::*;
use common::{Api, Options, Server};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};

/// The value of counter `name` in the server's metrics, 0 if absent.
async fn counter(server: &Server, name: &str) -> u64 {
    let m = server.metrics().await;
    m.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

#[tokio::test]
async fn retained_messages_survive_a_power_cut_with_their_properties() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = |sub: &str| format!("channels/{channel}/messages/{sub}");

    let (pubc, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "publisher", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    let props = PublishProperties {
        content_type: Some("application/octet-stream".into()),
        user_properties: vec![("site".into(), "north".into())],
        message_expiry_interval: Some(3600),
        ..PublishProperties::default()
    };
    // Kept; kept and then cleared; kept with an expiry that will pass.
    pubc.publish_with_properties(topic("mode"), QoS::AtLeastOnce, true, "eco", props)
        .await
        .unwrap();
    pubc.publish(topic("alarm"), QoS::AtLeastOnce, true, "smoke")
        .await
        .unwrap();
    pubc.publish(topic("alarm"), QoS::AtLeastOnce, true, "")
        .await
        .unwrap();
    let brief = PublishProperties {
        message_expiry_interval: Some(1),
        ..PublishProperties::default()
    };
    pubc.publish_with_properties(topic("blip"), QoS::AtLeastOnce, true, "soon gone", brief)
        .await
        .unwrap();
    // rumqttc sends as its event loop runs: until the four PUBACKs.
    let mut acks = 0;
    while acks < 4 {
        if let Packet::PubAck(a) = next_v5(&mut events, 10).await.unwrap() {
            assert_eq!(a.reason, PubAckReason::Success, "{a:?}");
            acks += 1;
        }
    }
    // Written behind: wait until the store has all four changes, then cut
    // the power.
    let started = Instant::now();
    while counter(&server, "moat_mqtt_retained_writes_total").await < 4 {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "retained messages not written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    drop(pubc);
    drop(events);
    let dir = server.kill();
    // Past the brief one's expiry.
    tokio::time::sleep(Duration::from_millis(1100)).await;

    let server = Server::start_in(dir, Options::default());
    let (sub, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "listener", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    sub.subscribe(topic("#"), QoS::AtLeastOnce).await.unwrap();
    let mut got = Vec::new();
    // The one retained message, then nothing else within a second.
    while let Ok(p) = next_v5(&mut events, if got.is_empty() { 10 } else { 1 }).await {
        if let Packet::Publish(p) = p {
            got.push(p);
        }
    }
    assert_eq!(got.len(), 1, "{got:?}");
    let p = &got[0];
    assert!(p.retain);
    assert_eq!(p.topic, Bytes::from(topic("mode")));
    assert_eq!(p.payload, Bytes::from("eco"));
    let props = p.properties.clone().expect("properties");
    assert_eq!(
        props.content_type.as_deref(),
        Some("application/octet-stream")
    );
    assert_eq!(
        props.user_properties,
        vec![("site".to_owned(), "north".to_owned())]
    );
    // What is left of the hour.
    let left = props.message_expiry_interval.expect("expiry");
    assert!((3500..=3600).contains(&left), "{left}");
}

/// SIGTERM right after the PUBACK, without waiting for the write behind:
/// the retained message is there after the restart. The write usually
/// wins the race on its own, so this checks the stop-and-start path end to
/// end; that the stop waits for the writes is proven deterministically by
/// `broker::retained`'s unit test with a slow store.
#[tokio::test]
async fn a_graceful_stop_writes_the_retained_messages_still_behind() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = format!("channels/{channel}/messages/mode");
    let (pubc, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "publisher", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    pubc.publish(&topic, QoS::AtLeastOnce, true, "away")
        .await
        .unwrap();
    // Routed (and so kept in memory) before its PUBACK; stopped at once,
    // without waiting for the write behind.
    loop {
        if let Packet::PubAck(a) = next_v5(&mut events, 10).await.unwrap() {
            assert_eq!(a.reason, PubAckReason::Success, "{a:?}");
            break;
        }
    }
    let dir = server.stop();

    let server = Server::start_in(dir, Options::default());
    let (sub, mut events) =
        rumqttc::v5::AsyncClient::new(v5_with_key(&server, "listener", &dev.device, &dev.key), 16);
    next_v5(&mut events, 10).await.unwrap();
    sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Packet::Publish(p) = next_v5(&mut events, 10).await.unwrap() {
            assert!(p.retain);
            assert_eq!(p.payload, Bytes::from("away"));
            break;
        }
    }
}

/// Waits until the store has taken `n` changes to sessions (they are
/// written behind).
async fn session_writes(server: &Server, n: u64) {
    let started = Instant::now();
    while counter(server, "moat_mqtt_session_writes_total").await < n {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "session changes not written"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Connects `opts` and returns the client, its event loop and whether the
/// CONNACK said the session was present.
async fn connect_v5(opts: rumqttc::v5::MqttOptions) -> (AsyncClient, rumqttc::v5::EventLoop, bool) {
    let (client, mut events) = AsyncClient::new(opts, 16);
    match next_v5(&mut events, 10).await.unwrap() {
        Packet::ConnAck(c) => (client, events, c.session_present),
        other => panic!("expected CONNACK, got {other:?}"),
    }
}

/// Subscribes to `filter` at QoS 1 and waits for the SUBACK.
async fn subscribe(client: &AsyncClient, events: &mut rumqttc::v5::EventLoop, filter: &str) {
    client.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    loop {
        if let Packet::SubAck(_) = next_v5(events, 10).await.unwrap() {
            return;
        }
    }
}

/// Leaves with a DISCONNECT.
async fn leave(client: AsyncClient, mut events: rumqttc::v5::EventLoop) {
    client.disconnect().await.unwrap();
    let _ = next_v5(&mut events, 2).await;
}

/// A persistent session subscribes to `filter` and leaves; returns once
/// the store has its start, subscription and disconnection.
async fn subscribe_and_leave(server: &Server, opts: rumqttc::v5::MqttOptions, filter: &str) {
    let (client, mut events, _) = connect_v5(opts).await;
    subscribe(&client, &mut events, filter).await;
    leave(client, events).await;
    session_writes(server, 3).await;
}

/// The payloads of the next `n` PUBLISHes, and whether each was a DUP.
async fn receive(events: &mut rumqttc::v5::EventLoop, n: usize) -> Vec<(String, bool)> {
    let mut got = Vec::new();
    while got.len() < n {
        match next_v5(events, 10).await {
            Ok(Packet::Publish(p)) => {
                got.push((String::from_utf8_lossy(&p.payload).into_owned(), p.dup))
            }
            Ok(_) => {}
            Err(e) => panic!("after {got:?}: {e}"),
        }
    }
    got
}

/// Publishes QoS 1 messages and waits for their PUBACKs.
async fn publish_all(
    server: &Server,
    dev: &common::messages::Publisher,
    topic: &str,
    payloads: &[&str],
) {
    let (pubc, mut events, _) =
        connect_v5(v5_with_key(server, "publisher", &dev.device, &dev.key)).await;
    for p in payloads {
        pubc.publish(topic, QoS::AtLeastOnce, false, p.to_string())
            .await
            .unwrap();
    }
    let mut acks = 0;
    while acks < payloads.len() {
        if let Packet::PubAck(a) = next_v5(&mut events, 10).await.unwrap() {
            assert_eq!(a.reason, PubAckReason::Success, "{a:?}");
            acks += 1;
        }
    }
}

/// A persistent session goes offline holding a delivery it never
/// acknowledged, two more messages queue up, and the server restarts —
/// gracefully, or by a power cut once the changes are written behind: the
/// client comes back to its session, gets the unacknowledged one again
/// (DUP) and the queued ones, in order, and its subscription goes on
/// delivering.
async fn queue_survives_a_restart(power_cut: bool) {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = format!("channels/{channel}/messages/readings");
    // The port changes with the restart.
    let opts = |server: &Server| {
        let mut o = v5_with_key(server, "keeper", &dev.device, &dev.key);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        // The client acknowledges nothing: what it receives stays in flight.
        o.set_manual_acks(true);
        o
    };

    let (sub, mut events, present) = connect_v5(opts(&server)).await;
    assert!(!present);
    subscribe(&sub, &mut events, &topic).await;
    publish_all(&server, &dev, &topic, &["m0"]).await;
    assert_eq!(receive(&mut events, 1).await, [("m0".to_owned(), false)]);
    leave(sub, events).await;
    publish_all(&server, &dev, &topic, &["m1", "m2"]).await;
    let dir = if power_cut {
        // Connected, subscribed, what it held (m0) and disconnected, then
        // m1 and m2 queued.
        session_writes(&server, 6).await;
        server.kill()
    } else {
        server.stop()
    };

    let server = Server::start_in(dir, Options::default());
    let (_sub, mut events, present) = connect_v5(opts(&server)).await;
    assert!(present, "the session is back");
    assert_eq!(
        receive(&mut events, 3).await,
        [
            ("m0".to_owned(), true),
            ("m1".to_owned(), false),
            ("m2".to_owned(), false)
        ]
    );
    publish_all(&server, &dev, &topic, &["m3"]).await;
    assert_eq!(receive(&mut events, 1).await, [("m3".to_owned(), false)]);
}

#[tokio::test]
async fn a_persistent_sessions_queue_survives_a_graceful_restart() {
    queue_survives_a_restart(false).await;
}

#[tokio::test]
async fn a_persistent_sessions_queue_survives_a_power_cut() {
    queue_survives_a_restart(true).await;
}

/// Mosquitto's own client (MQTT 3.1.1, clean session off) subscribes and
/// leaves; the power is cut; after the restart a message published while
/// it is away waits in its session — which it could only if the
/// subscription came back — and reaches it when it returns.
#[tokio::test]
async fn a_persistent_sessions_subscription_survives_a_power_cut() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = format!("channels/{channel}/messages/cut");
    // The port changes with the restart.
    let sub_args = |server: &Server, wait: &str| -> Vec<String> {
        let (host, port) = server.mqtt.rsplit_once(':').unwrap();
        [
            "-h",
            host,
            "-p",
            port,
            "--cafile",
            &server.ca_path().display().to_string(),
            "-u",
            &dev.device,
            "-P",
            &dev.key,
            "-i",
            "survivor",
            "-c",
            "-q",
            "1",
            "-t",
            &topic,
            "-C",
            "1",
            "-W",
            wait,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    // Subscribes, hears nothing within a second, leaves.
    let first = mosquitto("mosquitto_sub", &sub_args(&server, "1"));
    assert!(first.stdout.is_empty(), "{first:?}");
    // Connected, subscribed, disconnected: in the store.
    session_writes(&server, 3).await;
    let dir = server.kill();

    let server = Server::start_in(dir, Options::default());
    publish_all(&server, &dev, &topic, &["while away"]).await;
    let back = mosquitto("mosquitto_sub", &sub_args(&server, "10"));
    assert!(back.status.success(), "{back:?}");
    assert_eq!(String::from_utf8_lossy(&back.stdout).trim(), "while away");
}

/// A session whose expiry passes while the server is down does not come
/// back.
#[tokio::test]
async fn a_session_that_expired_while_the_server_was_down_is_gone() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let opts = |server: &Server| {
        let mut o = v5_with_key(server, "brief", &dev.device, &dev.key);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(1));
        o
    };
    subscribe_and_leave(
        &server,
        opts(&server),
        &format!("channels/{channel}/messages/#"),
    )
    .await;
    let dir = server.kill();
    tokio::time::sleep(Duration::from_millis(1200)).await;

    let server = Server::start_in(dir, Options::default());
    assert!(counter(&server, "moat_mqtt_sessions_expired_total").await >= 1);
    let (_sub, _events, present) = connect_v5(opts(&server)).await;
    assert!(!present);
}

/// A device quarantined while its session was offline has no session
/// after a restart, even once it is let back in.
#[tokio::test]
async fn a_quarantined_devices_session_does_not_come_back() {
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let opts = |server: &Server| {
        let mut o = v5_with_key(server, "suspect", &dev.device, &dev.key);
        o.set_clean_start(false);
        o.set_session_expiry_interval(Some(3600));
        o
    };
    subscribe_and_leave(
        &server,
        opts(&server),
        &format!("channels/{channel}/messages/#"),
    )
    .await;
    let r = admin
        .patch(
            &format!("/devices/{}", dev.device),
            serde_json::json!({"state": "quarantined"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let dir = server.stop();

    let server = Server::start_in(dir, Options::default());
    let admin = Api::bearer(&server, &server.admin_token().await);
    let r = admin
        .patch(
            &format!("/devices/{}", dev.device),
            serde_json::json!({"state": "active"}),
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let (_sub, _events, present) = connect_v5(opts(&server)).await;
    assert!(!present);
}

/// A device's connection drops with a will delayed 4 s, and the power is
/// cut before the will is due: after the restart the will is published
/// when it falls due (here retained, so a later subscriber sees it).
#[tokio::test]
async fn a_delayed_will_is_published_after_a_power_cut() {
    use rumqttc::v5::mqttbytes::v5::{LastWill, LastWillProperties};
    let server = Server::start();
    let admin = Api::bearer(&server, &server.admin_token().await);
    let (channel, dev) = opaque_channel_and_device(&admin, "state", "gateway").await;
    let topic = format!("channels/{channel}/messages/status");
    let mut opts = v5_with_key(&server, "mortal", &dev.device, &dev.key);
    opts.set_clean_start(false);
    opts.set_session_expiry_interval(Some(3600));
    let props = LastWillProperties {
        delay_interval: Some(4),
        payload_format_indicator: None,
        message_expiry_interval: None,
        content_type: None,
        response_topic: None,
        correlation_data: None,
        user_properties: Vec::new(),
    };
    opts.set_last_will(LastWill::new(
        &topic,
        "gone",
        QoS::AtLeastOnce,
        true,
        Some(props),
    ));
    let (client, events, _) = connect_v5(opts).await;
    // The connection drops without a DISCONNECT: the will waits 4 s.
    drop(client);
    drop(events);
    let dropped = Instant::now();
    // Connected, the will pending, disconnected.
    session_writes(&server, 3).await;
    let dir = server.kill();
    if dropped.elapsed() >= Duration::from_secs(4) {
        // A machine this slow let the will fall due before the power cut:
        // the restart would prove nothing about it.
        eprintln!("skipped: the will fell due before the power cut");
        return;
    }

    let server = Server::start_in(dir, Options::default());
    let (sub, mut events, _) =
        connect_v5(v5_with_key(&server, "watcher", &dev.device, &dev.key)).await;
    tokio::time::sleep(Duration::from_secs(4).saturating_sub(dropped.elapsed())).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    sub.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
    let got = receive(&mut events, 1).await;
    assert_eq!(got, [("gone".to_owned(), false)]);
}
