//! Property tests of the packet path (ADR 005): valid packets of both
//! versions, built with mqtt-protocol-core and encoded, pass the guard,
//! frame the same way however the bytes are split, and decode back to the
//! packet that was encoded (encode ∘ decode is the identity).

use std::sync::Arc;

use moat_mqtt::protocol::{self, Frame};
use mqtt_protocol_core::mqtt::packet::{
    ContentType, CorrelationData, MessageExpiryInterval, Property, Qos, ResponseTopic, SubEntry,
    SubOpts, SubscriptionIdentifier, UserProperty, v3_1_1, v5_0,
};
use proptest::prelude::*;

/// Topic names from the grammar: levels of letters, digits, `-`, `$` first
/// only at the start, never a wildcard or U+0000; sometimes non-ASCII.
fn topic_name() -> impl Strategy<Value = String> {
    let level = prop_oneof![
        "[a-z0-9-]{0,8}".prop_map(String::from),
        Just("é".to_owned()),
        Just("温度".to_owned()),
    ];
    prop::collection::vec(level, 1..5)
        .prop_map(|levels| levels.join("/"))
        .prop_filter("non-empty", |t| !t.is_empty())
}

fn topic_filter() -> impl Strategy<Value = String> {
    (topic_name(), prop_oneof![Just(""), Just("/+"), Just("/#")])
        .prop_map(|(t, w)| format!("{t}{w}"))
}

fn qos() -> impl Strategy<Value = Qos> {
    prop_oneof![
        Just(Qos::AtMostOnce),
        Just(Qos::AtLeastOnce),
        Just(Qos::ExactlyOnce)
    ]
}

fn v5_props() -> impl Strategy<Value = Vec<Property>> {
    (
        prop::option::of("[a-z/+.]{1,20}"),
        prop::option::of(topic_name()),
        prop::option::of(prop::collection::vec(any::<u8>(), 0..16)),
        prop::option::of(1u32..100_000),
        prop::collection::vec(("[a-z]{1,4}", "[a-z0-9]{0,6}"), 0..3),
    )
        .prop_map(|(ct, resp, corr, exp, users)| {
            let mut p = Vec::new();
            if let Some(c) = ct {
                p.push(Property::ContentType(ContentType::new(c).unwrap()));
            }
            if let Some(r) = resp {
                p.push(Property::ResponseTopic(ResponseTopic::new(r).unwrap()));
            }
            if let Some(c) = corr {
                p.push(Property::CorrelationData(CorrelationData::new(c).unwrap()));
            }
            if let Some(e) = exp {
                p.push(Property::MessageExpiryInterval(
                    MessageExpiryInterval::new(e).unwrap(),
                ));
            }
            // Repeated keys allowed; their order is kept.
            for (k, v) in users {
                p.push(Property::UserProperty(UserProperty::new(k, v).unwrap()));
            }
            p
        })
}

/// The whole packet framed from `bytes` fed in two pieces split at `cut`.
fn framed_in_two(bytes: &[u8], cut: usize) -> usize {
    let mut buf = Vec::new();
    buf.extend_from_slice(&bytes[..cut]);
    match protocol::frame(&buf, usize::MAX) {
        Frame::NeedMore => {}
        Frame::Packet { total_len, .. } => return total_len,
        Frame::Violation(v) => panic!("{v}"),
    }
    buf.extend_from_slice(&bytes[cut..]);
    match protocol::frame(&buf, usize::MAX) {
        Frame::Packet { total_len, .. } => total_len,
        other => panic!("{other:?}"),
    }
}

