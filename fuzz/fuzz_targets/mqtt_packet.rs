//! Arbitrary bytes through the MQTT adapter's packet path: `frame`, the
//! packet guard, the Topic Alias Maximum 0 rewrite, then mqtt-protocol-core's
//! server `Connection::recv` without `catch_unwind`, so a panic anywhere
//! surfaces (ADR 005, "Fuzzing and property tests on the packet path").
//!
//! The first byte picks the maximum packet size; the rest is the stream a
//! client sends. The remaining assertions of the ADR's target (re-encoding
//! every accepted packet, DISCONNECT after every error) are still to come.

#![no_main]

use libfuzzer_sys::fuzz_target;
use moat_mqtt::protocol::{self, Frame};
use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::Event;

type Server = mqtt::Connection<mqtt::role::Server>;

/// Feeds one guarded packet; false once the connection is to close.
fn recv(conn: &mut Server, packet: &[u8]) -> bool {
    let mut cursor = Cursor::new(packet);
    for _ in 0..=packet.len() {
        if cursor.position() as usize >= packet.len() {
            break;
        }
        let events = conn.recv(&mut cursor);
        if events
            .iter()
            .any(|e| matches!(e, Event::NotifyError(_) | Event::RequestClose))
        {
            return false;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&size, mut rest)) = data.split_first() else {
        return;
    };
    let max = 2 + usize::from(size) * 8;
    let mut conn = Server::new(mqtt::Version::Undetermined);
    // Each step consumes at least two bytes, so this ends.
    loop {
        let (header_len, total_len) = match protocol::frame(rest, max) {
            Frame::NeedMore => return,
            Frame::Violation(v) => {
                assert!(matches!(v.reason_code(), 0x81 | 0x95));
                return;
            }
            Frame::Packet {
                header_len,
                total_len,
            } => (header_len, total_len),
        };
        assert!((2..=5).contains(&header_len) && header_len <= total_len);
        assert!(total_len <= max && total_len <= rest.len());
        let (packet, tail) = rest.split_at(total_len);
        rest = tail;
        if protocol::check_packet(packet).is_err() {
            return;
        }
        let open = match protocol::guard_connect_properties(packet) {
            Err(_) => return,
            Ok(None) => recv(&mut conn, packet),
            Ok(Some(rewritten)) => {
                // Same CONNECT, shorter, still well framed and guarded,
                // and nothing left to rewrite.
                assert!(rewritten.len() < packet.len());
                assert!(matches!(
                    protocol::frame(&rewritten, max),
                    Frame::Packet { total_len, .. } if total_len == rewritten.len()
                ));
                assert_eq!(protocol::check_packet(&rewritten), Ok(()));
                assert_eq!(
                    protocol::guard_connect_properties(&rewritten),
                    Ok(None)
                );
                recv(&mut conn, &rewritten)
            }
        };
        if !open {
            return;
        }
    }
});
