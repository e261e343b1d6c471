//! SenML JSON (`application/senml+json`, RFC 8428 §5) and the serde plumbing
//! shared with flat JSON objects.
//!
//! The pack is read in one pass by serde visitors straight into
//! [`RawRecord`]s, borrowing strings from the input: no intermediate
//! `serde_json::Value`, and duplicate labels are seen (a `Value` map would
//! silently keep the last one). A visitor can only return serde's stringly
//! error, so the structured [`SenmlError`] travels beside it in [`Ctx`].

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, DeserializeSeed, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::SenmlError;
use super::pack::{Encoding, Label, Pack, RawRecord, RecordBuilder, Scalar};
use super::{MAX_DEPTH, MAX_RECORDS};

/// Decodes a SenML JSON pack. Resolve it with [`super::resolve`].
pub fn parse_json(bytes: &[u8]) -> Result<Pack<'_>, SenmlError> {
    let mut ctx = Ctx::default();
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let parsed = PackSeed { ctx: &mut ctx }
        .deserialize(&mut de)
        .and_then(|records| de.end().map(|()| records));
    match parsed {
        Ok(records) => Pack::new(records),
        Err(e) => Err(ctx.error(e, SenmlError::NotAPack)),
    }
}

/// What the visitors know that serde's errors cannot say.
#[derive(Default)]
pub(crate) struct Ctx {
    /// The first problem found, as the sender should read it.
    failure: Option<SenmlError>,
    /// Whether the top-level array (or object) was entered.
    opened: bool,
    /// The record being read, and whether it turned out to be an object.
    index: usize,
    record_opened: bool,
}

impl Ctx {
    pub(crate) fn fail<E: de::Error>(&mut self, e: SenmlError) -> E {
        self.failure = Some(e);
        E::custom("see failure")
    }

    /// Turns serde's error into ours. A type error before the top level was
    /// entered is `wrong_top`; one before a record was entered means the
    /// record was not an object.
    pub(crate) fn error(mut self, e: serde_json::Error, wrong_top: SenmlError) -> SenmlError {
        if let Some(failure) = self.failure.take() {
            return failure;
        }
        if e.is_data() && !self.opened {
            return wrong_top;
        }
        if e.is_data() && !self.record_opened {
            return SenmlError::NotARecord { index: self.index };
        }
        SenmlError::Json(e.to_string())
    }

    pub(crate) fn open(&mut self) {
        self.opened = true;
        self.record_opened = true;
    }
}

struct PackSeed<'c> {
    ctx: &'c mut Ctx,
}

impl<'de> DeserializeSeed<'de> for PackSeed<'_> {
    type Value = Vec<RawRecord<'de>>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for PackSeed<'_> {
    type Value = Vec<RawRecord<'de>>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of SenML records")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.ctx.open();
        // Most packs hold a handful of records; don't trust a size hint.
        let mut records = Vec::with_capacity(4);
        loop {
            let index = records.len();
            if index == MAX_RECORDS {
                if seq.next_element::<IgnoredAny>()?.is_some() {
                    let max = MAX_RECORDS;
                    return Err(self.ctx.fail(SenmlError::TooManyRecords { max }));
                }
                break;
            }
            self.ctx.index = index;
            self.ctx.record_opened = false;
            match seq.next_element_seed(RecordSeed {
                ctx: &mut *self.ctx,
                index,
            })? {
                Some(record) => records.push(record),
                None => break,
            }
        }
        Ok(records)
    }
}

struct RecordSeed<'c> {
    ctx: &'c mut Ctx,
    index: usize,
}