fn body(bytes: &[u8]) -> Arc<[u8]> {
    let Frame::Packet { header_len, .. } = protocol::frame(bytes, usize::MAX) else {
        panic!("not one packet");
    };
    Arc::from(&bytes[header_len..])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn v5_publish_round_trips(
        topic in topic_name(),
        q in qos(),
        retain in any::<bool>(),
        id in 1u16..,
        props in v5_props(),
        payload in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = v5_0::Publish::builder()
            .topic_name(topic.as_str()).unwrap()
            .qos(q)
            .retain(retain)
            .payload(payload.clone())
            .props(props.clone());
        if q != Qos::AtMostOnce {
            b = b.packet_id(id);
        }
        let packet = b.build().unwrap();
        let bytes = packet.to_continuous_buffer();
        prop_assert_eq!(protocol::check_packet(&bytes), Ok(()));
        prop_assert!(moat_mqtt::check_topic_name(&topic).is_ok());
        prop_assert_eq!(framed_in_two(&bytes, cut.index(bytes.len())), bytes.len());
        let (back, _) = v5_0::Publish::parse(bytes[0] & 0x0f, body(&bytes)).unwrap();
        prop_assert_eq!(back.topic_name(), topic.as_str());
        prop_assert_eq!(back.payload().as_slice(), payload.as_slice());
        prop_assert_eq!(back.props(), &props);
        prop_assert_eq!(back.to_continuous_buffer(), bytes);
    }

    #[test]
    fn v311_publish_round_trips(
        topic in topic_name(),
        q in qos(),
        id in 1u16..,
        payload in prop::collection::vec(any::<u8>(), 0..300),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut b = v3_1_1::Publish::builder()
            .topic_name(topic.as_str()).unwrap()
            .qos(q)
            .payload(payload.clone());
        if q != Qos::AtMostOnce {
            b = b.packet_id(id);
        }
        let bytes = b.build().unwrap().to_continuous_buffer();
        prop_assert_eq!(protocol::check_packet(&bytes), Ok(()));
        prop_assert_eq!(framed_in_two(&bytes, cut.index(bytes.len())), bytes.len());
        let (back, _) = v3_1_1::Publish::parse(bytes[0] & 0x0f, body(&bytes)).unwrap();
        prop_assert_eq!(back.topic_name(), topic.as_str());
        prop_assert_eq!(back.to_continuous_buffer(), bytes);
    }

    #[test]
    fn v5_subscribe_round_trips_and_its_filters_pass(
        filters in prop::collection::vec((topic_filter(), qos(), any::<bool>(), any::<bool>()), 1..5),
        id in 1u16..,
        sub_id in prop::option::of(1u32..268_435_455),
    ) {
        let entries: Vec<SubEntry> = filters
            .iter()
            .map(|(f, q, nl, rap)| {
                SubEntry::new(f.as_str(), SubOpts::new().set_qos(*q).set_nl(*nl).set_rap(*rap)).unwrap()
            })
            .collect();
        let props: Vec<Property> = sub_id
            .map(|i| Property::SubscriptionIdentifier(SubscriptionIdentifier::new(i).unwrap()))
            .into_iter()
            .collect();
        let bytes = v5_0::Subscribe::builder()
            .packet_id(id)
            .entries(entries)
            .props(props)
            .build()
            .unwrap()
            .to_continuous_buffer();
        prop_assert_eq!(protocol::check_packet(&bytes), Ok(()));
        let (back, _) = v5_0::Subscribe::parse(&body(&bytes)).unwrap();
        prop_assert_eq!(back.to_continuous_buffer(), bytes);
        for (f, ..) in &filters {
            // Every filter the grammar makes is accepted, and prints back
            // to itself.
            let parsed = moat_mqtt::check_filter(f).unwrap();
            prop_assert_eq!(parsed.filter, f.as_str());
        }
    }

    #[test]
    fn names_with_wildcards_or_nul_are_refused(
        topic in topic_name(),
        bad in prop_oneof![Just('+'), Just('#'), Just('\u{0}')],
        at in any::<prop::sample::Index>(),
    ) {
        let chars: Vec<char> = topic.chars().collect();
        let i = at.index(chars.len() + 1);
        let mut t: String = chars[..i].iter().collect();
        t.push(bad);
        t.extend(&chars[i..]);
        prop_assert!(moat_mqtt::check_topic_name(&t).is_err());
    }
}
