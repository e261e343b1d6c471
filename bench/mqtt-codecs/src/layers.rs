//! The three decode paths under evaluation, behind one shape: a session set-up
//! and a byte stream in, a [`Verdict`] out, panics caught.
//!
//! - [`Layer::MpcParse`]: mqtt-protocol-core's `PacketBuilder` (framing, with
//!   its maximum packet size) and the per-type `parse` the connection itself
//!   calls, with no connection state.
//! - [`Layer::MpcServer`]: mqtt-protocol-core's `Connection<role::Server>`,
//!   the way Moat would use it: version undetermined until CONNECT, CONNACK
//!   sent by us (carrying Topic Alias Maximum, Receive Maximum and Maximum
//!   Packet Size when the probe sets them), automatic PUBACK/PUBREC off
//!   because Moat acknowledges only after the durable write.
//! - [`Layer::Rmqtt`]: rmqtt-codec's `VersionCodec` on CONNECT, then its v3 or
//!   v5 `Codec` (`tokio_util::codec::Decoder` over a `BytesMut`).

use std::cell::{Cell, RefCell};
use std::panic::{self, AssertUnwindSafe, catch_unwind};
use std::sync::Once;

use bytes::BytesMut;
use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::common::Cursor;
use mqtt_protocol_core::mqtt::connection::{
    ConnectionOptions, Event, PacketBuildResult, PacketBuilder, RawPacket,
};
use mqtt_protocol_core::mqtt::packet::{
    GenericPacket, MaximumPacketSize, Packet, Property, ReceiveMaximum, TopicAliasMaximum, v3_1_1,
    v5_0,
};
use mqtt_protocol_core::mqtt::result_code::{ConnectReasonCode, ConnectReturnCode, MqttError};
use tokio_util::codec::Decoder;

use crate::fixtures;

/// The protocol version a probe speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    V311,
    V5,
}

/// One of the decode paths under evaluation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layer {
    MpcParse,
    MpcServer,
    Rmqtt,
}

impl Layer {
    pub const ALL: [Layer; 3] = [Layer::MpcParse, Layer::MpcServer, Layer::Rmqtt];

    pub fn label(self) -> &'static str {
        match self {
            Layer::MpcParse => "mqtt-protocol-core (parser)",
            Layer::MpcServer => "mqtt-protocol-core (server Connection)",
            Layer::Rmqtt => "rmqtt-codec",
        }
    }

    /// Whether this layer keeps session state (topic aliases, in-flight
    /// window, whether CONNECT was seen). Only such a layer can enforce rules
    /// that span packets.
    pub fn has_session_state(self) -> bool {
        self == Layer::MpcServer
    }
}

/// What a layer made of a byte stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every packet decoded; a short description of the last one.
    Accepted(String),
    /// A packet was refused; the crate's error (and, for the server
    /// connection, what it asks us to send or do).
    Rejected(String),
    /// The stream ended inside a packet.
    Incomplete,
    /// The crate panicked; the panic message.
    Panicked(String),
}

impl Verdict {
    pub fn is_rejected(&self) -> bool {
        matches!(self, Verdict::Rejected(_))
    }
}

/// How the session is opened before the probe's bytes arrive.
#[derive(Debug, Clone)]
pub struct Setup {
    pub version: Version,
    /// Send a minimal CONNECT (and, on the server connection, our CONNACK)
    /// first. False when the probe's stream starts with its own CONNECT.
    pub open_session: bool,
    /// Maximum packet size we accept (total size, as MQTT 5 defines it).
    pub max_packet_size: Option<u32>,
    /// Receive Maximum announced in our CONNACK (v5).
    pub receive_maximum: Option<u16>,
    /// Topic Alias Maximum announced in our CONNACK (v5); 0 for none.
    pub topic_alias_maximum: u16,
}

impl Setup {
    pub fn session(version: Version) -> Self {
        Self {
            version,
            open_session: true,
            max_packet_size: None,
            receive_maximum: None,
            topic_alias_maximum: 8,
        }
    }

    pub fn connecting(version: Version) -> Self {
        Self {
            open_session: false,
            ..Self::session(version)
        }
    }
}

thread_local! {
    /// Set while a crate under test runs on this thread: its panics are
    /// expected findings, recorded instead of printed.
    static QUIET: Cell<bool> = const { Cell::new(false) };
    static LAST_PANIC_LOCATION: RefCell<Option<String>> = const { RefCell::new(None) };
}

static PANIC_HOOK: Once = Once::new();

