//! PUBLISHes from the client: the guard's per-packet rules, the platform's
//! access rules and channel policy, routing (QoS 0 and 1 at once, QoS 2
//! once stored), one durable write for all the messages of a read, then
//! the acknowledgements in order.
//!
//! A refused publish gets PUBACK or PUBREC with a reason code on MQTT 5;
//! MQTT 3.1.1 has no way to say no, so the connection is closed
//! (documented in docs/mqtt.md).

use std::sync::Arc;

use moat_core::message::Message;
use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::ArcPayload;
use mqtt_protocol_core::mqtt::packet::{Property, ReasonString, v3_1_1, v5_0};
use mqtt_protocol_core::mqtt::result_code::{PubackReasonCode, PubrecReasonCode};
use tokio::io::AsyncWrite;

use super::{Conn, Ending};
use crate::broker::{self, PublishTarget, Routed};

/// A client's PUBLISH, either version.
pub(super) struct Inbound {
    packet_id: Option<u16>,
    qos: u8,
    retain: bool,
    topic: String,
    payload: ArcPayload,
    props: Vec<Property>,
}

impl Inbound {
    pub(super) fn v3(p: v3_1_1::Publish) -> Self {
        Self {
            packet_id: p.packet_id(),
            qos: p.qos() as u8,
            retain: p.retain(),
            topic: p.topic_name().to_owned(),
            payload: p.payload().clone(),
            props: Vec::new(),
        }
    }

    pub(super) fn v5(p: v5_0::Publish) -> Self {
        Self {
            packet_id: p.packet_id(),
            qos: p.qos() as u8,
            retain: p.retain(),
            topic: p.topic_name().to_owned(),
            payload: p.payload().clone(),
            props: p.props.clone(),
        }
    }
}

/// What became of one PUBLISH before it is acknowledged.
enum Outcome {
    Accepted(PublishTarget),
    Refused { code: u8, reason: String },
}

impl<W: AsyncWrite + Unpin + Send> Conn<W> {
    /// Checks, stores, routes and acknowledges the PUBLISHes of one read.
    pub(super) async fn publish_batch(&mut self, batch: Vec<Inbound>) {
        let Some(open) = &self.open else {
            return self.violation(0x82, "PUBLISH before CONNECT");
        };
        let principal = open.principal.clone();
        let v5 = open.version == mqtt::Version::V5_0;
        let session_id = open.session.id;
        let mut outcomes = Vec::with_capacity(batch.len());
        let mut messages: Vec<Arc<Message>> = Vec::new();
        // Which outcome each stored message belongs to.
        let mut stored_for = Vec::new();
        for p in &batch {
            if p.qos > 0 && p.packet_id == Some(0) {
                return self.violation(0x81, "packet identifier 0");
            }
            if p.topic.is_empty() {
                return self.violation(0x82, "empty topic name");
            }
            if p.props
                .iter()
                .any(|x| matches!(x, Property::SubscriptionIdentifier(_)))
            {
                return self.violation(0x82, "a client PUBLISH carries a Subscription Identifier");
            }
            if crate::check_topic_name(&p.topic).is_err() {
                return self.violation(0x90, "invalid topic name");
            }
            if broker::bad_response_topic(&p.props) {
                // MQTT-3.3.2-14.
                return self.violation(0x82, "a Response Topic may not contain wildcards");
            }
            self.tokens -= 1.0;
            // MQTT-3.3.2-4 lets the receiver check a payload that claims to
            // be UTF-8; Moat does (0x99).
            let claims_utf8 = p
                .props
                .iter()
                .any(|x| matches!(x, Property::PayloadFormatIndicator(f) if f.val() == 1));
            if claims_utf8 && std::str::from_utf8(p.payload.as_slice()).is_err() {
                outcomes.push(Outcome::Refused {
                    code: 0x99,
                    reason: "the payload format indicator says UTF-8; the payload is not".into(),
                });
                continue;
            }
            let target = self
                .broker
                .authorize_publish(principal.as_ref(), &p.topic, &mut self.decisions)
                .await;
            let outcome = match target {
                Err(r) => Outcome::Refused {
                    code: r.code,
                    reason: r.reason.to_owned(),
                },
                // An empty retained message only clears the topic: nothing
                // to store.
                Ok(t) if p.retain && p.payload.is_empty() => Outcome::Accepted(t),
                Ok(t) => match principal
                    .as_ref()
                    .and_then(|pr| broker::to_message(pr, &t, p.payload.as_slice(), &p.props))
                {
                    None => Outcome::Accepted(t),
                    Some(Ok(m)) => {
                        stored_for.push(outcomes.len());
                        messages.push(Arc::new(m));
                        Outcome::Accepted(t)
                    }
                    Some(Err(r)) => {
                        let (code, label) = broker::rejection_code(&r);
                        metrics::counter!("moat_messages_rejected_total", "protocol" => "mqtt", "reason" => label)
                            .increment(1);
                        Outcome::Refused {
                            code,
                            reason: r.to_string(),
                        }
                    }
                },
            };
            outcomes.push(outcome);
        }
        // QoS 0 and 1 go to subscribers now, before the durable write:
        // neither promises more than at most / at least once, and a
        // subscriber need not wait for the disk. QoS 2 is routed once
        // stored, so that a failed write cannot deliver what the publisher
        // will send again. Acknowledgements always wait for the write.
        let mut routed = vec![false; batch.len()];
        for (i, (p, outcome)) in batch.iter().zip(&outcomes).enumerate() {
            if let (Outcome::Accepted(target), 0 | 1) = (outcome, p.qos) {
                self.route(p, target, session_id);
                routed[i] = true;
            }
        }
        if !messages.is_empty() {
            let count = messages.len() as u64;
            match self.broker.bus.publish(messages).await {
                Ok(_) => {
                    metrics::counter!("moat_messages_published_total", "protocol" => "mqtt")
                        .increment(count);
                }
                Err(e) => {
                    tracing::error!(error = %e, "could not store MQTT messages");
                    for i in stored_for {
                        outcomes[i] = Outcome::Refused {
                            code: 0x80,
                            reason: "the message could not be stored".into(),
                        };
                    }
                }
            }
        }
        for ((p, outcome), routed) in batch.iter().zip(outcomes).zip(routed) {
            match outcome {
                Outcome::Accepted(target) => {
                    if !routed {
                        self.route(p, &target, session_id);
                    }
                    self.acknowledge(p.qos, p.packet_id, 0, None);
                }
                Outcome::Refused { code, reason } => {
                    metrics::counter!("moat_mqtt_publishes_refused_total").increment(1);
                    if !v5 {
                        // 3.1.1 cannot refuse a PUBLISH: close.
                        tracing::debug!(
                            code,
                            reason,
                            "publish refused; closing the 3.1.1 connection"
                        );
                        self.ending.get_or_insert(Ending::Closed);
                        return;
                    }
                    tracing::debug!(code, reason, "publish refused");
                    self.acknowledge(p.qos, p.packet_id, code, Some(reason));
                }
            }
        }
    }

