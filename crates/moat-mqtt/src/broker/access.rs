//! The platform's rules on MQTT topics (issue 5, "Platform rules"): who may
//! publish where and subscribe to what. Every channel decision goes through
//! `moat_core::authz::authorize_messages`, as HTTP's does; the broker only
//! translates topics and answers in MQTT's terms. Denials are counted and
//! audited (`mqtt.publish`, `mqtt.subscribe`).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use moat_core::audit::{AuditRecord, Outcome};
use moat_core::authz::{Decision, MessageAccess, Principal, Subject};
use moat_core::store::ConnectionsOf;
use moat_core::{Channel, ChannelId, DeviceId};
use tokio::time::Instant;

use super::{Broker, Session};
use crate::platform_topics::{self, FilterScope, TopicTarget};

/// How long a connection trusts a channel decision it made. Short, so that
/// a connection removed or a channel deleted stops a publishing device
/// within a second; long enough that a device publishing many times a
/// second does not read the store for each message.
const DECISION_TTL: Duration = Duration::from_secs(1);

/// Where an authorized PUBLISH goes.
#[derive(Debug, Clone)]
pub(crate) enum PublishTarget {
    /// Through the platform's pipeline into the channel (stored, bridged).
    Channel {
        channel: Arc<Channel>,
        subtopic: String,
    },
    /// Between MQTT clients only: a device's maintenance topic, or an open
    /// topic in development mode.
    Local,
}

/// Why a publish or subscribe was refused: the MQTT 5 reason code and a
/// reason string for the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Refused {
    pub code: u8,
    pub reason: &'static str,
}

const NOT_AUTHORIZED: u8 = 0x87;
const TOPIC_NAME_INVALID: u8 = 0x90;
const UNSPECIFIED: u8 = 0x80;

fn not_authorized(reason: &'static str) -> Refused {
    Refused {
        code: NOT_AUTHORIZED,
        reason,
    }
}

/// A connection's recent channel decisions for publishing.
#[derive(Debug, Default)]
pub(crate) struct DecisionCache {
    publish: HashMap<ChannelId, (Arc<Channel>, Instant)>,
}

impl Broker {
    /// Whether `principal` (`None`: anonymous, development mode) may publish
    /// to `topic`, and where the message then goes.
    pub(crate) async fn authorize_publish(
        &self,
        principal: Option<&Principal>,
        topic: &str,
        cache: &mut DecisionCache,
    ) -> Result<PublishTarget, Refused> {
        let Some(principal) = principal else {
            return Ok(PublishTarget::Local);
        };
        match platform_topics::topic_target(topic) {
            TopicTarget::Channel { channel, subtopic } => {
                if moat_core::message::check_subtopic(subtopic).is_err() {
                    return Err(Refused {
                        code: TOPIC_NAME_INVALID,
                        reason: "invalid subtopic",
                    });
                }
                let now = Instant::now();
                if let Some((c, at)) = cache.publish.get(&channel) {
                    if now.duration_since(*at) < DECISION_TTL {
                        return Ok(PublishTarget::Channel {
                            channel: Arc::clone(c),
                            subtopic: subtopic.to_owned(),
                        });
                    }
                }
                let c = Arc::new(
                    self.channel_access(principal, channel, MessageAccess::Publish)
                        .await?,
                );
                if cache.publish.len() > 1024 {
                    cache.publish.clear();
                }
                cache.publish.insert(channel, (Arc::clone(&c), now));
                Ok(PublishTarget::Channel {
                    channel: c,
                    subtopic: subtopic.to_owned(),
                })
            }
            TopicTarget::Device { device, rest } => {
                if principal.subject == Subject::Device(device)
                    && platform_topics::device_may_publish(rest)
                {
                    Ok(PublishTarget::Local)
                } else {
                    self.deny(principal, "mqtt.publish", topic).await;
                    Err(not_authorized(
                        "device topics are reserved to the platform and the device",
                    ))
                }
            }
            TopicTarget::Other if self.config.open_topics => Ok(PublishTarget::Local),
            TopicTarget::Other => {
                self.deny(principal, "mqtt.publish", topic).await;
                Err(not_authorized(
                    "devices publish to channels/{channel_id}/messages[/subtopic]",
                ))
            }
        }
    }

    /// Who `device` acts as; `None` if its tenant is gone.
    pub(crate) async fn principal_of(
        &self,
        device: &moat_core::Device,
    ) -> Result<Option<Principal>, moat_core::store::StoreError> {
        Ok(self
            .store
            .tenant(device.tenant_id)
            .await?
            .map(|t| Principal {
                subject: Subject::Device(device.id),
                tenant: t.path,
                role: None,
            }))
    }

