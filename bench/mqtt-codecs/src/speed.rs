//! Parse and encode throughput, measured with a plain timed loop of a fixed
//! packet count (no criterion: the numbers only need to rank two crates and
//! the loop stays bounded).
//!
//! Decoding reads from a "socket buffer" holding [`BATCH`] copies of the
//! fixture back to back, the way bytes arrive from a TLS stream, and decodes
//! every packet into the crate's typed packet. Each path pays exactly one copy
//! of the input: mqtt-protocol-core copies each packet out of the read buffer
//! into its own `Vec`/`Arc` (`PacketBuilder`), rmqtt-codec's figures include
//! filling its `BytesMut` (which a server reads the socket into) and then
//! splits `Bytes` out of it without copying.
//!
//! Encoding clones a decoded PUBLISH and serializes it into a reused buffer:
//! a broker builds one outgoing packet per subscriber (its own packet id and
//! QoS), and rmqtt-codec's encoder takes the packet by value.

use std::hint::black_box;
use std::time::{Duration, Instant};

use bytes::BytesMut;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::{PacketBuildResult, PacketBuilder};
use mqtt_protocol_core::mqtt::packet::{GenericPacket, GenericPacketTrait, Packet, v3_1_1, v5_0};
use tokio_util::codec::{Decoder, Encoder};

use crate::fixtures;
use crate::layers::{Setup, Version, mpc_events_verdict, mpc_parse_raw, mpc_server_connection};

/// Packets per simulated socket read.
pub const BATCH: usize = 1_000;

/// One measurement: the median of `rounds` timed rounds of `packets` each.
#[derive(Debug, Clone)]
pub struct Measure {
    pub packets_per_sec: f64,
    pub mb_per_sec: f64,
    pub ns_per_packet: f64,
}

/// Bounds of a run: packets per round and rounds (the median is reported).
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub packets: usize,
    pub rounds: usize,
}

impl Budget {
    pub const DEFAULT: Budget = Budget {
        packets: 200_000,
        rounds: 7,
    };
    /// For `cargo test`: enough to exercise every path, not to measure.
    pub const SMOKE: Budget = Budget {
        packets: 2_000,
        rounds: 1,
    };
}

fn measure(budget: Budget, packet_len: usize, mut round: impl FnMut(usize)) -> Measure {
    let batches = budget.packets.div_ceil(BATCH);
    let packets = batches * BATCH;
    round(BATCH); // warm-up
    let mut times: Vec<Duration> = (0..budget.rounds.max(1))
        .map(|_| {
            let start = Instant::now();
            for _ in 0..batches {
                round(BATCH);
            }
            start.elapsed()
        })
        .collect();
    times.sort();
    let secs = times[times.len() / 2].as_secs_f64();
    Measure {
        packets_per_sec: packets as f64 / secs,
        mb_per_sec: (packets * packet_len) as f64 / secs / 1e6,
        ns_per_packet: secs * 1e9 / packets as f64,
    }
}

fn repeated(packet: &[u8]) -> Vec<u8> {
    packet.repeat(BATCH)
}

/// mqtt-protocol-core's parser: `PacketBuilder` framing, then the per-type
/// parser, over one socket buffer of `n` packets.
fn mpc_decode_batch(version: Version, buf: &[u8], n: usize) {
    let mut builder = PacketBuilder::with_maximum_packet_size(1 << 20);
    let mut cursor = Cursor::new(buf);
    let mut decoded = 0;
    while decoded < n {
        match builder.feed(&mut cursor) {
            PacketBuildResult::Complete(raw) => {
                let p = mpc_parse_raw(version, &raw).expect("fixture decodes");
                black_box(p);
                decoded += 1;
            }
            PacketBuildResult::Incomplete => panic!("fixture batch ended early"),
            PacketBuildResult::Error(e) => panic!("fixture refused: {e:?}"),
        }
    }
}

fn rmqtt_codec(version: Version) -> rmqtt_codec::MqttCodec {
    match version {
        Version::V311 => rmqtt_codec::MqttCodec::V3(rmqtt_codec::v3::Codec::new(1 << 20)),
        Version::V5 => rmqtt_codec::MqttCodec::V5(rmqtt_codec::v5::Codec::new(1 << 20, 0)),
    }
}

/// rmqtt-codec: fill the `BytesMut`, then decode `n` packets out of it.
fn rmqtt_decode_batch(
    codec: &mut rmqtt_codec::MqttCodec,
    read_buf: &mut BytesMut,
    buf: &[u8],
    n: usize,
) {
    read_buf.extend_from_slice(buf);
    for _ in 0..n {
        let p = codec
            .decode(read_buf)
            .expect("fixture decodes")
            .expect("whole packet");
        black_box(p);
    }
}

/// A decode case: one fixture, measured on both crates.
pub struct DecodeCase {
    pub name: &'static str,
    pub version: Version,
    pub bytes: Vec<u8>,
}

