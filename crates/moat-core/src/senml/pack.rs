//! The pack as it was sent: records whose fields are typed and checked one by
//! one, before the base fields are applied by [`super::resolve`].
//!
//! Both decoders (JSON and CBOR) hand every field they meet to one
//! [`RecordBuilder`], so the checks on a field's type, on duplicates, on the
//! version and on the one-value rule are written once for both encodings.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};

use super::error::SenmlError;
use super::{MAX_UNIT_LEN, MAX_VERSION};

/// A field registered by RFC 8428 (§12.2), known by its JSON label and its
/// CBOR integer label (§6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Label {
    BaseVersion,
    BaseName,
    BaseTime,
    BaseUnit,
    BaseValue,
    BaseSum,
    Name,
    Unit,
    Value,
    StringValue,
    BoolValue,
    Sum,
    Time,
    UpdateTime,
    DataValue,
}

impl Label {
    /// The JSON label: `bn`, `v`, …
    pub fn json(self) -> &'static str {
        match self {
            Label::BaseVersion => "bver",
            Label::BaseName => "bn",
            Label::BaseTime => "bt",
            Label::BaseUnit => "bu",
            Label::BaseValue => "bv",
            Label::BaseSum => "bs",
            Label::Name => "n",
            Label::Unit => "u",
            Label::Value => "v",
            Label::StringValue => "vs",
            Label::BoolValue => "vb",
            Label::Sum => "s",
            Label::Time => "t",
            Label::UpdateTime => "ut",
            Label::DataValue => "vd",
        }
    }

    /// The CBOR integer label.
    pub fn cbor(self) -> i64 {
        match self {
            Label::BaseVersion => -1,
            Label::BaseName => -2,
            Label::BaseTime => -3,
            Label::BaseUnit => -4,
            Label::BaseValue => -5,
            Label::BaseSum => -6,
            Label::Name => 0,
            Label::Unit => 1,
            Label::Value => 2,
            Label::StringValue => 3,
            Label::BoolValue => 4,
            Label::Sum => 5,
            Label::Time => 6,
            Label::UpdateTime => 7,
            Label::DataValue => 8,
        }
    }

    pub(crate) fn from_json(label: &str) -> Option<Label> {
        Some(match label {
            "bver" => Label::BaseVersion,
            "bn" => Label::BaseName,
            "bt" => Label::BaseTime,
            "bu" => Label::BaseUnit,
            "bv" => Label::BaseValue,
            "bs" => Label::BaseSum,
            "n" => Label::Name,
            "u" => Label::Unit,
            "v" => Label::Value,
            "vs" => Label::StringValue,
            "vb" => Label::BoolValue,
            "s" => Label::Sum,
            "t" => Label::Time,
            "ut" => Label::UpdateTime,
            "vd" => Label::DataValue,
            _ => return None,
        })
    }

    pub(crate) fn from_cbor(label: i64) -> Option<Label> {
        Some(match label {
            -1 => Label::BaseVersion,
            -2 => Label::BaseName,
            -3 => Label::BaseTime,
            -4 => Label::BaseUnit,
            -5 => Label::BaseValue,
            -6 => Label::BaseSum,
            0 => Label::Name,
            1 => Label::Unit,
            2 => Label::Value,
            3 => Label::StringValue,
            4 => Label::BoolValue,
            5 => Label::Sum,
            6 => Label::Time,
            7 => Label::UpdateTime,
            8 => Label::DataValue,
            _ => return None,
        })
    }

    /// What the field must hold, for error messages.
    fn expected(self, encoding: Encoding) -> &'static str {
        match self {
            Label::BaseName | Label::BaseUnit | Label::Name | Label::Unit | Label::StringValue => {
                "a string"
            }
            Label::BaseTime
            | Label::BaseValue
            | Label::BaseSum
            | Label::Value
            | Label::Sum
            | Label::Time
            | Label::UpdateTime => "a number",
            Label::BaseVersion => "a positive integer",
            Label::BoolValue => "a boolean",
            Label::DataValue => match encoding {
                Encoding::Json => "a base64url string",
                Encoding::Cbor => "a byte string",
            },
        }
    }

    fn bit(self) -> u16 {
        1 << (self as u16)
    }
}

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.json())
    }
}