/// Installs, once, a panic hook that records the location of panics raised
/// inside [`run`] and leaves every other panic (a failing test's, say) to the
/// previous hook.
fn install_panic_hook() {
    PANIC_HOOK.call_once(|| {
        let previous = panic::take_hook();
        panic::set_hook(Box::new(move |info| {
            if QUIET.with(Cell::get) {
                let location = info
                    .location()
                    .map(|l| format!("{}:{}", l.file(), l.line()));
                LAST_PANIC_LOCATION.with(|l| *l.borrow_mut() = location);
            } else {
                previous(info);
            }
        }));
    });
}

/// Where the last panic caught by [`run`] on this thread was raised.
pub fn last_panic_location() -> Option<String> {
    LAST_PANIC_LOCATION.with(|l| l.borrow().clone())
}

/// Runs `stream` through `layer`, catching panics.
pub fn run(layer: Layer, setup: &Setup, stream: &[u8]) -> Verdict {
    install_panic_hook();
    QUIET.with(|q| q.set(true));
    let outcome = catch_unwind(AssertUnwindSafe(|| match layer {
        Layer::MpcParse => mpc_parse(setup, stream),
        Layer::MpcServer => mpc_server(setup, stream),
        Layer::Rmqtt => rmqtt(setup, stream),
    }));
    QUIET.with(|q| q.set(false));
    outcome.unwrap_or_else(|panic| {
        let msg = panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_else(|| "non-string panic".to_owned());
        Verdict::Panicked(msg)
    })
}

// ---------------------------------------------------------------- mpc parser

fn mpc_parse(setup: &Setup, stream: &[u8]) -> Verdict {
    let mut builder = match setup.max_packet_size {
        Some(max) => PacketBuilder::with_maximum_packet_size(max),
        None => PacketBuilder::new(),
    };
    let mut cursor = Cursor::new(stream);
    let mut last = None;
    // Each `feed` consumes at least one byte while any is left, so the loop
    // runs at most `stream.len()` times.
    for _ in 0..=stream.len() {
        if cursor.position() as usize >= stream.len() {
            break;
        }
        match builder.feed(&mut cursor) {
            PacketBuildResult::Complete(raw) => match mpc_parse_raw(setup.version, &raw) {
                Ok(p) => last = Some(mpc_summary(&p)),
                Err(e) => return Verdict::Rejected(format!("{e:?}")),
            },
            PacketBuildResult::Incomplete => {}
            PacketBuildResult::Error(e) => return Verdict::Rejected(format!("{e:?}")),
        }
    }
    if (cursor.position() as usize) < stream.len() {
        return Verdict::Incomplete;
    }
    match last {
        Some(s) => Verdict::Accepted(s),
        None => Verdict::Incomplete,
    }
}

/// Parses one framed packet with the per-type parser mqtt-protocol-core's
/// connection uses for `version`, requiring the whole body to be consumed.
pub fn mpc_parse_raw(version: Version, raw: &RawPacket) -> Result<Packet, MqttError> {
    let flags = raw.flags();
    let publish = |v5: bool| -> Result<Packet, MqttError> {
        let mqtt::connection::PacketData::Publish(arc) = &raw.data else {
            return Err(MqttError::MalformedPacket);
        };
        if v5 {
            let (p, _) = v5_0::Publish::parse(flags, arc.clone())?;
            Ok(p.into())
        } else {
            let (p, _) = v3_1_1::Publish::parse(flags, arc.clone())?;
            Ok(p.into())
        }
    };
    match (version, raw.packet_type()) {
        (Version::V311, 1) => raw.parse_exact(v3_1_1::Connect::parse).map(Into::into),
        (Version::V311, 3) => publish(false),
        (Version::V311, 4) => raw.parse_exact(v3_1_1::Puback::parse).map(Into::into),
        (Version::V311, 5) => raw.parse_exact(v3_1_1::Pubrec::parse).map(Into::into),
        (Version::V311, 6) => raw.parse_exact(v3_1_1::Pubrel::parse).map(Into::into),
        (Version::V311, 7) => raw.parse_exact(v3_1_1::Pubcomp::parse).map(Into::into),
        (Version::V311, 8) => raw.parse_exact(v3_1_1::Subscribe::parse).map(Into::into),
        (Version::V311, 10) => raw.parse_exact(v3_1_1::Unsubscribe::parse).map(Into::into),
        (Version::V311, 12) => raw.parse_exact(v3_1_1::Pingreq::parse).map(Into::into),
        (Version::V311, 14) => raw.parse_exact(v3_1_1::Disconnect::parse).map(Into::into),
        (Version::V5, 1) => raw.parse_exact(v5_0::Connect::parse).map(Into::into),
        (Version::V5, 3) => publish(true),
        (Version::V5, 4) => raw.parse_exact(v5_0::Puback::parse).map(Into::into),
        (Version::V5, 5) => raw.parse_exact(v5_0::Pubrec::parse).map(Into::into),
        (Version::V5, 6) => raw.parse_exact(v5_0::Pubrel::parse).map(Into::into),
        (Version::V5, 7) => raw.parse_exact(v5_0::Pubcomp::parse).map(Into::into),
        (Version::V5, 8) => raw.parse_exact(v5_0::Subscribe::parse).map(Into::into),
        (Version::V5, 10) => raw.parse_exact(v5_0::Unsubscribe::parse).map(Into::into),
        (Version::V5, 12) => raw.parse_exact(v5_0::Pingreq::parse).map(Into::into),
        (Version::V5, 14) => raw.parse_exact(v5_0::Disconnect::parse).map(Into::into),
        (Version::V5, 15) => raw.parse_exact(v5_0::Auth::parse).map(Into::into),
        // Server-to-client packet types and the reserved type 0 (and 15 on
        // v3.1.1) are not something a server accepts.
        _ => Err(MqttError::MalformedPacket),
    }
}

