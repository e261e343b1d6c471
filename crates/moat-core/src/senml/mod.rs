//! SenML (RFC 8428): the measurement payloads of `senml` channels, decoded
//! from JSON or CBOR and resolved into normalized [`Record`]s.
//!
//! Two steps, so that each can be used and tested alone:
//!
//! 1. [`parse_json`] / [`parse_cbor`] decode the bytes into a [`Pack`] of
//!    [`RawRecord`]s, checking each field: its type, duplicates, finiteness,
//!    the version (`bver` above [`MAX_VERSION`] is refused), the one-value
//!    rule, and must-understand labels (ending in `_`, refused; any other
//!    unknown label is ignored).
//! 2. [`resolve`] applies the base fields (name, time, unit, value, sum) and
//!    turns times below 2^28 into absolute ones relative to the receive time
//!    the caller passes in: this module never reads the clock.
//!
//! [`records_from_json`] and [`records_from_cbor`] do both;
//! [`records_from_json_object`] maps a flat JSON object to records.
//!
//! Where RFC 8428 leaves room, this module decides:
//!
//! - An empty pack is refused (RFC 8428 §11's CDDL asks for one record or
//!   more), and so is a pack whose records carry only base fields.
//! - A record with base fields and no regular field only sets the base for
//!   the records after it (RFC 8428 §5.1.7 sends one); every other record
//!   needs a value or a sum, and an empty record `{}` is refused.
//! - Base value is added to a numeric `v` present in the record; it is not
//!   applied to records without one (§4.1: "added to the value found in an
//!   entry"). Base sum alone gives a record a sum (§4.5.4).
//! - Records stay in pack order; RFC 8428's "chronological order" of resolved
//!   records is for whoever sorts them (the store indexes by time anyway).
//! - Duplicate labels in a record are refused: JSON leaves them undefined,
//!   and two readers must not see two different packs.
//! - `vd` in JSON is base64url, unpadded as the RFC sends it; padded is
//!   accepted too. In CBOR it is a byte string.
//! - Names are at most [`MAX_NAME_LEN`] bytes after concatenation and units
//!   [`MAX_UNIT_LEN`]: without a cap, one long base name repeated over every
//!   record of a pack could turn a small payload into gigabytes.
//! - At most [`MAX_RECORDS`] records a pack, and unknown fields may nest at
//!   most [`MAX_DEPTH`] levels, so hostile input costs bounded time and memory.

mod cbor;
mod error;
mod json;
mod object;
mod pack;
mod record;

pub use cbor::parse_cbor;
pub use error::SenmlError;
pub use json::parse_json;
pub use object::records_from_json_object;
pub use pack::{Label, Pack, RawRecord, RawValue};
pub use record::{Record, Value, resolve};

/// Most records a pack may hold.
pub const MAX_RECORDS: usize = 10_000;
/// Deepest nesting of arrays and maps inside a field's value (only unknown
/// fields may hold any).
pub const MAX_DEPTH: usize = 16;
/// Longest name, base name included, in bytes.
pub const MAX_NAME_LEN: usize = 256;
/// Longest unit or base unit, in bytes.
pub const MAX_UNIT_LEN: usize = 64;
/// The newest SenML version understood: RFC 8428's (the default of `bver`).
pub const MAX_VERSION: u64 = 10;
/// Times below 2^28 seconds are relative to the receive time (RFC 8428 §4.5.3).
pub const RELATIVE_TIME_LIMIT: f64 = 268_435_456.0;

/// Decodes and resolves a SenML JSON pack received at `received_at`
/// (seconds since the Unix epoch).
pub fn records_from_json(bytes: &[u8], received_at: f64) -> Result<Vec<Record>, SenmlError> {
    resolve(&parse_json(bytes)?, received_at)
}

/// Decodes and resolves a SenML CBOR pack received at `received_at`
/// (seconds since the Unix epoch).
pub fn records_from_cbor(bytes: &[u8], received_at: f64) -> Result<Vec<Record>, SenmlError> {
    resolve(&parse_cbor(bytes)?, received_at)
}

#[cfg(test)]
mod tests;
