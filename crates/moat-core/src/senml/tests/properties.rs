//! Properties over generated packs: JSON and CBOR encodings of one pack
//! resolve alike, flat objects keep their members, and no input makes a
//! decoder panic.

use super::*;
use base64::Engine as _;
use minicbor::Encoder;
use proptest::prelude::*;
use serde_json::{Map, Value as Json};

#[derive(Clone, Debug)]
enum GenValue {
    Num(f64),
    Str(String),
    Bool(bool),
    Data(Vec<u8>),
}

/// A record that resolves: the generator and `valid_pack` see to it.
#[derive(Clone, Debug, Default)]
struct GenRecord {
    bn: Option<String>,
    bt: Option<f64>,
    bu: Option<String>,
    bv: Option<f64>,
    bs: Option<f64>,
    bver: Option<u64>,
    n: Option<String>,
    u: Option<String>,
    value: Option<GenValue>,
    s: Option<f64>,
    t: Option<f64>,
    ut: Option<f64>,
    /// An extension field, which both decoders must ignore.
    ext: Option<i64>,
}

fn number() -> impl Strategy<Value = f64> {
    prop_oneof![
        (-1000i32..1000).prop_map(f64::from),
        -1e6f64..1e6,
        Just(0.0),
        (-1e-3f64..1e-3),
        (1.5e9f64..1.8e9),
        any::<f32>()
            .prop_filter("finite", |v| v.is_finite() && v.abs() < 1e30)
            .prop_map(f64::from),
    ]
}

fn name_part() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9][a-zA-Z0-9:./_-]{0,12}"
}

fn value() -> impl Strategy<Value = GenValue> {
    prop_oneof![
        number().prop_map(GenValue::Num),
        "\\PC{0,12}".prop_map(GenValue::Str),
        any::<bool>().prop_map(GenValue::Bool),
        proptest::collection::vec(any::<u8>(), 0..12).prop_map(GenValue::Data),
    ]
}

prop_compose! {
    fn record()(
        base in (
            proptest::option::of(name_part()),
            proptest::option::of(number()),
            proptest::option::of("[a-zA-Z%/]{1,4}"),
            proptest::option::of(number()),
            proptest::option::of(number()),
            proptest::option::of(1u64..=10),
        ),
        regular in (
            proptest::option::of("[a-zA-Z0-9:./_-]{0,8}"),
            proptest::option::of("[a-zA-Z%/]{1,4}"),
            proptest::option::of(value()),
            proptest::option::of(number()),
            proptest::option::of(number()),
            proptest::option::of(0f64..3600.0),
            proptest::option::of(any::<i64>()),
        ),
    ) -> GenRecord {
        let (bn, bt, bu, bv, bs, bver) = base;
        let (n, u, value, s, t, ut, ext) = regular;
        GenRecord { bn, bt, bu, bv, bs, bver, n, u, value, s, t, ut, ext }
    }
}

/// Packs that resolve: the first record has a base name, so every name
/// is non-empty and starts well; records with neither value nor sum keep
/// only base fields; at least one record is a measurement.
fn valid_pack() -> impl Strategy<Value = Vec<GenRecord>> {
    (proptest::collection::vec(record(), 1..8), name_part()).prop_map(|(mut pack, bn)| {
        pack[0].bn.get_or_insert(bn);
        for r in &mut pack {
            if r.value.is_none() && r.s.is_none() {
                (r.n, r.u, r.t, r.ut) = (None, None, None, None);
                if r.bt.is_none() && r.bu.is_none() && r.bv.is_none() && r.bs.is_none() {
                    r.bver = Some(10);
                }
            }
        }
        if pack.iter().all(|r| r.value.is_none() && r.s.is_none()) {
            let last = pack.len() - 1;
            pack[last].value = Some(GenValue::Num(1.0));
        }
        pack
    })
}

fn to_json(pack: &[GenRecord]) -> Vec<u8> {
    let records: Vec<Json> = pack
        .iter()
        .map(|r| {
            let mut m = Map::new();
            let mut put = |k: &str, v: Option<Json>| {
                if let Some(v) = v {
                    m.insert(k.into(), v);
                }
            };
            put("bn", r.bn.clone().map(Json::from));
            put("bt", r.bt.map(Json::from));
            put("bu", r.bu.clone().map(Json::from));
            put("bv", r.bv.map(Json::from));
            put("bs", r.bs.map(Json::from));
            put("bver", r.bver.map(Json::from));
            put("n", r.n.clone().map(Json::from));
            put("u", r.u.clone().map(Json::from));
            put("s", r.s.map(Json::from));
            put("t", r.t.map(Json::from));
            put("ut", r.ut.map(Json::from));
            put("x-ext", r.ext.map(Json::from));
            let (label, v) = match &r.value {
                None => return Json::Object(m),
                Some(GenValue::Num(v)) => ("v", Json::from(*v)),
                Some(GenValue::Str(s)) => ("vs", Json::from(s.clone())),
                Some(GenValue::Bool(b)) => ("vb", Json::from(*b)),
                Some(GenValue::Data(d)) => (
                    "vd",
                    base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .encode(d)
                        .into(),
                ),
            };
            m.insert(label.into(), v);
            Json::Object(m)
        })
        .collect();
    serde_json::to_vec(&records).unwrap()
}

