//! Messages: what devices and apps publish to channels, checked against the
//! channel's policy and, for SenML and flat JSON, normalized into records.
//!
//! [`accept`] is the one place a raw publish from any protocol becomes a
//! [`Message`] or a [`Rejection`]; adapters only translate. The
//! [`MessageStore`] port is where messages become durable (ADR 004).

pub mod bus;
pub mod retained;
pub mod sessions;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::authz::Subject;
use crate::domain::{Channel, PayloadPolicy};
use crate::ids::*;
use crate::senml::{self, Record, SenmlError};
use crate::store::StoreError;

/// The largest payload any channel accepts.
pub const MAX_PAYLOAD: usize = 1024 * 1024;
/// A channel's payload limit when it sets none.
pub const DEFAULT_MAX_PAYLOAD: usize = 64 * 1024;
/// Longest subtopic, in bytes.
pub const MAX_SUBTOPIC_LEN: usize = 256;

/// How a message arrived.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Http,
    Websocket,
    Mqtt,
    Coap,
}

impl Protocol {
    pub const ALL: [Protocol; 4] = [
        Protocol::Http,
        Protocol::Websocket,
        Protocol::Mqtt,
        Protocol::Coap,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http => "http",
            Protocol::Websocket => "websocket",
            Protocol::Mqtt => "mqtt",
            Protocol::Coap => "coap",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == s)
    }
}

/// The payload's format, as far as Moat reads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ContentType {
    #[serde(rename = "application/senml+json")]
    SenmlJson,
    #[serde(rename = "application/senml+cbor")]
    SenmlCbor,
    #[serde(rename = "application/json")]
    Json,
    #[serde(rename = "application/octet-stream")]
    OctetStream,
}

impl ContentType {
    pub const ALL: [ContentType; 4] = [
        ContentType::SenmlJson,
        ContentType::SenmlCbor,
        ContentType::Json,
        ContentType::OctetStream,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ContentType::SenmlJson => "application/senml+json",
            ContentType::SenmlCbor => "application/senml+cbor",
            ContentType::Json => "application/json",
            ContentType::OctetStream => "application/octet-stream",
        }
    }

    /// A media type's essence (parameters and case ignored).
    pub fn parse(media_type: &str) -> Option<Self> {
        let essence = media_type.split(';').next()?.trim();
        Self::ALL
            .into_iter()
            .find(|c| c.as_str().eq_ignore_ascii_case(essence))
    }

    /// The content type of a CoAP Content-Format number, if the platform
    /// takes it.
    pub fn from_coap_format(format: u16) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.coap_format() == format)
    }

    /// CoAP's Content-Format number (RFC 7252 §12.3, RFC 8428 §12.3).
    pub fn coap_format(self) -> u16 {
        match self {
            ContentType::SenmlJson => 110,
            ContentType::SenmlCbor => 112,
            ContentType::Json => 50,
            ContentType::OctetStream => 42,
        }
    }
}

/// A published message, accepted by its channel's policy.
#[derive(Clone, Debug, PartialEq)]
pub struct Message {
    pub id: MessageId,
    pub tenant_id: TenantId,
    pub channel_id: ChannelId,
    /// Slash-separated, without wildcards; empty for the channel itself.
    pub subtopic: String,
    pub publisher: Subject,
    pub protocol: Protocol,
    pub content_type: ContentType,
    pub payload: Vec<u8>,
    /// Microseconds since the Unix epoch.
    pub received_at: i64,
    /// SenML records, or a flat JSON object's members; empty for opaque
    /// payloads.
    pub records: Vec<Record>,
}

/// A publish as an adapter received it.
#[derive(Clone, Debug)]
pub struct Incoming<'a> {
    pub subtopic: &'a str,
    /// The content type the publisher declared, if any (HTTP header, MQTT 5
    /// property, CoAP Content-Format).
    pub content_type: Option<ContentType>,
    pub payload: Vec<u8>,
}

