//! Publishing into the platform: an MQTT PUBLISH on a channel topic becomes
//! a platform [`Message`] through `moat_core::message::accept` (the
//! channel's policy), is made durable through the bus, and only then is
//! routed to MQTT subscribers and acknowledged. Also the session timers
//! that publish: delayed wills and session expiry.

use std::sync::Arc;
use std::time::Duration;

use moat_core::authz::Principal;
use moat_core::message::{self, Incoming, Message, Protocol, Rejection};
use mqtt_protocol_core::mqtt::packet::Property;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;

use super::session::Live;
use super::{Broker, DecisionCache, PublishTarget, Routed, Session, Will};
use crate::platform_topics;

/// The MQTT 5 reason code for a payload the channel refused: 0x99 Payload
/// format invalid for content, 0x97 Quota exceeded for size, 0x90 for a
/// subtopic (PUBACK allows no 0x95).
pub(crate) fn rejection_code(r: &Rejection) -> (u8, &'static str) {
    match r {
        Rejection::TooLarge { .. } => (0x97, "too_large"),
        Rejection::ContentType { .. } => (0x99, "content_type"),
        Rejection::Senml(_) => (0x99, "senml"),
        Rejection::Json(_) => (0x99, "json"),
        Rejection::Subtopic(_) => (0x90, "subtopic"),
    }
}

/// The content type a PUBLISH declares (MQTT 5 Content Type), as the
/// platform knows it: `Ok(None)` when undeclared, `Err` for one it does not
/// take.
pub(crate) fn declared_content_type(
    props: &[Property],
) -> Result<Option<message::ContentType>, ()> {
    for p in props {
        if let Property::ContentType(c) = p {
            return message::ContentType::parse(c.val()).map(Some).ok_or(());
        }
    }
    Ok(None)
}

/// A channel message from an MQTT PUBLISH, or why the channel refuses it.
pub(crate) fn to_message(
    principal: &Principal,
    target: &PublishTarget,
    payload: &[u8],
    props: &[Property],
) -> Option<Result<Message, Rejection>> {
    let PublishTarget::Channel { channel, subtopic } = target else {
        return None;
    };
    let content_type = match declared_content_type(props) {
        Ok(c) => c,
        Err(()) => {
            return Some(Err(Rejection::ContentType {
                policy: channel.payload_policy.as_str(),
                content_type: "an unsupported content type",
            }));
        }
    };
    Some(message::accept(
        channel,
        principal.subject,
        Protocol::Mqtt,
        Incoming {
            subtopic,
            content_type,
            payload: payload.to_vec(),
        },
        chrono::Utc::now().timestamp_micros(),
    ))
}

/// The Message Expiry Interval of a PUBLISH, as a deadline.
/// Whether `props` hold a Response Topic that is no valid topic name
/// (wildcards, MQTT-3.3.2-14).
pub(crate) fn bad_response_topic(props: &[Property]) -> bool {
    props.iter().any(
        |p| matches!(p, Property::ResponseTopic(t) if crate::check_topic_name(t.val()).is_err()),
    )
}

pub(crate) fn expiry_of(props: &[Property]) -> Option<Instant> {
    props.iter().find_map(|p| match p {
        Property::MessageExpiryInterval(e) => {
            Some(Instant::now() + Duration::from_secs(u64::from(e.val())))
        }
        _ => None,
    })
}

/// The properties a PUBLISH forwards to subscribers (§3.3.2.3): all but
/// the topic alias, subscription identifiers and the expiry interval
/// (which is rewritten per delivery).
pub(crate) fn forwarded(props: &[Property]) -> Vec<Property> {
    props
        .iter()
        .filter(|p| {
            !matches!(
                p,
                Property::TopicAlias(_)
                    | Property::SubscriptionIdentifier(_)
                    | Property::MessageExpiryInterval(_)
            )
        })
        .cloned()
        .collect()
}