fn mpc_summary(p: &Packet) -> String {
    match p {
        GenericPacket::V3_1_1Publish(p) => format!(
            "PUBLISH topic={:?} qos={:?} dup={} id={:?}",
            p.topic_name(),
            p.qos(),
            p.dup(),
            p.packet_id()
        ),
        GenericPacket::V5_0Publish(p) => format!(
            "PUBLISH topic={:?} qos={:?} dup={} id={:?} props={}",
            p.topic_name(),
            p.qos(),
            p.dup(),
            p.packet_id(),
            p.props().len()
        ),
        // PacketType's Display is a JSON string such as "\"subscribe\"".
        other => other
            .packet_type()
            .to_string()
            .trim_matches('"')
            .to_uppercase(),
    }
}

// ------------------------------------------------------------ mpc connection

/// A server connection with a session open (when `setup.open_session`),
/// ready for the probe's bytes.
pub fn mpc_server_connection(setup: &Setup) -> mqtt::Connection<mqtt::role::Server> {
    let mut options = ConnectionOptions::new();
    if let Some(max) = setup.max_packet_size {
        options = options.maximum_packet_size_recv(max);
    }
    let mut conn =
        mqtt::Connection::<mqtt::role::Server>::with_options(mqtt::Version::Undetermined, options);
    conn.set_auto_pub_response(false);
    if setup.open_session {
        let connect = match setup.version {
            Version::V311 => fixtures::connect_v311_minimal(),
            Version::V5 => fixtures::connect_v5_minimal(),
        };
        let events = conn.recv(&mut Cursor::new(&connect[..]));
        assert!(
            events
                .iter()
                .any(|e| matches!(e, Event::NotifyPacketReceived(_))),
            "session set-up CONNECT refused: {events:?}"
        );
        let events = mpc_send_connack(&mut conn, setup);
        assert!(
            !events.iter().any(|e| matches!(e, Event::NotifyError(_))),
            "session set-up CONNACK refused: {events:?}"
        );
    }
    conn
}

/// Sends our CONNACK (success) on `conn`, with the probe's limits.
pub fn mpc_send_connack(
    conn: &mut mqtt::Connection<mqtt::role::Server>,
    setup: &Setup,
) -> Vec<Event> {
    match conn.get_protocol_version() {
        mqtt::Version::V5_0 => {
            let mut props = Vec::new();
            if setup.topic_alias_maximum > 0 {
                props.push(Property::TopicAliasMaximum(
                    TopicAliasMaximum::new(setup.topic_alias_maximum).unwrap(),
                ));
            }
            if let Some(max) = setup.receive_maximum {
                props.push(Property::ReceiveMaximum(ReceiveMaximum::new(max).unwrap()));
            }
            if let Some(max) = setup.max_packet_size {
                props.push(Property::MaximumPacketSize(
                    MaximumPacketSize::new(max).unwrap(),
                ));
            }
            let connack = v5_0::Connack::builder()
                .session_present(false)
                .reason_code(ConnectReasonCode::Success)
                .props(props)
                .build()
                .unwrap();
            conn.checked_send(connack)
        }
        _ => {
            let connack = v3_1_1::Connack::builder()
                .session_present(false)
                .return_code(ConnectReturnCode::Accepted)
                .build()
                .unwrap();
            conn.checked_send(connack)
        }
    }
}

