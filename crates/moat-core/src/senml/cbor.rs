//! SenML CBOR (`application/senml+cbor`, RFC 8428 §6).
//!
//! The input is walked item by item with `minicbor`'s decoder, borrowing
//! strings and byte strings from it, rather than built into a generic value
//! tree first: this is the hot path, and walking sees every label, so
//! duplicates and unknown labels are handled as in JSON. Our own skip
//! bounds nesting at [`MAX_DEPTH`], and every loop consumes input, so a
//! hostile length header cannot make it spin or allocate.
//!
//! Accepted beyond the letter of §6, since it costs nothing to read: an
//! indefinite-length pack (SenML streams use one), indefinite-length strings,
//! and the self-described CBOR tag (55799) in front of the pack. Numbers may be
//! integers, half, single or double floats, or decimal fractions (tag 4).
//! Text labels are extension labels: CBOR carries the registered fields
//! under their integer labels only, so a text `"v"` is an unknown field.

use std::borrow::Cow;

use minicbor::Decoder;
use minicbor::data::Type;

use super::error::SenmlError;
use super::pack::{Encoding, Label, Pack, RawRecord, RecordBuilder, Scalar};
use super::{MAX_DEPTH, MAX_RECORDS};

/// The self-described CBOR tag (RFC 8949 §3.4.6).
const SELF_DESCRIBED: u64 = 55799;
/// A decimal fraction `[exponent, mantissa]` (RFC 8949 §3.4.4).
const DECIMAL_FRACTION: u64 = 4;

/// Decodes a SenML CBOR pack. Resolve it with [`super::resolve`].
pub fn parse_cbor(bytes: &[u8]) -> Result<Pack<'_>, SenmlError> {
    let mut d = Decoder::new(bytes);
    if d.datatype().map_err(malformed)? == Type::Tag {
        let start = d.position();
        if d.tag().map_err(malformed)?.as_u64() != SELF_DESCRIBED {
            d.set_position(start);
        }
    }
    let len = match d.datatype().map_err(malformed)? {
        Type::Array | Type::ArrayIndef => d.array().map_err(malformed)?,
        _ => return Err(SenmlError::NotAPack),
    };
    if len.is_some_and(|n| n > MAX_RECORDS as u64) {
        return Err(SenmlError::TooManyRecords { max: MAX_RECORDS });
    }
    let mut records = Vec::with_capacity(len.map_or(4, |n| n as usize).min(64));
    loop {
        let index = records.len();
        match len {
            Some(n) if index as u64 == n => break,
            None if at_break(&mut d)? => break,
            _ => {}
        }
        if index == MAX_RECORDS {
            return Err(SenmlError::TooManyRecords { max: MAX_RECORDS });
        }
        records.push(record(&mut d, index)?);
    }
    if d.position() != bytes.len() {
        return Err(SenmlError::TrailingData(bytes.len() - d.position()));
    }
    Pack::new(records)
}

fn record<'b>(d: &mut Decoder<'b>, index: usize) -> Result<RawRecord<'b>, SenmlError> {
    let len = match d.datatype().map_err(malformed)? {
        Type::Map | Type::MapIndef => d.map().map_err(malformed)?,
        t @ (Type::Break | Type::Unknown(_)) => return Err(unexpected(t)),
        _ => return Err(SenmlError::NotARecord { index }),
    };
    let mut record = RecordBuilder::new(index, Encoding::Cbor);
    let mut read = 0u64;
    loop {
        match len {
            Some(n) if read == n => break,
            None if at_break(d)? => break,
            _ => read += 1,
        }
        match d.datatype().map_err(malformed)? {
            t if is_int(t) => {
                let key = d.int().map_err(malformed)?;
                match i64::try_from(key).ok().and_then(Label::from_cbor) {
                    Some(label) => record.set(label, scalar(d, index, 1)?)?,
                    None => skip(d, index, 1)?,
                }
            }
            Type::String | Type::StringIndef => {
                record.unknown(&text(d)?)?;
                skip(d, index, 1)?;
            }
            // A label of another kind is no label SenML knows: ignore it.
            _ => {
                skip(d, index, 1)?;
                skip(d, index, 1)?;
            }
        }
    }
    Ok(record.finish())
}

