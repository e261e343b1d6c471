//! Toward the client: SUBSCRIBE and UNSUBSCRIBE (with retained messages),
//! deliveries from the session's queue within the client's window, and
//! the QoS 2 handshake packets.

use std::sync::Arc;

use mqtt_protocol_core::mqtt;
use mqtt_protocol_core::mqtt::packet::{SubOpts, v3_1_1, v5_0};
use mqtt_protocol_core::mqtt::result_code::{
    PubrelReasonCode, SubackReasonCode, SubackReturnCode, UnsubackReasonCode,
};
use tokio::io::AsyncWrite;
use tokio::time::Instant;

use super::Conn;
use crate::broker::{Delivery, SubOptions, qos_of};
use crate::platform_topics;
use crate::trie::Subscribed;

impl<W: AsyncWrite + Unpin + Send> Conn<W> {
    pub(super) async fn on_subscribe(
        &mut self,
        packet_id: u16,
        entries: Vec<(String, SubOpts)>,
        id: Option<u32>,
    ) {
        let Some(open) = &self.open else { return };
        if packet_id == 0 {
            return self.violation(0x81, "packet identifier 0");
        }
        let session = Arc::clone(&open.session);
        let v5 = open.version == mqtt::Version::V5_0;
        let mut codes = Vec::with_capacity(entries.len());
        let mut retained = Vec::new();
        for (filter, opts) in entries {
            let parsed = match crate::check_filter(&filter) {
                Ok(p) => p,
                Err(e) => {
                    tracing::debug!(filter, error = %e, "invalid topic filter");
                    codes.push(0x8F);
                    continue;
                }
            };
            if parsed.share_name.is_some() && opts.nl() {
                // MQTT-3.8.3-4.
                return self.violation(0x82, "no local on a shared subscription");
            }
            let scope = platform_topics::filter_scope(parsed.filter);
            if let Err(r) = self
                .broker
                .authorize_subscribe(&session, &filter, &scope)
                .await
            {
                tracing::debug!(filter, reason = r.reason, "subscription refused");
                codes.push(r.code);
                continue;
            }
            let qos = (opts.qos() as u8).min(2);
            let sub = SubOptions {
                qos,
                no_local: opts.nl(),
                retain_as_published: opts.rap(),
                retain_handling: opts.rh() as u8,
                id,
            };
            let added = self
                .broker
                .trie
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .subscribe(session.id, &filter, sub);
            match added {
                Ok(how) => {
                    metrics::counter!("moat_mqtt_subscriptions_total").increment(1);
                    self.broker.session_subscribed(&session, &filter, &sub);
                    codes.push(qos);
                    let send_retained = parsed.share_name.is_none()
                        && match sub.retain_handling {
                            0 => true,
                            1 => how == Subscribed::Added,
                            _ => false,
                        };
                    if send_retained {
                        retained.push((parsed.filter.to_owned(), sub));
                    }
                }
                Err(_) => codes.push(0x8F),
            }
        }
        let events = if v5 {
            let codes = codes
                .iter()
                .map(|c| {
                    SubackReasonCode::try_from(*c).unwrap_or(SubackReasonCode::UnspecifiedError)
                })
                .collect();
            v5_0::Suback::builder()
                .packet_id(packet_id)
                .reason_codes(codes)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        } else {
            let codes = codes
                .iter()
                .map(|c| match c {
                    0 => SubackReturnCode::SuccessMaximumQos0,
                    1 => SubackReturnCode::SuccessMaximumQos1,
                    2 => SubackReturnCode::SuccessMaximumQos2,
                    _ => SubackReturnCode::Failure,
                })
                .collect();
            v3_1_1::Suback::builder()
                .packet_id(packet_id)
                .return_codes(codes)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        };
        self.write_sends(events.unwrap_or_default());
        // Retained messages follow the SUBACK through the session's queue.
        let open_topics = self.broker.config.open_topics;
        for (filter, sub) in retained {
            for msg in self.broker.retained.matching(&filter) {
                let target = platform_topics::topic_target(&msg.topic);
                if !session.may_receive(&target, open_topics) {
                    continue;
                }
                session.offer(Delivery {
                    qos: sub.qos.min(msg.qos),
                    retain: true,
                    subscription_ids: sub.id.into_iter().collect(),
                    msg,
                });
            }
        }
    }

    pub(super) fn on_unsubscribe(&mut self, packet_id: u16, filters: Vec<String>) {
        let Some(open) = &self.open else { return };
        if packet_id == 0 {
            return self.violation(0x81, "packet identifier 0");
        }
        let session = Arc::clone(&open.session);
        let v5 = open.version == mqtt::Version::V5_0;
        let mut codes = Vec::with_capacity(filters.len());
        for f in &filters {
            let removed = self
                .broker
                .trie
                .write()
                .unwrap_or_else(|p| p.into_inner())
                .unsubscribe(session.id, f);
            codes.push(if removed {
                self.broker.session_unsubscribed(&session, f);
                UnsubackReasonCode::Success
            } else {
                UnsubackReasonCode::NoSubscriptionExisted
            });
        }
        let events = if v5 {
            v5_0::Unsuback::builder()
                .packet_id(packet_id)
                .reason_codes(codes)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        } else {
            v3_1_1::Unsuback::builder()
                .packet_id(packet_id)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        };
        self.write_sends(events.unwrap_or_default());
    }