    /// Whether `session` may subscribe to a filter reaching `scope`; a
    /// subscription that reaches channels records which ones the session
    /// may read.
    pub(crate) async fn authorize_subscribe(
        &self,
        session: &Session,
        filter: &str,
        scope: &FilterScope,
    ) -> Result<(), Refused> {
        let Some(principal) = &session.principal else {
            return Ok(());
        };
        match scope {
            FilterScope::Channel { channel, .. } => {
                self.channel_access(principal, *channel, MessageAccess::Subscribe)
                    .await?;
                session.add_readable([*channel]);
                Ok(())
            }
            FilterScope::AnyChannel => {
                let Subject::Device(device) = principal.subject else {
                    return Err(not_authorized("only devices subscribe over MQTT"));
                };
                session.add_readable(self.readable_channels(device).await?);
                Ok(())
            }
            FilterScope::Device { device, rest } => {
                if principal.subject == Subject::Device(*device)
                    && platform_topics::device_may_subscribe(rest)
                {
                    Ok(())
                } else {
                    self.deny(principal, "mqtt.subscribe", filter).await;
                    Err(not_authorized("another device's topics"))
                }
            }
            // Reaches only the device's own maintenance topics, which
            // `Session::may_receive` enforces per message.
            FilterScope::AnyDevice => Ok(()),
            FilterScope::Other if self.config.open_topics => Ok(()),
            FilterScope::Other => {
                self.deny(principal, "mqtt.subscribe", filter).await;
                Err(not_authorized(
                    "devices subscribe to channels/{channel_id}/messages[/filter]",
                ))
            }
        }
    }

    /// The channels `device` has a subscribe connection to.
    pub(crate) async fn readable_channels(
        &self,
        device: DeviceId,
    ) -> Result<Vec<ChannelId>, Refused> {
        let all = moat_core::store::all_connections(&*self.store, ConnectionsOf::Device(device))
            .await
            .map_err(|e| {
                tracing::error!(error = %e, "could not read a device's connections");
                Refused {
                    code: UNSPECIFIED,
                    reason: "the store is unavailable",
                }
            })?;
        Ok(all
            .iter()
            .filter(|c| c.subscribe)
            .map(|c| c.channel_id)
            .collect())
    }

    /// The device's connections changed: its sessions read nothing from
    /// any channel until they know their new rights (fail closed), then
    /// read the channels it now has a subscribe connection to. Of
    /// overlapping changes, the last one's answer stands.
    pub(crate) fn rights_changed(self: &Arc<Self>, device: DeviceId) {
        let sessions: Vec<_> = self
            .sessions_of(device)
            .into_iter()
            .map(|s| {
                let change = s.rights_changing();
                s.set_readable(change, HashSet::new());
                (s, change)
            })
            .collect();
        if sessions.is_empty() {
            return;
        }
        let broker = Arc::clone(self);
        tokio::spawn(async move {
            match broker.readable_channels(device).await {
                Ok(channels) => {
                    let channels: HashSet<ChannelId> = channels.into_iter().collect();
                    for (s, change) in &sessions {
                        s.set_readable(*change, channels.clone());
                    }
                }
                // Left empty: the next SUBSCRIBE or change tries again.
                Err(r) => {
                    tracing::warn!(reason = r.reason, %device, "could not refresh a device's rights")
                }
            }
        });
    }

    /// The channel `id`, if `principal` may publish to it or read it.
    async fn channel_access(
        &self,
        principal: &Principal,
        id: ChannelId,
        access: MessageAccess,
    ) -> Result<Channel, Refused> {
        let unavailable = |e: moat_core::store::StoreError| {
            tracing::error!(error = %e, "could not read a channel decision");
            Refused {
                code: UNSPECIFIED,
                reason: "the store is unavailable",
            }
        };
        let (channel, decision) =
            moat_core::access::channel_access(&*self.store, principal, id, access)
                .await
                .map_err(unavailable)?;
        match (decision, channel) {
            (Decision::Allow, Some(c)) => Ok(c),
            _ => {
                let action = match access {
                    MessageAccess::Publish => "mqtt.publish",
                    MessageAccess::Subscribe => "mqtt.subscribe",
                };
                self.deny(principal, action, &format!("channel:{id}")).await;
                Err(not_authorized(match access {
                    MessageAccess::Publish => "no publish connection to this channel",
                    MessageAccess::Subscribe => "no subscribe connection to this channel",
                }))
            }
        }
    }

    /// Counts and audits a refused publish or subscribe.
    async fn deny(&self, principal: &Principal, action: &str, target: &str) {
        metrics::counter!("moat_access_denied_total").increment(1);
        metrics::counter!("moat_mqtt_denied_total", "action" => action.to_owned()).increment(1);
        let record = AuditRecord::new(
            principal.subject.to_string(),
            action,
            target,
            Outcome::Denied,
        )
        .tenant(principal.tenant_id());
        if let Err(e) = self.store.append_audit(record).await {
            tracing::error!(error = %e, "could not audit a denial");
        }
    }
}
