//! Flat JSON objects (`{"temperature":21.5,"on":true,"label":"x"}`), the
//! payload of devices too simple to speak SenML, mapped to the same records.
//!
//! Each member becomes one record, in the object's order: the key is the
//! name (checked by SenML's rules, no base name), the value is a number, a
//! string or a boolean, the time is when the payload was received, and there
//! is no unit. Nested objects and arrays are refused rather than flattened:
//! flattening would invent names (`a/0/b`?) that the device author never
//! chose, and a payload shaped like that belongs on a `json` channel. `null`
//! is refused too, as a SenML record without a value is. Duplicate keys are
//! refused, since JSON leaves their meaning open.

use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, Visitor};

use super::error::SenmlError;
use super::json::{Ctx, Key, ValueSeed};
use super::pack::Scalar;
use super::record::full_name;
use super::{MAX_RECORDS, Record, Value};

/// Maps a flat JSON object to records received at `received_at` (seconds
/// since the Unix epoch).
pub fn records_from_json_object(bytes: &[u8], received_at: f64) -> Result<Vec<Record>, SenmlError> {
    let mut ctx = Ctx::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = ObjectSeed {
        ctx: &mut ctx,
        received_at,
    }
    .deserialize(&mut de)
    .and_then(|records| de.end().map(|()| records));
    let records = parsed.map_err(|e| ctx.error(e, SenmlError::NotAnObject))?;
    if records.is_empty() {
        return Err(SenmlError::NoRecords);
    }
    unique_names(&records)?;
    Ok(records)
}

struct ObjectSeed<'c> {
    ctx: &'c mut Ctx,
    received_at: f64,
}

impl<'de> DeserializeSeed<'de> for ObjectSeed<'_> {
    type Value = Vec<Record>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ObjectSeed<'_> {
    type Value = Vec<Record>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.ctx.open();
        let mut records = Vec::with_capacity(4);
        loop {
            let index = records.len();
            if index == MAX_RECORDS {
                if map.next_key::<IgnoredAny>()?.is_some() {
                    let max = MAX_RECORDS;
                    return Err(self.ctx.fail(SenmlError::TooManyRecords { max }));
                }
                break;
            }
            let Some(Key(key)) = map.next_key()? else {
                break;
            };
            let scalar = map.next_value_seed(ValueSeed {
                ctx: &mut *self.ctx,
                index,
                depth: 1,
            })?;
            let record = member(index, &key, scalar, self.received_at);
            records.push(record.map_err(|e| self.ctx.fail(e))?);
        }
        Ok(records)
    }
}

fn member(index: usize, key: &str, scalar: Scalar<'_>, time: f64) -> Result<Record, SenmlError> {
    let name = full_name(index, "", key)?;
    let value = match scalar {
        Scalar::UInt(v) => Value::Number(v as f64),
        Scalar::Num(v) => Value::Number(v),
        Scalar::Str(s) => Value::String(s.into_owned()),
        Scalar::Bool(b) => Value::Bool(b),
        Scalar::Null => return Err(SenmlError::Null { index, key: name }),
        Scalar::Nested | Scalar::Bytes(_) | Scalar::Other => {
            return Err(SenmlError::Nested { index, key: name });
        }
    };
    Ok(Record {
        name,
        unit: None,
        value: Some(value),
        sum: None,
        time,
        update_time: None,
    })
}

/// Refuses a key given twice: a quadratic scan for the usual handful of
/// members, a sort beyond (a hostile object may have thousands).
fn unique_names(records: &[Record]) -> Result<(), SenmlError> {
    let duplicate = |index: usize, name: &str| SenmlError::DuplicateName {
        index,
        name: name.to_owned(),
    };
    if records.len() <= 16 {
        for (index, r) in records.iter().enumerate() {
            if records[..index].iter().any(|p| p.name == r.name) {
                return Err(duplicate(index, &r.name));
            }
        }
        return Ok(());
    }
    let mut names: Vec<(&str, usize)> = records
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    names.sort_unstable();
    match names.windows(2).find(|w| w[0].0 == w[1].0) {
        Some(w) => Err(duplicate(w[1].1, w[1].0)),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: f64 = 1_700_000_000.5;

    fn record(name: &str, value: Value) -> Record {
        Record {
            name: name.into(),
            unit: None,
            value: Some(value),
            sum: None,
            time: NOW,
            update_time: None,
        }
    }

    #[test]
    fn members_become_records_in_order() {
        let records = records_from_json_object(
            br#"{"temperature":21.5,"on":true,"label":"x","count":-3,"big":18446744073709551615}"#,
            NOW,
        )
        .unwrap();
        assert_eq!(
            records,
            [
                record("temperature", Value::Number(21.5)),
                record("on", Value::Bool(true)),
                record("label", Value::String("x".into())),
                record("count", Value::Number(-3.0)),
                record("big", Value::Number(18446744073709551615.0)),
            ]
        );
    }

    #[test]
    fn refuses_what_is_not_a_flat_object_of_values() {
        let many: String = format!(
            "{{{}}}",
            (0..=MAX_RECORDS)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        let twenty_dup = format!(
            "{{{},\"k3\":2}}",
            (0..20)
                .map(|i| format!("\"k{i}\":1"))
                .collect::<Vec<_>>()
                .join(",")
        );
        for (input, err) in [
            ("[]", "expected a JSON object of measurements"),
            ("1", "expected a JSON object of measurements"),
            ("{}", "the payload holds no record"),
            (
                r#"{"a":{"b":1}}"#,
                r#"record 0: field "a" holds an object or an array; only flat objects map to records"#,
            ),
            (
                r#"{"a":1,"b":[1]}"#,
                r#"record 1: field "b" holds an object or an array; only flat objects map to records"#,
            ),
            (r#"{"a":null}"#, r#"record 0: field "a" is null"#),
            (
                r#"{"a b":1}"#,
                r#"record 0: name "a b" has invalid characters"#,
            ),
            ("{\"\":1}", "record 0: the name is empty"),
            (r#"{"a":1,"a":2}"#, r#"record 1: name "a" appears twice"#),
            (&twenty_dup, r#"record 20: name "k3" appears twice"#),
            (&many, "more than 10000 records"),
        ] {
            let got = records_from_json_object(input.as_bytes(), NOW).unwrap_err();
            assert_eq!(got.to_string(), err, "{input:.80}");
        }
        let deep = format!("{{\"a\":{}{}}}", "[".repeat(100), "]".repeat(100));
        assert_eq!(
            records_from_json_object(deep.as_bytes(), NOW).unwrap_err(),
            SenmlError::TooDeep { index: 0, max: 16 }
        );
        assert!(matches!(
            records_from_json_object(b"{\"a\":1", NOW),
            Err(SenmlError::Json(_))
        ));
    }
}
