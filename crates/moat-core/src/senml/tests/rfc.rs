//! Every example pack of RFC 8428 §5.1 and §6, resolved.
//!
//! The packs are RFC 8428's (August 2018), as published; the §5.1.2 stream
//! example ends in "..." there and is closed after its last record here.

use super::*;

// §5.1.1
#[test]
fn rfc_single_datapoint() {
    let pack = r#"[
     {"n":"urn:dev:ow:10e2073a01080063","u":"Cel","v":23.1}
   ]"#;
    assert_eq!(
        json(pack),
        [num("urn:dev:ow:10e2073a01080063", Some("Cel"), 23.1, NOW)]
    );
}

// §5.1.2, first example
#[test]
fn rfc_multiple_datapoints() {
    let pack = r#"[
     {"bn":"urn:dev:ow:10e2073a01080063:","n":"voltage","u":"V","v":120.1},
     {"n":"current","u":"A","v":1.2}
   ]"#;
    assert_eq!(
        json(pack),
        [
            num("urn:dev:ow:10e2073a01080063:voltage", Some("V"), 120.1, NOW),
            num("urn:dev:ow:10e2073a01080063:current", Some("A"), 1.2, NOW),
        ]
    );
}

/// §5.1.2, second example, and (the same pack) §6.
const RFC_TIMED_JSON: &str = r#"[
     {"bn":"urn:dev:ow:10e2073a0108006:","bt":1.276020076001e+09,
      "bu":"A","bver":5,
      "n":"voltage","u":"V","v":120.1},
     {"n":"current","t":-5,"v":1.2},
     {"n":"current","t":-4,"v":1.3},
     {"n":"current","t":-3,"v":1.4},
     {"n":"current","t":-2,"v":1.5},
     {"n":"current","t":-1,"v":1.6},
     {"n":"current","v":1.7}
   ]"#;

/// RFC 8428 §6: the CBOR dump of [`RFC_TIMED_JSON`].
pub(super) const RFC_TIMED_CBOR: &str = "
    87 a7 21 78 1b 75 72 6e 3a 64 65 76 3a 6f 77 3a
    31 30 65 32 30 37 33 61 30 31 30 38 30 30 36 3a
    22 fb 41 d3 03 a1 5b 00 10 62 23 61 41 20 05 00
    67 76 6f 6c 74 61 67 65 01 61 56 02 fb 40 5e 06
    66 66 66 66 66 a3 00 67 63 75 72 72 65 6e 74 06
    24 02 fb 3f f3 33 33 33 33 33 33 a3 00 67 63 75
    72 72 65 6e 74 06 23 02 fb 3f f4 cc cc cc cc cc
    cd a3 00 67 63 75 72 72 65 6e 74 06 22 02 fb 3f
    f6 66 66 66 66 66 66 a3 00 67 63 75 72 72 65 6e
    74 06 21 02 f9 3e 00 a3 00 67 63 75 72 72 65 6e
    74 06 20 02 fb 3f f9 99 99 99 99 99 9a a3 00 67
    63 75 72 72 65 6e 74 06 00 02 fb 3f fb 33 33 33
    33 33 33";

fn rfc_timed_expected() -> Vec<Record> {
    let bt = 1.276020076001e9;
    let dev = "urn:dev:ow:10e2073a0108006:";
    let mut want = vec![num(&format!("{dev}voltage"), Some("V"), 120.1, bt)];
    for (t, v) in [
        (-5.0, 1.2),
        (-4.0, 1.3),
        (-3.0, 1.4),
        (-2.0, 1.5),
        (-1.0, 1.6),
        (0.0, 1.7),
    ] {
        want.push(num(&format!("{dev}current"), Some("A"), v, bt + t));
    }
    want
}

#[test]
fn rfc_multiple_datapoints_with_time() {
    assert_eq!(json(RFC_TIMED_JSON), rfc_timed_expected());
    assert_eq!(json(RFC_TIMED_JSON)[1].time, 1_276_020_071.001);
}

#[test]
fn rfc_cbor_example() {
    let bytes = hex(RFC_TIMED_CBOR);
    assert_eq!(bytes.len(), 0xc3);
    assert_eq!(
        records_from_cbor(&bytes, NOW).unwrap(),
        rfc_timed_expected()
    );
}

