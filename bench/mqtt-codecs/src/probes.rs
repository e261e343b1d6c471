//! Conformance probes: malformed and edge-case byte strings, each with the
//! behaviour the MQTT specifications require of a server, run through every
//! layer in [`crate::layers`].
//!
//! A probe's [`Scope`] says whether the rule can be checked from one packet
//! alone or needs session state (topic aliases registered earlier, the
//! in-flight window, whether CONNECT was seen). A codec without session state
//! is not marked wrong for a session rule it leaves to the broker; the table
//! says "n/a" and the broker must do it.

use crate::fixtures::{self, first, prop};
use crate::layers::{self, Layer, Setup, Verdict, Version};
use crate::wire::{Wire, packet, packet_with_length_bytes};

/// What the specification requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The server must treat the stream as malformed or a protocol error.
    Reject,
    /// The server must accept it.
    Accept,
    /// The server must accept it and deliver the PUBLISH under this topic.
    AcceptTopic(&'static str),
    /// Either is allowed (a MAY in the specification, or Moat's policy
    /// decides); recorded, not scored.
    Either,
}

/// Whether the rule is about one packet or about the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Packet,
    Session,
}

pub struct Probe {
    pub id: &'static str,
    pub title: &'static str,
    /// The specification's statement, e.g. "MQTT-3.3.1-4" or "v5 §3.3.2.3".
    pub rule: &'static str,
    pub setup: Setup,
    pub stream: Vec<u8>,
    pub expect: Expect,
    pub scope: Scope,
}

/// How a layer did on a probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Score {
    Correct,
    Wrong,
    /// A session rule that a layer without session state did not enforce.
    NotApplicable,
    /// Allowed either way.
    Recorded,
    Panicked,
}

impl Score {
    pub fn mark(self) -> &'static str {
        match self {
            Score::Correct => "ok",
            Score::Wrong => "WRONG",
            Score::NotApplicable => "n/a",
            Score::Recorded => "—",
            Score::Panicked => "PANIC",
        }
    }
}

pub fn score(probe: &Probe, layer: Layer, verdict: &Verdict) -> Score {
    if let Verdict::Panicked(_) = verdict {
        return Score::Panicked;
    }
    let correct = match &probe.expect {
        Expect::Reject => verdict.is_rejected(),
        Expect::Accept => matches!(verdict, Verdict::Accepted(_)),
        Expect::AcceptTopic(t) => {
            matches!(verdict, Verdict::Accepted(s) if s.contains(&format!("topic={t:?}")))
        }
        Expect::Either => return Score::Recorded,
    };
    if correct {
        Score::Correct
    } else if probe.scope == Scope::Session && !layer.has_session_state() {
        Score::NotApplicable
    } else {
        Score::Wrong
    }
}

/// Runs one probe through one layer.
pub fn run(probe: &Probe, layer: Layer) -> Verdict {
    layers::run(layer, &probe.setup, &probe.stream)
}

fn publish(first_byte: u8, body: Wire) -> Vec<u8> {
    packet(first_byte, body)
}

/// A v5 QoS 0 PUBLISH with the given topic bytes and properties.
fn publish_v5_qos0(topic: &[u8], props: Wire) -> Vec<u8> {
    publish(
        first::PUBLISH_QOS0,
        Wire::new().str(topic).props(props).raw(b"x"),
    )
}

fn publish_v311_qos0(topic: &[u8]) -> Vec<u8> {
    publish(first::PUBLISH_QOS0, Wire::new().str(topic).raw(b"x"))
}

fn alias(n: u16) -> Wire {
    Wire::new().u8(prop::TOPIC_ALIAS).u16(n)
}

fn concat(parts: &[Vec<u8>]) -> Vec<u8> {
    parts.concat()
}

fn session(version: Version) -> Setup {
    Setup::session(version)
}

fn connecting(version: Version) -> Setup {
    Setup::connecting(version)
}

