//! What mqtt-protocol-core's server `Connection` does for a broker, shown by
//! driving it: each check feeds client bytes, plays the broker's part through
//! the public API, and reports what the connection did. rmqtt-codec has no
//! counterpart (it decodes and encodes packets; every flow below would be
//! Moat's code), so these run on mqtt-protocol-core only.

use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::{Event, TimerKind};
use mqtt_protocol_core::mqtt::packet::{GenericPacket, Qos, v3_1_1, v5_0};
use mqtt_protocol_core::mqtt::result_code::ConnectReturnCode;

use crate::fixtures::{self, first, prop};
use crate::layers::{Setup, Version, mpc_send_connack};
use crate::wire::{Wire, packet};

type Server = mqtt::Connection<mqtt::role::Server>;

/// One capability and what the connection did.
pub struct Check {
    pub capability: &'static str,
    pub passed: bool,
    pub observed: String,
}

fn recv(conn: &mut Server, bytes: &[u8]) -> Vec<Event> {
    let mut cursor = Cursor::new(bytes);
    let mut events = Vec::new();
    for _ in 0..=bytes.len() {
        if cursor.position() as usize >= bytes.len() {
            break;
        }
        events.extend(conn.recv(&mut cursor));
    }
    events
}

/// Short names of the events, for the report.
fn describe(events: &[Event]) -> String {
    let parts: Vec<String> = events
        .iter()
        .map(|e| match e {
            Event::NotifyPacketReceived(p) => format!("recv {}", name(p)),
            Event::RequestSendPacket { packet, .. } => format!("send {}", name(packet)),
            Event::NotifyPacketIdReleased(id) => format!("id {id} released"),
            Event::RequestTimerReset { kind, duration_ms } => {
                format!("timer {kind:?} {duration_ms} ms")
            }
            Event::RequestTimerCancel(kind) => format!("cancel {kind:?}"),
            Event::NotifyError(err) => format!("error {err:?}"),
            Event::RequestClose => "close".to_owned(),
        })
        .collect();
    parts.join(", ")
}

fn name(p: &GenericPacket<u16>) -> String {
    match p {
        GenericPacket::V5_0Publish(p) => format!(
            "PUBLISH(topic={:?}, qos={:?}, id={:?}, dup={})",
            p.topic_name(),
            p.qos(),
            p.packet_id(),
            p.dup()
        ),
        GenericPacket::V5_0Disconnect(d) => {
            format!(
                "DISCONNECT(0x{:02x})",
                d.reason_code().map_or(0, |r| r as u8)
            )
        }
        other => other
            .packet_type()
            .to_string()
            .trim_matches('"')
            .to_uppercase(),
    }
}

fn sent(events: &[Event]) -> Vec<&GenericPacket<u16>> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::RequestSendPacket { packet, .. } => Some(packet),
            _ => None,
        })
        .collect()
}

fn received(events: &[Event]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, Event::NotifyPacketReceived(_)))
        .count()
}

fn has_error(events: &[Event]) -> bool {
    events.iter().any(|e| matches!(e, Event::NotifyError(_)))
}

/// A v5 server connection after the client's CONNECT (with `props`, and
/// `clean_start`) and our CONNACK.
fn open_v5(props: Wire, clean_start: bool) -> (Server, Vec<Event>) {
    let mut conn = Server::new(mqtt::Version::Undetermined);
    conn.set_auto_pub_response(false);
    let flags = if clean_start {
        fixtures::CONNECT_V5_FLAGS
    } else {
        fixtures::CONNECT_V5_FLAGS & !0x02
    };
    let mut events = recv(&mut conn, &fixtures::connect_v5_with(flags, props));
    events.extend(mpc_send_connack(&mut conn, &Setup::session(Version::V5)));
    (conn, events)
}

fn server_publish(conn: &mut Server, topic: &str, qos: Qos, len: usize) -> Vec<Event> {
    let mut builder = v5_0::Publish::builder()
        .topic_name(topic)
        .unwrap()
        .qos(qos)
        .payload(vec![b'x'; len]);
    if qos != Qos::AtMostOnce {
        match conn.acquire_packet_id() {
            Ok(id) => builder = builder.packet_id(id),
            Err(e) => return vec![Event::NotifyError(e)],
        }
    }
    conn.checked_send(builder.build().unwrap())
}

fn client_publish_qos(qos_flags: u8, id: u16) -> Vec<u8> {
    packet(
        first::PUBLISH_QOS0 | qos_flags,
        Wire::new().str("a/b").u16(id).props(Wire::new()).raw(b"x"),
    )
}