/// Reads one field value; `depth` is its nesting below the record.
fn scalar<'b>(d: &mut Decoder<'b>, index: usize, depth: usize) -> Result<Scalar<'b>, SenmlError> {
    Ok(match d.datatype().map_err(malformed)? {
        t if is_int(t) => {
            let n = d.int().map_err(malformed)?;
            match u64::try_from(n) {
                Ok(n) => Scalar::UInt(n),
                Err(_) => Scalar::Num(i128::from(n) as f64),
            }
        }
        Type::F16 => {
            // minicbor reads half floats only with its `half` feature; the
            // conversion is a few lines (RFC 8949 Appendix D).
            let at = d.position();
            let bits = match d.input().get(at + 1..at + 3) {
                Some(&[hi, lo]) => u16::from_be_bytes([hi, lo]),
                _ => return Err(SenmlError::Cbor("unexpected end of input".into())),
            };
            d.set_position(at + 3);
            Scalar::Num(f16_to_f64(bits))
        }
        Type::F32 | Type::F64 => Scalar::Num(d.f64().map_err(malformed)?),
        Type::Bool => Scalar::Bool(d.bool().map_err(malformed)?),
        Type::Null | Type::Undefined => {
            d.skip().map_err(malformed)?;
            Scalar::Null
        }
        Type::String | Type::StringIndef => Scalar::Str(text(d)?),
        Type::Bytes => Scalar::Bytes(Cow::Borrowed(d.bytes().map_err(malformed)?)),
        Type::BytesIndef => {
            let mut bytes = Vec::new();
            for chunk in d.bytes_iter().map_err(malformed)? {
                bytes.extend_from_slice(chunk.map_err(malformed)?);
            }
            Scalar::Bytes(Cow::Owned(bytes))
        }
        Type::Tag => {
            let tag = d.tag().map_err(malformed)?;
            if tag.as_u64() == DECIMAL_FRACTION {
                decimal_fraction(d, index, depth + 1)?
            } else {
                skip(d, index, depth + 1)?;
                Scalar::Other
            }
        }
        Type::Array | Type::ArrayIndef | Type::Map | Type::MapIndef => {
            skip(d, index, depth)?;
            Scalar::Nested
        }
        Type::Simple => {
            d.skip().map_err(malformed)?;
            Scalar::Other
        }
        other => return Err(unexpected(other)),
    })
}

/// Reads tag 4's content `[exponent, mantissa]`; anything else there
/// (a bignum mantissa, say) is a value we do not read.
fn decimal_fraction<'b>(
    d: &mut Decoder<'b>,
    index: usize,
    depth: usize,
) -> Result<Scalar<'b>, SenmlError> {
    let start = d.position();
    if d.datatype().map_err(malformed)? != Type::Array || d.array().map_err(malformed)? != Some(2) {
        d.set_position(start);
        skip(d, index, depth)?;
        return Ok(Scalar::Other);
    }
    let mut parts = [0i128; 2];
    let mut integers = true;
    for part in &mut parts {
        if is_int(d.datatype().map_err(malformed)?) {
            *part = i128::from(d.int().map_err(malformed)?);
        } else {
            skip(d, index, depth + 1)?;
            integers = false;
        }
    }
    if !integers {
        return Ok(Scalar::Other);
    }
    let [exponent, mantissa] = parts;
    // Parsing the decimal text rounds once, exactly as a JSON number would.
    Ok(Scalar::Num(
        format!("{mantissa}e{exponent}").parse().unwrap_or(f64::NAN),
    ))
}

