//! How a message's fields map to columns and back: protocols and content
//! types as small integer codes, record times as integer microseconds, and a
//! record's value spread over one column per kind. Ids are stored as their
//! 16 bytes (`Uuid::as_bytes`), which needs no helper.

use moat_core::message::{ContentType, Protocol};
use moat_core::senml::Value;
use moat_core::store::StoreError;

/// The stored code of each protocol. These are on disk: add new ones, never
/// renumber or reuse one.
const PROTOCOLS: [(Protocol, i64); 4] = [
    (Protocol::Http, 1),
    (Protocol::Websocket, 2),
    (Protocol::Mqtt, 3),
    (Protocol::Coap, 4),
];

/// The stored code of each content type; on disk too, so just as fixed.
const CONTENT_TYPES: [(ContentType, i64); 4] = [
    (ContentType::SenmlJson, 1),
    (ContentType::SenmlCbor, 2),
    (ContentType::Json, 3),
    (ContentType::OctetStream, 4),
];

pub(super) fn protocol_code(p: Protocol) -> i64 {
    code(&PROTOCOLS, p)
}

pub(super) fn protocol(code: i64) -> Result<Protocol, StoreError> {
    decode(&PROTOCOLS, code, "protocol")
}

pub(super) fn content_type_code(c: ContentType) -> i64 {
    code(&CONTENT_TYPES, c)
}

pub(super) fn content_type(code: i64) -> Result<ContentType, StoreError> {
    decode(&CONTENT_TYPES, code, "content type")
}

fn code<T: PartialEq + Copy>(table: &[(T, i64)], t: T) -> i64 {
    table
        .iter()
        .find(|(v, _)| *v == t)
        .map(|(_, c)| *c)
        .expect("every variant has a code")
}

fn decode<T: Copy>(table: &[(T, i64)], code: i64, what: &str) -> Result<T, StoreError> {
    table
        .iter()
        .find(|(_, c)| *c == code)
        .map(|(v, _)| *v)
        .ok_or_else(|| StoreError::Backend(format!("unknown {what} code {code} in the store")))
}

/// SenML seconds to whole microseconds, rounded: SenML times are precise to
/// the microsecond at best, and integers index and compare exactly.
pub(super) fn micros(seconds: f64) -> i64 {
    (seconds * 1e6).round() as i64
}

pub(super) fn seconds(micros: i64) -> f64 {
    micros as f64 / 1e6
}

/// A record's value as the `v`, `vs`, `vb` and `vd` columns.
pub(super) struct ValueColumns<'a> {
    pub(super) v: Option<f64>,
    pub(super) vs: Option<&'a str>,
    pub(super) vb: Option<bool>,
    pub(super) vd: Option<&'a [u8]>,
}

pub(super) fn value_columns(value: Option<&Value>) -> ValueColumns<'_> {
    let mut c = ValueColumns {
        v: None,
        vs: None,
        vb: None,
        vd: None,
    };
    match value {
        Some(Value::Number(n)) => c.v = Some(*n),
        Some(Value::String(s)) => c.vs = Some(s),
        Some(Value::Bool(b)) => c.vb = Some(*b),
        Some(Value::Data(d)) => c.vd = Some(d),
        None => {}
    }
    c
}

/// The inverse of [`value_columns`]: the first column set wins (only one is
/// ever written).
pub(super) fn value(
    v: Option<f64>,
    vs: Option<String>,
    vb: Option<bool>,
    vd: Option<Vec<u8>>,
) -> Option<Value> {
    v.map(Value::Number)
        .or_else(|| vs.map(Value::String))
        .or_else(|| vb.map(Value::Bool))
        .or_else(|| vd.map(Value::Data))
}
