//! Tests of the SenML module as a whole: RFC 8428's examples (`rfc`), packs
//! that must be refused (`invalid`, `cbor`), and properties over generated
//! packs (`properties`).

use super::*;

/// The receive time the tests pass in.
const NOW: f64 = 1_700_000_000.25;

fn rec(name: &str, unit: Option<&str>, value: Value, time: f64) -> Record {
    Record {
        name: name.into(),
        unit: unit.map(Into::into),
        value: Some(value),
        sum: None,
        time,
        update_time: None,
    }
}

fn num(name: &str, unit: Option<&str>, v: f64, time: f64) -> Record {
    rec(name, unit, Value::Number(v), time)
}

fn json(pack: &str) -> Vec<Record> {
    records_from_json(pack.as_bytes(), NOW).unwrap_or_else(|e| panic!("{e}: {pack}"))
}

fn hex(dump: &str) -> Vec<u8> {
    hex::decode(dump.split_whitespace().collect::<String>()).unwrap()
}

mod cbor;
mod invalid;
mod properties;
mod rfc;