/// Every probe, in the order of ADR 005's table.
pub fn all() -> Vec<Probe> {
    use Expect::*;
    use Scope::*;
    use Version::*;
    let p = |id, title, rule, setup, stream, expect, scope| Probe {
        id,
        title,
        rule,
        setup,
        stream,
        expect,
        scope,
    };
    vec![
        // ---- framing
        p(
            "len-5-bytes",
            "remaining length in 5 bytes",
            "v5 §1.5.5 (max 4 bytes)",
            session(V311),
            packet_with_length_bytes(
                first::PUBLISH_QOS0,
                &[0xff, 0xff, 0xff, 0xff, 0x7f],
                Wire::new(),
            ),
            Reject,
            Packet,
        ),
        p(
            "len-non-minimal",
            "remaining length not minimally encoded (0 as 80 00)",
            "MQTT-1.5.5-1 (v5)",
            session(V5),
            packet_with_length_bytes(first::PINGREQ, &[0x80, 0x00], Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "pingreq-trailing",
            "PINGREQ with a 1-byte body",
            "v3.1.1 §3.12 (no body)",
            session(V311),
            packet(first::PINGREQ, Wire::new().u8(0)),
            Reject,
            Packet,
        ),
        p(
            "type-0",
            "reserved packet type 0",
            "v3.1.1 §2.2.1",
            session(V311),
            packet(0x00, Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "auth-on-v311",
            "AUTH (type 15) on a v3.1.1 session",
            "v3.1.1 §2.2.1 (type 15 reserved)",
            session(V311),
            packet(0xf0, Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "truncated-packet-id",
            "QoS 1 PUBLISH whose body ends before the packet id",
            "v3.1.1 §3.3.2 (malformed)",
            session(V311),
            publish(first::PUBLISH_QOS1, Wire::new().str("a/b")),
            Reject,
            Packet,
        ),
        p(
            "topic-len-overrun",
            "topic length longer than the packet",
            "v5 §1.5.4 (malformed)",
            session(V5),
            publish(first::PUBLISH_QOS0, Wire::new().u16(200).raw(b"a/b")),
            Reject,
            Packet,
        ),
        // ---- topic names
        p(
            "topic-plus",
            "PUBLISH topic with '+' wildcard (v3.1.1)",
            "MQTT-3.3.2-2",
            session(V311),
            publish_v311_qos0(b"channels/+/temp"),
            Reject,
            Packet,
        ),
        p(
            "topic-hash",
            "PUBLISH topic with '#' wildcard (v5)",
            "MQTT-3.3.2-2",
            session(V5),
            publish_v5_qos0(b"channels/#", Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "topic-empty-v311",
            "zero-length topic (v3.1.1)",
            "MQTT-4.7.3-1",
            session(V311),
            publish_v311_qos0(b""),
            Reject,
            Packet,
        ),
        p(
            "topic-empty-no-alias",
            "zero-length topic without Topic Alias (v5)",
            "v5 §3.3.2.1 / §3.3.4 (protocol error)",
            session(V5),
            publish_v5_qos0(b"", Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "topic-bad-utf8",
            "invalid UTF-8 in topic (C3 28)",
            "MQTT-1.5.3-1",
            session(V311),
            publish_v311_qos0(b"a/\xc3\x28"),
            Reject,
            Packet,
        ),
        p(
            "topic-surrogate",
            "UTF-16 surrogate in topic (ED A0 80)",
            "MQTT-1.5.3-1",
            session(V5),
            publish_v5_qos0(b"a/\xed\xa0\x80", Wire::new()),
            Reject,
            Packet,
        ),
        p(
            "topic-nul",
            "U+0000 in topic",
            "MQTT-1.5.3-2",
            session(V5),
            publish_v5_qos0(b"a/\x00/b", Wire::new()),
            Reject,
            Packet,
        ),
        // ---- PUBLISH header
        p(
            "qos-3",
            "PUBLISH with QoS 3",
            "MQTT-3.3.1-4",
            session(V311),
            publish(0x36, Wire::new().str("a/b").u16(1).raw(b"x")),
            Reject,
            Packet,
        ),
        p(
            "qos0-dup",
            "PUBLISH QoS 0 with DUP set",
            "MQTT-3.3.1-2",
            session(V311),
            publish(0x38, Wire::new().str("a/b").raw(b"x")),
            Reject,
            Packet,
        ),
        p(
            "packet-id-0",
            "QoS 1 PUBLISH with packet id 0",
            "MQTT-2.3.1-1",
            session(V5),
            publish(
                first::PUBLISH_QOS1,
                Wire::new().str("a/b").u16(0).props(Wire::new()).raw(b"x"),
            ),
            Reject,
            Packet,
        ),
        // ---- SUBSCRIBE
        p(
            "subscribe-flags-0000",
            "SUBSCRIBE fixed-header flags 0000 (must be 0010)",
            "MQTT-3.8.1-1",
            session(V311),
            packet(0x80, Wire::new().u16(1).str("a/b").u8(1)),
            Reject,
            Packet,
        ),
        p(
            "subscribe-flags-0011",
            "SUBSCRIBE fixed-header flags 0011 (v5)",
            "MQTT-3.8.1-1",
            session(V5),
            packet(0x83, Wire::new().u16(1).props(Wire::new()).str("a/b").u8(1)),
            Reject,
            Packet,
        ),
        p(
            "subscribe-empty",
            "SUBSCRIBE with no topic filter",
            "MQTT-3.8.3-3",
            session(V311),
            packet(first::SUBSCRIBE, Wire::new().u16(1)),
            Reject,
            Packet,
        ),
        p(
            "subscribe-qos-reserved",
            "SUBSCRIBE requested-QoS byte with reserved bits (0x41, v3.1.1)",
            "MQTT-3-8.3-4",
            session(V311),
            packet(first::SUBSCRIBE, Wire::new().u16(1).str("a/b").u8(0x41)),
            Reject,
            Packet,
        ),
        p(
            "subopts-reserved",
            "subscription options with reserved bits 6-7 (0xC1, v5)",
            "MQTT-3.8.3-5",
            session(V5),
            packet(
                first::SUBSCRIBE,
                Wire::new().u16(1).props(Wire::new()).str("a/b").u8(0xc1),
            ),
            Reject,
            Packet,
        ),
        p(
            "subopts-retain-handling-3",
            "subscription options with Retain Handling 3 (v5)",
            "v5 §3.8.3.1 (protocol error)",
            session(V5),
            packet(
                first::SUBSCRIBE,
                Wire::new().u16(1).props(Wire::new()).str("a/b").u8(0x31),
            ),
            Reject,
            Packet,
        ),
        p(
            "filter-bad-hash",
            "topic filter 'a/b#' ('#' not a whole level)",
            "MQTT-4.7.1-1",
            session(V311),
            packet(first::SUBSCRIBE, Wire::new().u16(1).str("a/b#").u8(1)),
            Reject,
            Packet,
        ),
        p(
            "sub-id-0",
            "SUBSCRIBE with Subscription Identifier 0 (v5)",
            "v5 §3.8.2.1.2 (protocol error)",
            session(V5),
            packet(
                first::SUBSCRIBE,
                Wire::new()
                    .u16(1)
                    .props(Wire::new().u8(prop::SUBSCRIPTION_IDENTIFIER).varint(0))
                    .str("a/b")
                    .u8(1),
            ),
            Reject,
            Packet,
        ),
        // ---- CONNECT
        p(
            "connect-mqisdp",
            "CONNECT \"MQIsdp\" level 3 (MQTT 3.1)",
            "policy: Moat speaks 3.1.1 and 5 (CONNACK 0x01)",
            connecting(V311),
            fixtures::connect_v311_with("MQIsdp", 3, 0x02),
            Either,
            Packet,
        ),
        p(
            "connect-level-3",
            "CONNECT \"MQTT\" with level 3",
            "MQTT-3.1.2-2",
            connecting(V311),
            fixtures::connect_v311_with("MQTT", 3, 0x02),
            Reject,
            Packet,
        ),
        p(
            "connect-reserved-flag",
            "CONNECT with the reserved flag bit set",
            "MQTT-3.1.2-3",
            connecting(V311),
            fixtures::connect_v311_with("MQTT", 4, 0x03),
            Reject,
            Packet,
        ),
        p(
            "connect-will-qos-no-will",
            "CONNECT with Will QoS 1 but no Will Flag",
            "MQTT-3.1.2-13",
            connecting(V311),
            fixtures::connect_v311_with("MQTT", 4, 0x0a),
            Reject,
            Packet,
        ),
        p(
            "connect-password-no-user",
            "CONNECT with Password Flag but no User Name Flag (v3.1.1)",
            "MQTT-3.1.2-22",
            connecting(V311),
            packet(
                first::CONNECT,
                Wire::new()
                    .str("MQTT")
                    .u8(4)
                    .u8(0x42)
                    .u16(60)
                    .str("probe")
                    .str("secret"),
            ),
            Reject,
            Packet,
        ),
        p(
            "connect-will-qos-3",
            "CONNECT with Will QoS 3 (v5)",
            "MQTT-3.1.2-12",
            connecting(V5),
            fixtures::connect_v5_with(0xc0 | 0x18 | 0x04 | 0x02, fixtures::connect_props_v5()),
            Reject,
            Packet,
        ),
        p(
            "connect-topic-alias-max-0",
            "CONNECT with Topic Alias Maximum 0 (the default, valid)",
            "v5 §3.1.2.11.5",
            connecting(V5),
            fixtures::connect_v5_with(
                fixtures::CONNECT_V5_FLAGS,
                Wire::new().u8(prop::TOPIC_ALIAS_MAXIMUM).u16(0),
            ),
            Accept,
            Packet,
        ),
        p(
            "connect-receive-max-0",
            "CONNECT with Receive Maximum 0",
            "v5 §3.1.2.11.3 (protocol error)",
            connecting(V5),
            fixtures::connect_v5_with(
                fixtures::CONNECT_V5_FLAGS,
                Wire::new().u8(prop::RECEIVE_MAXIMUM).u16(0),
            ),
            Reject,
            Packet,
        ),
        p(
            "connect-max-packet-size-0",
            "CONNECT with Maximum Packet Size 0",
            "v5 §3.1.2.11.4 (protocol error)",
            connecting(V5),
            fixtures::connect_v5_with(
                fixtures::CONNECT_V5_FLAGS,
                Wire::new().u8(prop::MAXIMUM_PACKET_SIZE).u32(0),
            ),
            Reject,
            Packet,
        ),
        p(
            "connect-twice",
            "a second CONNECT on an open session",
            "MQTT-3.1.0-2",
            session(V311),
            fixtures::connect_v311_minimal(),
            Reject,
            Session,
        ),
        p(
            "publish-before-connect",
            "PUBLISH as the first packet",
            "MQTT-3.1.0-1",
            connecting(V311),
            publish_v311_qos0(b"a/b"),
            Reject,
            Session,
        ),
        // ---- v5 properties
        p(
            "prop-duplicate",
            "PUBLISH with Payload Format Indicator twice",
            "v5 §3.3.2.3.2 (protocol error)",
            session(V5),
            publish_v5_qos0(
                b"a/b",
                Wire::new()
                    .u8(prop::PAYLOAD_FORMAT_INDICATOR)
                    .u8(0)
                    .u8(prop::PAYLOAD_FORMAT_INDICATOR)
                    .u8(0),
            ),
            Reject,
            Packet,
        ),
        p(
            "prop-not-allowed-publish",
            "PUBLISH with Session Expiry Interval",
            "v5 §2.2.2.2 (malformed)",
            session(V5),
            publish_v5_qos0(
                b"a/b",
                Wire::new().u8(prop::SESSION_EXPIRY_INTERVAL).u32(10),
            ),
            Reject,
            Packet,
        ),
        p(
            "prop-not-allowed-connect",
            "CONNECT with Topic Alias",
            "v5 §2.2.2.2 (malformed)",
            connecting(V5),
            fixtures::connect_v5_with(fixtures::CONNECT_V5_FLAGS, alias(1)),
            Reject,
            Packet,
        ),
        p(
            "prop-unknown-id",
            "PUBLISH with property id 0x7F (none such)",
            "v5 §2.2.2.2 (malformed)",
            session(V5),
            publish_v5_qos0(b"a/b", Wire::new().u8(0x7f).u8(0)),
            Reject,
            Packet,
        ),
        p(
            "pfi-value-2",
            "Payload Format Indicator 2 (only 0 or 1 exist)",
            "v5 §3.3.2.3.2 (protocol error)",
            session(V5),
            publish_v5_qos0(b"a/b", Wire::new().u8(prop::PAYLOAD_FORMAT_INDICATOR).u8(2)),
            Reject,
            Packet,
        ),
        p(
            "pfi-utf8-bad-payload",
            "Payload Format Indicator 1 with a non-UTF-8 payload",
            "MQTT-3.3.2-4 (receiver MAY check; Moat: 0x99)",
            session(V5),
            publish(
                first::PUBLISH_QOS0,
                Wire::new()
                    .str("a/b")
                    .props(Wire::new().u8(prop::PAYLOAD_FORMAT_INDICATOR).u8(1))
                    .raw(b"\xff\xfe"),
            ),
            Either,
            Packet,
        ),
        p(
            "sub-id-from-client",
            "client PUBLISH carrying a Subscription Identifier",
            "MQTT-3.3.4-6",
            session(V5),
            publish_v5_qos0(
                b"a/b",
                Wire::new().u8(prop::SUBSCRIPTION_IDENTIFIER).varint(3),
            ),
            Reject,
            Session,
        ),
        p(
            "user-props",
            "PUBLISH with two user properties sharing a key",
            "v5 §3.3.2.3.7 (allowed, order kept)",
            session(V5),
            publish_v5_qos0(
                b"a/b",
                Wire::new()
                    .u8(prop::USER_PROPERTY)
                    .str("k")
                    .str("1")
                    .u8(prop::USER_PROPERTY)
                    .str("k")
                    .str("2"),
            ),
            Accept,
            Packet,
        ),
        // ---- limits
        p(
            "max-size-over",
            "100-byte PUBLISH, our maximum packet size 64",
            "MQTT-3.2.2-15 (v5: 0x95)",
            Setup {
                max_packet_size: Some(64),
                ..session(V5)
            },
            fixtures::publish_v5(),
            Reject,
            Packet,
        ),
        p(
            "max-size-boundary",
            "PUBLISH of total size limit+1 (limit 99, 100 bytes)",
            "v5 §3.1.2.11.4 (size counts the whole packet)",
            Setup {
                max_packet_size: Some(99),
                ..session(V311)
            },
            fixtures::publish_v311(),
            Reject,
            Packet,
        ),
        p(
            "receive-maximum",
            "3 unacknowledged QoS 1 PUBLISH with Receive Maximum 2",
            "MQTT-3.3.4-9 (DISCONNECT 0x93)",
            Setup {
                receive_maximum: Some(2),
                ..session(V5)
            },
            concat(&[1u16, 2, 3].map(|id| {
                publish(
                    first::PUBLISH_QOS1,
                    Wire::new().str("a/b").u16(id).props(Wire::new()).raw(b"x"),
                )
            })),
            Reject,
            Session,
        ),
        // ---- topic aliases
        p(
            "alias-use",
            "Topic Alias 1 set with 't/a', then PUBLISH with empty topic and alias 1",
            "v5 §3.3.2.3.4",
            session(V5),
            concat(&[
                publish_v5_qos0(b"t/a", alias(1)),
                publish_v5_qos0(b"", alias(1)),
            ]),
            AcceptTopic("t/a"),
            Session,
        ),
        p(
            "alias-0",
            "Topic Alias 0",
            "MQTT-3.3.2-8",
            session(V5),
            publish_v5_qos0(b"t/a", alias(0)),
            Reject,
            Packet,
        ),
        p(
            "alias-over-max",
            "Topic Alias 9 with our Topic Alias Maximum 8",
            "MQTT-3.3.2-9",
            session(V5),
            publish_v5_qos0(b"t/a", alias(9)),
            Reject,
            Session,
        ),
        p(
            "alias-unknown",
            "empty topic with an alias never set",
            "v5 §3.3.4 (protocol error)",
            session(V5),
            publish_v5_qos0(b"", alias(3)),
            Reject,
            Session,
        ),
    ]
}

/// One probe's verdicts and scores on every layer.
pub struct Row {
    pub id: &'static str,
    pub title: &'static str,
    pub rule: &'static str,
    pub expect: Expect,
    pub results: Vec<(Layer, Verdict, Score)>,
}

pub fn run_all() -> Vec<Row> {
    all()
        .iter()
        .map(|probe| Row {
            id: probe.id,
            title: probe.title,
            rule: probe.rule,
            expect: probe.expect.clone(),
            results: Layer::ALL
                .iter()
                .map(|&layer| {
                    let v = run(probe, layer);
                    let s = score(probe, layer, &v);
                    (layer, v, s)
                })
                .collect(),
        })
        .collect()
}
