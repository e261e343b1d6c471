//! CBOR built item by item, for the cases JSON cannot express.

use super::rfc::RFC_TIMED_CBOR;
use super::*;
use minicbor::Encoder;

fn pack(build: impl FnOnce(&mut Encoder<&mut Vec<u8>>)) -> Vec<u8> {
    let mut buf = Vec::new();
    build(&mut Encoder::new(&mut buf));
    buf
}

fn err(bytes: &[u8]) -> String {
    records_from_cbor(bytes, NOW).unwrap_err().to_string()
}

#[test]
fn numbers_in_every_form() {
    let bytes = pack(|e| {
        e.array(6).unwrap();
        e.map(2).unwrap().i8(0).unwrap().str("a").unwrap();
        e.i8(2).unwrap().u64(u64::MAX).unwrap();
        e.map(2).unwrap().i8(0).unwrap().str("b").unwrap();
        e.i8(2).unwrap().i64(-7).unwrap();
        e.map(2).unwrap().i8(0).unwrap().str("c").unwrap();
        e.i8(2).unwrap().f32(0.5).unwrap();
        // Tag 4, [exponent, mantissa]: 2315 × 10^-2.
        e.map(2).unwrap().i8(0).unwrap().str("d").unwrap();
        e.i8(2).unwrap().tag(minicbor::data::Tag::new(4)).unwrap();
        e.array(2).unwrap().i8(-2).unwrap().u16(2315).unwrap();
        e.map(2).unwrap().i8(0).unwrap().str("e").unwrap();
        e.i8(2).unwrap().tag(minicbor::data::Tag::new(4)).unwrap();
        e.array(2).unwrap().i8(3).unwrap().i8(-5).unwrap();
        // The largest negative CBOR integer, -2^64.
        e.map(2).unwrap().i8(0).unwrap().str("f").unwrap();
        e.i8(2).unwrap();
        e.writer_mut()
            .extend([0x3b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    });
    let values: Vec<_> = records_from_cbor(&bytes, NOW)
        .unwrap()
        .into_iter()
        .map(|r| r.value.unwrap())
        .collect();
    assert_eq!(
        values,
        [
            Value::Number(18446744073709551615.0),
            Value::Number(-7.0),
            Value::Number(0.5),
            Value::Number(23.15),
            Value::Number(-5000.0),
            Value::Number(-18446744073709551616.0),
        ]
    );
}

#[test]
fn streams_self_description_and_chunked_strings_are_read() {
    let bytes = pack(|e| {
        e.tag(minicbor::data::Tag::new(55799)).unwrap();
        e.begin_array().unwrap();
        e.begin_map().unwrap();
        e.i8(-2).unwrap().begin_str().unwrap();
        e.str("dev").unwrap().str(":").unwrap().end().unwrap();
        e.i8(0).unwrap().str("x").unwrap();
        e.i8(8).unwrap().begin_bytes().unwrap();
        e.bytes(b"h").unwrap().bytes(b"i").unwrap().end().unwrap();
        e.str("ext").unwrap().array(1).unwrap().u8(1).unwrap();
        e.i8(42).unwrap().u8(1).unwrap();
        e.str("v")
            .unwrap()
            .str("text labels are extensions")
            .unwrap();
        e.end().unwrap();
        e.end().unwrap();
    });
    assert_eq!(
        records_from_cbor(&bytes, NOW).unwrap(),
        [rec("dev:x", None, Value::Data(b"hi".to_vec()), NOW)]
    );
}

#[test]
fn invalid_cbor_packs() {
    let one = |label: i8, value: &dyn Fn(&mut Encoder<&mut Vec<u8>>)| {
        pack(|e| {
            e.array(1).unwrap().map(2).unwrap();
            e.i8(0).unwrap().str("a").unwrap().i8(label).unwrap();
            value(e);
        })
    };
    assert_eq!(
        err(&one(2, &|e| {
            e.f64(f64::NAN).unwrap();
        })),
        r#"record 0: field "v" is not a finite number"#
    );
    assert_eq!(
        err(&one(2, &|e| {
            e.f32(f32::INFINITY).unwrap();
        })),
        r#"record 0: field "v" is not a finite number"#
    );
    // Half-float infinity, f9 7c 00.
    assert_eq!(
        err(&one(6, &|e| {
            e.writer_mut().extend([0xf9, 0x7c, 0x00]);
        })),
        r#"record 0: field "t" is not a finite number"#
    );
    assert_eq!(
        err(&one(8, &|e| {
            e.str("aGk").unwrap();
        })),
        r#"record 0: field "vd" must be a byte string"#
    );
    assert_eq!(
        err(&one(3, &|e| {
            e.bytes(b"hi").unwrap();
        })),
        r#"record 0: field "vs" must be a string"#
    );
    // A bignum (tag 2) is not read.
    assert_eq!(
        err(&one(2, &|e| {
            e.tag(minicbor::data::Tag::new(2))
                .unwrap()
                .bytes(&[1, 0])
                .unwrap();
        })),
        r#"record 0: field "v" must be a number"#
    );
    assert_eq!(
        err(&one(-1, &|e| {
            e.f64(5.0).unwrap();
        })),
        r#"record 0: field "bver" must be a positive integer"#
    );
    assert_eq!(
        err(&pack(|e| {
            e.array(1).unwrap().map(2).unwrap();
            e.i8(0)
                .unwrap()
                .str("a")
                .unwrap()
                .str("x_")
                .unwrap()
                .u8(1)
                .unwrap();
        })),
        r#"record 0: field "x_" must be understood, and is not supported"#
    );
    assert_eq!(
        err(&pack(|e| {
            e.array(1).unwrap().map(3).unwrap();
            e.i8(0).unwrap().str("a").unwrap();
            e.i8(2)
                .unwrap()
                .u8(1)
                .unwrap()
                .i8(2)
                .unwrap()
                .u8(2)
                .unwrap();
        })),
        r#"record 0: field "v" appears twice"#
    );
    let mut trailing = hex(RFC_TIMED_CBOR);
    trailing.push(0);
    assert_eq!(err(&trailing), "1 trailing byte(s) after the pack");
    assert_eq!(err(&[0x80]), "the payload holds no record");
    assert_eq!(err(&[0xa0]), "a SenML pack must be an array of records");
    assert_eq!(err(&[0x81, 0x01]), "record 0: not an object");
    // An array claiming 2^64-1 records.
    assert_eq!(
        err(&[0x9b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]),
        "more than 10000 records"
    );
    // A map claiming 2^64-1 entries, then nothing.
    let huge_map = [0x81, 0xbb, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
    assert!(err(&huge_map).starts_with("malformed CBOR"));
    // A string claiming 2^64-1 bytes.
    let huge_str = [
        0x81, 0xa1, 0x00, 0x7b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    ];
    assert!(err(&huge_str).starts_with("malformed CBOR"));
    assert!(err(&[]).starts_with("malformed CBOR"));
    assert!(err(&[0x81]).starts_with("malformed CBOR"));
    assert!(err(&[0x81, 0xff]).starts_with("malformed CBOR"));
    // An extension nested 10 000 arrays deep: refused, without recursing that deep.
    let mut deep = vec![0x81, 0xa3, 0x00, 0x61, b'a', 0x02, 0x01, 0x61, b'x'];
    deep.extend(std::iter::repeat_n(0x81, 10_000));
    deep.push(0x01);
    assert_eq!(
        records_from_cbor(&deep, NOW).unwrap_err(),
        SenmlError::TooDeep {
            index: 0,
            max: MAX_DEPTH
        }
    );
    let mut ok = vec![0x81, 0xa3, 0x00, 0x61, b'a', 0x02, 0x01, 0x61, b'x'];
    ok.extend(std::iter::repeat_n(0x81, MAX_DEPTH));
    ok.push(0x01);
    assert!(records_from_cbor(&ok, NOW).is_ok());
    // Tags nested 10 000 deep.
    let mut tags = vec![0x81, 0xa3, 0x00, 0x61, b'a', 0x02, 0x01, 0x61, b'x'];
    tags.extend(std::iter::repeat_n(0xc6, 10_000));
    tags.push(0x01);
    assert!(matches!(
        records_from_cbor(&tags, NOW),
        Err(SenmlError::TooDeep { .. })
    ));
}