/// Numbers go out in the smallest CBOR form that keeps them exact.
fn cbor_number(e: &mut Encoder<&mut Vec<u8>>, v: f64) {
    if v.fract() == 0.0 && v.abs() < 9e15 {
        e.i64(v as i64).unwrap();
    } else if f64::from(v as f32) == v {
        e.f32(v as f32).unwrap();
    } else {
        e.f64(v).unwrap();
    }
}

fn to_cbor(pack: &[GenRecord]) -> Vec<u8> {
    let mut buf = Vec::new();
    let mut e = Encoder::new(&mut buf);
    e.array(pack.len() as u64).unwrap();
    for r in pack {
        let strings = [(-2, &r.bn), (-4, &r.bu), (0, &r.n), (1, &r.u)];
        let numbers = [
            (-3, r.bt),
            (-5, r.bv),
            (-6, r.bs),
            (5, r.s),
            (6, r.t),
            (7, r.ut),
        ];
        let len = strings.iter().filter(|(_, v)| v.is_some()).count()
            + numbers.iter().filter(|(_, v)| v.is_some()).count()
            + usize::from(r.bver.is_some())
            + usize::from(r.value.is_some())
            + usize::from(r.ext.is_some());
        e.map(len as u64).unwrap();
        for (label, v) in strings {
            if let Some(v) = v {
                e.i8(label).unwrap().str(v).unwrap();
            }
        }
        for (label, v) in numbers {
            if let Some(v) = v {
                e.i8(label).unwrap();
                cbor_number(&mut e, v);
            }
        }
        if let Some(v) = r.bver {
            e.i8(-1).unwrap().u64(v).unwrap();
        }
        if let Some(v) = r.ext {
            e.str("x-ext").unwrap().i64(v).unwrap();
        }
        match &r.value {
            None => {}
            Some(GenValue::Num(v)) => {
                e.i8(2).unwrap();
                cbor_number(&mut e, *v);
            }
            Some(GenValue::Str(s)) => {
                e.i8(3).unwrap().str(s).unwrap();
            }
            Some(GenValue::Bool(b)) => {
                e.i8(4).unwrap().bool(*b).unwrap();
            }
            Some(GenValue::Data(d)) => {
                e.i8(8).unwrap().bytes(d).unwrap();
            }
        }
    }
    buf
}

proptest! {
    #[test]
    fn json_and_cbor_resolve_alike(pack in valid_pack(), now in 1.6e9f64..1.8e9) {
        let from_json = records_from_json(&to_json(&pack), now);
        let from_cbor = records_from_cbor(&to_cbor(&pack), now);
        let records = from_json.unwrap();
        prop_assert_eq!(&records, &from_cbor.unwrap());
        let measurements = pack.iter().filter(|r| r.value.is_some() || r.s.is_some()).count();
        prop_assert_eq!(records.len(), measurements);
    }

    #[test]
    fn flat_objects_keep_their_members(
        members in proptest::collection::btree_map(name_part(), value(), 1..10),
    ) {
        let object: Map<String, Json> = members
            .iter()
            .filter_map(|(k, v)| match v {
                GenValue::Num(n) => Some((k.clone(), Json::from(*n))),
                GenValue::Str(s) => Some((k.clone(), Json::from(s.clone()))),
                GenValue::Bool(b) => Some((k.clone(), Json::from(*b))),
                GenValue::Data(_) => None,
            })
            .collect();
        prop_assume!(!object.is_empty());
        let records = records_from_json_object(&serde_json::to_vec(&object).unwrap(), 1.0).unwrap();
        prop_assert_eq!(records.len(), object.len());
        for r in records {
            let want = match &object[&r.name] {
                Json::Number(n) => Value::Number(n.as_f64().unwrap()),
                Json::String(s) => Value::String(s.clone()),
                Json::Bool(b) => Value::Bool(*b),
                other => unreachable!("{other}"),
            };
            prop_assert_eq!(r.value, Some(want));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let _ = records_from_json(&bytes, 0.0);
        let _ = records_from_cbor(&bytes, 0.0);
        let _ = records_from_json_object(&bytes, 0.0);
    }

    #[test]
    fn damaged_packs_never_panic(
        pack in valid_pack(),
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        for mut bytes in [to_json(&pack), to_cbor(&pack)] {
            for (at, byte) in &edits {
                let i = at.index(bytes.len());
                bytes[i] = *byte;
            }
            let _ = records_from_json(&bytes, 0.0);
            let _ = records_from_cbor(&bytes, 0.0);
            bytes.truncate(cut.index(bytes.len() + 1));
            let _ = records_from_json(&bytes, 0.0);
            let _ = records_from_cbor(&bytes, 0.0);
        }
    }
}
