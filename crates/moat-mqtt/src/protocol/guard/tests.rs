//! The guard's rules as one data-driven table, the Topic Alias Maximum 0
//! workaround against the crate's real server `Connection`, and property
//! tests of the remaining-length decoder and [`frame`].

use std::panic::{AssertUnwindSafe, catch_unwind};

use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::Event;
use proptest::prelude::*;

use super::*;

/// The maximum packet size the table runs under.
const MAX: usize = 1024;

/// A packet: first byte, minimal remaining length, body.
fn packet(first: u8, body: &[u8]) -> Vec<u8> {
    let mut len = [0; 4];
    let n = encode_varint(body.len() as u32, &mut len);
    let mut out = vec![first];
    out.extend_from_slice(&len[..n]);
    out.extend_from_slice(body);
    out
}

/// A CONNECT body under protocol `name` and `level` with `flags` and the
/// v5 property bytes `props` (ignored below level 5); the payload is a
/// client id only, whatever the flags say (the guard reads only flags).
fn connect(name: &str, level: u8, flags: u8, props: &[u8]) -> Vec<u8> {
    let mut body = (name.len() as u16).to_be_bytes().to_vec();
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, flags, 0, 60]);
    if level == 5 {
        let mut len = [0; 4];
        let n = encode_varint(props.len() as u32, &mut len);
        body.extend_from_slice(&len[..n]);
        body.extend_from_slice(props);
    }
    body.extend_from_slice(b"\x00\x03dev");
    packet(0x10, &body)
}

/// What the adapter does with the front of its buffer: frame, then check.
fn check(bytes: &[u8]) -> Result<(), Violation> {
    match frame(bytes, MAX) {
        Frame::NeedMore => panic!("incomplete test packet {bytes:02x?}"),
        Frame::Violation(v) => Err(v),
        Frame::Packet { total_len, .. } => check_packet(&bytes[..total_len]),
    }
}

fn flags(packet_type: u8, flags: u8, expected: u8) -> Violation {
    Violation::ReservedFlags {
        packet_type,
        flags,
        expected,
    }
}

