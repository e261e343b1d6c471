//! Messages over HTTP: publishing (`publish`), reading back, aggregating and
//! exporting (`read`), and the live WebSocket (`ws`).
//!
//! Every protocol's publish takes the same path: find the channel, decide
//! with `authz::authorize_messages`, let `message::accept` apply the
//! channel's policy, then `Bus::publish`, which returns once the message is
//! durable (ADR 004). Only then does the client hear 202.

pub mod read;
pub mod ws;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use chrono::Utc;
use moat_core::audit::Outcome;
use moat_core::authz::{self, Decision, MessageAccess, Subject};
use moat_core::message::{self, ContentType, Incoming, Message, Protocol, Rejection};
use moat_core::{Channel, ChannelId, MessageId};
use serde::Serialize;
use utoipa::ToSchema;

use super::TAG_MESSAGES;
use crate::auth::Caller;
use crate::extract::{Json, Path};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// A publish, stored.
#[derive(Debug, Serialize, ToSchema)]
pub struct Published {
    pub id: MessageId,
    /// Its place in the channel's order; reading with `cursor` starts after it.
    pub seq: i64,
    /// When Moat received it (RFC 3339, microseconds).
    pub received_at: String,
    /// SenML records (or flat JSON members) it carried.
    pub records: usize,
}

/// Publishes a message to a channel; answers once it is durable.
///
/// The body is the payload, as is. `Content-Type` says its format:
/// `application/senml+json`, `application/senml+cbor`, `application/json`
/// or `application/octet-stream`; without one, a `senml` channel tells JSON
/// from CBOR by the first byte. Devices authenticate with
/// `Authorization: Device <key>` or their client certificate and need a
/// `publish` connection to the channel; users and API keys need the
/// operator or admin role.
#[utoipa::path(post, path = "/channels/{id}/messages", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path)),
    request_body(content = Vec<u8>, content_type = "application/senml+json",
        description = "The payload; `application/senml+cbor`, `application/json` and `application/octet-stream` too"),
    responses((status = 202, body = Published), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)))]
pub async fn publish(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    publish_to(&s, &caller, id, String::new(), &headers, body).await
}

/// Publishes a message to a subtopic of a channel (`a/b/c`); otherwise as
/// publishing to the channel.
#[utoipa::path(post, path = "/channels/{id}/messages/{*subtopic}", tag = TAG_MESSAGES,
    params(("id" = ChannelId, Path), ("subtopic" = String, Path, description = "Slash-separated segments, no wildcards")),
    request_body(content = Vec<u8>, content_type = "application/senml+json",
        description = "The payload; `application/senml+cbor`, `application/json` and `application/octet-stream` too"),
    responses((status = 202, body = Published), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 404, body = Problem), (status = 413, body = Problem), (status = 415, body = Problem),
        (status = 422, body = Problem)))]
pub async fn publish_subtopic(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path((id, subtopic)): Path<(ChannelId, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    publish_to(&s, &caller, id, subtopic, &headers, body).await
}

async fn publish_to(
    s: &AppState,
    caller: &Caller,
    id: ChannelId,
    subtopic: String,
    headers: &HeaderMap,
    body: Body,
) -> Result<(StatusCode, Json<Published>), ApiError> {
    let content_type = match headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(ContentType::parse)
                .ok_or_else(unsupported_media_type)?,
        ),
    };
    let channel = open_channel(s, caller, id, MessageAccess::Publish).await?;
    // A body announced over the transport's limit is refused before a byte
    // of it is read: the client need not send it.
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if let Some(size) = announced.filter(|&n| n > message::MAX_PAYLOAD) {
        return Err(reject(
            Protocol::Http,
            &Rejection::TooLarge {
                size,
                limit: message::MAX_PAYLOAD,
            },
        ));
    }
    // The transport's own limit (MAX_BODY) bounds this read; the channel's,
    // possibly lower, is `accept`'s to enforce.
    let payload = axum::body::to_bytes(body, message::MAX_PAYLOAD)
        .await
        .map_err(|_| {
            reject(
                Protocol::Http,
                &Rejection::TooLarge {
                    size: message::MAX_PAYLOAD + 1,
                    limit: message::MAX_PAYLOAD,
                },
            )
        })?;
    let incoming = Incoming {
        subtopic: &subtopic,
        content_type,
        // Without a copy when the body arrived in one piece.
        payload: Vec::from(payload),
    };
    let published = publish_one(s, caller, &channel, Protocol::Http, incoming).await?;
    Ok((StatusCode::ACCEPTED, Json(published)))
}

fn unsupported_media_type() -> ApiError {
    ApiError::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "Content-Type must be application/senml+json, application/senml+cbor, application/json or application/octet-stream",
    )
}