/// Which encoding a pack came in: it decides how `vd` is carried.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Encoding {
    Json,
    Cbor,
}

/// A field's value as a decoder read it, before it is checked against its label.
#[derive(Debug)]
pub(crate) enum Scalar<'a> {
    /// A non-negative integer, kept exact for `bver`.
    UInt(u64),
    Num(f64),
    Str(Cow<'a, str>),
    Bool(bool),
    Bytes(Cow<'a, [u8]>),
    Null,
    /// An array or a map (already skipped over).
    Nested,
    /// Anything else: a CBOR tag or simple value we do not read.
    Other,
}

/// The value of a record as sent.
#[derive(Clone, Debug, PartialEq)]
pub enum RawValue<'a> {
    Number(f64),
    String(Cow<'a, str>),
    Bool(bool),
    Data(Cow<'a, [u8]>),
}

/// One record as sent. Strings borrow from the input where they can.
///
/// Every number is finite, `base_version` is at most [`MAX_VERSION`], units
/// are at most [`MAX_UNIT_LEN`] bytes: the decoders check these.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct RawRecord<'a> {
    pub base_version: Option<u64>,
    pub base_name: Option<Cow<'a, str>>,
    pub base_time: Option<f64>,
    pub base_unit: Option<Cow<'a, str>>,
    pub base_value: Option<f64>,
    pub base_sum: Option<f64>,
    pub name: Option<Cow<'a, str>>,
    pub unit: Option<Cow<'a, str>>,
    pub value: Option<RawValue<'a>>,
    pub sum: Option<f64>,
    pub time: Option<f64>,
    pub update_time: Option<f64>,
}

impl RawRecord<'_> {
    /// Whether the record carries any base field (version included).
    pub fn has_base_fields(&self) -> bool {
        self.base_version.is_some()
            || self.base_name.is_some()
            || self.base_time.is_some()
            || self.base_unit.is_some()
            || self.base_value.is_some()
            || self.base_sum.is_some()
    }

    /// Whether the record carries any regular (non-base) field.
    pub fn has_regular_fields(&self) -> bool {
        self.name.is_some()
            || self.unit.is_some()
            || self.value.is_some()
            || self.sum.is_some()
            || self.time.is_some()
            || self.update_time.is_some()
    }
}

/// A decoded, not yet resolved, SenML pack: at least one record, at most
/// [`super::MAX_RECORDS`]. Only the decoders make one, so [`super::resolve`]
/// can rely on the checks listed on [`RawRecord`].
#[derive(Clone, Debug, PartialEq)]
pub struct Pack<'a> {
    records: Vec<RawRecord<'a>>,
}

impl<'a> Pack<'a> {
    pub(crate) fn new(records: Vec<RawRecord<'a>>) -> Result<Self, SenmlError> {
        if records.is_empty() {
            return Err(SenmlError::NoRecords);
        }
        Ok(Self { records })
    }

    pub fn records(&self) -> &[RawRecord<'a>] {
        &self.records
    }
}

/// `vd` in JSON: the URL-safe alphabet of RFC 4648 §5. RFC 8428 says the
/// sender omits the padding; we also take it padded (no ambiguity arises).
const BASE64URL: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Collects one record's fields, checking each as it arrives.
pub(crate) struct RecordBuilder<'a> {
    index: usize,
    encoding: Encoding,
    /// One bit per [`Label`] already seen, to refuse duplicates.
    seen: u16,
    record: RawRecord<'a>,
}

impl<'a> RecordBuilder<'a> {
    pub(crate) fn new(index: usize, encoding: Encoding) -> Self {
        Self {
            index,
            encoding,
            seen: 0,
            record: RawRecord::default(),
        }
    }