/// Skips one item; `depth` counts the arrays, maps and tags around it below
/// the record, and at most [`MAX_DEPTH`] are allowed.
fn skip(d: &mut Decoder<'_>, index: usize, depth: usize) -> Result<(), SenmlError> {
    let datatype = d.datatype().map_err(malformed)?;
    let container = matches!(
        datatype,
        Type::Array | Type::ArrayIndef | Type::Map | Type::MapIndef | Type::Tag
    );
    if container && depth > MAX_DEPTH {
        return Err(SenmlError::TooDeep {
            index,
            max: MAX_DEPTH,
        });
    }
    let (len, per_entry) = match datatype {
        Type::Array | Type::ArrayIndef => (d.array().map_err(malformed)?, 1),
        Type::Map | Type::MapIndef => (d.map().map_err(malformed)?, 2),
        Type::Tag => {
            d.tag().map_err(malformed)?;
            return skip(d, index, depth + 1);
        }
        Type::Break | Type::Unknown(_) => return Err(unexpected(datatype)),
        // Scalars and (possibly chunked) strings: minicbor skips them flat.
        _ => return d.skip().map_err(malformed),
    };
    let mut read = 0u64;
    loop {
        match len {
            Some(n) if read == n => return Ok(()),
            None if at_break(d)? => return Ok(()),
            _ => read += 1,
        }
        for _ in 0..per_entry {
            skip(d, index, depth + 1)?;
        }
    }
}

/// Consumes the break that ends an indefinite-length item, if it is next.
fn at_break(d: &mut Decoder<'_>) -> Result<bool, SenmlError> {
    if d.datatype().map_err(malformed)? == Type::Break {
        d.set_position(d.position() + 1);
        return Ok(true);
    }
    Ok(false)
}

fn text<'b>(d: &mut Decoder<'b>) -> Result<Cow<'b, str>, SenmlError> {
    if d.datatype().map_err(malformed)? == Type::String {
        return Ok(Cow::Borrowed(d.str().map_err(malformed)?));
    }
    let mut s = String::new();
    for chunk in d.str_iter().map_err(malformed)? {
        s.push_str(chunk.map_err(malformed)?);
    }
    Ok(Cow::Owned(s))
}

fn f16_to_f64(bits: u16) -> f64 {
    let exponent = i32::from((bits >> 10) & 0x1f);
    let mantissa = f64::from(bits & 0x3ff);
    let magnitude = match exponent {
        0 => mantissa * 2f64.powi(-24),
        31 if mantissa == 0.0 => f64::INFINITY,
        31 => f64::NAN,
        e => (1024.0 + mantissa) * 2f64.powi(e - 25),
    };
    if bits & 0x8000 != 0 {
        -magnitude
    } else {
        magnitude
    }
}

fn is_int(t: Type) -> bool {
    matches!(
        t,
        Type::U8
            | Type::U16
            | Type::U32
            | Type::U64
            | Type::I8
            | Type::I16
            | Type::I32
            | Type::I64
            | Type::Int
    )
}

fn malformed(e: minicbor::decode::Error) -> SenmlError {
    SenmlError::Cbor(e.to_string())
}

fn unexpected(t: Type) -> SenmlError {
    SenmlError::Cbor(format!("unexpected {t}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn half_floats() {
        for (bits, v) in [
            (0x0000, 0.0),
            (0x8000, -0.0),
            (0x3c00, 1.0),
            (0x3e00, 1.5),
            (0x7bff, 65504.0),
            (0x0001, 5.960464477539063e-8),
            (0x0400, 0.00006103515625),
            (0xc400, -4.0),
            (0x7c00, f64::INFINITY),
            (0xfc00, f64::NEG_INFINITY),
        ] {
            assert_eq!(f16_to_f64(bits), v, "{bits:#06x}");
        }
        assert!(f16_to_f64(0x7e00).is_nan());
    }
}
