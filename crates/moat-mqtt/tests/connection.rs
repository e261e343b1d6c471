//! The broker's connection loop in process, over in-memory pipes, with
//! tokio's paused clock for everything timed (keep-alive, message expiry,
//! will delay, session expiry). Packets are built with mqtt-protocol-core's
//! builders and the server's answers read byte by byte, so the tests can
//! also send what a well-behaved client library would refuse to.
//!
//! The broker runs in development mode (anonymous clients, open topics):
//! these are protocol tests; the platform's rules are tested end to end in
//! `crates/moat/tests/mqtt.rs`.

use std::sync::Arc;
use std::time::Duration;

use moat_core::audit::AuditChain;
use moat_core::message::MessageStore;
use moat_core::message::bus::Bus;
use moat_core::sessions::SessionRegistry;
use moat_core::store::Store;
use moat_mqtt::protocol::{self, Frame};
use moat_mqtt::{Broker, BrokerConfig, Peer};
use mqtt_protocol_core::mqtt::packet::{
    AuthenticationMethod, MessageExpiryInterval, Property, Qos, ResponseTopic,
    SessionExpiryInterval, SubEntry, SubOpts, TopicAlias, WillDelayInterval, v5_0,
};
use mqtt_protocol_core::mqtt::result_code::DisconnectReasonCode;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::sync::watch;

struct Fixture {
    broker: Arc<Broker>,
    _dir: tempfile::TempDir,
    _stop: watch::Sender<bool>,
    stop: watch::Receiver<bool>,
}

fn fixture(config: BrokerConfig) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn Store> = Arc::new(
        moat_store::SqliteStore::open(
            &dir.path().join("moat.db"),
            &[1; 32],
            AuditChain::new([2; 32]),
        )
        .unwrap(),
    );
    let messages: Arc<dyn MessageStore> = Arc::new(
        moat_store::SqliteMessageStore::open(&dir.path().join("messages.db"), &[3; 32]).unwrap(),
    );
    let bus: Arc<dyn Bus> = moat_bus::LocalBus::new(messages);
    let broker = Broker::new(
        BrokerConfig {
            open_topics: true,
            ..config
        },
        store,
        bus,
        SessionRegistry::new(),
    );
    let (tx, rx) = watch::channel(false);
    Fixture {
        broker,
        _dir: dir,
        _stop: tx,
        stop: rx,
    }
}

/// A raw client: writes packet bytes, reads the server's packets whole.
struct Client {
    io: DuplexStream,
    buf: Vec<u8>,
}

impl Fixture {
    fn client(&self) -> Client {
        let (mine, theirs) = tokio::io::duplex(1 << 20);
        let peer = Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            certificate_device: None,
            transport: "test",
        };
        tokio::spawn(moat_mqtt::serve(
            Arc::clone(&self.broker),
            theirs,
            peer,
            self.stop.clone(),
        ));
        Client {
            io: mine,
            buf: Vec::new(),
        }
    }

    /// A connected v5 client.
    async fn connected(&self, id: &str, props: Vec<Property>, clean: bool) -> (Client, Vec<u8>) {
        let mut c = self.client();
        let connect = v5_0::Connect::builder()
            .client_id(id)
            .unwrap()
            .clean_start(clean)
            .keep_alive(60)
            .props(props)
            .build()
            .unwrap();
        c.send(&connect.to_continuous_buffer()).await;
        let connack = c.recv().await.expect("CONNACK");
        assert_eq!(connack[0], 0x20, "{connack:?}");
        assert_eq!(connack[3], 0, "CONNACK reason {connack:?}");
        (c, connack)
    }
}

impl Client {
    async fn send(&mut self, bytes: &[u8]) {
        self.io.write_all(bytes).await.unwrap();
    }

    /// The next whole packet, or `None` at end of stream (or after 60 s of
    /// the paused clock, which advances on its own when all is idle).
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Frame::Packet { total_len, .. } = protocol::frame(&self.buf, 1 << 24) {
                return Some(self.buf.drain(..total_len).collect());
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(60), self.io.read(&mut chunk))
                .await
                .ok()?
                .ok()?;
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Whether nothing arrives within `secs` of the paused clock.
    async fn silent_for(&mut self, secs: u64) -> bool {
        if !self.buf.is_empty() {
            return false;
        }
        let mut chunk = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(secs), self.io.read(&mut chunk))
            .await
            .is_err()
    }

    async fn subscribe(
        &mut self,
        id: u16,
        filter: &str,
        opts: SubOpts,
        props: Vec<Property>,
    ) -> Vec<u8> {
        let sub = v5_0::Subscribe::builder()
            .packet_id(id)
            .entries(vec![SubEntry::new(filter, opts).unwrap()])
            .props(props)
            .build()
            .unwrap();
        self.send(&sub.to_continuous_buffer()).await;
        let suback = self.recv().await.expect("SUBACK");
        assert_eq!(suback[0], 0x90, "{suback:?}");
        suback
    }

    /// Publishes and waits for the broker's answer (PUBACK or PUBREC).
    async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
        retain: bool,
        id: u16,
        props: Vec<Property>,
    ) {
        self.publish(topic, payload, qos, retain, id, props).await;
        self.recv().await.expect("PUBACK");
    }

    async fn publish(
        &mut self,
        topic: &str,
        payload: &[u8],
        qos: Qos,
        retain: bool,
        id: u16,
        props: Vec<Property>,
    ) {
        let mut b = v5_0::Publish::builder()
            .topic_name(topic)
            .unwrap()
            .qos(qos)
            .retain(retain)
            .payload(payload.to_vec())
            .props(props);
        if qos != Qos::AtMostOnce {
            b = b.packet_id(id);
        }
        self.send(&b.build().unwrap().to_continuous_buffer()).await;
    }
}