impl<'de> DeserializeSeed<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for RecordSeed<'_> {
    type Value = RawRecord<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a SenML record")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        self.ctx.record_opened = true;
        let mut record = RecordBuilder::new(self.index, Encoding::Json);
        while let Some(Key(key)) = map.next_key()? {
            let seed = ValueSeed {
                ctx: &mut *self.ctx,
                index: self.index,
                depth: 1,
            };
            let checked = match Label::from_json(&key) {
                Some(label) => {
                    let scalar = map.next_value_seed(seed)?;
                    record.set(label, scalar)
                }
                None => match record.unknown(&key) {
                    Ok(()) => {
                        map.next_value_seed(seed)?;
                        Ok(())
                    }
                    Err(e) => Err(e),
                },
            };
            checked.map_err(|e| self.ctx.fail(e))?;
        }
        Ok(record.finish())
    }
}

/// A JSON object key, borrowed when it has no escapes.
pub(crate) struct Key<'de>(pub(crate) Cow<'de, str>);

impl<'de> de::Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// Reads any JSON value as a [`Scalar`]; arrays and objects are skipped over,
/// at most [`MAX_DEPTH`] levels deep, and become [`Scalar::Nested`].
pub(crate) struct ValueSeed<'c> {
    pub(crate) ctx: &'c mut Ctx,
    pub(crate) index: usize,
    pub(crate) depth: usize,
}

impl ValueSeed<'_> {
    fn deeper(&mut self) -> ValueSeed<'_> {
        ValueSeed {
            ctx: &mut *self.ctx,
            index: self.index,
            depth: self.depth + 1,
        }
    }

    fn check_depth<E: de::Error>(&mut self) -> Result<(), E> {
        if self.depth > MAX_DEPTH {
            let (index, max) = (self.index, MAX_DEPTH);
            return Err(self.ctx.fail(SenmlError::TooDeep { index, max }));
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for ValueSeed<'_> {
    type Value = Scalar<'de>;

    fn deserialize<D: de::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for ValueSeed<'_> {
    type Value = Scalar<'de>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Scalar::Bool(v))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Self::Value, E> {
        Ok(Scalar::UInt(v))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Self::Value, E> {
        Ok(match u64::try_from(v) {
            Ok(v) => Scalar::UInt(v),
            Err(_) => Scalar::Num(v as f64),
        })
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Scalar::Num(v))
    }

    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Borrowed(v)))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v.to_owned())))
    }

    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Scalar::Str(Cow::Owned(v)))
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(Scalar::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(mut self, mut seq: A) -> Result<Self::Value, A::Error> {
        self.check_depth()?;
        while seq.next_element_seed(self.deeper())?.is_some() {}
        Ok(Scalar::Nested)
    }

    fn visit_map<A: MapAccess<'de>>(mut self, mut map: A) -> Result<Self::Value, A::Error> {
        self.check_depth()?;
        while map.next_key::<IgnoredAny>()?.is_some() {
            map.next_value_seed(self.deeper())?;
        }
        Ok(Scalar::Nested)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::senml::RawValue;

    #[test]
    fn strings_borrow_from_the_input_unless_escaped() {
        let pack = parse_json(br#"[{"n":"a","vs":"plain"},{"n":"b","vs":"tab\t"}]"#).unwrap();
        let r = pack.records();
        assert!(matches!(r[0].name, Some(Cow::Borrowed("a"))));
        assert!(matches!(
            r[0].value,
            Some(RawValue::String(Cow::Borrowed("plain")))
        ));
        assert!(matches!(&r[1].value, Some(RawValue::String(Cow::Owned(s))) if s == "tab\t"));
    }

    #[test]
    fn escaped_labels_are_labels() {
        let pack = parse_json(br#"[{"\u006e":"a","v":1}]"#).unwrap();
        assert_eq!(pack.records()[0].name.as_deref(), Some("a"));
    }

    #[test]
    fn unknown_fields_are_ignored_whatever_they_hold() {
        let pack =
            parse_json(br#"[{"n":"a","v":1,"x":{"y":[1,{"z":null}]},"l":"link","_x":1}]"#).unwrap();
        assert_eq!(pack.records()[0].value, Some(RawValue::Number(1.0)));
    }
}