// §5.1.2, the stream example (closed after its last record shown)
#[test]
fn rfc_stream() {
    let pack = r#"[
     {"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,
      "bu":"%RH","v":21.2},
     {"t":10,"v":21.3},
     {"t":20,"v":21.4},
     {"t":30,"v":21.4},
     {"t":40,"v":21.5},
     {"t":50,"v":21.5},
     {"t":60,"v":21.5},
     {"t":70,"v":21.6},
     {"t":80,"v":21.7}
   ]"#;
    let bt = 1_320_067_464.0;
    let want: Vec<Record> = [21.2, 21.3, 21.4, 21.4, 21.5, 21.5, 21.5, 21.6, 21.7]
        .into_iter()
        .enumerate()
        .map(|(i, v)| {
            let t = bt + 10.0 * i as f64;
            num("urn:dev:ow:10e2073a01080063", Some("%RH"), v, t)
        })
        .collect();
    assert_eq!(json(pack), want);
}

/// §5.1.3
const RFC_MEASUREMENTS: &str = r#"[
     {"bn":"urn:dev:ow:10e2073a01080063","bt":1.320067464e+09,
      "bu":"%RH","v":20},
     {"u":"lon","v":24.30621},
     {"u":"lat","v":60.07965},
     {"t":60,"v":20.3},
     {"u":"lon","t":60,"v":24.30622},
     {"u":"lat","t":60,"v":60.07965},
     {"t":120,"v":20.7},
     {"u":"lon","t":120,"v":24.30623},
     {"u":"lat","t":120,"v":60.07966},
     {"u":"%EL","t":150,"v":98},
     {"t":180,"v":21.2},
     {"u":"lon","t":180,"v":24.30628},
     {"u":"lat","t":180,"v":60.07967}
   ]"#;

/// §5.1.4: [`RFC_MEASUREMENTS`], resolved by the RFC itself.
const RFC_RESOLVED: &str = r#"[
     {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067464e+09,
      "v":20},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067464e+09,
      "v":24.30621},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067464e+09,
      "v":60.07965},
     {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067524e+09,
      "v":20.3},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067524e+09,
      "v":24.30622},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067524e+09,
      "v":60.07965},
     {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067584e+09,
      "v":20.7},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067584e+09,
      "v":24.30623},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067584e+09,
      "v":60.07966},
     {"n":"urn:dev:ow:10e2073a01080063","u":"%EL","t":1.320067614e+09,
      "v":98},
     {"n":"urn:dev:ow:10e2073a01080063","u":"%RH","t":1.320067644e+09,
      "v":21.2},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lon","t":1.320067644e+09,
      "v":24.30628},
     {"n":"urn:dev:ow:10e2073a01080063","u":"lat","t":1.320067644e+09,
      "v":60.07967}
   ]"#;

#[test]
fn rfc_multiple_measurements_resolve_as_the_rfc_does() {
    let got = json(RFC_MEASUREMENTS);
    assert_eq!(got.len(), 13);
    assert_eq!(
        got[9],
        num(
            "urn:dev:ow:10e2073a01080063",
            Some("%EL"),
            98.0,
            1_320_067_614.0
        )
    );
    assert_eq!(got, json(RFC_RESOLVED));
}

// §5.1.5
#[test]
fn rfc_multiple_data_types() {
    let pack = r#"[
     {"bn":"urn:dev:ow:10e2073a01080063:","n":"temp","u":"Cel","v":23.1},
     {"n":"label","vs":"Machine Room"},
     {"n":"open","vb":false},
     {"n":"nfc-reader","vd":"aGkgCg"}
   ]"#;
    let dev = "urn:dev:ow:10e2073a01080063:";
    assert_eq!(
        json(pack),
        [
            num(&format!("{dev}temp"), Some("Cel"), 23.1, NOW),
            rec(
                &format!("{dev}label"),
                None,
                Value::String("Machine Room".into()),
                NOW
            ),
            rec(&format!("{dev}open"), None, Value::Bool(false), NOW),
            rec(
                &format!("{dev}nfc-reader"),
                None,
                Value::Data(b"hi \n".to_vec()),
                NOW
            ),
        ]
    );
}

// §5.1.6: the last record takes the third's base name and the first's base time.
#[test]
fn rfc_collection_of_resources() {
    let pack = r#"[
     {"bn":"2001:db8::2/","bt":1.320078429e+09,
      "n":"temperature","u":"Cel","v":25.2},
     {"n":"humidity","u":"%RH","v":30},
     {"bn":"2001:db8::1/","n":"temperature","u":"Cel","v":12.3},
     {"n":"humidity","u":"%RH","v":67}
   ]"#;
    let bt = 1_320_078_429.0;
    assert_eq!(
        json(pack),
        [
            num("2001:db8::2/temperature", Some("Cel"), 25.2, bt),
            num("2001:db8::2/humidity", Some("%RH"), 30.0, bt),
            num("2001:db8::1/temperature", Some("Cel"), 12.3, bt),
            num("2001:db8::1/humidity", Some("%RH"), 67.0, bt),
        ]
    );
}