/// One table row: name (with the spec section), bytes, what the guard
/// says, and the reason code when it refuses.
type Row = (&'static str, Vec<u8>, Result<(), Violation>, u8);

#[test]
fn every_rule_has_bytes_and_a_reason_code() {
    use Violation::*;
    let table: Vec<Row> = vec![
        // ---- fixed header flags
        (
            "§2.1.2 reserved type 0",
            vec![0x00, 0x00],
            Err(ReservedPacketType),
            0x81,
        ),
        ("§2.1.3 PINGREQ flags 0000", vec![0xc0, 0x00], Ok(()), 0),
        (
            "§2.1.3 PINGREQ flags 0001",
            vec![0xc1, 0x00],
            Err(flags(12, 1, 0)),
            0x81,
        ),
        (
            "§2.1.3 DISCONNECT flags 1000",
            vec![0xe8, 0x00],
            Err(flags(14, 8, 0)),
            0x81,
        ),
        (
            "§2.1.3 PUBACK flags 0010",
            vec![0x42, 0x02, 0, 1],
            Err(flags(4, 2, 0)),
            0x81,
        ),
        (
            "§2.1.3 PUBREL flags 0010",
            vec![0x62, 0x02, 0, 1],
            Ok(()),
            0,
        ),
        (
            "§2.1.3 PUBREL flags 0000",
            vec![0x60, 0x02, 0, 1],
            Err(flags(6, 0, 2)),
            0x81,
        ),
        (
            "§2.1.3 SUBSCRIBE flags 0010",
            packet(0x82, b"\x00\x01\x00\x01a\x00"),
            Ok(()),
            0,
        ),
        (
            "§2.1.3 SUBSCRIBE flags 0000",
            packet(0x80, b"\x00\x01\x00\x01a\x00"),
            Err(flags(8, 0, 2)),
            0x81,
        ),
        (
            "§2.1.3 UNSUBSCRIBE flags 0011",
            packet(0xa3, b"\x00\x01\x00\x01a"),
            Err(flags(10, 3, 2)),
            0x81,
        ),
        (
            "§2.1.3 CONNECT flags 0001",
            {
                let mut p = connect("MQTT", 4, 0x02, b"");
                p[0] = 0x11;
                p
            },
            Err(flags(1, 1, 0)),
            0x81,
        ),
        ("§2.1.3 AUTH flags 0000", vec![0xf0, 0x00], Ok(()), 0),
        // ---- PUBLISH flags
        (
            "§3.3.1 PUBLISH QoS 0 retain",
            packet(0x31, b"\x00\x01a"),
            Ok(()),
            0,
        ),
        (
            "§3.3.1.1 PUBLISH QoS 1 DUP",
            packet(0x3a, b"\x00\x01a\x00\x01"),
            Ok(()),
            0,
        ),
        (
            "§3.3.1.1 MQTT-3.3.1-2 PUBLISH QoS 0 DUP",
            packet(0x38, b"\x00\x01a"),
            Err(DupOnQos0),
            0x81,
        ),
        (
            "§3.3.1.2 MQTT-3.3.1-4 PUBLISH QoS 3",
            packet(0x36, b"\x00\x01a\x00\x01"),
            Err(PublishQos3),
            0x81,
        ),
        // ---- remaining length
        (
            "§1.5.5 length 127 in one byte",
            packet(0x30, &[0; 127]),
            Ok(()),
            0,
        ),
        (
            "§1.5.5 MQTT-1.5.5-1 length 0 as 80 00",
            vec![0xc0, 0x80, 0x00],
            Err(NonMinimalLength),
            0x81,
        ),
        (
            "§1.5.5 MQTT-1.5.5-1 length 1 as 81 00",
            vec![0xc0, 0x81, 0x00, 0],
            Err(NonMinimalLength),
            0x81,
        ),
        (
            "§1.5.5 five length bytes",
            vec![0x30, 0x80, 0x80, 0x80, 0x80, 0x01],
            Err(MalformedLength),
            0x81,
        ),
        // ---- packet size
        (
            "§3.2.2.3.6 packet of exactly the maximum",
            packet(0x30, &[0; MAX - 3]),
            Ok(()),
            0,
        ),
        (
            "§3.2.2.3.6 packet one byte over the maximum",
            packet(0x30, &[0; MAX - 2]),
            Err(PacketTooLarge {
                size: MAX + 1,
                max: MAX,
            }),
            0x95,
        ),
        // ---- CONNECT flags
        (
            "§3.1.2.3 clean start only",
            connect("MQTT", 4, 0x02, b""),
            Ok(()),
            0,
        ),
        (
            "§3.1.2.3 MQTT-3.1.2-3 reserved flag",
            connect("MQTT", 4, 0x03, b""),
            Err(ConnectReservedFlag),
            0x81,
        ),
        (
            "§3.1.2.3 MQTT-3.1.2-3 reserved flag v5",
            connect("MQTT", 5, 0x01, b""),
            Err(ConnectReservedFlag),
            0x81,
        ),
        (
            "§3.1.2.6 will QoS 2 with will",
            connect("MQTT", 5, 0x14, b""),
            Ok(()),
            0,
        ),
        (
            "§3.1.2.6 MQTT-3.1.2-11 will QoS 1 without will",
            connect("MQTT", 5, 0x08, b""),
            Err(WillFieldsWithoutWill),
            0x81,
        ),
        (
            "§3.1.2.7 MQTT-3.1.2-13 will retain without will",
            connect("MQTT", 4, 0x20, b""),
            Err(WillFieldsWithoutWill),
            0x81,
        ),
        (
            "§3.1.2.6 MQTT-3.1.2-12 will QoS 3",
            connect("MQTT", 5, 0x1c, b""),
            Err(WillQos3),
            0x81,
        ),
        (
            "§3.1.2.9 user name and password v3.1.1",
            connect("MQTT", 4, 0xc2, b""),
            Ok(()),
            0,
        ),
        (
            "§3.1.2.9 v3.1.1 MQTT-3.1.2-22 password without user name",
            connect("MQTT", 4, 0x42, b""),
            Err(PasswordWithoutUserName),
            0x81,
        ),
        (
            "§3.1.2.9 v3.1 password without user name",
            connect("MQIsdp", 3, 0x42, b""),
            Err(PasswordWithoutUserName),
            0x81,
        ),
        (
            "§3.1.2.9 v5 password without user name allowed",
            connect("MQTT", 5, 0x42, b""),
            Ok(()),
            0,
        ),
        (
            "§3.1 CONNECT too short for flags: the crate's",
            packet(0x10, b"\x00\x04MQ"),
            Ok(()),
            0,
        ),
    ];
    for (name, bytes, expected, code) in table {
        let got = check(&bytes);
        assert_eq!(got, expected, "{name}: {bytes:02x?}");
        if let Err(v) = got {
            assert_eq!(v.reason_code(), code, "{name}: reason code");
        }
    }
}

#[test]
fn check_fixed_header_wants_exactly_one_length() {
    assert_eq!(check_fixed_header(0xc0, &[0x00]), Ok(()));
    assert_eq!(
        check_fixed_header(0xc0, &[]),
        Err(Violation::MalformedLength)
    );
    assert_eq!(
        check_fixed_header(0xc0, &[0x80]),
        Err(Violation::MalformedLength)
    );
    assert_eq!(
        check_fixed_header(0xc0, &[0x00, 0x00]),
        Err(Violation::MalformedLength)
    );
    assert_eq!(
        check_fixed_header(0x30, &[0xff, 0xff, 0xff, 0x7f]),
        Ok(()),
        "268,435,455 in four bytes (§1.5.5)"
    );
}

// ---------------------------------------------------------------- Topic Alias Maximum 0

/// Property bytes: Receive Maximum 32, Topic Alias Maximum 0, a User
/// Property.
const PROPS_TAM0: &[u8] = b"\x21\x00\x20\x22\x00\x00\x26\x00\x02fw\x00\x031.4";
const PROPS_WITHOUT: &[u8] = b"\x21\x00\x20\x26\x00\x02fw\x00\x031.4";

/// Feeds `bytes` to a fresh v5-capable server `Connection`.
fn server_recv(bytes: &[u8]) -> Vec<Event> {
    let mut conn = mqtt::Connection::<mqtt::role::Server>::new(mqtt::Version::Undetermined);
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

#[test]
fn topic_alias_maximum_zero_panics_the_crate_and_the_rewrite_does_not() {
    let original = connect("MQTT", 5, 0x02, PROPS_TAM0);
    assert_eq!(check(&original), Ok(()));
    let panicked = catch_unwind(AssertUnwindSafe(|| server_recv(&original)));
    assert!(
        panicked.is_err(),
        "mqtt-protocol-core no longer panics on Topic Alias Maximum 0: delete the workaround"
    );

    let rewritten = guard_connect_properties(&original)
        .unwrap()
        .expect("rewritten");
    assert_eq!(rewritten, connect("MQTT", 5, 0x02, PROPS_WITHOUT));
    let events = catch_unwind(AssertUnwindSafe(|| server_recv(&rewritten))).expect("no panic");
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Event::NotifyPacketReceived(_))),
        "{events:?}"
    );
    assert!(
        !events.iter().any(|e| matches!(e, Event::NotifyError(_))),
        "{events:?}"
    );
}