pub fn decode_cases() -> Vec<DecodeCase> {
    vec![
        DecodeCase {
            name: "PUBLISH QoS 1, v3.1.1",
            version: Version::V311,
            bytes: fixtures::publish_v311(),
        },
        DecodeCase {
            name: "PUBLISH QoS 1, v5 + 2 props",
            version: Version::V5,
            bytes: fixtures::publish_v5(),
        },
        DecodeCase {
            name: "CONNECT v5, props + will",
            version: Version::V5,
            bytes: fixtures::connect_v5(),
        },
        DecodeCase {
            name: "SUBSCRIBE 5 filters, v3.1.1",
            version: Version::V311,
            bytes: fixtures::subscribe_v311(),
        },
        DecodeCase {
            name: "SUBSCRIBE 5 filters, v5",
            version: Version::V5,
            bytes: fixtures::subscribe_v5(),
        },
    ]
}

pub fn decode_mpc(case: &DecodeCase, budget: Budget) -> Measure {
    let buf = repeated(&case.bytes);
    measure(budget, case.bytes.len(), |n| {
        mpc_decode_batch(case.version, &buf, n)
    })
}

pub fn decode_rmqtt(case: &DecodeCase, budget: Budget) -> Measure {
    let buf = repeated(&case.bytes);
    let mut codec = rmqtt_codec(case.version);
    let mut read_buf = BytesMut::with_capacity(buf.len());
    measure(budget, case.bytes.len(), |n| {
        rmqtt_decode_batch(&mut codec, &mut read_buf, &buf, n)
    })
}

/// mqtt-protocol-core's server `Connection` on the PUBLISH fixture: receive
/// each PUBLISH (framing, parse, session checks, events) and send its PUBACK
/// (the broker's per-message minimum at QoS 1).
pub fn publish_through_mpc_server(version: Version, budget: Budget) -> Measure {
    let bytes = match version {
        Version::V311 => fixtures::publish_v311(),
        Version::V5 => fixtures::publish_v5(),
    };
    let buf = repeated(&bytes);
    let setup = Setup {
        max_packet_size: Some(1 << 20),
        ..Setup::session(version)
    };
    let mut conn = mpc_server_connection(&setup);
    measure(budget, bytes.len(), |n| {
        let mut cursor = Cursor::new(&buf[..]);
        for _ in 0..n {
            let events = conn.recv(&mut cursor);
            assert!(mpc_events_verdict(&events).is_none(), "fixture refused");
            let acked = match version {
                Version::V311 => conn.checked_send(
                    v3_1_1::Puback::builder()
                        .packet_id(fixtures::PACKET_ID)
                        .build()
                        .unwrap(),
                ),
                Version::V5 => conn.checked_send(
                    v5_0::Puback::builder()
                        .packet_id(fixtures::PACKET_ID)
                        .build()
                        .unwrap(),
                ),
            };
            black_box((events, acked));
        }
    })
}

/// The fixture PUBLISH decoded by mqtt-protocol-core.
pub fn mpc_publish(version: Version) -> Packet {
    let bytes = match version {
        Version::V311 => fixtures::publish_v311(),
        Version::V5 => fixtures::publish_v5(),
    };
    let mut builder = PacketBuilder::new();
    match builder.feed(&mut Cursor::new(&bytes[..])) {
        PacketBuildResult::Complete(raw) => mpc_parse_raw(version, &raw).unwrap(),
        other => panic!("fixture not framed: {other:?}"),
    }
}

/// The fixture PUBLISH decoded by rmqtt-codec.
pub fn rmqtt_publish(version: Version) -> rmqtt_codec::MqttPacket {
    let bytes = match version {
        Version::V311 => fixtures::publish_v311(),
        Version::V5 => fixtures::publish_v5(),
    };
    let (p, _) = rmqtt_codec(version)
        .decode(&mut BytesMut::from(&bytes[..]))
        .unwrap()
        .unwrap();
    p
}

pub fn mpc_encode(p: &Packet, out: &mut Vec<u8>) {
    for slice in p.to_buffers() {
        out.extend_from_slice(&slice);
    }
}

pub fn rmqtt_encode(
    codec: &mut rmqtt_codec::MqttCodec,
    p: rmqtt_codec::MqttPacket,
    out: &mut BytesMut,
) {
    codec.encode(p, out).expect("fixture encodes");
}

/// Clones a `MqttPacket` (the enum itself has no `Clone`; its v3 and v5
/// packets do).
fn rmqtt_clone(p: &rmqtt_codec::MqttPacket) -> rmqtt_codec::MqttPacket {
    use rmqtt_codec::MqttPacket;
    match p {
        MqttPacket::V3(p) => MqttPacket::V3(p.clone()),
        MqttPacket::V5(p) => MqttPacket::V5(p.clone()),
        MqttPacket::Version(v) => MqttPacket::Version(*v),
    }
}

