//! The resources a device sees: `/channels/{id}/messages[/{subtopic…}]`
//! (POST publishes, GET with Observe subscribes) and `/.well-known/core`
//! (RFC 6690: what this device may use). Decisions are the platform's
//! (`moat_core::access`); refusals are counted and audited.

use std::sync::Arc;

use coap_lite::{CoapOption, ResponseType};
use moat_core::access;
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::authz::{Decision, MessageAccess, Principal};
use moat_core::message::{self, ContentType, Incoming, Protocol, Rejection};
use moat_core::page::ListQuery;
use moat_core::store::ConnectionsOf;
use moat_core::{Channel, ChannelId};

use crate::Coap;
use crate::message::Response;

/// CoAP's Content-Format for link format (RFC 6690).
const LINK_FORMAT: u32 = 40;
/// Channels `/.well-known/core` lists at most.
const MAX_LINKS: u32 = 100;

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Target {
    Messages {
        channel: ChannelId,
        subtopic: String,
    },
    Core,
    Unknown,
}

pub(crate) fn route(path: &[String]) -> Target {
    match path {
        [w, c] if w == ".well-known" && c == "core" => Target::Core,
        [c, id, m, sub @ ..] if c == "channels" && m == "messages" => {
            match uuid::Uuid::try_parse(id) {
                Ok(id) => Target::Messages {
                    channel: ChannelId(id),
                    subtopic: sub.join("/"),
                },
                Err(_) => Target::Unknown,
            }
        }
        _ => Target::Unknown,
    }
}

/// The channel, if `principal` may use it for `access`; otherwise the
/// response to send (4.04 for a channel it may not know of, 4.03 for one
/// it has no right on, 5.03 when the store cannot say).
pub(crate) async fn channel(
    coap: &Coap,
    principal: &Principal,
    id: ChannelId,
    access: MessageAccess,
) -> Result<Channel, Response> {
    match access::channel_access(&*coap.store, principal, id, access).await {
        Ok((Some(c), Decision::Allow)) => Ok(c),
        Ok((_, decision)) => {
            let action = match access {
                MessageAccess::Publish => "coap.publish",
                MessageAccess::Subscribe => "coap.observe",
            };
            deny(coap, principal, action, id).await;
            Err(match decision {
                Decision::NotFound => Response::error(ResponseType::NotFound, "no such channel"),
                _ => Response::error(
                    ResponseType::Forbidden,
                    match access {
                        MessageAccess::Publish => "no publish connection to this channel",
                        MessageAccess::Subscribe => "no subscribe connection to this channel",
                    },
                ),
            })
        }
        Err(e) => {
            tracing::error!(error = %e, "could not read a channel decision");
            Err(unavailable())
        }
    }
}

pub(crate) fn unavailable() -> Response {
    Response::error(ResponseType::ServiceUnavailable, "the store is unavailable")
        .option_uint(CoapOption::MaxAge, 5)
}

async fn deny(coap: &Coap, principal: &Principal, action: &'static str, channel: ChannelId) {
    metrics::counter!("moat_access_denied_total").increment(1);
    metrics::counter!("moat_coap_denied_total", "action" => action).increment(1);
    let record = AuditRecord::new(
        principal.subject.to_string(),
        action,
        format!("channel:{channel}"),
        Outcome::Denied,
    )
    .tenant(principal.tenant_id());
    if let Err(e) = coap.store.append_audit(record).await {
        tracing::error!(error = %e, "could not audit a denial");
    }
}

/// Publishes `body` to `channel` (already authorized) once durable: 2.04,
/// or why not.
pub(crate) async fn publish(
    coap: &Coap,
    principal: &Principal,
    channel: &Channel,
    subtopic: &str,
    content_format: Option<u16>,
    body: Vec<u8>,
) -> Response {
    let content_type = match content_format {
        None => None,
        Some(n) => match ContentType::from_coap_format(n) {
            Some(c) => Some(c),
            None => {
                return rejected(
                    "content_format",
                    Response::error(
                        ResponseType::UnsupportedContentFormat,
                        "Content-Format 110, 112, 50 or 42",
                    ),
                );
            }
        },
    };
    let accepted = message::accept(
        channel,
        principal.subject,
        Protocol::Coap,
        Incoming {
            subtopic,
            content_type,
            payload: body,
        },
        chrono::Utc::now().timestamp_micros(),
    );
    let m = match accepted {
        Ok(m) => m,
        Err(r) => {
            let why = r.to_string();
            return match r {
                Rejection::TooLarge { limit, .. } => rejected(
                    "too_large",
                    Response::error(ResponseType::RequestEntityTooLarge, &why)
                        .option_uint(CoapOption::Size1, u32::try_from(limit).unwrap_or(u32::MAX)),
                ),
                Rejection::ContentType { .. } => rejected(
                    "content_type",
                    Response::error(ResponseType::UnsupportedContentFormat, &why),
                ),
                Rejection::Senml(_) | Rejection::Json(_) => {
                    rejected("payload", Response::error(ResponseType::BadRequest, &why))
                }
                Rejection::Subtopic(_) => {
                    rejected("subtopic", Response::error(ResponseType::BadRequest, &why))
                }
            };
        }
    };
    match coap.bus.publish(vec![Arc::new(m)]).await {
        Ok(_) => {
            metrics::counter!("moat_coap_published_total").increment(1);
            Response::new(ResponseType::Changed)
        }
        Err(e) => {
            tracing::error!(error = %e, "could not store a CoAP message");
            unavailable()
        }
    }
}

fn rejected(reason: &'static str, r: Response) -> Response {
    metrics::counter!("moat_coap_rejected_total", "reason" => reason).increment(1);
    r
}

/// `/.well-known/core` for `principal`: a link to the messages of every
/// channel it has a connection to, observable where it may subscribe.
pub(crate) async fn core(coap: &Coap, principal: Option<&Principal>) -> Response {
    let mut links = Vec::new();
    if let Some(moat_core::authz::Subject::Device(device)) = principal.map(|p| p.subject) {
        let q = ListQuery {
            limit: MAX_LINKS,
            after: None,
            name: None,
            tag: None,
        };
        match coap
            .store
            .connections(ConnectionsOf::Device(device), &q)
            .await
        {
            Ok(page) => {
                for c in page.items.iter().filter(|c| c.publish || c.subscribe) {
                    let mut link = format!(
                        "</channels/{}/messages>;rt=\"moat.messages\";ct=\"110 112 50 42\"",
                        c.channel_id
                    );
                    if c.subscribe {
                        link.push_str(";obs");
                    }
                    links.push(link);
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "could not list a device's connections");
                return unavailable();
            }
        }
    }
    Response::new(ResponseType::Content)
        .option_uint(CoapOption::ContentFormat, LINK_FORMAT)
        .payload(links.join(",").into_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: &str) -> Vec<String> {
        p.split('/').map(str::to_owned).collect()
    }

    #[test]
    fn routes() {
        let id = uuid::Uuid::now_v7();
        assert_eq!(route(&path(".well-known/core")), Target::Core);
        assert_eq!(
            route(&path(&format!("channels/{id}/messages"))),
            Target::Messages {
                channel: ChannelId(id),
                subtopic: String::new()
            }
        );
        assert_eq!(
            route(&path(&format!("channels/{}/messages/a/b", id.simple()))),
            Target::Messages {
                channel: ChannelId(id),
                subtopic: "a/b".into()
            }
        );
        assert_eq!(route(&path("channels/nope/messages")), Target::Unknown);
        assert_eq!(route(&path("channels")), Target::Unknown);
        assert_eq!(route(&[]), Target::Unknown);
    }
}
