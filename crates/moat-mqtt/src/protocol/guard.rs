//! The packet guard: the MQTT rules mqtt-protocol-core misses, checked on
//! the raw bytes of each frame before the crate's `Connection::recv` sees
//! them (ADR 005, "A packet guard").
//!
//! Each rule is one of `bench/mqtt-codecs`'s probes the crate gets wrong,
//! and each is deleted once a release of the crate fixes it. The adapter
//! reads bytes into a buffer and, per complete frame:
//!
//! 1. [`frame`] finds the packet boundary under the configured maximum
//!    packet size, refusing a non-minimal or over-long remaining length;
//! 2. [`check_packet`] applies the fixed-header rules and, on a CONNECT,
//!    the connect-flag rules;
//! 3. [`guard_connect_properties`] rewrites the one CONNECT that would
//!    make the crate panic, and refuses what the crate answers vaguely;
//!
//! and on a [`Violation`] closes the connection with
//! [`Violation::reason_code`] (v5) or without a word (v3.1.1). Nothing here
//! allocates except the rare rewritten CONNECT, and every loop is bounded
//! by the four bytes of a variable byte integer or the packet's length.

/// The largest remaining length a 4-byte variable byte integer can carry
/// (MQTT 5.0 §1.5.5).
pub const MAX_REMAINING_LENGTH: u32 = 268_435_455;

/// CONNECT's packet type, the high nibble of its first byte.
const CONNECT: u8 = 1;
/// PUBLISH's packet type.
const PUBLISH: u8 = 3;
/// The Topic Alias Maximum property identifier (MQTT 5.0 §3.1.2.11.5).
const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
/// Receive Maximum (§3.1.2.11.3) and Maximum Packet Size (§3.1.2.11.4).
const RECEIVE_MAXIMUM: u8 = 0x21;
const MAXIMUM_PACKET_SIZE: u8 = 0x27;