    pub(super) fn send_pubcomp(&mut self, packet_id: u16) {
        let Some(open) = &self.open else { return };
        let events = if open.version == mqtt::Version::V5_0 {
            v5_0::Pubcomp::builder()
                .packet_id(packet_id)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        } else {
            v3_1_1::Pubcomp::builder()
                .packet_id(packet_id)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        };
        self.write_sends(events.unwrap_or_default());
    }

    /// Answers the client's PUBREC for one of our QoS 2 deliveries; a
    /// PUBREC with an error code ends that flow (the engine releases it).
    pub(super) fn send_pubrel(&mut self, packet_id: u16, ok: bool) {
        let Some(open) = &self.open else { return };
        if !ok {
            return;
        }
        let events = if open.version == mqtt::Version::V5_0 {
            v5_0::Pubrel::builder()
                .packet_id(packet_id)
                .reason_code(PubrelReasonCode::Success)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        } else {
            v3_1_1::Pubrel::builder()
                .packet_id(packet_id)
                .build()
                .map(|p| self.mqtt.checked_send(p))
        };
        self.write_sends(events.unwrap_or_default());
    }

    /// Sends more from the queue while the window allows, up to a batch.
    pub(super) async fn send_queued(&mut self) {
        for _ in 0..super::SEND_BATCH {
            if self.held.is_some() || self.ending.is_some() {
                return;
            }
            let Some(open) = &mut self.open else { return };
            match open.rx.try_recv() {
                Ok(d) => self.send_delivery(d).await,
                Err(_) => return,
            }
        }
    }

    /// Sends one delivery, or holds it while the client's window is full.
    /// A delivery queued before the device lost the right to read its
    /// channel (a connection removed, the channel deleted; while the client
    /// was offline, say) is dropped, counted.
    pub(super) async fn send_delivery(&mut self, d: Delivery) {
        let Some(open) = &self.open else { return };
        let target = platform_topics::topic_target(&d.msg.topic);
        if !open
            .session
            .may_receive(&target, self.broker.config.open_topics)
        {
            metrics::counter!("moat_mqtt_dropped_total", "reason" => "not_readable").increment(1);
            return;
        }
        let remaining = match d.msg.expires_at {
            Some(at) => {
                let now = Instant::now();
                if at <= now {
                    metrics::counter!("moat_mqtt_dropped_total", "reason" => "expired")
                        .increment(1);
                    return;
                }
                Some(at - now)
            }
            None => None,
        };
        let v5 = open.version == mqtt::Version::V5_0;
        let max_inflight = open.max_inflight;
        let packet_id = if d.qos > 0 {
            if self.inflight.len() >= usize::from(max_inflight) {
                self.held = Some(d);
                return;
            }
            match self.mqtt.acquire_packet_id() {
                Ok(id) => Some(id),
                Err(_) => {
                    self.held = Some(d);
                    return;
                }
            }
        } else {
            None
        };
        let qos = qos_of(d.qos);
        let topic: &str = &d.msg.topic;
        let packet = if v5 {
            d.v5_publish(packet_id, remaining)
                .map(mqtt::packet::GenericPacket::V5_0Publish)
        } else {
            let mut b = v3_1_1::Publish::builder()
                .qos(qos)
                .retain(d.retain)
                .payload(d.msg.payload.clone());
            if let Some(id) = packet_id {
                b = b.packet_id(id);
            }
            b.topic_name(topic)
                .and_then(|b| b.build())
                .map(mqtt::packet::GenericPacket::V3_1_1Publish)
        };
        let Ok(packet) = packet else {
            if let Some(id) = packet_id {
                let _ = self.mqtt.release_packet_id(id);
            }
            return;
        };
        let events = self.mqtt.send(packet);
        let refused = events
            .iter()
            .any(|e| matches!(e, mqtt::connection::Event::NotifyError(_)));
        if refused {
            // Over the client's Maximum Packet Size, typically: discarded,
            // as §3.1.2.11.4 says.
            metrics::counter!("moat_mqtt_dropped_total", "reason" => "refused_by_client_limits")
                .increment(1);
            if let Some(id) = packet_id {
                let _ = self.mqtt.release_packet_id(id);
            }
            for e in events {
                if let mqtt::connection::Event::RequestSendPacket { packet, .. } = e {
                    self.write_packet(&packet);
                }
            }
            return;
        }
        if let Some(id) = packet_id {
            self.inflight.insert(id);
        }
        self.delivered.increment(1);
        self.write_sends(events);
    }

    /// Retries the held delivery once the window opened.
    pub(super) async fn send_held(&mut self) {
        if let Some(d) = self.held.take() {
            self.send_delivery(d).await;
        }
    }
}
