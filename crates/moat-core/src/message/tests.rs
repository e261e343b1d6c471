use super::*;
use crate::domain::Channel;

fn channel(policy: PayloadPolicy, max_payload: Option<u32>) -> Channel {
    let now = crate::audit::now_millis();
    Channel {
        id: ChannelId::new(),
        tenant_id: TenantId::new(),
        name: "c".into(),
        tags: vec![],
        metadata: serde_json::json!({}),
        payload_policy: policy,
        retention_days: None,
        max_payload,
        created_at: now,
        updated_at: now,
    }
}

const NOW: i64 = 1_700_000_000_000_000;

fn publish(
    c: &Channel,
    subtopic: &str,
    ct: Option<ContentType>,
    payload: &[u8],
) -> Result<Message, Rejection> {
    accept(
        c,
        Subject::Device(DeviceId::new()),
        Protocol::Http,
        Incoming {
            subtopic,
            content_type: ct,
            payload: payload.to_vec(),
        },
        NOW,
    )
}

#[test]
fn senml_in_json_or_cbor_becomes_records_with_times_resolved() {
    let c = channel(PayloadPolicy::Senml, None);
    let m = publish(
        &c,
        "room/1",
        None,
        br#"[{"bn":"urn:dev:1:","n":"temp","u":"Cel","v":21.5},{"n":"hum","v":40,"t":-5}]"#,
    )
    .unwrap();
    assert_eq!(m.content_type, ContentType::SenmlJson);
    assert_eq!(m.records.len(), 2);
    assert_eq!(m.records[0].name, "urn:dev:1:temp");
    assert_eq!(m.records[0].time, 1_700_000_000.0);
    assert_eq!(m.records[1].time, 1_699_999_995.0);
    assert_eq!((m.channel_id, m.tenant_id), (c.id, c.tenant_id));
    // [{0: "x", 2: 1}] in CBOR, content type undeclared.
    let m = publish(&c, "", None, &[0x81, 0xa2, 0x00, 0x61, b'x', 0x02, 0x01]).unwrap();
    assert_eq!(m.content_type, ContentType::SenmlCbor);
    assert_eq!(m.records[0].name, "x");
}

#[test]
fn a_senml_channel_refuses_anything_else_with_the_reason() {
    let c = channel(PayloadPolicy::Senml, None);
    let e = publish(&c, "", Some(ContentType::Json), br#"{"t":1}"#).unwrap_err();
    assert_eq!(
        e.to_string(),
        "a channel with payload policy senml does not accept application/json"
    );
    let e = publish(&c, "", None, br#"[{"n":"bad name!","v":1}]"#).unwrap_err();
    assert!(matches!(e, Rejection::Senml(_)), "{e}");
    assert!(e.to_string().starts_with("not SenML: record 0"), "{e}");
}

#[test]
fn json_channels_take_any_json_and_map_flat_objects() {
    let c = channel(PayloadPolicy::Json, None);
    let m = publish(&c, "", None, br#"{"temperature":21.5,"on":true}"#).unwrap();
    assert_eq!(m.records.len(), 2);
    let m = publish(&c, "", None, br#"{"nested":{"a":1}}"#).unwrap();
    assert!(m.records.is_empty(), "kept, not mapped");
    assert!(matches!(
        publish(&c, "", None, b"{oops"),
        Err(Rejection::Json(_))
    ));
}

#[test]
fn opaque_payloads_are_kept_as_they_are() {
    let c = channel(PayloadPolicy::Opaque, None);
    let m = publish(&c, "", None, &[0, 1, 2, 255]).unwrap();
    assert_eq!(m.payload, [0, 1, 2, 255]);
    assert_eq!(m.content_type, ContentType::OctetStream);
    assert!(m.records.is_empty());
}

#[test]
fn limits_and_subtopics() {
    let c = channel(PayloadPolicy::Opaque, Some(10));
    assert_eq!(
        publish(&c, "", None, &[0; 11]).unwrap_err(),
        Rejection::TooLarge {
            size: 11,
            limit: 10
        }
    );
    let big = channel(PayloadPolicy::Opaque, Some(u32::MAX));
    assert!(matches!(
        publish(&big, "", None, &vec![0; MAX_PAYLOAD + 1]),
        Err(Rejection::TooLarge { .. })
    ));
    for bad in ["a//b", "/a", "a/", "a/+/b", "#", "a\u{0}b"] {
        assert!(
            matches!(publish(&c, bad, None, b"x"), Err(Rejection::Subtopic(_))),
            "{bad:?}"
        );
    }
    assert!(publish(&c, "a/b/c-1", None, b"x").is_ok());
    assert!(check_subtopic(&"a".repeat(257)).is_err());
}

#[test]
fn content_types_parse_with_parameters_and_any_case() {
    assert_eq!(
        ContentType::parse("Application/SenML+JSON; charset=utf-8"),
        Some(ContentType::SenmlJson)
    );
    assert_eq!(ContentType::parse("text/plain"), None);
    assert_eq!(ContentType::SenmlCbor.coap_format(), 112);
}