/// A rule a packet broke, and so the reason the connection closes.
///
/// The documentation of each variant names the rule in the OASIS MQTT 5.0
/// specification; the 3.1.1 rules are the same unless said otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// Packet type 0 is reserved (MQTT 5.0 §2.1.2). Malformed Packet, 0x81.
    #[error("reserved packet type 0")]
    ReservedPacketType,
    /// The flags of a packet other than PUBLISH are not the fixed value
    /// (`0010` for PUBREL, SUBSCRIBE and UNSUBSCRIBE, `0000` otherwise):
    /// MQTT 5.0 §2.1.3, MQTT-2.1.3-1. Malformed Packet, 0x81.
    #[error("packet type {packet_type} has flags {flags:#06b}, must be {expected:#06b}")]
    ReservedFlags {
        /// The packet type, 1 to 15.
        packet_type: u8,
        /// The low nibble of the first byte, as received.
        flags: u8,
        /// The value the specification fixes for that type.
        expected: u8,
    },
    /// A PUBLISH with both QoS bits set: MQTT 5.0 §3.3.1.2, MQTT-3.3.1-4.
    /// Malformed Packet, 0x81.
    #[error("publish with qos 3")]
    PublishQos3,
    /// A QoS 0 PUBLISH with DUP set: MQTT 5.0 §3.3.1.1, MQTT-3.3.1-2.
    /// Malformed Packet, 0x81.
    #[error("publish with qos 0 and dup set")]
    DupOnQos0,
    /// The remaining length uses more bytes than its value needs:
    /// MQTT 5.0 §1.5.5, MQTT-1.5.5-1. Malformed Packet, 0x81.
    #[error("remaining length not minimally encoded")]
    NonMinimalLength,
    /// The remaining length runs past four bytes, or its bytes do not form
    /// exactly one variable byte integer: MQTT 5.0 §1.5.5 and §2.1.4.
    /// Malformed Packet, 0x81.
    #[error("remaining length is not a variable byte integer of at most four bytes")]
    MalformedLength,
    /// The whole packet (fixed header included) is over the Maximum Packet
    /// Size the server announced: MQTT 5.0 §3.2.2.3.6. Packet too large,
    /// 0x95.
    #[error("packet of {size} bytes is over the maximum of {max}")]
    PacketTooLarge {
        /// The packet's size as its fixed header announces it.
        size: usize,
        /// The configured maximum packet size.
        max: usize,
    },
    /// CONNECT's reserved flag (bit 0) is set: MQTT 5.0 §3.1.2.3,
    /// MQTT-3.1.2-3. Malformed Packet, 0x81.
    #[error("connect reserved flag set")]
    ConnectReservedFlag,
    /// Will QoS or Will Retain set without the Will Flag: MQTT 5.0
    /// §3.1.2.6 and §3.1.2.7, MQTT-3.1.2-11 and MQTT-3.1.2-13. Malformed
    /// Packet, 0x81 (the flags byte cannot be read as the specification
    /// defines it).
    #[error("will qos or will retain set without the will flag")]
    WillFieldsWithoutWill,
    /// Will QoS 3: MQTT 5.0 §3.1.2.6, MQTT-3.1.2-12 ("a value of 3 is a
    /// Malformed Packet"). Malformed Packet, 0x81.
    #[error("will qos 3")]
    WillQos3,
    /// A password without a user name on MQTT 3.1.1 (§3.1.2.9,
    /// MQTT-3.1.2-22); MQTT 5.0 allows it (§3.1.2.9). v3.1.1 has no reason
    /// codes, so the connection just closes; 0x81 is what v5 would say.
    #[error("password without user name on mqtt 3.1.1")]
    PasswordWithoutUserName,
    /// Topic Alias Maximum more than once in a v5 CONNECT: MQTT 5.0
    /// §3.1.2.11.5. Protocol Error, 0x82.
    #[error("topic alias maximum more than once")]
    DuplicateTopicAliasMaximum,
    /// Receive Maximum 0 in a v5 CONNECT: MQTT 5.0 §3.1.2.11.3 ("It is a
    /// Protocol Error to include the Receive Maximum value of 0"). 0x82.
    #[error("receive maximum 0")]
    ZeroReceiveMaximum,
    /// Maximum Packet Size 0 in a v5 CONNECT: MQTT 5.0 §3.1.2.11.4. 0x82.
    #[error("maximum packet size 0")]
    ZeroMaximumPacketSize,
}

impl Violation {
    /// The MQTT 5.0 reason code to close with (CONNACK when the packet is
    /// the CONNECT, DISCONNECT after): 0x81 Malformed Packet, 0x82 Protocol
    /// Error or 0x95 Packet too large (MQTT 5.0 §2.4).
    pub fn reason_code(&self) -> u8 {
        match self {
            Self::PacketTooLarge { .. } => 0x95,
            Self::DuplicateTopicAliasMaximum
            | Self::ZeroReceiveMaximum
            | Self::ZeroMaximumPacketSize => 0x82,
            Self::ReservedPacketType
            | Self::ReservedFlags { .. }
            | Self::PublishQos3
            | Self::DupOnQos0
            | Self::NonMinimalLength
            | Self::MalformedLength
            | Self::ConnectReservedFlag
            | Self::WillFieldsWithoutWill
            | Self::WillQos3
            | Self::PasswordWithoutUserName => 0x81,
        }
    }
}

/// Where the next packet in a read buffer ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Frame {
    /// The buffer holds only part of a packet; read more.
    NeedMore,
    /// `buf[..total_len]` is one whole packet whose fixed header is
    /// `buf[..header_len]` (the first byte and the remaining length).
    Packet {
        /// Bytes of fixed header: 2 to 5.
        header_len: usize,
        /// Bytes of the whole packet.
        total_len: usize,
    },
    /// The fixed header breaks a rule; close the connection.
    Violation(Violation),
}

