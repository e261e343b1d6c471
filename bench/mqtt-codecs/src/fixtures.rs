//! The well-formed packets the evaluation is measured on, written byte by byte
//! with [`crate::wire`]. Their shapes are the ones issue 5 names: a QoS 1
//! PUBLISH with a 30-byte topic and a 64-byte payload (v3.1.1, and v5 with two
//! properties), a v5 CONNECT with properties and a will, and a SUBSCRIBE with
//! five filters.

use crate::wire::{Wire, packet};

/// A 30-byte topic in Moat's data-topic shape.
pub const TOPIC: &str = "channels/0123456789abcdef/temp";

/// A 64-byte SenML-ish JSON payload (valid UTF-8, so the v5 fixture may carry
/// Payload Format Indicator = 1).
pub const PAYLOAD: &[u8; 64] =
    br#"[{"n":"temperature","u":"Cel","v":21.5,"t":1700000000.1234567}] "#;

pub const PACKET_ID: u16 = 0x1234;

/// MQTT 5 property identifiers used by the fixtures and probes.
pub mod prop {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0b;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
}

/// First bytes of the fixed header.
pub mod first {
    pub const CONNECT: u8 = 0x10;
    pub const PUBLISH_QOS0: u8 = 0x30;
    pub const PUBLISH_QOS1: u8 = 0x32;
    pub const SUBSCRIBE: u8 = 0x82;
    pub const PINGREQ: u8 = 0xc0;
}

/// The v5 PUBLISH properties of the fixture: Payload Format Indicator and
/// Content Type.
pub fn publish_props_v5() -> Wire {
    Wire::new()
        .u8(prop::PAYLOAD_FORMAT_INDICATOR)
        .u8(1)
        .u8(prop::CONTENT_TYPE)
        .str("application/senml+json")
}

/// QoS 1 PUBLISH, v3.1.1: 30-byte topic, packet id, 64-byte payload.
pub fn publish_v311() -> Vec<u8> {
    packet(
        first::PUBLISH_QOS1,
        Wire::new().str(TOPIC).u16(PACKET_ID).raw(PAYLOAD),
    )
}

/// QoS 1 PUBLISH, v5: as [`publish_v311`] plus two properties.
pub fn publish_v5() -> Vec<u8> {
    packet(
        first::PUBLISH_QOS1,
        Wire::new()
            .str(TOPIC)
            .u16(PACKET_ID)
            .props(publish_props_v5())
            .raw(PAYLOAD),
    )
}

/// CONNECT flags of the v5 fixture: user name, password, will QoS 1, will,
/// clean start.
pub const CONNECT_V5_FLAGS: u8 = 0x80 | 0x40 | 0x08 | 0x04 | 0x02;

/// v5 CONNECT with properties, a will with will properties, user name and
/// password — what a device with a device key sends.
pub fn connect_v5() -> Vec<u8> {
    connect_v5_with(CONNECT_V5_FLAGS, connect_props_v5())
}

pub fn connect_props_v5() -> Wire {
    Wire::new()
        .u8(prop::SESSION_EXPIRY_INTERVAL)
        .u32(3600)
        .u8(prop::RECEIVE_MAXIMUM)
        .u16(32)
        .u8(prop::TOPIC_ALIAS_MAXIMUM)
        .u16(16)
        .u8(prop::MAXIMUM_PACKET_SIZE)
        .u32(1 << 20)
        .u8(prop::USER_PROPERTY)
        .str("fw")
        .str("1.4.2")
}

/// A v5 CONNECT with the fixture's payload and the given flags and
/// properties (the payload fields present follow the fixture, not `flags`:
/// probes use this to write inconsistent packets on purpose).
pub fn connect_v5_with(flags: u8, props: Wire) -> Vec<u8> {
    packet(
        first::CONNECT,
        Wire::new()
            .str("MQTT")
            .u8(5)
            .u8(flags)
            .u16(60)
            .props(props)
            .str("device-0123456789abcdef")
            .props(
                Wire::new()
                    .u8(prop::WILL_DELAY_INTERVAL)
                    .u32(30)
                    .u8(prop::PAYLOAD_FORMAT_INDICATOR)
                    .u8(1)
                    .u8(prop::CONTENT_TYPE)
                    .str("text/plain"),
            )
            .str("devices/0123456789abcdef/status")
            .str("offline")
            .str("0b8f6c1e-2d4a-4c7e-9f3b-5a6d7e8f9a0b")
            .str("k3y-0123456789abcdef0123456789ab"),
    )
}

/// A minimal v5 CONNECT (clean start, no will, no credentials), used to open
/// a session before a probe.
pub fn connect_v5_minimal() -> Vec<u8> {
    packet(
        first::CONNECT,
        Wire::new()
            .str("MQTT")
            .u8(5)
            .u8(0x02)
            .u16(60)
            .props(Wire::new())
            .str("probe"),
    )
}

/// A minimal v3.1.1 CONNECT (clean session, no will, no credentials).
pub fn connect_v311_minimal() -> Vec<u8> {
    connect_v311_with("MQTT", 4, 0x02)
}

/// A v3.1.1-shaped CONNECT with the given protocol name, level and flags.
pub fn connect_v311_with(name: &str, level: u8, flags: u8) -> Vec<u8> {
    packet(
        first::CONNECT,
        Wire::new()
            .str(name)
            .u8(level)
            .u8(flags)
            .u16(60)
            .str("probe"),
    )
}

/// The five topic filters of the SUBSCRIBE fixtures.
pub const FILTERS: [&str; 5] = [
    "channels/0123456789abcdef/messages/#",
    "channels/0123456789abcdef/messages/+/temp",
    "devices/0123456789abcdef/commands",
    "devices/0123456789abcdef/config",
    "$share/group/channels/+/messages",
];

/// SUBSCRIBE with five filters, v3.1.1 (requested QoS 1 each).
pub fn subscribe_v311() -> Vec<u8> {
    let mut body = Wire::new().u16(PACKET_ID);
    for f in FILTERS {
        body = body.str(f).u8(1);
    }
    packet(first::SUBSCRIBE, body)
}

/// SUBSCRIBE with five filters, v5: a subscription identifier and options
/// (QoS 1, no local, retain as published, retain handling 1).
pub fn subscribe_v5() -> Vec<u8> {
    let mut body = Wire::new()
        .u16(PACKET_ID)
        .props(Wire::new().u8(prop::SUBSCRIPTION_IDENTIFIER).varint(7));
    for f in FILTERS {
        body = body.str(f).u8(0b0001_1101);
    }
    packet(first::SUBSCRIBE, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixture_shapes_are_the_ones_the_issue_names() {
        assert_eq!(TOPIC.len(), 30);
        assert_eq!(PAYLOAD.len(), 64);
        assert!(std::str::from_utf8(PAYLOAD).is_ok());
        // 1 fixed header + 1 length + 2+30 topic + 2 id + 64 payload.
        assert_eq!(publish_v311().len(), 100);
    }
}