/// Inbound QoS 2 is exactly-once: a redelivered PUBLISH (DUP) before PUBREL
/// is answered with PUBREC again but not delivered to the broker twice.
fn qos2_inbound() -> Check {
    let (mut conn, _) = open_v5(Wire::new(), true);
    let first_pub = recv(&mut conn, &client_publish_qos(0b0100, 7));
    let pubrec = conn.checked_send(v5_0::Pubrec::builder().packet_id(7).build().unwrap());
    let dup = recv(&mut conn, &client_publish_qos(0b1100, 7));
    let pubrel = recv(&mut conn, &packet(0x62, Wire::new().u16(7)));
    let pubcomp = conn.checked_send(v5_0::Pubcomp::builder().packet_id(7).build().unwrap());
    let passed = received(&first_pub) == 1
        && !has_error(&pubrec)
        && received(&dup) == 0
        && sent(&dup).len() == 1
        && received(&pubrel) == 1
        && !has_error(&pubcomp);
    Check {
        capability: "QoS 2 inbound, exactly once (DUP before PUBREL not delivered twice)",
        passed,
        observed: format!(
            "PUBLISH: [{}]; DUP PUBLISH: [{}]; PUBREL: [{}]; our PUBCOMP: [{}]",
            describe(&first_pub),
            describe(&dup),
            describe(&pubrel),
            describe(&pubcomp)
        ),
    }
}

/// Acknowledgement is ours to send: with automatic responses off, a QoS 1
/// PUBLISH yields no PUBACK until we send one (after the durable write).
fn puback_after_durable_write() -> Check {
    let (mut conn, _) = open_v5(Wire::new(), true);
    let publish = recv(&mut conn, &client_publish_qos(0b0010, 9));
    let puback = conn.checked_send(v5_0::Puback::builder().packet_id(9).build().unwrap());
    let passed = received(&publish) == 1
        && sent(&publish).is_empty()
        && sent(&puback).len() == 1
        && !has_error(&puback);
    Check {
        capability: "PUBACK only when the broker sends it (auto response off)",
        passed,
        observed: format!(
            "PUBLISH: [{}]; our PUBACK: [{}]",
            describe(&publish),
            describe(&puback)
        ),
    }
}

/// Outbound flow control: the client's Receive Maximum caps our unacknowledged
/// QoS 1/2 sends; the connection refuses the next one and reports the window.
fn receive_maximum_outbound() -> Check {
    let (mut conn, _) = open_v5(Wire::new().u8(prop::RECEIVE_MAXIMUM).u16(2), true);
    let a = server_publish(&mut conn, "a/b", Qos::AtLeastOnce, 4);
    let b = server_publish(&mut conn, "a/b", Qos::AtLeastOnce, 4);
    let vacancy = conn.get_receive_maximum_vacancy_for_send();
    let c = server_publish(&mut conn, "a/b", Qos::AtLeastOnce, 4);
    let passed = !has_error(&a) && !has_error(&b) && has_error(&c) && vacancy == Some(0);
    Check {
        capability: "Receive Maximum outbound (client's window honoured)",
        passed,
        observed: format!(
            "1st: [{}]; 2nd: [{}]; vacancy {:?}; 3rd: [{}]",
            describe(&a),
            describe(&b),
            vacancy,
            describe(&c)
        ),
    }
}

/// Outbound Maximum Packet Size: a PUBLISH larger than the client accepts is
/// refused rather than sent.
fn maximum_packet_size_outbound() -> Check {
    let (mut conn, _) = open_v5(Wire::new().u8(prop::MAXIMUM_PACKET_SIZE).u32(64), true);
    let small = server_publish(&mut conn, "a/b", Qos::AtMostOnce, 8);
    let big = server_publish(&mut conn, "a/b", Qos::AtMostOnce, 100);
    let passed = sent(&small).len() == 1 && sent(&big).is_empty() && has_error(&big);
    Check {
        capability: "Maximum Packet Size outbound (client's limit honoured)",
        passed,
        observed: format!(
            "8-byte payload: [{}]; 100-byte: [{}]",
            describe(&small),
            describe(&big)
        ),
    }
}