/// A variable byte integer read from the front of a slice.
enum Decoded {
    /// The slice ends inside the integer.
    NeedMore,
    /// The value and how many bytes it took.
    Value {
        value: u32,
        len: usize,
    },
    Violation(Violation),
}

/// Reads one variable byte integer (MQTT 5.0 §1.5.5) from the front of
/// `bytes`, refusing one longer than four bytes or not minimally encoded.
fn decode_varint(bytes: &[u8]) -> Decoded {
    let mut value = 0_u32;
    for (i, &b) in bytes.iter().take(4).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            // The most significant group of a longer encoding is never 0
            // in the minimal one.
            if i > 0 && b == 0 {
                return Decoded::Violation(Violation::NonMinimalLength);
            }
            return Decoded::Value { value, len: i + 1 };
        }
    }
    if bytes.len() >= 4 {
        Decoded::Violation(Violation::MalformedLength)
    } else {
        Decoded::NeedMore
    }
}

/// Writes `value` (at most [`MAX_REMAINING_LENGTH`]) as a minimal variable
/// byte integer into `out`, returning how many bytes it took.
fn encode_varint(mut value: u32, out: &mut [u8; 4]) -> usize {
    debug_assert!(value <= MAX_REMAINING_LENGTH);
    for (i, slot) in out.iter_mut().enumerate() {
        let low = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 || i == 3 {
            *slot = low;
            return i + 1;
        }
        *slot = low | 0x80;
    }
    4
}

/// Finds the next packet in `buf` without copying it: how long its fixed
/// header is and where it ends, once its remaining length is known to be
/// well formed and the whole packet no larger than `max_packet_size`.
///
/// The size check comes as soon as the header is read, before the body
/// arrives, so a peer cannot make the adapter buffer more than the limit.
pub fn frame(buf: &[u8], max_packet_size: usize) -> Frame {
    let Some(rest) = buf.get(1..) else {
        return Frame::NeedMore;
    };
    match decode_varint(rest) {
        Decoded::NeedMore => Frame::NeedMore,
        Decoded::Violation(v) => Frame::Violation(v),
        Decoded::Value { value, len } => {
            let header_len = 1 + len;
            let total_len = header_len + value as usize;
            if total_len > max_packet_size {
                Frame::Violation(Violation::PacketTooLarge {
                    size: total_len,
                    max: max_packet_size,
                })
            } else if buf.len() < total_len {
                Frame::NeedMore
            } else {
                Frame::Packet {
                    header_len,
                    total_len,
                }
            }
        }
    }
}

/// Checks a fixed header: its first byte (packet type and flags, MQTT 5.0
/// §2.1.2 and §2.1.3) and its remaining length, which must be exactly one
/// minimally encoded variable byte integer of at most four bytes.
pub fn check_fixed_header(first_byte: u8, remaining_length_bytes: &[u8]) -> Result<(), Violation> {
    match decode_varint(remaining_length_bytes) {
        Decoded::Value { len, .. } if len == remaining_length_bytes.len() => {}
        Decoded::Violation(v) => return Err(v),
        _ => return Err(Violation::MalformedLength),
    }
    let packet_type = first_byte >> 4;
    let flags = first_byte & 0x0f;
    match packet_type {
        0 => Err(Violation::ReservedPacketType),
        PUBLISH => {
            let qos = (flags >> 1) & 0b11;
            if qos == 3 {
                Err(Violation::PublishQos3)
            } else if qos == 0 && flags & 0b1000 != 0 {
                Err(Violation::DupOnQos0)
            } else {
                Ok(())
            }
        }
        _ => {
            // PUBREL, SUBSCRIBE, UNSUBSCRIBE.
            let expected = if matches!(packet_type, 6 | 8 | 10) {
                0b0010
            } else {
                0b0000
            };
            if flags == expected {
                Ok(())
            } else {
                Err(Violation::ReservedFlags {
                    packet_type,
                    flags,
                    expected,
                })
            }
        }
    }
}