#[test]
fn the_rewrite_reencodes_shrinking_lengths() {
    // 129 bytes of properties (a two-byte length) become 126 (one byte);
    // 113 bytes make a remaining length of 129 (two bytes) that becomes
    // 126 (one byte). Either way the packet shrinks by four bytes.
    for props_len in [129_usize, 113] {
        let mut props = b"\x22\x00\x00\x26\x00\x01k\x00".to_vec();
        props.push((props_len - 9) as u8);
        props.resize(props_len, b'v');
        let original = connect("MQTT", 5, 0x02, &props);
        let rewritten = guard_connect_properties(&original).unwrap().unwrap();
        assert_eq!(rewritten, connect("MQTT", 5, 0x02, &props[3..]));
        assert_eq!(rewritten.len(), original.len() - 4, "{props_len}");
        assert_eq!(
            frame(&rewritten, MAX),
            Frame::Packet {
                header_len: if props_len == 113 { 2 } else { 3 },
                total_len: rewritten.len()
            }
        );
        let events = catch_unwind(AssertUnwindSafe(|| server_recv(&rewritten))).expect("no panic");
        assert!(!events.iter().any(|e| matches!(e, Event::NotifyError(_))));
    }
}

#[test]
fn the_rewrite_leaves_other_packets_alone() {
    let none = |bytes: &[u8]| guard_connect_properties(bytes);
    assert_eq!(none(&connect("MQTT", 5, 0x02, b"\x22\x00\x08")), Ok(None));
    assert_eq!(none(&connect("MQTT", 5, 0x02, b"")), Ok(None));
    assert_eq!(none(&connect("MQTT", 4, 0x02, b"")), Ok(None));
    assert_eq!(none(&packet(0x30, b"\x00\x01a")), Ok(None));
    // An identifier CONNECT does not allow: the crate refuses the packet.
    assert_eq!(
        none(&connect("MQTT", 5, 0x02, b"\x23\x00\x00\x22\x00\x00")),
        Ok(None)
    );
    // A property cut short.
    assert_eq!(none(&connect("MQTT", 5, 0x02, b"\x22\x00")), Ok(None));
    assert_eq!(none(&[]), Ok(None));
    assert_eq!(
        none(&connect("MQTT", 5, 0x02, b"\x22\x00\x08\x22\x00\x00")),
        Err(Violation::DuplicateTopicAliasMaximum)
    );
    assert_eq!(Violation::DuplicateTopicAliasMaximum.reason_code(), 0x82);
}