    pub(crate) fn finish(self) -> RawRecord<'a> {
        self.record
    }

    /// Checks a field whose label no decoder knows: RFC 8428 §4.4 says to
    /// ignore it, unless its label ends in `_` ("must understand").
    pub(crate) fn unknown(&self, label: &str) -> Result<(), SenmlError> {
        if label.ends_with('_') {
            return Err(SenmlError::MustUnderstand {
                index: self.index,
                label: super::error::clip(label),
            });
        }
        Ok(())
    }

    pub(crate) fn set(&mut self, label: Label, scalar: Scalar<'a>) -> Result<(), SenmlError> {
        let index = self.index;
        if self.seen & label.bit() != 0 {
            return Err(SenmlError::DuplicateField { index, label });
        }
        self.seen |= label.bit();
        let wrong = || SenmlError::WrongType {
            index,
            label,
            expected: label.expected(self.encoding),
        };
        let r = &mut self.record;
        match label {
            Label::BaseName => r.base_name = Some(string(scalar).ok_or_else(wrong)?),
            Label::Name => r.name = Some(string(scalar).ok_or_else(wrong)?),
            Label::BaseUnit | Label::Unit => {
                let unit = string(scalar).ok_or_else(wrong)?;
                if unit.len() > MAX_UNIT_LEN {
                    return Err(SenmlError::TooLong {
                        index,
                        label,
                        max: MAX_UNIT_LEN,
                    });
                }
                if label == Label::Unit {
                    r.unit = Some(unit);
                } else {
                    r.base_unit = Some(unit);
                }
            }
            Label::BaseTime => r.base_time = Some(number(index, label, scalar, wrong)?),
            Label::BaseValue => r.base_value = Some(number(index, label, scalar, wrong)?),
            Label::BaseSum => r.base_sum = Some(number(index, label, scalar, wrong)?),
            Label::Sum => r.sum = Some(number(index, label, scalar, wrong)?),
            Label::Time => r.time = Some(number(index, label, scalar, wrong)?),
            Label::UpdateTime => r.update_time = Some(number(index, label, scalar, wrong)?),
            Label::BaseVersion => {
                let version = match scalar {
                    Scalar::UInt(v) if v > 0 => v,
                    // JSON has one number type: take 5.0 as 5.
                    Scalar::Num(v)
                        if self.encoding == Encoding::Json
                            && (1.0..=9_007_199_254_740_992.0).contains(&v)
                            && v.fract() == 0.0 =>
                    {
                        v as u64
                    }
                    _ => return Err(wrong()),
                };
                if version > MAX_VERSION {
                    return Err(SenmlError::UnsupportedVersion {
                        index,
                        version,
                        max: MAX_VERSION,
                    });
                }
                r.base_version = Some(version);
            }
            Label::Value | Label::StringValue | Label::BoolValue | Label::DataValue => {
                let value = match (label, scalar, self.encoding) {
                    (Label::Value, scalar, _) => {
                        RawValue::Number(number(index, label, scalar, wrong)?)
                    }
                    (Label::StringValue, Scalar::Str(s), _) => RawValue::String(s),
                    (Label::BoolValue, Scalar::Bool(b), _) => RawValue::Bool(b),
                    (Label::DataValue, Scalar::Bytes(b), Encoding::Cbor) => RawValue::Data(b),
                    (Label::DataValue, Scalar::Str(s), Encoding::Json) => RawValue::Data(
                        BASE64URL
                            .decode(s.as_bytes())
                            .map_err(|_| SenmlError::BadBase64 { index })?
                            .into(),
                    ),
                    _ => return Err(wrong()),
                };
                if r.value.is_some() {
                    return Err(SenmlError::MultipleValues { index });
                }
                r.value = Some(value);
            }
        }
        Ok(())
    }
}

fn string(scalar: Scalar<'_>) -> Option<Cow<'_, str>> {
    match scalar {
        Scalar::Str(s) => Some(s),
        _ => None,
    }
}

fn number(
    index: usize,
    label: Label,
    scalar: Scalar<'_>,
    wrong: impl FnOnce() -> SenmlError,
) -> Result<f64, SenmlError> {
    let v = match scalar {
        Scalar::UInt(v) => v as f64,
        Scalar::Num(v) => v,
        _ => return Err(wrong()),
    };
    if !v.is_finite() {
        return Err(SenmlError::NotFinite { index, label });
    }
    Ok(v)
}