/// Outbound topic aliases: with automatic mapping on, the second PUBLISH to a
/// topic goes out with an empty topic and the alias.
fn topic_alias_outbound() -> Check {
    let (mut conn, _) = open_v5(Wire::new().u8(prop::TOPIC_ALIAS_MAXIMUM).u16(4), true);
    conn.set_auto_map_topic_alias_send(true);
    let a = server_publish(&mut conn, "channels/1/messages", Qos::AtMostOnce, 4);
    let b = server_publish(&mut conn, "channels/1/messages", Qos::AtMostOnce, 4);
    let second_topic_empty = sent(&b)
        .iter()
        .any(|p| matches!(p, GenericPacket::V5_0Publish(p) if p.topic_name().is_empty()));
    Check {
        capability: "Topic aliases outbound (automatic mapping)",
        passed: second_topic_empty,
        observed: format!("1st: [{}]; 2nd: [{}]", describe(&a), describe(&b)),
    }
}

/// Keep-alive: the connection asks for a timer of 1.5 × keep-alive and, when
/// we report it fired, sends DISCONNECT 0x8D and asks us to close.
fn keep_alive() -> Check {
    let (mut conn, connect_events) = open_v5(Wire::new(), true);
    let timer = connect_events.iter().find_map(|e| match e {
        Event::RequestTimerReset {
            kind: TimerKind::PingreqRecv,
            duration_ms,
        } => Some(*duration_ms),
        _ => None,
    });
    let fired = conn.notify_timer_fired(TimerKind::PingreqRecv);
    let disconnects = sent(&fired)
        .iter()
        .any(|p| matches!(p, GenericPacket::V5_0Disconnect(_)));
    Check {
        capability: "Keep-alive (timer requested, DISCONNECT 0x8D when it fires)",
        passed: timer == Some(90_000) && disconnects,
        observed: format!("timer {timer:?} ms; fired: [{}]", describe(&fired)),
    }
}

/// Persistent sessions: unacknowledged outbound QoS 1 messages can be taken
/// out of one connection and restored into the next, which resends them with
/// DUP once the session is re-established.
fn session_store() -> Check {
    let props = Wire::new().u8(prop::SESSION_EXPIRY_INTERVAL).u32(3600);
    let (mut conn, _) = open_v5(props.clone(), false);
    let _ = server_publish(&mut conn, "a/b", Qos::AtLeastOnce, 4);
    let stored = conn.get_stored_packets();
    let _ = conn.notify_closed();

    let mut next = Server::new(mqtt::Version::Undetermined);
    next.set_auto_pub_response(false);
    let flags = fixtures::CONNECT_V5_FLAGS & !0x02;
    let _ = recv(&mut next, &fixtures::connect_v5_with(flags, props));
    next.restore_packets(stored.clone());
    let connack = mpc_send_connack(&mut next, &Setup::session(Version::V5));
    let resent_dup = sent(&connack)
        .iter()
        .any(|p| matches!(p, GenericPacket::V5_0Publish(p) if p.dup()));
    Check {
        capability: "Session store (unacked QoS 1 out, restored, resent with DUP)",
        passed: stored.len() == 1 && resent_dup,
        observed: format!(
            "stored {}; after CONNACK: [{}]",
            stored.len(),
            describe(&connack)
        ),
    }
}

/// An unsupported protocol level must be answered with CONNACK 0x01 (or
/// 0x84 on v5) before closing [MQTT-3.1.2-2]. The connection reports the
/// error but, its version still undetermined, refuses to send a CONNACK; the
/// broker writes the packet itself, built standalone.
fn unsupported_version_connack() -> Check {
    let mut conn = Server::new(mqtt::Version::Undetermined);
    let events = recv(&mut conn, &fixtures::connect_v311_with("MQTT", 3, 0x02));
    let connack = v3_1_1::Connack::builder()
        .session_present(false)
        .return_code(ConnectReturnCode::UnacceptableProtocolVersion)
        .build()
        .unwrap();
    let standalone = connack.to_continuous_buffer();
    let through_connection = conn.checked_send(connack);
    Check {
        capability: "Unsupported protocol level answered with CONNACK 0x01 through the Connection",
        passed: sent(&through_connection).len() == 1,
        observed: format!(
            "CONNECT level 3: [{}]; our CONNACK: [{}]; built standalone: {}",
            describe(&events),
            describe(&through_connection),
            crate::fuzz::hex(&standalone)
        ),
    }
}

pub fn checks() -> Vec<Check> {
    vec![
        puback_after_durable_write(),
        qos2_inbound(),
        receive_maximum_outbound(),
        maximum_packet_size_outbound(),
        topic_alias_outbound(),
        keep_alive(),
        session_store(),
        unsupported_version_connack(),
    ]
}
