use mqtt_protocol_core::mqtt::packet::{ContentType, UserProperty};
use proptest::prelude::*;

use super::*;

fn delivery(topic: &str, payload: &'static [u8], qos: u8) -> Delivery {
    let payload: Arc<[u8]> = Arc::from(payload);
    let len = payload.len();
    Delivery {
        msg: Arc::new(Routed {
            topic: topic.into(),
            payload: mqtt_protocol_core::mqtt::ArcPayload::new(payload, 0, len),
            qos,
            retain: false,
            props: vec![
                Property::ContentType(ContentType::new("text/plain").unwrap()),
                Property::UserProperty(UserProperty::new("k", "v").unwrap()),
            ],
            expires_at: None,
            origin: Some(3),
        }),
        qos,
        retain: true,
        subscription_ids: vec![7, 9],
    }
}

fn sent_v5(id: u16, qos: mqtt_protocol_core::mqtt::packet::Qos) -> StorePacket {
    let p = v5_0::Publish::builder()
        .topic_name("a/b")
        .unwrap()
        .qos(qos)
        .packet_id(id)
        .payload(b"x".to_vec())
        .build()
        .unwrap();
    StorePacket::try_from(p).unwrap()
}

#[test]
fn subscription_options_pack_into_a_byte_and_back() {
    for qos in 0..=2 {
        for retain_handling in 0..=2 {
            for (no_local, retain_as_published) in
                [(false, false), (true, false), (false, true), (true, true)]
            {
                let o = SubOptions {
                    qos,
                    no_local,
                    retain_as_published,
                    retain_handling,
                    id: Some(5),
                };
                assert_eq!(unpack(pack(&o), Some(5)), Some(o));
            }
        }
    }
    // QoS 3, retain handling 3, or stray bits: not options.
    assert_eq!(unpack(3, None), None);
    assert_eq!(unpack(3 << 4, None), None);
    assert_eq!(unpack(1 << 6, None), None);
}

#[test]
fn what_a_session_holds_round_trips_through_its_saved_form() {
    use mqtt_protocol_core::mqtt::packet::Qos;
    let v3 = v3_1_1::Publish::builder()
        .topic_name("c/d")
        .unwrap()
        .qos(Qos::AtLeastOnce)
        .packet_id(4)
        .payload(b"old".to_vec())
        .build()
        .unwrap();
    let pubrel = v5_0::Pubrel::builder().packet_id(6).build().unwrap();
    let mut qos2 = EngineSet::default();
    qos2.insert(11);
    qos2.insert(12);
    let mut expiring = delivery("e/f", b"lasts", 1);
    Arc::get_mut(&mut expiring.msg).unwrap().expires_at =
        Some(Instant::now() + Duration::from_secs(60));
    let mut expired = delivery("g", b"too late", 1);
    Arc::get_mut(&mut expired.msg).unwrap().expires_at = Some(Instant::now());
    let held = Held {
        stored: vec![
            sent_v5(1, Qos::AtLeastOnce),
            sent_v5(2, Qos::ExactlyOnce),
            StorePacket::try_from(v3).unwrap(),
            StorePacket::try_from(pubrel).unwrap(),
        ],
        qos2: qos2.clone(),
        queued: vec![
            delivery("x/y", b"one", 1),
            delivery("x/z", b"two", 0),
            expired,
            expiring,
        ],
    };
    let (back, skipped) = decode(&encode(&held.stored, &held.qos2, &held.queued));
    assert_eq!(skipped, 0);
    assert_eq!(back.stored, held.stored);
    assert_eq!(back.qos2, qos2);
    // The expired delivery is not saved.
    assert_eq!(back.queued.len(), 3);
    let first = &back.queued[0];
    assert_eq!(&*first.msg.topic, "x/y");
    assert_eq!(first.msg.payload.as_slice(), b"one");
    assert_eq!((first.qos, first.retain), (1, true));
    assert_eq!(first.subscription_ids, [7, 9]);
    assert_eq!(first.msg.props, held.queued[0].msg.props);
    assert_eq!(first.msg.expires_at, None);
    assert_eq!(back.queued[1].qos, 0);
    let left = back.queued[2].msg.expires_at.unwrap() - Instant::now();
    assert!(left > Duration::from_secs(58) && left <= Duration::from_secs(60));
}