#[test]
fn receive_maximum_and_maximum_packet_size_zero_are_protocol_errors() {
    let guard = |props: &[u8]| guard_connect_properties(&connect("MQTT", 5, 0x02, props));
    assert_eq!(guard(b"\x21\x00\x00"), Err(Violation::ZeroReceiveMaximum));
    assert_eq!(
        guard(b"\x22\x00\x08\x27\x00\x00\x00\x00"),
        Err(Violation::ZeroMaximumPacketSize)
    );
    assert_eq!(guard(b"\x21\x00\x01\x27\x00\x00\x00\x01"), Ok(None));
    assert_eq!(Violation::ZeroReceiveMaximum.reason_code(), 0x82);
    assert_eq!(Violation::ZeroMaximumPacketSize.reason_code(), 0x82);
    // v3.1.1 has no properties.
    assert_eq!(
        guard_connect_properties(&connect("MQTT", 4, 0x02, b"\x21\x00\x00")),
        Ok(None)
    );
}

#[test]
fn only_a_level_5_connect_is_a_v5_connect() {
    assert!(is_v5_connect(&connect("MQTT", 5, 0x02, b"")));
    assert!(!is_v5_connect(&connect("MQTT", 4, 0x02, b"")));
    assert!(!is_v5_connect(&packet(0x30, b"\x00\x01a")));
    assert!(!is_v5_connect(&[0x10]));
    assert!(!is_v5_connect(&[]));
}

// ---------------------------------------------------------------- properties

/// The minimal encoding of `value`, written the obvious way.
fn minimal(value: u32) -> Vec<u8> {
    let mut buf = [0; 4];
    let n = encode_varint(value, &mut buf);
    buf[..n].to_vec()
}