// §5.1.7: the first record carries only a base name.
#[test]
fn rfc_setting_an_actuator() {
    let pack = r#"[
     {"bn":"urn:dev:ow:10e2073a01080063:"},
     {"n":"temp","u":"Cel","v":23.1},
     {"n":"heat","u":"/","v":1},
     {"n":"fan","u":"/","v":0}
   ]"#;
    let dev = "urn:dev:ow:10e2073a01080063:";
    assert_eq!(
        json(pack),
        [
            num(&format!("{dev}temp"), Some("Cel"), 23.1, NOW),
            num(&format!("{dev}heat"), Some("/"), 1.0, NOW),
            num(&format!("{dev}fan"), Some("/"), 0.0, NOW),
        ]
    );
}

// §5.1.7: lights on, then lights dimmed and off 100 ms later.
#[test]
fn rfc_lights() {
    let bt = 1_320_078_429.0;
    let on = r#"[
     {"bt":1.320078429e+09,"bu":"/","n":"2001:db8::3","v":1},
     {"n":"2001:db8::4","v":1}
   ]"#;
    assert_eq!(
        json(on),
        [
            num("2001:db8::3", Some("/"), 1.0, bt),
            num("2001:db8::4", Some("/"), 1.0, bt),
        ]
    );
    let off = r#"[
     {"bt":1.320078429e+09,"bu":"/","n":"2001:db8::3","v":0.5},
     {"n":"2001:db8::4","v":0.5},
     {"n":"2001:db8::3","t":0.1,"v":0},
     {"n":"2001:db8::4","t":0.1,"v":0}
   ]"#;
    assert_eq!(
        json(off),
        [
            num("2001:db8::3", Some("/"), 0.5, bt),
            num("2001:db8::4", Some("/"), 0.5, bt),
            num("2001:db8::3", Some("/"), 0.0, bt + 0.1),
            num("2001:db8::4", Some("/"), 0.0, bt + 0.1),
        ]
    );
}

#[test]
fn base_fields_resolve() {
    let pack = r#"[
     {"bn":"d/","bt":100,"bu":"W","bv":10,"bs":1000,"n":"p","v":5,"s":2,"ut":60},
     {"n":"q","v":-1,"u":"kW"},
     {"n":"r","vs":"x"},
     {"n":"s"},
     {"bt":1.7e9,"n":"t","t":1.5,"v":0},
     {"bv":0,"bs":0,"n":"u","v":1}
   ]"#;
    let got = json(pack);
    let sum = |mut r: Record, s| {
        r.sum = Some(s);
        r
    };
    let mut first = sum(num("d/p", Some("W"), 15.0, NOW + 100.0), 1002.0);
    first.update_time = Some(60.0);
    let mut bare = num("d/s", Some("W"), 0.0, NOW + 100.0);
    bare.value = None;
    assert_eq!(
        got,
        [
            first,
            sum(num("d/q", Some("kW"), 9.0, NOW + 100.0), 1000.0),
            sum(
                rec("d/r", Some("W"), Value::String("x".into()), NOW + 100.0),
                1000.0
            ),
            sum(bare, 1000.0),
            sum(num("d/t", Some("W"), 10.0, 1.7e9 + 1.5), 1000.0),
            sum(num("d/u", Some("W"), 1.0, 1.7e9), 0.0),
        ]
    );
}

#[test]
fn relative_times_are_relative_to_the_receive_time() {
    let at = |pack: &str| json(pack)[0].time;
    assert_eq!(at(r#"[{"n":"a","v":1}]"#), NOW);
    assert_eq!(at(r#"[{"n":"a","v":1,"t":-30}]"#), NOW - 30.0);
    assert_eq!(
        at(r#"[{"n":"a","v":1,"t":268435455}]"#),
        NOW + 268_435_455.0
    );
    assert_eq!(at(r#"[{"n":"a","v":1,"t":268435456}]"#), 268_435_456.0);
    assert_eq!(
        at(r#"[{"bt":268435000,"n":"a","v":1,"t":456}]"#),
        268_435_456.0
    );
}