/// The topic subscribers see: channel topics in their canonical form
/// (the channel id hyphenated, lower case), which is almost always the form
/// the client used; that one is reused as is.
pub(crate) fn routed_topic(target: &PublishTarget, topic: &str) -> Arc<str> {
    match target {
        PublishTarget::Channel { channel, subtopic } => {
            let id = topic.get("channels/".len()..).and_then(|t| t.get(..36));
            let canonical = id.is_some_and(|id| {
                !id.bytes().any(|b| b.is_ascii_uppercase())
                    && topic.as_bytes().get(45) == Some(&b'/')
            });
            if canonical {
                topic.into()
            } else {
                platform_topics::channel_topic(channel.id, subtopic).into()
            }
        }
        PublishTarget::Local => topic.into(),
    }
}

pub(crate) fn session_live(takeover: Arc<Notify>, done: oneshot::Receiver<()>) -> Live {
    Live { takeover, done }
}

impl Broker {
    /// Publishes a will: authorized again now (a device revoked since its
    /// CONNECT publishes nothing), stored if on a channel, then routed.
    pub(crate) async fn publish_will(&self, principal: Option<Principal>, will: Will) {
        let mut cache = DecisionCache::default();
        let target = match self
            .authorize_publish(principal.as_ref(), &will.topic, &mut cache)
            .await
        {
            Ok(t) => t,
            Err(r) => {
                tracing::debug!(reason = r.reason, "will not published");
                return;
            }
        };
        let retain_clear = will.retain && will.payload.is_empty();
        if let (Some(p), false) = (&principal, retain_clear) {
            match to_message(p, &target, will.payload.as_slice(), &will.props) {
                None => {}
                Some(Ok(m)) => {
                    if let Err(e) = self.bus.publish(vec![Arc::new(m)]).await {
                        tracing::error!(error = %e, "could not store a will");
                        return;
                    }
                }
                Some(Err(r)) => {
                    let (_, label) = rejection_code(&r);
                    metrics::counter!("moat_messages_rejected_total", "protocol" => "mqtt", "reason" => label)
                        .increment(1);
                    return;
                }
            }
        }
        metrics::counter!("moat_mqtt_wills_published_total").increment(1);
        self.route(Arc::new(Routed {
            topic: routed_topic(&target, &will.topic),
            payload: will.payload,
            qos: will.qos,
            retain: will.retain,
            expires_at: expiry_of(&will.props),
            props: forwarded(&will.props),
            origin: None,
        }));
    }

    /// Publishes `will` after `delay` unless the session resumes first;
    /// the handle cancels it.
    pub(crate) fn delay_will(
        self: &Arc<Self>,
        session: Arc<Session>,
        will: Will,
        delay: Duration,
    ) -> tokio::task::AbortHandle {
        self.will_pending(&session, &will, delay);
        self.delayed_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(session.id, will);
        let broker = Arc::downgrade(self);
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let Some(b) = broker.upgrade() else { return };
            if let Some(will) = b.take_delayed_will(session.id) {
                session.lock().pending_will = None;
                b.publish_will(session.principal.clone(), will).await;
                b.will_gone(&session);
            }
        })
        .abort_handle()
    }

    pub(crate) fn take_delayed_will(&self, session: u64) -> Option<Will> {
        self.delayed_wills
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&session)
    }

    /// Ends `session` after `expiry` unless a connection resumed it
    /// (which bumps its generation) in the meantime.
    pub(crate) fn expire_later(
        self: &Arc<Self>,
        session: &Arc<Session>,
        generation: u64,
        expiry: Duration,
    ) {
        let broker = Arc::downgrade(self);
        let session = Arc::clone(session);
        tokio::spawn(async move {
            tokio::time::sleep(expiry).await;
            let Some(b) = broker.upgrade() else { return };
            let _claim = session.claim.lock().await;
            let pending = {
                let st = session.lock();
                if st.generation != generation || session.is_online() {
                    return;
                }
                st.pending_will
                    .as_ref()
                    .map(tokio::task::AbortHandle::abort)
                    .is_some()
            };
            if pending {
                if let Some(will) = b.take_delayed_will(session.id) {
                    b.publish_will(session.principal.clone(), will).await;
                }
            }
            metrics::counter!("moat_mqtt_sessions_expired_total").increment(1);
            b.remove(&session);
        });
    }
}