/// Applies `channel`'s policy to a publish and, if it passes, stores it and
/// hands it to live subscribers; returns once it is durable.
pub(crate) async fn publish_one(
    s: &AppState,
    caller: &Caller,
    channel: &Channel,
    protocol: Protocol,
    incoming: Incoming<'_>,
) -> Result<Published, ApiError> {
    let now = Utc::now();
    let message = message::accept(
        channel,
        caller.principal.subject,
        protocol,
        incoming,
        now.timestamp_micros(),
    )
    .map_err(|r| reject(protocol, &r))?;
    let records = message.records.len();
    let id = message.id;
    let received_at = message.received_at;
    let seqs = s.bus.publish(vec![Arc::new(message)]).await?;
    metrics::counter!("moat_messages_published_total", "protocol" => protocol.as_str())
        .increment(1);
    Ok(Published {
        id,
        seq: seqs.first().copied().unwrap_or_default(),
        received_at: micros_rfc3339(received_at),
        records,
    })
}

/// Counts a refused publish and says why, in HTTP's terms.
pub(crate) fn reject(protocol: Protocol, r: &Rejection) -> ApiError {
    let (status, reason) = match r {
        Rejection::TooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
        Rejection::ContentType { .. } => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "content_type"),
        Rejection::Senml(_) => (StatusCode::UNPROCESSABLE_ENTITY, "senml"),
        Rejection::Json(_) => (StatusCode::UNPROCESSABLE_ENTITY, "json"),
        Rejection::Subtopic(_) => (StatusCode::UNPROCESSABLE_ENTITY, "subtopic"),
    };
    metrics::counter!("moat_messages_rejected_total", "protocol" => protocol.as_str(), "reason" => reason)
        .increment(1);
    ApiError::new(status, r.to_string())
}

/// The channel `id`, if the caller may publish to it or read it. A device
/// needs a connection with the right flag; users and API keys their role.
/// Refusals are counted and audited (`message.publish`,
/// `message.subscribe`); a channel of a tenant the caller cannot see is a
/// 404, as if it did not exist.
pub(crate) async fn open_channel(
    s: &AppState,
    caller: &Caller,
    id: ChannelId,
    access: MessageAccess,
) -> Result<Channel, ApiError> {
    let channel = s
        .store
        .channel(id)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))?;
    let path = s.tenant_path(channel.tenant_id).await?;
    let connection = match caller.principal.subject {
        Subject::Device(device) => s.store.connection(id, device).await?,
        _ => None,
    };
    let decision =
        authz::authorize_messages(&caller.principal, access, &path, id, connection.as_ref());
    if decision == Decision::Allow {
        return Ok(channel);
    }
    let action = match access {
        MessageAccess::Publish => "message.publish",
        MessageAccess::Subscribe => "message.subscribe",
    };
    metrics::counter!("moat_access_denied_total").increment(1);
    let record = caller
        .record(action, format!("channel:{id}"), Outcome::Denied)
        .detail(serde_json::json!({ "decision": format!("{decision:?}") }));
    if let Err(e) = s.store.append_audit(record).await {
        tracing::error!(error = %e, "could not audit a denial");
    }
    Err(match (decision, caller.principal.subject) {
        (Decision::NotFound, _) => ApiError::not_found("channel"),
        (_, Subject::Device(_)) => ApiError::forbidden(match access {
            MessageAccess::Publish => "this device has no publish connection to the channel",
            MessageAccess::Subscribe => "this device has no subscribe connection to the channel",
        }),
        _ => ApiError::denied(decision, "channel's messages"),
    })
}

/// Microseconds since the epoch as RFC 3339 with six fractional digits.
pub(crate) fn micros_rfc3339(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

/// A message as the API shows it: JSON payloads as JSON, others base64.
#[derive(Debug, Serialize, ToSchema)]
pub struct MessageView {
    pub seq: i64,
    pub id: MessageId,
    pub channel_id: ChannelId,
    /// Empty for the channel itself.
    pub subtopic: String,
    /// `device:<id>`, `user:<id>` or `apikey:<id>`.
    pub publisher: String,
    pub protocol: Protocol,
    pub content_type: ContentType,
    pub received_at: String,
    /// The payload, for JSON and SenML JSON.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub payload: Option<Box<serde_json::value::RawValue>>,
    /// The payload, base64, for every other content type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub payload_base64: Option<String>,
}

impl MessageView {
    pub fn new(seq: i64, m: &Message) -> Self {
        let json = matches!(m.content_type, ContentType::Json | ContentType::SenmlJson);
        // Stored JSON was validated on the way in; should it not parse, it
        // is shown as bytes rather than lost.
        let payload = json
            .then(|| {
                std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|t| serde_json::value::RawValue::from_string(t.to_owned()).ok())
            })
            .flatten();
        let payload_base64 = payload.is_none().then(|| {
            use base64::Engine;
            base64::engine::general_purpose::STANDARD.encode(&m.payload)
        });
        Self {
            seq,
            id: m.id,
            channel_id: m.channel_id,
            subtopic: m.subtopic.clone(),
            publisher: m.publisher.to_string(),
            protocol: m.protocol,
            content_type: m.content_type,
            received_at: micros_rfc3339(m.received_at),
            payload,
            payload_base64,
        }
    }
}