/// Checks CONNECT's flags byte (MQTT 5.0 §3.1.2.3 to §3.1.2.9).
/// `protocol_level` is CONNECT's own: 5 for MQTT 5.0; any other level gets
/// the 3.1.1 rules, which also forbid a password without a user name.
pub fn check_connect_flags(flags: u8, protocol_level: u8) -> Result<(), Violation> {
    let will = flags & 0x04 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0x20 != 0;
    let password = flags & 0x40 != 0;
    let user_name = flags & 0x80 != 0;
    if flags & 0x01 != 0 {
        Err(Violation::ConnectReservedFlag)
    } else if !will && (will_qos != 0 || will_retain) {
        Err(Violation::WillFieldsWithoutWill)
    } else if will_qos == 3 {
        Err(Violation::WillQos3)
    } else if password && !user_name && protocol_level != 5 {
        Err(Violation::PasswordWithoutUserName)
    } else {
        Ok(())
    }
}

/// The guard's checks on one whole packet, as [`frame`] delimits it: the
/// fixed header, and on a CONNECT its flags. A CONNECT too short to reach
/// its flags is left to the crate, which refuses it as malformed.
pub fn check_packet(packet: &[u8]) -> Result<(), Violation> {
    let Some(&first) = packet.first() else {
        return Err(Violation::MalformedLength);
    };
    let header_len = match decode_varint(&packet[1..]) {
        Decoded::Value { len, .. } => 1 + len,
        Decoded::Violation(v) => return Err(v),
        Decoded::NeedMore => return Err(Violation::MalformedLength),
    };
    check_fixed_header(first, &packet[1..header_len])?;
    if first >> 4 != CONNECT {
        return Ok(());
    }
    match connect_level_and_flags(&packet[header_len..]) {
        Some((level, flags)) => check_connect_flags(flags, level),
        None => Ok(()),
    }
}

/// Whether `packet` (whole, as [`frame`] delimits it) is a CONNECT at
/// protocol level 5: one whose violations are answered with a CONNACK
/// carrying the reason code.
pub fn is_v5_connect(packet: &[u8]) -> bool {
    if packet.first().map(|b| b >> 4) != Some(CONNECT) {
        return false;
    }
    let Decoded::Value { len, .. } = decode_varint(&packet[1..]) else {
        return false;
    };
    packet
        .get(1 + len..)
        .and_then(connect_level_and_flags)
        .is_some_and(|(level, _)| level == 5)
}

/// CONNECT's protocol level and flags, after the protocol name (any name:
/// the crate judges it).
fn connect_level_and_flags(body: &[u8]) -> Option<(u8, u8)> {
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    let level = *body.get(2 + name_len)?;
    let flags = *body.get(3 + name_len)?;
    Some((level, flags))
}

/// The size of a CONNECT property's value, by identifier (MQTT 5.0
/// §3.1.2.11), read from the front of `value`; `None` for an identifier
/// CONNECT does not allow or a value cut short.
fn connect_property_len(id: u8, value: &[u8]) -> Option<usize> {
    let prefixed = |at: usize| -> Option<usize> {
        let hi = *value.get(at)?;
        let lo = *value.get(at + 1)?;
        Some(2 + usize::from(u16::from_be_bytes([hi, lo])))
    };
    let len = match id {
        // Request Problem / Response Information: a byte.
        0x17 | 0x19 => 1,
        // Receive Maximum, Topic Alias Maximum: two bytes.
        RECEIVE_MAXIMUM | TOPIC_ALIAS_MAXIMUM => 2,
        // Session Expiry Interval, Maximum Packet Size: four bytes.
        0x11 | MAXIMUM_PACKET_SIZE => 4,
        // Authentication Method (string), Authentication Data (binary).
        0x15 | 0x16 => prefixed(0)?,
        // User Property: two strings.
        0x26 => {
            let key = prefixed(0)?;
            key + prefixed(key)?
        }
        _ => return None,
    };
    (len <= value.len()).then_some(len)
}