/// A reference for [`frame`] written differently: try each header length
/// and accept the one whose bytes are the minimal encoding of their value.
fn naive_frame(buf: &[u8], max: usize) -> Frame {
    if buf.len() < 2 {
        return Frame::NeedMore;
    }
    for n in 1..=4 {
        let Some(bytes) = buf.get(1..1 + n) else {
            return Frame::NeedMore;
        };
        if bytes[n - 1] & 0x80 != 0 {
            continue;
        }
        let value: u64 = bytes
            .iter()
            .rev()
            .fold(0, |acc, b| (acc << 7) | u64::from(b & 0x7f));
        if minimal(value as u32) != bytes {
            return Frame::Violation(Violation::NonMinimalLength);
        }
        let total = 1 + n + value as usize;
        return if total > max {
            Frame::Violation(Violation::PacketTooLarge { size: total, max })
        } else if buf.len() < total {
            Frame::NeedMore
        } else {
            Frame::Packet {
                header_len: 1 + n,
                total_len: total,
            }
        };
    }
    if buf.len() >= 5 {
        Frame::Violation(Violation::MalformedLength)
    } else {
        Frame::NeedMore
    }
}

/// Buffers likely to hold a whole packet: a short length and a body.
fn plausible_buffer() -> impl Strategy<Value = Vec<u8>> {
    (
        any::<u8>(),
        0_u8..0x50,
        prop::collection::vec(any::<u8>(), 0..96),
    )
        .prop_map(|(first, len, body)| {
            let mut buf = vec![first, len];
            buf.extend(body);
            buf
        })
}

proptest! {
    #[test]
    fn minimal_lengths_round_trip(value in 0..=MAX_REMAINING_LENGTH) {
        let bytes = minimal(value);
        let decoded = match decode_varint(&bytes) {
            Decoded::Value { value, len } => Some((value, len)),
            _ => None,
        };
        prop_assert_eq!(decoded, Some((value, bytes.len())));
        prop_assert_eq!(check_fixed_header(0xc0, &bytes), Ok(()));
    }

    #[test]
    fn padded_lengths_are_refused(value in 0..=MAX_REMAINING_LENGTH, pad in 1_usize..4) {
        // The same value with `pad` needless 0x00 groups: too long, or not
        // minimal when it still fits in four bytes.
        let mut bytes = minimal(value);
        for _ in 0..pad {
            *bytes.last_mut().unwrap() |= 0x80;
            bytes.push(0x00);
        }
        let refused = check_fixed_header(0xc0, &bytes);
        prop_assert!(
            matches!(refused, Err(Violation::NonMinimalLength | Violation::MalformedLength)),
            "{:02x?}: {:?}", bytes, refused
        );
        if bytes.len() <= 4 {
            prop_assert_eq!(refused, Err(Violation::NonMinimalLength));
        }
    }

    #[test]
    fn frame_agrees_with_the_reference(
        buf in prop_oneof![prop::collection::vec(any::<u8>(), 0..64), plausible_buffer()],
        max in prop_oneof![0_usize..128, Just(usize::MAX)],
    ) {
        let got = frame(&buf, max);
        prop_assert_eq!(got, naive_frame(&buf, max));
        if let Frame::Packet { header_len, total_len } = got {
            prop_assert!((2..=5).contains(&header_len) && total_len <= buf.len());
            // Whatever the guard then says, it says without panicking.
            let _ = check_packet(&buf[..total_len]);
            let _ = guard_connect_properties(&buf[..total_len]);
        }
    }

    #[test]
    fn rewritten_connects_frame_and_pass_the_guard(
        before in prop::collection::vec(any::<u8>(), 0..60),
    ) {
        // Receive Maximum properties (any value but 0, a protocol error)
        // before a Topic Alias Maximum 0, so that both lengths cross 128
        // now and then.
        let mut props = Vec::new();
        for b in &before {
            props.extend_from_slice(&[0x21, 1, *b]);
        }
        props.extend_from_slice(b"\x22\x00\x00");
        let original = connect("MQTT", 5, 0x02, &props);
        let Frame::Packet { total_len, .. } = frame(&original, usize::MAX) else {
            return Err(TestCaseError::fail("unframed"));
        };
        let rewritten = guard_connect_properties(&original[..total_len])
            .unwrap()
            .unwrap();
        prop_assert_eq!(&rewritten, &connect("MQTT", 5, 0x02, &props[..props.len() - 3]));
        prop_assert_eq!(check(&rewritten), Ok(()));
    }
}