pub fn encode_mpc(version: Version, budget: Budget) -> Measure {
    let p = mpc_publish(version);
    let len = p.size();
    let mut out = Vec::with_capacity(len * BATCH);
    measure(budget, len, |n| {
        out.clear();
        for _ in 0..n {
            let each: GenericPacket<u16> = p.clone();
            mpc_encode(&each, &mut out);
        }
        black_box(&out);
    })
}

/// mqtt-protocol-core serializing one PUBLISH repeatedly, without the clone:
/// its packets serialize by reference (`to_buffers` hands out slices, the
/// payload shared through an `Arc`), which rmqtt-codec's by-value encoder
/// cannot do. Shows how much of the encode figure is the clone.
pub fn encode_mpc_no_clone(version: Version, budget: Budget) -> Measure {
    let p = mpc_publish(version);
    let len = p.size();
    let mut out = Vec::with_capacity(len * BATCH);
    measure(budget, len, |n| {
        out.clear();
        for _ in 0..n {
            mpc_encode(&p, &mut out);
        }
        black_box(&out);
    })
}

pub fn encode_rmqtt(version: Version, budget: Budget) -> Measure {
    let p = rmqtt_publish(version);
    let mut codec = rmqtt_codec(version);
    let mut probe = BytesMut::new();
    rmqtt_encode(&mut codec, rmqtt_clone(&p), &mut probe);
    let len = probe.len();
    let mut out = BytesMut::with_capacity(len * BATCH);
    measure(budget, len, |n| {
        out.clear();
        for _ in 0..n {
            rmqtt_encode(&mut codec, rmqtt_clone(&p), &mut out);
        }
        black_box(&out);
    })
}

/// One fixture's encode∘decode results.
pub struct RoundTrip {
    pub name: &'static str,
    /// mqtt-protocol-core writes back the bytes it read.
    pub mpc_bytes: bool,
    /// Decoding what mqtt-protocol-core wrote gives the same packet.
    pub mpc_packet: bool,
    pub rmqtt_bytes: bool,
    pub rmqtt_packet: bool,
}

fn mpc_decode_one(version: Version, bytes: &[u8]) -> Option<Packet> {
    match PacketBuilder::new().feed(&mut Cursor::new(bytes)) {
        PacketBuildResult::Complete(raw) => mpc_parse_raw(version, &raw).ok(),
        _ => None,
    }
}

fn rmqtt_decode_one(version: Version, bytes: &[u8]) -> Option<rmqtt_codec::MqttPacket> {
    match rmqtt_codec(version).decode(&mut BytesMut::from(bytes)) {
        Ok(Some((p, _))) => Some(p),
        _ => None,
    }
}

fn rmqtt_eq(a: &rmqtt_codec::MqttPacket, b: &rmqtt_codec::MqttPacket) -> bool {
    use rmqtt_codec::MqttPacket;
    match (a, b) {
        (MqttPacket::V3(a), MqttPacket::V3(b)) => a == b,
        (MqttPacket::V5(a), MqttPacket::V5(b)) => a == b,
        _ => false,
    }
}

/// Encode∘decode round trips of the fixtures: does each crate write back the
/// bytes it read, and does what it writes decode to the same packet? (The
/// order of v5 properties is free except among user properties, so a
/// different byte string can be a correct encoding.)
pub fn round_trips() -> Vec<RoundTrip> {
    let mut cases: Vec<(&'static str, Version, Vec<u8>)> = decode_cases()
        .into_iter()
        .map(|c| (c.name, c.version, c.bytes))
        .collect();
    cases.push((
        "PUBLISH v5, repeated user property keys",
        Version::V5,
        crate::probes::all()
            .into_iter()
            .find(|p| p.id == "user-props")
            .expect("probe exists")
            .stream,
    ));
    cases
        .into_iter()
        .map(|(name, version, bytes)| {
            let mpc_first = mpc_decode_one(version, &bytes);
            let mpc_out = mpc_first.as_ref().map(|p| p.to_continuous_buffer());
            let mpc_second = mpc_out.as_ref().and_then(|b| mpc_decode_one(version, b));
            let rmqtt_first = rmqtt_decode_one(version, &bytes);
            let rmqtt_out = rmqtt_first.as_ref().and_then(|p| {
                let mut out = BytesMut::new();
                rmqtt_codec(version).encode(rmqtt_clone(p), &mut out).ok()?;
                Some(out.to_vec())
            });
            let rmqtt_second = rmqtt_out
                .as_ref()
                .and_then(|b| rmqtt_decode_one(version, b));
            RoundTrip {
                name,
                mpc_bytes: mpc_out.as_deref() == Some(&bytes[..]),
                mpc_packet: mpc_first.is_some() && mpc_first == mpc_second,
                rmqtt_bytes: rmqtt_out.as_deref() == Some(&bytes[..]),
                rmqtt_packet: matches!(
                    (&rmqtt_first, &rmqtt_second),
                    (Some(a), Some(b)) if rmqtt_eq(a, b)
                ),
            }
        })
        .collect()
}