fn qos1() -> SubOpts {
    SubOpts::new().set_qos(Qos::AtLeastOnce)
}

/// A received PUBLISH, parsed.
fn publish_of(packet: &[u8]) -> v5_0::Publish {
    assert_eq!(packet[0] >> 4, 3, "not a PUBLISH: {packet:?}");
    let header = match protocol::frame(packet, usize::MAX) {
        Frame::Packet { header_len, .. } => header_len,
        other => panic!("{other:?}"),
    };
    let body: Arc<[u8]> = Arc::from(&packet[header..]);
    v5_0::Publish::parse(packet[0] & 0x0f, body).unwrap().0
}

/// The reason code of a DISCONNECT (0 when omitted).
fn disconnect_reason(packet: &[u8]) -> u8 {
    assert_eq!(packet[0], 0xE0, "not a DISCONNECT: {packet:?}");
    packet.get(2).copied().unwrap_or(0)
}

#[tokio::test(start_paused = true)]
async fn keep_alive_runs_out_at_one_and_a_half_times_with_0x8d() {
    let f = fixture(BrokerConfig::default());
    let mut c = f.client();
    let connect = v5_0::Connect::builder()
        .client_id("sleepy")
        .unwrap()
        .keep_alive(10)
        .build()
        .unwrap();
    c.send(&connect.to_continuous_buffer()).await;
    assert_eq!(c.recv().await.unwrap()[0], 0x20);
    // Silent for 14 s: still connected; at 15 s (1.5 x 10) it is cut.
    assert!(c.silent_for(14).await);
    let d = c.recv().await.expect("DISCONNECT");
    assert_eq!(disconnect_reason(&d), 0x8D);
    assert!(c.recv().await.is_none());
}

#[tokio::test(start_paused = true)]
async fn a_client_without_keep_alive_is_given_the_server_keep_alive() {
    let f = fixture(BrokerConfig {
        max_keep_alive: 20,
        ..BrokerConfig::default()
    });
    let mut c = f.client();
    let connect = v5_0::Connect::builder()
        .client_id("forever")
        .unwrap()
        .keep_alive(0)
        .build()
        .unwrap();
    c.send(&connect.to_continuous_buffer()).await;
    let connack = c.recv().await.unwrap();
    // Server Keep Alive (0x13) = 20.
    assert!(
        connack.windows(3).any(|w| w == [0x13, 0, 20]),
        "{connack:?}"
    );
    assert!(c.silent_for(29).await);
    assert_eq!(disconnect_reason(&c.recv().await.unwrap()), 0x8D);
}

#[tokio::test]
async fn more_unacknowledged_publishes_than_receive_maximum_is_0x93() {
    let f = fixture(BrokerConfig {
        receive_maximum: 2,
        ..BrokerConfig::default()
    });
    let (mut c, connack) = f.connected("eager", vec![], true).await;
    // Receive Maximum (0x21) = 2 announced.
    assert!(connack.windows(3).any(|w| w == [0x21, 0, 2]), "{connack:?}");
    // Three QoS 1 PUBLISHes in one write: the third exceeds the window.
    let mut bytes = Vec::new();
    for id in 1..=3 {
        bytes.extend(
            v5_0::Publish::builder()
                .topic_name("t")
                .unwrap()
                .qos(Qos::AtLeastOnce)
                .packet_id(id)
                .payload(b"x".to_vec())
                .build()
                .unwrap()
                .to_continuous_buffer(),
        );
    }
    c.send(&bytes).await;
    let mut last = None;
    while let Some(p) = c.recv().await {
        last = Some(p);
    }
    assert_eq!(disconnect_reason(&last.unwrap()), 0x93);
}

#[tokio::test]
async fn a_packet_over_the_maximum_size_is_0x95_before_its_body_arrives() {
    let f = fixture(BrokerConfig {
        max_packet_size: 128,
        ..BrokerConfig::default()
    });
    let (mut c, connack) = f.connected("big", vec![], true).await;
    // Maximum Packet Size (0x27) = 128 announced.
    assert!(
        connack.windows(5).any(|w| w == [0x27, 0, 0, 0, 128]),
        "{connack:?}"
    );
    // Only the fixed header of a 300-byte PUBLISH: refused already.
    c.send(&[0x30, 0xAC, 0x02]).await;
    assert_eq!(disconnect_reason(&c.recv().await.unwrap()), 0x95);
    assert!(c.recv().await.is_none());
}

#[tokio::test]
async fn no_local_retain_as_published_and_subscription_identifiers() {
    let f = fixture(BrokerConfig::default());
    let (mut a, _) = f.connected("a", vec![], true).await;
    let (mut b, _) = f.connected("b", vec![], true).await;
    // `a` subscribes with no-local; `b` with retain-as-published and an
    // identifier.
    a.subscribe(1, "room/#", qos1().set_nl(true), vec![]).await;
    b.subscribe(
        1,
        "room/+",
        qos1().set_rap(true),
        vec![Property::SubscriptionIdentifier(
            mqtt_protocol_core::mqtt::packet::SubscriptionIdentifier::new(7).unwrap(),
        )],
    )
    .await;
    a.publish("room/1", b"hi", Qos::AtLeastOnce, true, 5, vec![])
        .await;
    let ack = a.recv().await.unwrap();
    assert_eq!(ack[0], 0x40, "PUBACK {ack:?}");
    // `a` does not hear itself.
    assert!(a.silent_for(1).await);
    let p = publish_of(&b.recv().await.unwrap());
    assert_eq!(p.topic_name(), "room/1");
    assert!(p.retain(), "retain as published");
    assert!(
        p.props()
            .iter()
            .any(|x| matches!(x, Property::SubscriptionIdentifier(i) if i.val() == 7)),
        "{:?}",
        p.props()
    );
}