/// Why a publish was refused; adapters map each to their own error form.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum Rejection {
    #[error("the payload is {size} bytes; this channel accepts at most {limit}")]
    TooLarge { size: usize, limit: usize },
    #[error("a channel with payload policy {policy} does not accept {content_type}")]
    ContentType {
        policy: &'static str,
        content_type: &'static str,
    },
    #[error("not SenML: {0}")]
    Senml(#[from] SenmlError),
    #[error("not JSON: {0}")]
    Json(String),
    #[error("invalid subtopic: {0}")]
    Subtopic(&'static str),
}

/// Checks a subtopic: slash-separated segments of printable characters, no
/// empty segment, no MQTT wildcard (`+`, `#`), at most
/// [`MAX_SUBTOPIC_LEN`] bytes.
pub fn check_subtopic(s: &str) -> Result<(), Rejection> {
    if s.is_empty() {
        return Ok(());
    }
    if s.len() > MAX_SUBTOPIC_LEN {
        return Err(Rejection::Subtopic("longer than 256 bytes"));
    }
    if s.split('/').any(str::is_empty) {
        return Err(Rejection::Subtopic("an empty segment"));
    }
    if s.contains(['+', '#']) {
        return Err(Rejection::Subtopic("wildcards are for subscribing"));
    }
    if s.chars().any(|c| c.is_control()) {
        return Err(Rejection::Subtopic("control characters"));
    }
    Ok(())
}

/// Turns a publish into a message of `channel`, or says why not.
/// `received_at` is in microseconds since the Unix epoch.
pub fn accept(
    channel: &Channel,
    publisher: Subject,
    protocol: Protocol,
    incoming: Incoming<'_>,
    received_at: i64,
) -> Result<Message, Rejection> {
    let limit = channel
        .max_payload
        .map_or(DEFAULT_MAX_PAYLOAD, |l| l as usize)
        .min(MAX_PAYLOAD);
    if incoming.payload.len() > limit {
        return Err(Rejection::TooLarge {
            size: incoming.payload.len(),
            limit,
        });
    }
    check_subtopic(incoming.subtopic)?;
    let seconds = received_at as f64 / 1e6;
    let policy = channel.payload_policy;
    let refuse = |c: ContentType| Rejection::ContentType {
        policy: policy.as_str(),
        content_type: c.as_str(),
    };
    let (content_type, records) = match policy {
        PayloadPolicy::Senml => {
            let ct = match incoming.content_type {
                Some(c @ (ContentType::SenmlJson | ContentType::SenmlCbor)) => c,
                Some(other) => return Err(refuse(other)),
                // Undeclared: a JSON pack starts with `[`, a CBOR one with
                // an array head.
                None if first_byte(&incoming.payload) == Some(b'[') => ContentType::SenmlJson,
                None => ContentType::SenmlCbor,
            };
            let records = match ct {
                ContentType::SenmlJson => senml::records_from_json(&incoming.payload, seconds)?,
                _ => senml::records_from_cbor(&incoming.payload, seconds)?,
            };
            (ct, records)
        }
        PayloadPolicy::Json => {
            match incoming.content_type {
                None | Some(ContentType::Json) => {}
                Some(other) => return Err(refuse(other)),
            }
            // A flat object's members become records (one parse on the hot
            // path); any other JSON is only validated, without building it.
            let records = match senml::records_from_json_object(&incoming.payload, seconds) {
                Ok(records) => records,
                Err(_) => {
                    serde_json::from_slice::<serde::de::IgnoredAny>(&incoming.payload)
                        .map_err(|e| Rejection::Json(e.to_string()))?;
                    Vec::new()
                }
            };
            (ContentType::Json, records)
        }
        PayloadPolicy::Opaque | PayloadPolicy::Sealed | PayloadPolicy::E2e => (
            incoming.content_type.unwrap_or(ContentType::OctetStream),
            Vec::new(),
        ),
    };
    Ok(Message {
        id: MessageId::new(),
        tenant_id: channel.tenant_id,
        channel_id: channel.id,
        subtopic: incoming.subtopic.to_owned(),
        publisher,
        protocol,
        content_type,
        payload: incoming.payload,
        received_at,
        records,
    })
}

fn first_byte(b: &[u8]) -> Option<u8> {
    b.iter().copied().find(|c| !c.is_ascii_whitespace())
}

/// Which stored messages to read, oldest first.
#[derive(Clone, Debug, Default)]
pub struct MessageQuery {
    pub channel: ChannelId,
    /// Microseconds, inclusive.
    pub from: Option<i64>,
    /// Microseconds, exclusive.
    pub to: Option<i64>,
    /// `device:<id>`, `user:<id>`, `apikey:<id>`.
    pub publisher: Option<String>,
    /// Exact subtopic.
    pub subtopic: Option<String>,
    /// Only messages after this sequence number (the cursor).
    pub after: Option<i64>,
    pub limit: u32,
}

/// A stored message, with its place in the store's order.
#[derive(Clone, Debug, PartialEq)]
pub struct Stored {
    pub seq: i64,
    pub message: Message,
}

/// Which records to read or aggregate.
#[derive(Clone, Debug, Default)]
pub struct RecordQuery {
    pub channel: ChannelId,
    pub name: Option<String>,
    pub publisher: Option<String>,
    pub subtopic: Option<String>,
    /// Microseconds, inclusive.
    pub from: Option<i64>,
    /// Microseconds, exclusive.
    pub to: Option<i64>,
    /// Numeric value comparisons, all of which must hold.
    pub value: Vec<(Comparator, f64)>,
    /// Only records after this cursor (time µs, message seq, index).
    pub after: Option<(i64, i64, u32)>,
    pub limit: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Comparator {
    Lt,
    Le,
    Eq,
    Ge,
    Gt,
}

/// A stored record, with where it came from.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredRecord {
    pub seq: i64,
    pub index: u32,
    pub publisher: String,
    pub subtopic: String,
    pub record: Record,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Aggregate {
    Count,
    Min,
    Max,
    Avg,
    Sum,
}

/// One interval's aggregate.
#[derive(Clone, Debug, PartialEq)]
pub struct Bucket {
    /// Start of the interval, microseconds.
    pub start: i64,
    pub count: u64,
    /// `None` when the bucket has no numeric value (count still counts).
    pub value: Option<f64>,
}

/// Where messages become durable and are read back (ADR 004).
#[async_trait]
pub trait MessageStore: Send + Sync + 'static {
    /// Stores `messages` in one group commit; returns once they are durable,
    /// with their sequence numbers.
    async fn append(&self, messages: Vec<std::sync::Arc<Message>>) -> Result<Vec<i64>, StoreError>;
    async fn messages(&self, q: &MessageQuery) -> Result<Vec<Stored>, StoreError>;
    async fn records(&self, q: &RecordQuery) -> Result<Vec<StoredRecord>, StoreError>;
    /// `agg` over numeric values of records matching `q` (its `limit` and
    /// `after` ignored), in buckets of `interval` µs aligned to the epoch.
    async fn aggregate(
        &self,
        q: &RecordQuery,
        agg: Aggregate,
        interval: i64,
    ) -> Result<Vec<Bucket>, StoreError>;
    /// Deletes a channel's messages received before `before` (µs); returns
    /// how many went.
    async fn expire(&self, channel: ChannelId, before: i64) -> Result<u64, StoreError>;
    /// The channels that have messages stored, in no given order: where
    /// retention finds the channels deleted since, to delete their messages.
    async fn stored_channels(&self) -> Result<Vec<ChannelId>, StoreError>;
}

#[cfg(test)]
mod tests;