fn mpc_server(setup: &Setup, stream: &[u8]) -> Verdict {
    let mut conn = mpc_server_connection(setup);
    let mut cursor = Cursor::new(stream);
    let mut last = None;
    for _ in 0..=stream.len() {
        if cursor.position() as usize >= stream.len() {
            break;
        }
        let events = conn.recv(&mut cursor);
        if let Some(v) = mpc_events_verdict(&events) {
            return v;
        }
        for e in &events {
            if let Event::NotifyPacketReceived(p) = e {
                last = Some(mpc_summary(p));
            }
        }
    }
    match last {
        Some(s) => Verdict::Accepted(s),
        None => Verdict::Incomplete,
    }
}

/// A rejection, if the events carry an error: the error, the DISCONNECT the
/// connection asks us to send, and whether it asks us to close.
pub fn mpc_events_verdict(events: &[Event]) -> Option<Verdict> {
    let error = events.iter().find_map(|e| match e {
        Event::NotifyError(err) => Some(*err),
        _ => None,
    })?;
    let mut what = format!("{error:?}");
    for e in events {
        match e {
            Event::RequestSendPacket {
                packet: GenericPacket::V5_0Disconnect(d),
                ..
            } => {
                what.push_str(&format!(
                    "; sends DISCONNECT 0x{:02x}",
                    d.reason_code().map_or(0, |r| r as u8)
                ));
            }
            Event::RequestClose => what.push_str("; closes"),
            _ => {}
        }
    }
    Some(Verdict::Rejected(what))
}

// ------------------------------------------------------------- rmqtt-codec

fn rmqtt(setup: &Setup, stream: &[u8]) -> Verdict {
    let mut buf = BytesMut::from(stream);
    let max = setup.max_packet_size.unwrap_or(0);
    let version = if setup.open_session {
        setup.version
    } else {
        // As rmqtt's server does: detect the version from the CONNECT, then
        // switch to that version's codec. VersionCodec does not consume.
        match rmqtt_codec::version::VersionCodec.decode(&mut buf) {
            Ok(Some(rmqtt_codec::version::ProtocolVersion::MQTT3)) => Version::V311,
            Ok(Some(rmqtt_codec::version::ProtocolVersion::MQTT5)) => Version::V5,
            Ok(None) => return Verdict::Incomplete,
            Err(e) => return Verdict::Rejected(format!("{e:?}")),
        }
    };
    let mut codec = match version {
        Version::V311 => rmqtt_codec::MqttCodec::V3(rmqtt_codec::v3::Codec::new(max)),
        Version::V5 => rmqtt_codec::MqttCodec::V5(rmqtt_codec::v5::Codec::new(max, 0)),
    };
    let mut last = None;
    // Each successful decode consumes at least the two-byte fixed header.
    for _ in 0..=stream.len() {
        match codec.decode(&mut buf) {
            Ok(Some((p, _))) => last = Some(rmqtt_summary(&p)),
            Ok(None) => break,
            Err(e) => return Verdict::Rejected(format!("{e:?}")),
        }
    }
    if !buf.is_empty() {
        return Verdict::Incomplete;
    }
    match last {
        Some(s) => Verdict::Accepted(s),
        None => Verdict::Incomplete,
    }
}

fn rmqtt_summary(p: &rmqtt_codec::MqttPacket) -> String {
    use rmqtt_codec::MqttPacket;
    let publish = match p {
        MqttPacket::V3(rmqtt_codec::v3::Packet::Publish(p)) => Some(p),
        MqttPacket::V5(rmqtt_codec::v5::Packet::Publish(p)) => Some(p),
        _ => None,
    };
    match publish {
        Some(p) => {
            let mut s = format!(
                "PUBLISH topic={:?} qos={:?} dup={} id={:?}",
                &*p.topic, p.qos, p.dup, p.packet_id
            );
            if let Some(props) = &p.properties {
                s.push_str(&format!(
                    " alias={:?} user_props={}",
                    props.topic_alias,
                    props.user_properties.len()
                ));
            }
            s
        }
        None => packet_name(&format!("{p:?}")).to_uppercase(),
    }
}

/// The variant name out of a `Debug` rendering ("V5(Subscribe(..))" →
/// "Subscribe").
fn packet_name(debug: &str) -> String {
    let inner = debug
        .strip_prefix("V3(")
        .or_else(|| debug.strip_prefix("V5("))
        .unwrap_or(debug);
    inner
        .split(|c: char| !c.is_alphanumeric() && c != '_')
        .find(|s| !s.is_empty())
        .unwrap_or("?")
        .to_owned()
}
