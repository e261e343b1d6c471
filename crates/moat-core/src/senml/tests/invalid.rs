//! SenML JSON packs that must be refused, with the message the sender gets.

use super::*;

#[test]
fn invalid_json_packs() {
    let many = format!(
        "[{}]",
        vec![r#"{"n":"a","v":1}"#; MAX_RECORDS + 1].join(",")
    );
    let at_max = format!("[{}]", vec![r#"{"n":"a","v":1}"#; MAX_RECORDS].join(","));
    assert_eq!(json(&at_max).len(), MAX_RECORDS);
    let deep = |levels: usize| {
        format!(
            r#"[{{"n":"a","v":1,"x":{}{}}}]"#,
            "[".repeat(levels),
            "]".repeat(levels)
        )
    };
    assert!(records_from_json(deep(MAX_DEPTH).as_bytes(), NOW).is_ok());
    let long_name = format!(r#"[{{"bn":"{}","n":"b","v":1}}]"#, "a".repeat(MAX_NAME_LEN));
    let long_unit = format!(
        r#"[{{"n":"a","u":"{}","v":1}}]"#,
        "W".repeat(MAX_UNIT_LEN + 1)
    );
    let cases: &[(&str, &str)] = &[
        (
            r#"[{"n":"x y","v":1}]"#,
            r#"record 0: name "x y" has invalid characters"#,
        ),
        (
            r#"[{"n":"a","v":1},{"bn":"a b/","n":"c","v":1}]"#,
            r#"record 1: name "a b/c" has invalid characters"#,
        ),
        (
            r#"[{"n":"-a","v":1}]"#,
            r#"record 0: name "-a" must start with a letter or a digit"#,
        ),
        (r#"[{"v":1}]"#, "record 0: the name is empty"),
        (&long_name, "record 0: the name is longer than 256 bytes"),
        (&long_unit, r#"record 0: field "u" is longer than 64 bytes"#),
        (
            r#"[{"n":"a","v":1,"vs":"x"}]"#,
            r#"record 0: more than one of "v", "vs", "vb" and "vd""#,
        ),
        (
            r#"[{"n":"a","vb":true,"vd":"AA"}]"#,
            r#"record 0: more than one of "v", "vs", "vb" and "vd""#,
        ),
        (r#"[{"n":"a"}]"#, "record 0: no value and no sum"),
        (
            r#"[{"n":"a","v":1},{"n":"b","t":1}]"#,
            "record 1: no value and no sum",
        ),
        (r#"[{}]"#, "record 0: no value and no sum"),
        (r#"[{"x":1}]"#, "record 0: no value and no sum"),
        (r#"[{"bv":1},{"n":"a"}]"#, "record 1: no value and no sum"),
        (r#"[{"bn":"a"}]"#, "the payload holds no record"),
        ("[]", "the payload holds no record"),
        (
            r#"[{"bver":11,"n":"a","v":1}]"#,
            "record 0: SenML version 11 is newer than 10, the newest understood",
        ),
        (
            r#"[{"bver":0,"n":"a","v":1}]"#,
            r#"record 0: field "bver" must be a positive integer"#,
        ),
        (
            r#"[{"bver":5.5,"n":"a","v":1}]"#,
            r#"record 0: field "bver" must be a positive integer"#,
        ),
        (
            r#"[{"bver":"10","n":"a","v":1}]"#,
            r#"record 0: field "bver" must be a positive integer"#,
        ),
        (
            r#"[{"n":"a","v":1,"foo_":1}]"#,
            r#"record 0: field "foo_" must be understood, and is not supported"#,
        ),
        (
            r#"[{"n":"a","v":1,"bfoo_":[1]}]"#,
            r#"record 0: field "bfoo_" must be understood, and is not supported"#,
        ),
        (
            r#"[{"n":"a","vd":"aGk+Cg"}]"#,
            r#"record 0: "vd" is not base64url"#,
        ),
        (
            r#"[{"n":"a","vd":"aGk/Cg"}]"#,
            r#"record 0: "vd" is not base64url"#,
        ),
        (
            r#"[{"n":"a","vd":"a"}]"#,
            r#"record 0: "vd" is not base64url"#,
        ),
        (
            r#"[{"n":"a","vd":"aGkgC"}]"#,
            r#"record 0: "vd" is not base64url"#,
        ),
        (
            r#"[{"n":"a","v":"1"}]"#,
            r#"record 0: field "v" must be a number"#,
        ),
        (
            r#"[{"n":"a","v":null}]"#,
            r#"record 0: field "v" must be a number"#,
        ),
        (
            r#"[{"n":"a","v":[1]}]"#,
            r#"record 0: field "v" must be a number"#,
        ),
        (
            r#"[{"n":1,"v":1}]"#,
            r#"record 0: field "n" must be a string"#,
        ),
        (
            r#"[{"n":"a","vb":1}]"#,
            r#"record 0: field "vb" must be a boolean"#,
        ),
        (
            r#"[{"n":"a","vs":true}]"#,
            r#"record 0: field "vs" must be a string"#,
        ),
        (
            r#"[{"n":"a","vd":[104,105]}]"#,
            r#"record 0: field "vd" must be a base64url string"#,
        ),
        (
            r#"[{"n":"a","t":"now","v":1}]"#,
            r#"record 0: field "t" must be a number"#,
        ),
        (
            r#"[{"n":"a","v":1,"v":2}]"#,
            r#"record 0: field "v" appears twice"#,
        ),
        (
            r#"[{"n":"a","n":"a","v":1}]"#,
            r#"record 0: field "n" appears twice"#,
        ),
        (
            r#"[{"bv":1e308,"n":"a","v":1e308}]"#,
            r#"record 0: field "v" is not a finite number"#,
        ),
        (
            r#"[{"bt":-1e308,"n":"a","v":1,"t":-1e308}]"#,
            r#"record 0: field "t" is not a finite number"#,
        ),
        (
            r#"[{"bs":1e308,"n":"a","s":1e308}]"#,
            r#"record 0: field "s" is not a finite number"#,
        ),
        (&many, "more than 10000 records"),
        (
            r#"{"n":"a","v":1}"#,
            "a SenML pack must be an array of records",
        ),
        ("1", "a SenML pack must be an array of records"),
        (r#"[{"n":"a","v":1},1]"#, "record 1: not an object"),
        (r#"[[]]"#, "record 0: not an object"),
    ];
    for (pack, err) in cases {
        let got = records_from_json(pack.as_bytes(), NOW).unwrap_err();
        assert_eq!(got.to_string(), *err, "{pack:.100}");
    }
    assert_eq!(
        records_from_json(deep(MAX_DEPTH + 1).as_bytes(), NOW).unwrap_err(),
        SenmlError::TooDeep {
            index: 0,
            max: MAX_DEPTH
        }
    );
    for malformed in [
        "",
        "[",
        r#"[{"n":"a","v":1}] x"#,
        r#"[{"n":"a","v":1e400}]"#,
        r#"[{"n":"a","v":NaN}]"#,
        "[{\"n\":\"\u{0}\",\"v\":1}]",
        r#"[{"n":"a","v":1,}]"#,
    ] {
        let got = records_from_json(malformed.as_bytes(), NOW);
        assert!(
            matches!(got, Err(SenmlError::Json(_))),
            "{malformed}: {got:?}"
        );
    }
    let not_utf8 = b"[{\"n\":\"\xff\",\"v\":1}]";
    assert!(matches!(
        records_from_json(not_utf8, NOW),
        Err(SenmlError::Json(_))
    ));
}
