//! Resolution (RFC 8428 §4.6): applying the base fields of a pack to its
//! records, giving the normalized measurements the pipeline stores.

use super::error::SenmlError;
use super::pack::{Pack, RawRecord, RawValue};
use super::{MAX_NAME_LEN, RELATIVE_TIME_LIMIT};

/// One measurement, resolved: no base fields, an absolute time.
#[derive(Clone, Debug, PartialEq)]
pub struct Record {
    /// Base name and name concatenated; checked against RFC 8428 §4.5.1.
    pub name: String,
    pub unit: Option<String>,
    /// `None` only when the record carries a sum.
    pub value: Option<Value>,
    /// The integrated sum of the value over time (unit × seconds).
    pub sum: Option<f64>,
    /// Seconds since the Unix epoch (UTC, leap seconds excluded), with a
    /// fraction: SenML's own model, precise to the microsecond for centuries.
    pub time: f64,
    /// Longest time, in seconds, before the sensor sends a new reading.
    pub update_time: Option<f64>,
}

/// A measurement's value: exactly one of SenML's four kinds.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    Number(f64),
    String(String),
    Bool(bool),
    Data(Vec<u8>),
}

/// The base fields in force at one point of the pack: each applies from the
/// record that carries it up to the next record that carries the same field.
#[derive(Default)]
struct Base<'p> {
    name: &'p str,
    time: f64,
    unit: Option<&'p str>,
    value: f64,
    sum: Option<f64>,
}

impl<'p> Base<'p> {
    fn update(&mut self, r: &'p RawRecord<'_>) {
        if let Some(name) = &r.base_name {
            self.name = name;
        }
        if let Some(time) = r.base_time {
            self.time = time;
        }
        if let Some(unit) = &r.base_unit {
            self.unit = Some(unit);
        }
        if let Some(value) = r.base_value {
            self.value = value;
        }
        if let Some(sum) = r.base_sum {
            self.sum = Some(sum);
        }
    }
}

/// Resolves a pack into measurements, in the pack's order.
///
/// `received_at` is when the platform received the pack, in seconds since the
/// Unix epoch: times below 2^28 are relative to it (RFC 8428 §4.5.3). The
/// clock is never read here.
///
/// A record that carries base fields and no regular field (no name, unit,
/// value, sum, time or update time) only sets the base for the records after
/// it, and yields no measurement: RFC 8428 §5.1.7 sends one. Any other record
/// needs a value or a sum (§4.3).
pub fn resolve(pack: &Pack<'_>, received_at: f64) -> Result<Vec<Record>, SenmlError> {
    let mut base = Base::default();
    let mut out = Vec::with_capacity(pack.records().len());
    for (index, r) in pack.records().iter().enumerate() {
        base.update(r);
        if !r.has_regular_fields() {
            if r.has_base_fields() {
                continue;
            }
            return Err(SenmlError::NoValue { index });
        }
        out.push(resolve_one(index, r, &base, received_at)?);
    }
    if out.is_empty() {
        return Err(SenmlError::NoRecords);
    }
    Ok(out)
}

fn resolve_one(
    index: usize,
    r: &RawRecord<'_>,
    base: &Base<'_>,
    received_at: f64,
) -> Result<Record, SenmlError> {
    use super::Label;
    let finite = |v: f64, label| {
        if v.is_finite() {
            Ok(v)
        } else {
            Err(SenmlError::NotFinite { index, label })
        }
    };
    let name = full_name(index, base.name, r.name.as_deref().unwrap_or(""))?;
    // Base value applies to a numeric value found in the record (§4.1),
    // never to a string, boolean or data value, and does not make one up.
    let value = match &r.value {
        None => None,
        Some(RawValue::Number(v)) => Some(Value::Number(finite(v + base.value, Label::Value)?)),
        Some(RawValue::String(s)) => Some(Value::String(s.as_ref().to_owned())),
        Some(RawValue::Bool(b)) => Some(Value::Bool(*b)),
        Some(RawValue::Data(d)) => Some(Value::Data(d.as_ref().to_owned())),
    };
    // A missing sum or base sum counts as zero, as long as one is present (§4.5.4).
    let sum = match (r.sum, base.sum) {
        (None, None) => None,
        (s, b) => Some(finite(s.unwrap_or(0.0) + b.unwrap_or(0.0), Label::Sum)?),
    };
    if value.is_none() && sum.is_none() {
        return Err(SenmlError::NoValue { index });
    }
    let mut time = finite(base.time + r.time.unwrap_or(0.0), Label::Time)?;
    if time < RELATIVE_TIME_LIMIT {
        time = finite(received_at + time, Label::Time)?;
    }
    Ok(Record {
        name,
        unit: r.unit.as_deref().or(base.unit).map(str::to_owned),
        value,
        sum,
        time,
        update_time: r.update_time,
    })
}

/// Concatenates base name and name, checking the result (RFC 8428 §4.5.1):
/// only `A-Z a-z 0-9 - : . / _`, starting with a letter or a digit.
pub(crate) fn full_name(index: usize, base: &str, name: &str) -> Result<String, SenmlError> {
    let len = base.len() + name.len();
    if len == 0 {
        return Err(SenmlError::EmptyName { index });
    }
    if len > MAX_NAME_LEN {
        return Err(SenmlError::NameTooLong {
            index,
            max: MAX_NAME_LEN,
        });
    }
    let mut bytes = base.bytes().chain(name.bytes());
    let starts_well = bytes.next().is_some_and(|b| b.is_ascii_alphanumeric());
    let all_valid = base.bytes().chain(name.bytes()).all(name_byte);
    let full = || {
        let mut s = String::with_capacity(len);
        s.push_str(base);
        s.push_str(name);
        s
    };
    if !all_valid {
        return Err(SenmlError::InvalidName {
            index,
            name: full(),
        });
    }
    if !starts_well {
        return Err(SenmlError::BadNameStart {
            index,
            name: full(),
        });
    }
    Ok(full())
}

fn name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b':' | b'.' | b'/' | b'_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_rfc_8428() {
        for ok in [
            "a",
            "0",
            "urn:dev:ow:10e2073a01080063:temp",
            "2001:db8::2/t_1.x-y",
        ] {
            assert_eq!(full_name(0, "", ok).unwrap(), ok);
        }
        assert_eq!(full_name(0, "dev/", "t").unwrap(), "dev/t");
        for (base, name, err) in [
            ("", "", "record 0: the name is empty"),
            ("", "x y", r#"record 0: name "x y" has invalid characters"#),
            ("", "é", r#"record 0: name "é" has invalid characters"#),
            ("", "a\n", r#"record 0: name "a\n" has invalid characters"#),
            (
                "",
                "_a",
                r#"record 0: name "_a" must start with a letter or a digit"#,
            ),
            (
                "/",
                "a",
                r#"record 0: name "/a" must start with a letter or a digit"#,
            ),
        ] {
            assert_eq!(full_name(0, base, name).unwrap_err().to_string(), err);
        }
        let long = "a".repeat(MAX_NAME_LEN);
        assert!(full_name(0, &long, "").is_ok());
        assert_eq!(
            full_name(2, &long, "b").unwrap_err(),
            SenmlError::NameTooLong {
                index: 2,
                max: MAX_NAME_LEN
            }
        );
    }
}
