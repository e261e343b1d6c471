//! What can be wrong with a SenML payload, in the sender's terms.
//!
//! Every problem found inside a record names the record by its position in
//! the pack (counting from 0), so a device author can find it.

use super::Label;

/// Why a SenML pack, or a flat JSON object, was refused.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum SenmlError {
    /// The bytes are not JSON at all (syntax, encoding, trailing data).
    #[error("malformed JSON: {0}")]
    Json(String),
    /// The bytes are not well-formed CBOR.
    #[error("malformed CBOR: {0}")]
    Cbor(String),
    #[error("{0} trailing byte(s) after the pack")]
    TrailingData(usize),
    #[error("a SenML pack must be an array of records")]
    NotAPack,
    #[error("expected a JSON object of measurements")]
    NotAnObject,
    /// An empty pack or object, or a pack whose records carry only base fields.
    #[error("the payload holds no record")]
    NoRecords,
    #[error("more than {max} records")]
    TooManyRecords { max: usize },
    #[error("record {index}: not an object")]
    NotARecord { index: usize },
    #[error("record {index}: values nested deeper than {max} levels")]
    TooDeep { index: usize, max: usize },
    #[error("record {index}: field \"{label}\" appears twice")]
    DuplicateField { index: usize, label: Label },
    #[error("record {index}: field \"{label}\" must be {expected}")]
    WrongType {
        index: usize,
        label: Label,
        expected: &'static str,
    },
    #[error("record {index}: field \"{label}\" is not a finite number")]
    NotFinite { index: usize, label: Label },
    #[error("record {index}: field \"{label}\" is longer than {max} bytes")]
    TooLong {
        index: usize,
        label: Label,
        max: usize,
    },
    /// RFC 8428 §4.4: a label ending in `_` must be understood or refused.
    #[error("record {index}: field {label:?} must be understood, and is not supported")]
    MustUnderstand { index: usize, label: String },
    #[error("record {index}: \"vd\" is not base64url")]
    BadBase64 { index: usize },
    #[error("record {index}: SenML version {version} is newer than {max}, the newest understood")]
    UnsupportedVersion {
        index: usize,
        version: u64,
        max: u64,
    },
    #[error("record {index}: the name is empty")]
    EmptyName { index: usize },
    #[error("record {index}: the name is longer than {max} bytes")]
    NameTooLong { index: usize, max: usize },
    #[error("record {index}: name {name:?} has invalid characters")]
    InvalidName { index: usize, name: String },
    #[error("record {index}: name {name:?} must start with a letter or a digit")]
    BadNameStart { index: usize, name: String },
    #[error("record {index}: name {name:?} appears twice")]
    DuplicateName { index: usize, name: String },
    #[error("record {index}: more than one of \"v\", \"vs\", \"vb\" and \"vd\"")]
    MultipleValues { index: usize },
    #[error("record {index}: no value and no sum")]
    NoValue { index: usize },
    /// A flat JSON object member holding an object or an array.
    #[error(
        "record {index}: field {key:?} holds an object or an array; only flat objects map to records"
    )]
    Nested { index: usize, key: String },
    /// A flat JSON object member holding `null`.
    #[error("record {index}: field {key:?} is null")]
    Null { index: usize, key: String },
}

/// Cuts a label or key taken from the input before it goes into an error,
/// so that a hostile megabyte-long key does not become a megabyte-long log line.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 64;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clip_keeps_errors_short() {
        assert_eq!(clip("abc"), "abc");
        let long = "é".repeat(100);
        let clipped = clip(&long);
        assert!(clipped.len() <= 64 + '…'.len_utf8());
        assert!(clipped.ends_with('…'));
    }
}