#[tokio::test]
async fn retained_messages_follow_retain_handling_and_an_empty_one_clears() {
    let f = fixture(BrokerConfig::default());
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish_acked("lamp/state", b"on", Qos::AtLeastOnce, true, 1, vec![])
        .await;
    assert_eq!(f.broker.retained_count(), 1);

    let (mut s, _) = f.connected("s", vec![], true).await;
    // Retain handling 2: never sent on subscribe.
    s.subscribe(
        1,
        "lamp/#",
        qos1().set_rh(mqtt_protocol_core::mqtt::packet::RetainHandling::DoNotSendRetained),
        vec![],
    )
    .await;
    assert!(s.silent_for(1).await);
    // Retain handling 0: sent, with RETAIN set.
    s.subscribe(2, "lamp/state", qos1(), vec![]).await;
    let got = publish_of(&s.recv().await.unwrap());
    assert!(got.retain());
    assert_eq!(got.payload().as_slice(), b"on");

    // An empty retained message clears the topic.
    p.publish_acked("lamp/state", b"", Qos::AtLeastOnce, true, 2, vec![])
        .await;
    assert_eq!(f.broker.retained_count(), 0);
}

#[tokio::test]
async fn topic_aliases_from_the_client_are_resolved() {
    let f = fixture(BrokerConfig::default());
    let (mut s, _) = f.connected("s", vec![], true).await;
    s.subscribe(1, "long/topic/name", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    let alias = |n| vec![Property::TopicAlias(TopicAlias::new(n).unwrap())];
    p.publish_acked(
        "long/topic/name",
        b"1",
        Qos::AtLeastOnce,
        false,
        1,
        alias(3),
    )
    .await;
    // The alias alone, with an empty topic.
    let second = v5_0::Publish::builder()
        .topic_name("")
        .unwrap()
        .qos(Qos::AtLeastOnce)
        .packet_id(2)
        .payload(b"2".to_vec())
        .props(alias(3))
        .build()
        .unwrap();
    p.send(&second.to_continuous_buffer()).await;
    p.recv().await.unwrap();
    for want in [b"1", b"2"] {
        let got = publish_of(&s.recv().await.unwrap());
        assert_eq!(got.topic_name(), "long/topic/name");
        assert_eq!(got.payload().as_slice(), want);
    }
}

/// A topic alias above the broker's Topic Alias Maximum, or one never
/// set used with an empty topic name, is DISCONNECT 0x94 (Topic Alias
/// invalid).
#[tokio::test]
async fn a_topic_alias_out_of_range_or_unknown_is_0x94() {
    let f = fixture(BrokerConfig::default());
    let alias = |n| vec![Property::TopicAlias(TopicAlias::new(n).unwrap())];
    for (topic, n, code) in [("a/b", 65, 0x94), ("", 7, 0x94)] {
        let (mut p, _) = f.connected("aliaser", vec![], true).await;
        p.publish(topic, b"x", Qos::AtLeastOnce, false, 1, alias(n))
            .await;
        let got = p.recv().await.expect("DISCONNECT");
        assert_eq!(disconnect_reason(&got), code, "alias {n} on {topic:?}");
    }
}

/// MQTT-3.3.2-14: a Response Topic with wildcards is a protocol error —
/// DISCONNECT 0x82 on a PUBLISH, CONNACK 0x82 in a will. A will topic with
/// wildcards is CONNACK 0x90.
#[tokio::test]
async fn wildcards_in_a_response_topic_or_will_topic_are_refused() {
    let f = fixture(BrokerConfig::default());
    let wild_reply = || {
        vec![Property::ResponseTopic(
            ResponseTopic::new("replies/#").unwrap(),
        )]
    };
    let (mut p, _) = f.connected("asker", vec![], true).await;
    p.publish("ask", b"x", Qos::AtLeastOnce, false, 1, wild_reply())
        .await;
    assert_eq!(disconnect_reason(&p.recv().await.unwrap()), 0x82);
    for (topic, props, code) in [("status/+", vec![], 0x90), ("status/x", wild_reply(), 0x82)] {
        let mut c = f.client();
        let connect = v5_0::Connect::builder()
            .client_id("wild")
            .unwrap()
            .will_message(topic, "bye", Qos::AtMostOnce, false)
            .unwrap()
            .will_props(props)
            .build()
            .unwrap();
        c.send(&connect.to_continuous_buffer()).await;
        let connack = c.recv().await.expect("CONNACK");
        assert_eq!((connack[0], connack[3]), (0x20, code), "{topic}");
        assert!(c.recv().await.is_none());
    }
}

#[tokio::test]
async fn shared_subscriptions_take_turns() {
    let f = fixture(BrokerConfig::default());
    let (mut a, _) = f.connected("a", vec![], true).await;
    let (mut b, _) = f.connected("b", vec![], true).await;
    a.subscribe(1, "$share/workers/jobs", qos1(), vec![]).await;
    b.subscribe(1, "$share/workers/jobs", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    for i in 0..4u16 {
        p.publish("jobs", &[i as u8], Qos::AtLeastOnce, false, i + 1, vec![])
            .await;
        p.recv().await.unwrap();
    }
    let mut counts = [0, 0];
    for (n, c) in [&mut a, &mut b].into_iter().enumerate() {
        for _ in 0..2 {
            let got = publish_of(&c.recv().await.unwrap());
            assert_eq!(got.topic_name(), "jobs");
            counts[n] += 1;
        }
        assert!(c.silent_for(1).await);
    }
    assert_eq!(counts, [2, 2]);
}

fn message_expiry(secs: u32) -> Vec<Property> {
    vec![Property::MessageExpiryInterval(
        MessageExpiryInterval::new(secs).unwrap(),
    )]
}

fn session_expiry(secs: u32) -> Vec<Property> {
    vec![Property::SessionExpiryInterval(
        SessionExpiryInterval::new(secs).unwrap(),
    )]
}

#[tokio::test(start_paused = true)]
async fn messages_expire_in_an_offline_queue_and_sessions_expire() {
    let f = fixture(BrokerConfig::default());
    let (mut s, _) = f.connected("s", session_expiry(60), false).await;
    s.subscribe(1, "news", qos1(), vec![]).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish_acked(
        "news",
        b"stale",
        Qos::AtLeastOnce,
        false,
        1,
        message_expiry(5),
    )
    .await;
    p.publish_acked(
        "news",
        b"fresh",
        Qos::AtLeastOnce,
        false,
        2,
        message_expiry(100),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(10)).await;

    // Back within the session expiry: only the unexpired message, with
    // what is left of its interval.
    let (mut s, connack) = f.connected("s", session_expiry(60), false).await;
    assert_eq!(connack[2] & 1, 1, "session present");
    let got = publish_of(&s.recv().await.unwrap());
    assert_eq!(got.payload().as_slice(), b"fresh");
    let left = got.props().iter().find_map(|x| match x {
        Property::MessageExpiryInterval(e) => Some(e.val()),
        _ => None,
    });
    assert!(matches!(left, Some(89..=90)), "{left:?}");
    assert!(s.silent_for(1).await);
    drop(s);

    // Away longer than the session expiry: the session is gone.
    tokio::time::sleep(Duration::from_secs(61)).await;
    assert_eq!(f.broker.session_count(), 1, "only p's session is left");
    let (_s, connack) = f.connected("s", session_expiry(60), false).await;
    assert_eq!(connack[2] & 1, 0, "no session present");
}

#[tokio::test(start_paused = true)]
async fn a_delayed_will_is_cancelled_by_a_resume_and_sent_otherwise() {
    let f = fixture(BrokerConfig::default());
    let (mut watcher, _) = f.connected("watcher", vec![], true).await;
    watcher.subscribe(1, "status/#", qos1(), vec![]).await;

    let will_connect = |id: &str| {
        v5_0::Connect::builder()
            .client_id(id)
            .unwrap()
            .clean_start(false)
            .keep_alive(60)
            .props(session_expiry(300))
            .will_message(
                format!("status/{id}").as_str(),
                "gone",
                Qos::AtLeastOnce,
                false,
            )
            .unwrap()
            .will_props(vec![Property::WillDelayInterval(
                WillDelayInterval::new(10).unwrap(),
            )])
            .build()
            .unwrap()
            .to_continuous_buffer()
    };

    // Drops, comes back after 5 s: no will.
    let mut d = f.client();
    d.send(&will_connect("flaky")).await;
    d.recv().await.unwrap();
    drop(d);
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut d = f.client();
    d.send(&will_connect("flaky")).await;
    d.recv().await.unwrap();
    assert!(
        watcher.silent_for(20).await,
        "a resumed session sends no will"
    );

    // Drops for good: the will comes after its delay, not before.
    drop(d);
    assert!(watcher.silent_for(9).await);
    let will = publish_of(&watcher.recv().await.unwrap());
    assert_eq!(will.topic_name(), "status/flaky");
    assert_eq!(will.payload().as_slice(), b"gone");
}

#[tokio::test]
async fn a_normal_disconnect_discards_the_will_and_0x04_sends_it() {
    let f = fixture(BrokerConfig::default());
    let (mut watcher, _) = f.connected("watcher", vec![], true).await;
    watcher.subscribe(1, "status/#", qos1(), vec![]).await;
    for (id, reason) in [("polite", 0x00u8), ("dramatic", 0x04)] {
        let mut c = f.client();
        let connect = v5_0::Connect::builder()
            .client_id(id)
            .unwrap()
            .will_message(
                format!("status/{id}").as_str(),
                "bye",
                Qos::AtMostOnce,
                false,
            )
            .unwrap()
            .build()
            .unwrap();
        c.send(&connect.to_continuous_buffer()).await;
        c.recv().await.unwrap();
        c.send(&[0xE0, 0x01, reason]).await;
        assert!(c.recv().await.is_none());
    }
    let will = publish_of(&watcher.recv().await.unwrap());
    assert_eq!(will.topic_name(), "status/dramatic");
    assert!(watcher.silent_for(1).await);
}

#[tokio::test]
async fn protocol_violations_close_with_their_reason_codes() {
    let f = fixture(BrokerConfig::default());
    let cases: Vec<(&str, Vec<u8>, u8)> = vec![
        // Wildcard in a PUBLISH topic name.
        ("wildcard topic", b"\x30\x05\x00\x03a/+".to_vec(), 0x90),
        // QoS 1 with packet id 0.
        (
            "packet id 0",
            b"\x32\x06\x00\x01a\x00\x00\x00".to_vec(),
            0x81,
        ),
        // A Subscription Identifier in a client PUBLISH.
        (
            "subscription identifier",
            b"\x30\x06\x00\x01a\x02\x0b\x01".to_vec(),
            0x82,
        ),
        // A second CONNECT.
        (
            "second connect",
            v5_0::Connect::builder()
                .client_id("x")
                .unwrap()
                .build()
                .unwrap()
                .to_continuous_buffer(),
            0x82,
        ),
    ];
    for (what, bytes, code) in cases {
        let (mut c, _) = f.connected("v", vec![], true).await;
        c.send(&bytes).await;
        let mut last = None;
        while let Some(p) = c.recv().await {
            last = Some(p);
        }
        let last = last.unwrap_or_else(|| panic!("{what}: closed without DISCONNECT"));
        assert_eq!(disconnect_reason(&last), code, "{what}: {last:?}");
    }
}

#[tokio::test]
async fn a_takeover_hands_the_session_over_with_0x8e() {
    let f = fixture(BrokerConfig::default());
    let (mut first, _) = f.connected("same", session_expiry(60), false).await;
    first.subscribe(1, "t", qos1(), vec![]).await;
    let (mut second, connack) = f.connected("same", session_expiry(60), false).await;
    assert_eq!(
        connack[2] & 1,
        1,
        "the session moved, subscriptions and all"
    );
    let d = first.recv().await.unwrap();
    assert_eq!(disconnect_reason(&d), 0x8E);
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish("t", b"x", Qos::AtLeastOnce, false, 1, vec![])
        .await;
    assert_eq!(publish_of(&second.recv().await.unwrap()).topic_name(), "t");
}

#[tokio::test]
async fn properties_travel_with_the_message_and_aliases_go_out() {
    use mqtt_protocol_core::mqtt::packet::{
        ContentType, CorrelationData, MaximumPacketSize, PayloadFormat, PayloadFormatIndicator,
        ResponseTopic, TopicAliasMaximum, UserProperty,
    };
    let f = fixture(BrokerConfig::default());
    // The subscriber takes topic aliases and at most 100-byte packets.
    let (mut s, _) = f
        .connected(
            "s",
            vec![
                Property::TopicAliasMaximum(TopicAliasMaximum::new(4).unwrap()),
                Property::MaximumPacketSize(MaximumPacketSize::new(100).unwrap()),
            ],
            true,
        )
        .await;
    s.subscribe(1, "req/#", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    let props = vec![
        Property::PayloadFormatIndicator(
            PayloadFormatIndicator::new(PayloadFormat::String).unwrap(),
        ),
        Property::ContentType(ContentType::new("application/json").unwrap()),
        Property::ResponseTopic(ResponseTopic::new("resp/1").unwrap()),
        Property::CorrelationData(CorrelationData::new(b"c-7".to_vec()).unwrap()),
        Property::UserProperty(UserProperty::new("k", "v1").unwrap()),
        Property::UserProperty(UserProperty::new("k", "v2").unwrap()),
    ];
    p.publish_acked("req/a", b"{}", Qos::AtLeastOnce, false, 1, props.clone())
        .await;
    // Too big for the subscriber: discarded, not sent (§3.1.2.11.4).
    p.publish("req/a", &[b'x'; 200], Qos::AtLeastOnce, false, 2, vec![])
        .await;
    p.recv().await.unwrap();
    p.publish_acked("req/a", b"again", Qos::AtLeastOnce, false, 3, vec![])
        .await;

    let first = publish_of(&s.recv().await.unwrap());
    assert_eq!(first.topic_name(), "req/a");
    for want in &props {
        assert!(
            first.props().contains(want),
            "{want:?} missing from {:?}",
            first.props()
        );
    }
    // The user properties keep their order.
    let users: Vec<_> = first
        .props()
        .iter()
        .filter_map(|x| match x {
            Property::UserProperty(u) => Some(u.val().to_owned()),
            _ => None,
        })
        .collect();
    assert_eq!(users, ["v1", "v2"]);
    // The next one to the same topic goes by its alias: an empty topic.
    let second = s.recv().await.unwrap();
    assert_eq!(second[0] >> 4, 3);
    assert_eq!(
        &second[2..4],
        [0, 0],
        "empty topic name, alias instead: {second:?}"
    );
    assert!(s.silent_for(1).await, "the oversized message was not sent");
}

#[tokio::test]
async fn a_subscriber_that_stops_reading_neither_stalls_others_nor_grows() {
    use mqtt_protocol_core::mqtt::packet::ReceiveMaximum;
    let f = fixture(BrokerConfig {
        max_queued: 10,
        ..BrokerConfig::default()
    });
    // `slow` takes one message in flight and never acknowledges it.
    let (mut slow, _) = f
        .connected(
            "slow",
            vec![Property::ReceiveMaximum(ReceiveMaximum::new(1).unwrap())],
            true,
        )
        .await;
    slow.subscribe(1, "feed", qos1(), vec![]).await;
    let (mut fast, _) = f.connected("fast", vec![], true).await;
    fast.subscribe(1, "feed", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    for i in 0..200u16 {
        p.publish(
            "feed",
            &i.to_be_bytes(),
            Qos::AtLeastOnce,
            false,
            i + 1,
            vec![],
        )
        .await;
        let ack = p.recv().await.unwrap();
        assert_eq!(ack[0], 0x40, "publisher acknowledged at once: {ack:?}");
        // `fast` acknowledges each one and gets them all, in order.
        let got = publish_of(&fast.recv().await.unwrap());
        assert_eq!(got.payload().as_slice(), i.to_be_bytes());
        let id = got.packet_id().unwrap();
        fast.send(&[0x40, 0x02, (id >> 8) as u8, id as u8]).await;
    }
    // `slow` got its one message; the rest beyond its queue were dropped.
    let first = publish_of(&slow.recv().await.unwrap());
    assert_eq!(first.payload().as_slice(), 0u16.to_be_bytes());
    assert!(slow.silent_for(1).await);
}

#[tokio::test]
async fn an_empty_client_id_is_assigned_one_and_a_false_utf8_claim_is_0x99() {
    use mqtt_protocol_core::mqtt::packet::{PayloadFormat, PayloadFormatIndicator};
    let f = fixture(BrokerConfig::default());
    let (mut c, connack) = f.connected("", vec![], true).await;
    // Assigned Client Identifier (0x12) = "moat-…".
    let at = connack
        .iter()
        .position(|b| *b == 0x12)
        .expect("assigned id");
    assert_eq!(&connack[at + 3..at + 8], b"moat-", "{connack:?}");
    let utf8 = vec![Property::PayloadFormatIndicator(
        PayloadFormatIndicator::new(PayloadFormat::String).unwrap(),
    )];
    c.publish("t", &[0xC3, 0x28], Qos::AtLeastOnce, false, 1, utf8)
        .await;
    let ack = c.recv().await.unwrap();
    assert_eq!(ack[0], 0x40, "{ack:?}");
    assert_eq!(ack[4], 0x99, "{ack:?}");
}

#[tokio::test]
async fn an_unsupported_protocol_level_gets_connack_0x01() {
    let f = fixture(BrokerConfig::default());
    // MQTT 3.1 ("MQIsdp", level 3) and "MQTT" with level 6.
    let v31 = b"\x10\x0e\x00\x06MQIsdp\x03\x02\x00\x3c\x00\x00".to_vec();
    let v6 = b"\x10\x0c\x00\x04MQTT\x06\x02\x00\x3c\x00\x00".to_vec();
    for connect in [v31, v6] {
        let mut c = f.client();
        c.send(&connect).await;
        assert_eq!(
            c.recv().await,
            Some(vec![0x20, 0x02, 0x00, 0x01]),
            "{connect:?}"
        );
        assert!(c.recv().await.is_none());
    }
}

/// MQTT-4.12.0-1: enhanced authentication is not offered, so a CONNECT
/// naming an Authentication Method gets CONNACK 0x8C and the connection
/// closes.
#[tokio::test(start_paused = true)]
async fn an_authentication_method_gets_connack_0x8c() {
    let f = fixture(BrokerConfig::default());
    let mut c = f.client();
    let connect = v5_0::Connect::builder()
        .client_id("scram")
        .unwrap()
        .props(vec![Property::AuthenticationMethod(
            AuthenticationMethod::new("SCRAM-SHA-256").unwrap(),
        )])
        .build()
        .unwrap();
    c.send(&connect.to_continuous_buffer()).await;
    let connack = c.recv().await.expect("CONNACK");
    assert_eq!((connack[0], connack[3]), (0x20, 0x8C), "{connack:?}");
    assert!(c.recv().await.is_none());
    assert_eq!(f.broker.session_count(), 0);
}

/// MQTT-4.13.1-1: a v5 CONNECT the guard refuses is answered with CONNACK
/// and the reason code, then closed (a DISCONNECT may not come before a
/// CONNACK); nothing opens.
#[tokio::test(start_paused = true)]
async fn a_bad_v5_connect_gets_connack_with_its_reason_code() {
    let f = fixture(BrokerConfig::default());
    // A v5 CONNECT (clean start, keep-alive 60, client id "zero") with
    // these properties: the crate's builder makes no zero values.
    let connect = |props: &[u8]| {
        let mut body = b"\x00\x04MQTT\x05\x02\x00\x3c".to_vec();
        body.push(props.len() as u8);
        body.extend_from_slice(props);
        body.extend_from_slice(b"\x00\x04zero");
        let mut packet = vec![0x10, body.len() as u8];
        packet.extend_from_slice(&body);
        packet
    };
    let cases: [(&str, &[u8], u8); 2] = [
        ("receive maximum 0", b"\x21\x00\x00", 0x82),
        ("maximum packet size 0", b"\x27\x00\x00\x00\x00", 0x82),
    ];
    for (what, props, code) in cases {
        let mut c = f.client();
        c.send(&connect(props)).await;
        let connack = c.recv().await.expect(what);
        assert_eq!(connack, [0x20, 0x03, 0x00, code, 0x00], "{what}");
        assert!(c.recv().await.is_none(), "{what}");
    }
    // The same CONNECT with values the rules allow opens.
    let mut c = f.client();
    c.send(&connect(b"\x21\x00\x01\x27\x00\x01\x00\x00")).await;
    assert_eq!(c.recv().await.unwrap()[3], 0x00);
    drop(c);
    // A malformed v5 CONNECT (the reserved flag): CONNACK 0x81.
    let mut c = f.client();
    c.send(b"\x10\x0d\x00\x04MQTT\x05\x03\x00\x3c\x00\x00\x00")
        .await;
    assert_eq!(c.recv().await.unwrap(), [0x20, 0x03, 0x00, 0x81, 0x00]);
    assert!(c.recv().await.is_none());
    // v3.1.1 has no reason codes there: closed without a word.
    let mut c = f.client();
    c.send(b"\x10\x0c\x00\x04MQTT\x04\x03\x00\x3c\x00\x00")
        .await;
    assert!(c.recv().await.is_none());
    assert_eq!(f.broker.session_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_client_over_its_publish_rate_is_read_more_slowly() {
    let f = fixture(BrokerConfig {
        publish_rate: 10,
        ..BrokerConfig::default()
    });
    let (mut c, _) = f.connected("chatty", vec![], true).await;
    let started = tokio::time::Instant::now();
    for id in 1..=40u16 {
        c.publish("t", b"x", Qos::AtLeastOnce, false, id, vec![])
            .await;
        let ack = c.recv().await.unwrap();
        assert_eq!(ack[0], 0x40);
    }
    // 10 a second with a burst of 10: 40 take about 3 seconds, not none.
    let took = started.elapsed();
    assert!(took >= Duration::from_millis(2500), "{took:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
}

#[tokio::test]
async fn the_connection_cap_holds_new_clients_until_a_place_frees() {
    let f = fixture(BrokerConfig {
        max_connections: 1,
        ..BrokerConfig::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let opts = moat_mqtt::server::ListenerOptions {
        tls: None,
        identify: None,
        handshake_timeout: Duration::from_secs(5),
        drain_timeout: Duration::from_secs(1),
    };
    tokio::spawn(moat_mqtt::server::run(
        listener,
        Arc::clone(&f.broker),
        opts,
        f.stop.clone(),
    ));
    let connect = v5_0::Connect::builder()
        .client_id("")
        .unwrap()
        .build()
        .unwrap()
        .to_continuous_buffer();
    let mut first = tokio::net::TcpStream::connect(addr).await.unwrap();
    first.write_all(&connect).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        first.read(&mut buf).await.unwrap() > 0,
        "the first is served"
    );
    let mut second = tokio::net::TcpStream::connect(addr).await.unwrap();
    second.write_all(&connect).await.unwrap();
    let waited = tokio::time::timeout(Duration::from_millis(500), second.read(&mut buf)).await;
    assert!(waited.is_err(), "the second waits while the cap is reached");
    drop(first);
    let n = tokio::time::timeout(Duration::from_secs(5), second.read(&mut buf))
        .await
        .expect("served once the first left")
        .unwrap();
    assert!(n > 0 && buf[0] == 0x20, "CONNACK");
}

#[tokio::test]
async fn an_unacknowledged_delivery_is_sent_again_with_dup_on_resume() {
    let f = fixture(BrokerConfig::default());
    let (mut s, _) = f.connected("forgetful", session_expiry(60), false).await;
    s.subscribe(1, "orders", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish_acked("orders", b"42", Qos::AtLeastOnce, false, 1, vec![])
        .await;
    let first = publish_of(&s.recv().await.unwrap());
    assert!(!first.dup());
    // Gone without a PUBACK.
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut s, connack) = f.connected("forgetful", session_expiry(60), false).await;
    assert_eq!(connack[2] & 1, 1);
    let again = publish_of(&s.recv().await.unwrap());
    assert!(again.dup(), "resent with DUP");
    assert_eq!(again.packet_id(), first.packet_id());
    assert_eq!(again.payload().as_slice(), b"42");
    // Acknowledged now: not sent a third time.
    let id = again.packet_id().unwrap();
    s.send(&[0x40, 0x02, (id >> 8) as u8, id as u8]).await;
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut s, _) = f.connected("forgetful", session_expiry(60), false).await;
    assert!(s.silent_for(1).await);
}

/// A QoS 1 delivery sent and not acknowledged goes out again on resume
/// with its Message Expiry Interval less the time it waited (§3.3.2.3.3);
/// one whose interval ran out meanwhile does not.
#[tokio::test(start_paused = true)]
async fn a_resent_delivery_has_waited_its_wait_off_its_expiry() {
    let f = fixture(BrokerConfig::default());
    let (mut s, _) = f.connected("slow", session_expiry(600), false).await;
    s.subscribe(1, "news", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish_acked(
        "news",
        b"long",
        Qos::AtLeastOnce,
        false,
        1,
        message_expiry(100),
    )
    .await;
    p.publish_acked(
        "news",
        b"short",
        Qos::AtLeastOnce,
        false,
        2,
        message_expiry(20),
    )
    .await;
    for _ in 0..2 {
        publish_of(&s.recv().await.unwrap());
    }
    // Gone without acknowledging either; back 30 s later.
    drop(s);
    tokio::time::sleep(Duration::from_secs(30)).await;
    let (mut s, connack) = f.connected("slow", session_expiry(600), false).await;
    assert_eq!(connack[2] & 1, 1);
    let again = publish_of(&s.recv().await.unwrap());
    assert!(again.dup());
    assert_eq!(again.payload().as_slice(), b"long");
    let left = again.props().iter().find_map(|x| match x {
        Property::MessageExpiryInterval(e) => Some(e.val()),
        _ => None,
    });
    assert!(matches!(left, Some(69..=70)), "{left:?}");
    assert!(s.silent_for(1).await, "the short one expired meanwhile");
}

/// A session store that remembers what it was told.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<moat_core::message::sessions::SessionChange>>);

#[async_trait::async_trait]
impl moat_core::message::sessions::SessionStore for Recorder {
    async fn apply_sessions(
        &self,
        changes: Vec<moat_core::message::sessions::SessionChange>,
    ) -> Result<(), moat_core::store::StoreError> {
        self.0.lock().unwrap().extend(changes);
        Ok(())
    }

    async fn load_sessions(
        &self,
    ) -> Result<Vec<moat_core::message::sessions::StoredSession>, moat_core::store::StoreError>
    {
        Ok(Vec::new())
    }
}

/// A broker that keeps its sessions in a [`Recorder`].
async fn recorded() -> (Fixture, Arc<Recorder>) {
    let f = fixture(BrokerConfig::default());
    let recorder = Arc::new(Recorder::default());
    f.broker
        .keep_sessions(Arc::clone(&recorder) as _)
        .await
        .unwrap();
    (f, recorder)
}

/// What the broker writes behind for a persistent session, in order — and
/// what it does not: nothing for a clean session, nothing for deliveries
/// to a connected session (the hot path), nothing for QoS 0 while offline.
#[tokio::test(start_paused = true)]
async fn a_persistent_sessions_changes_are_written_behind_in_order() {
    use moat_core::message::sessions::SessionChange as C;
    let (f, recorder) = recorded().await;
    let (mut s, _) = f.connected("keeper", session_expiry(60), false).await;
    s.subscribe(1, "news", qos1(), vec![]).await;
    let (mut p, _) = f.connected("p", vec![], true).await;
    p.publish_acked("news", b"m1", Qos::AtLeastOnce, false, 1, vec![])
        .await;
    // Received and never acknowledged; then the connection drops.
    assert_eq!(
        publish_of(&s.recv().await.unwrap()).payload().as_slice(),
        b"m1"
    );
    drop(s);
    tokio::time::sleep(Duration::from_millis(50)).await;
    p.publish_acked("news", b"m2", Qos::AtLeastOnce, false, 2, vec![])
        .await;
    p.publish("news", b"m3", Qos::AtMostOnce, false, 0, vec![])
        .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (mut s, connack) = f.connected("keeper", session_expiry(60), false).await;
    assert_eq!(connack[2] & 1, 1);
    p.publish_acked("news", b"m4", Qos::AtLeastOnce, false, 3, vec![])
        .await;
    // m1 again (DUP), m2, m4.
    for want in [&b"m1"[..], b"m2", b"m4"] {
        assert_eq!(
            publish_of(&s.recv().await.unwrap()).payload().as_slice(),
            want
        );
    }
    f.broker.save_sessions().await;

    let written = recorder.0.lock().unwrap().clone();
    let kinds: Vec<String> = written
        .iter()
        .map(|c| match c {
            C::Connected { key, fresh, .. } => format!("connected {} fresh={fresh}", key.client_id),
            C::Subscribed { subscription, .. } => format!("subscribed {}", subscription.filter),
            C::Unsubscribed { filter, .. } => format!("unsubscribed {filter}"),
            C::Disconnected { .. } => "disconnected".into(),
            C::Saved { .. } => "saved".into(),
            C::Queued { .. } => "queued".into(),
            C::WillPending { .. } => "will pending".into(),
            C::WillGone(_) => "will gone".into(),
            C::Ended(k) => format!("ended {}", k.client_id),
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "connected keeper fresh=true",
            "subscribed news",
            // m1, sent and not acknowledged.
            "saved",
            "disconnected",
            // m2; not m3 (QoS 0), not m4 (connected).
            "queued",
            "connected keeper fresh=false",
        ]
    );
}

/// A session that did not outlive its connection, taken over by one that
/// asks it to: the store gets it whole, with the subscriptions it already
/// had.
#[tokio::test(start_paused = true)]
async fn a_session_that_becomes_persistent_is_written_with_its_subscriptions() {
    use moat_core::message::sessions::SessionChange as C;
    let (f, recorder) = recorded().await;
    // Clean start off, no expiry: the session ends with the connection.
    let (mut a, _) = f.connected("shifty", vec![], false).await;
    a.subscribe(1, "news/#", qos1(), vec![]).await;
    let (_b, connack) = f.connected("shifty", session_expiry(60), false).await;
    assert_eq!(connack[2] & 1, 1, "taken over: present");
    assert!(
        a.recv().await.is_some_and(|p| p[0] == 0xE0),
        "DISCONNECT 0x8E"
    );
    f.broker.save_sessions().await;
    let written = recorder.0.lock().unwrap().clone();
    assert!(
        matches!(
            &written[..],
            [
                C::Connected { fresh: true, expiry: 60, .. },
                C::Subscribed { subscription, .. },
            ] if subscription.filter == "news/#" && subscription.id.is_none()
        ),
        "{written:?}"
    );
}

/// A DISCONNECT's Session Expiry Interval (§3.14.2.2.2): zero ends a
/// persistent session there and then; a session connected without one may
/// not be given one (DISCONNECT 0x82, and its will goes out).
#[tokio::test(start_paused = true)]
async fn a_disconnect_can_end_a_session_but_not_make_one_persistent() {
    let f = fixture(BrokerConfig::default());
    let (mut s, _) = f.connected("brief", session_expiry(600), false).await;
    s.subscribe(1, "news", qos1(), vec![]).await;
    let bye = v5_0::Disconnect::builder()
        .reason_code(DisconnectReasonCode::NormalDisconnection)
        .props(session_expiry(0))
        .build()
        .unwrap();
    s.send(&bye.to_continuous_buffer()).await;
    assert!(s.recv().await.is_none());
    tokio::time::sleep(Duration::from_millis(10)).await;
    let (_s, connack) = f.connected("brief", session_expiry(600), false).await;
    assert_eq!(connack[2] & 1, 0, "the session ended with the DISCONNECT");

    let (mut watcher, _) = f.connected("watcher", vec![], true).await;
    watcher.subscribe(1, "status/#", qos1(), vec![]).await;
    let mut c = f.client();
    let connect = v5_0::Connect::builder()
        .client_id("sly")
        .unwrap()
        .will_message("status/sly", "gone", Qos::AtMostOnce, false)
        .unwrap()
        .build()
        .unwrap();
    c.send(&connect.to_continuous_buffer()).await;
    c.recv().await.unwrap();
    let bye = v5_0::Disconnect::builder()
        .reason_code(DisconnectReasonCode::NormalDisconnection)
        .props(session_expiry(600))
        .build()
        .unwrap();
    c.send(&bye.to_continuous_buffer()).await;
    assert_eq!(disconnect_reason(&c.recv().await.unwrap()), 0x82);
    let will = publish_of(&watcher.recv().await.unwrap());
    assert_eq!(will.topic_name(), "status/sly");
}