/// The guard's checks on a v5 CONNECT's properties. Works around
/// mqtt-protocol-core's remote panic: a v5 CONNECT carrying Topic Alias
/// Maximum 0 (valid, and the default, MQTT 5.0 §3.1.2.11.5) hits an
/// assertion in the server `Connection`. Given one whole packet, returns
/// the same CONNECT without that property — the same meaning — with the
/// property length and remaining length re-encoded, or `None` when the
/// packet needs no rewrite (any other packet, no such property, or
/// properties the crate will refuse anyway).
///
/// A Topic Alias Maximum given twice is refused here: the crate would act
/// on each copy in turn, so a zero among them would still reach it. So are
/// Receive Maximum 0 and Maximum Packet Size 0, protocol errors the crate
/// answers only with CONNACK 0x80 (Unspecified error).
pub fn guard_connect_properties(packet: &[u8]) -> Result<Option<Vec<u8>>, Violation> {
    if packet.first().map(|b| b >> 4) != Some(CONNECT) {
        return Ok(None);
    }
    let Decoded::Value { value, len } = decode_varint(&packet[1..]) else {
        return Ok(None);
    };
    let header_len = 1 + len;
    let Some(body) = packet.get(header_len..header_len + value as usize) else {
        return Ok(None);
    };
    // "MQTT", level 5, flags, keep alive: ten bytes before the properties.
    if body.get(..7) != Some(b"\x00\x04MQTT\x05".as_slice()) || body.len() < 10 {
        return Ok(None);
    }
    let Decoded::Value {
        value: props_len,
        len: props_len_len,
    } = decode_varint(&body[10..])
    else {
        return Ok(None);
    };
    let props_start = 10 + props_len_len;
    let Some(props) = body.get(props_start..props_start + props_len as usize) else {
        return Ok(None);
    };

    // Walk the properties; each step consumes at least one byte.
    let mut at = 0;
    let mut seen = 0;
    let mut zero_at = None;
    while at < props.len() {
        let id = props[at];
        let Some(n) = connect_property_len(id, &props[at + 1..]) else {
            return Ok(None);
        };
        let value = &props[at + 1..at + 1 + n];
        match id {
            TOPIC_ALIAS_MAXIMUM => {
                seen += 1;
                if value == [0, 0] {
                    zero_at = Some(at);
                }
            }
            RECEIVE_MAXIMUM if value == [0, 0] => return Err(Violation::ZeroReceiveMaximum),
            MAXIMUM_PACKET_SIZE if value == [0, 0, 0, 0] => {
                return Err(Violation::ZeroMaximumPacketSize);
            }
            _ => {}
        }
        at += 1 + n;
    }
    if seen > 1 {
        return Err(Violation::DuplicateTopicAliasMaximum);
    }
    let Some(cut) = zero_at else {
        return Ok(None);
    };

    // The property is an identifier byte and a two-byte value.
    let new_props_len = props_len - 3;
    let mut props_len_bytes = [0; 4];
    let props_len_n = encode_varint(new_props_len, &mut props_len_bytes);
    let after_props = &body[props_start + props.len()..];
    let remaining = 10 + props_len_n + new_props_len as usize + after_props.len();
    let mut remaining_bytes = [0; 4];
    // Never longer than the original remaining length, so it fits.
    let remaining_n = encode_varint(remaining as u32, &mut remaining_bytes);

    let mut out = Vec::with_capacity(1 + remaining_n + remaining);
    out.push(packet[0]);
    out.extend_from_slice(&remaining_bytes[..remaining_n]);
    out.extend_from_slice(&body[..10]);
    out.extend_from_slice(&props_len_bytes[..props_len_n]);
    out.extend_from_slice(&props[..cut]);
    out.extend_from_slice(&props[cut + 3..]);
    out.extend_from_slice(after_props);
    Ok(Some(out))
}

#[cfg(test)]
mod tests;