    /// Hands an accepted PUBLISH to the broker's router.
    fn route(&self, p: &Inbound, target: &PublishTarget, session_id: u64) {
        self.broker.route(Arc::new(Routed {
            topic: broker::routed_topic(target, &p.topic),
            expires_at: broker::expiry_of(&p.props),
            props: broker::forwarded(&p.props),
            payload: p.payload.clone(),
            qos: p.qos,
            retain: p.retain,
            origin: Some(session_id),
        }));
    }

    /// PUBACK (QoS 1) or PUBREC (QoS 2) with `code`; nothing for QoS 0.
    fn acknowledge(&mut self, qos: u8, packet_id: Option<u16>, code: u8, reason: Option<String>) {
        let (Some(open), Some(id)) = (&self.open, packet_id) else {
            return;
        };
        let props = reason
            .filter(|_| open.problem_info)
            .and_then(|r| ReasonString::new(r).ok())
            .map(|r| vec![Property::ReasonString(r)]);
        let events = match (open.version, qos) {
            (_, 0) => return,
            (mqtt::Version::V5_0, 1) => {
                let mut b = v5_0::Puback::builder().packet_id(id);
                if code != 0 {
                    b = b.reason_code(
                        PubackReasonCode::try_from(code)
                            .unwrap_or(PubackReasonCode::UnspecifiedError),
                    );
                }
                if let Some(p) = props {
                    b = b.props(p);
                }
                b.build().map(|p| self.mqtt.checked_send(p))
            }
            (mqtt::Version::V5_0, _) => {
                let mut b = v5_0::Pubrec::builder().packet_id(id);
                if code != 0 {
                    b = b.reason_code(
                        PubrecReasonCode::try_from(code)
                            .unwrap_or(PubrecReasonCode::UnspecifiedError),
                    );
                }
                if let Some(p) = props {
                    b = b.props(p);
                }
                b.build().map(|p| self.mqtt.checked_send(p))
            }
            (_, 1) => v3_1_1::Puback::builder()
                .packet_id(id)
                .build()
                .map(|p| self.mqtt.checked_send(p)),
            (_, _) => v3_1_1::Pubrec::builder()
                .packet_id(id)
                .build()
                .map(|p| self.mqtt.checked_send(p)),
        };
        self.write_sends(events.unwrap_or_default());
    }

    /// Writes the packets among `events` (acknowledgements raise no other
    /// events worth acting on).
    pub(super) fn write_sends(&mut self, events: Vec<mqtt::connection::Event>) {
        for e in events {
            match e {
                mqtt::connection::Event::RequestSendPacket { packet, .. } => {
                    self.write_packet(&packet)
                }
                mqtt::connection::Event::NotifyPacketIdReleased(id) => {
                    self.inflight.remove(&id);
                }
                mqtt::connection::Event::NotifyError(e) => self.engine_error(e),
                mqtt::connection::Event::RequestClose => {
                    self.ending.get_or_insert(Ending::Closed);
                }
                _ => {}
            }
        }
    }
}