#[test]
fn a_damaged_saved_queue_gives_what_it_can_and_counts_the_rest() {
    let held = Held {
        queued: vec![delivery("x", b"1", 1), delivery("y", b"2", 1)],
        ..Held::default()
    };
    let bytes = encode(&held.stored, &held.qos2, &held.queued);
    // An unknown entry between good ones is skipped.
    let mut odd = Vec::new();
    entry(&mut odd, 99, b"??");
    let mut mixed = odd.clone();
    mixed.extend_from_slice(&bytes);
    let (back, skipped) = decode(&mixed);
    assert_eq!((back.queued.len(), skipped), (2, 1));
    // Cut short: the whole entries before the cut.
    let (back, skipped) = decode(&bytes[..bytes.len() - 1]);
    assert_eq!((back.queued.len(), skipped), (1, 1));
    // A PUBLISH whose body is garbage.
    let mut bad = Vec::new();
    entry(&mut bad, tag::QUEUED, &[0x32, 2, 0xff, 0xff]);
    entry(&mut bad, tag::SENT_V5, &[0x62, 1, 0]);
    entry(&mut bad, tag::RECEIVED_QOS2, &[1]);
    let (back, skipped) = decode(&bad);
    assert!(back.queued.is_empty() && back.stored.is_empty() && back.qos2.is_empty());
    assert_eq!(skipped, 3);
}

proptest! {
    /// Whatever the store hands back, decoding never panics.
    #[test]
    fn decoding_any_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode(&bytes);
    }

    /// Nor does decoding well-formed entries with arbitrary bodies.
    #[test]
    fn decoding_any_entry_body_never_panics(
        tag in 0u8..6,
        body in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let mut bytes = Vec::new();
        entry(&mut bytes, tag, &body);
        let _ = decode(&bytes);
    }
}

#[test]
fn a_will_round_trips_through_its_stored_form() {
    let payload: Arc<[u8]> = Arc::from(&b"offline"[..]);
    let will = Will {
        topic: "channels/x/messages/status".into(),
        payload: mqtt_protocol_core::mqtt::ArcPayload::new(payload, 0, 7),
        qos: 1,
        retain: true,
        props: vec![Property::ContentType(
            ContentType::new("text/plain").unwrap(),
        )],
        delay: Duration::from_secs(30),
    };
    let stored = encode_will(&will).unwrap();
    let back = decode_will(&stored, Duration::from_secs(12)).unwrap();
    assert_eq!(back.topic, will.topic);
    assert_eq!(back.payload.as_slice(), b"offline");
    assert_eq!((back.qos, back.retain), (1, true));
    assert_eq!(back.props, will.props);
    assert_eq!(back.delay, Duration::from_secs(12));
    assert!(decode_will(&stored[..stored.len() - 1], Duration::ZERO).is_none());
    assert!(decode_will(b"", Duration::ZERO).is_none());
}

#[test]
fn the_time_a_queue_spent_in_the_store_counts_against_expiry() {
    let mut brief = delivery("e", b"brief", 1);
    Arc::get_mut(&mut brief.msg).unwrap().expires_at =
        Some(Instant::now() + Duration::from_secs(60));
    let lasting = delivery("l", b"lasting", 1);
    let bytes = encode(&[], &EngineSet::default(), &[brief, lasting]);
    let written = now_micros();
    // Thirty seconds later: half the interval is left.
    let (back, skipped) = decode_at(&bytes, written + 30_000_000);
    assert_eq!((back.queued.len(), skipped), (2, 0));
    let left = back.queued[0].msg.expires_at.unwrap() - Instant::now();
    assert!(
        left > Duration::from_secs(28) && left <= Duration::from_secs(30),
        "{left:?}"
    );
    assert!(back.queued[1].msg.expires_at.is_none());
    // Past it: gone, and not counted as unreadable.
    let (back, skipped) = decode_at(&bytes, written + 61_000_000);
    assert_eq!((back.queued.len(), skipped), (1, 0));
    assert_eq!(back.queued[0].msg.payload.as_slice(), b"lasting");
}
