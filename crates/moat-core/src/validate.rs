//! Checks on input from outside, before it becomes a domain value.
//!
//! A [`Checker`] collects every problem in a request, so that a client learns
//! all of them at once (they become the `errors` of a 422 problem).

use serde::Serialize;
use utoipa::ToSchema;

pub const MAX_NAME: usize = 128;
pub const MAX_TAGS: usize = 32;
pub const MAX_TAG: usize = 64;
pub const MAX_METADATA_BYTES: usize = 16 * 1024;
pub const MIN_PASSWORD: usize = 12;
pub const MAX_PASSWORD: usize = 1024;

/// One problem with one field.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field, as the client named it (`tags[2]`).
    pub field: String,
    pub message: String,
}

/// Everything wrong with a request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} invalid field(s): {}", errors.len(), errors.iter().map(|e| format!("{}: {}", e.field, e.message)).collect::<Vec<_>>().join("; "))]
pub struct Invalid {
    pub errors: Vec<FieldError>,
}

impl Invalid {
    pub fn one(field: &str, message: impl Into<String>) -> Self {
        Self {
            errors: vec![FieldError {
                field: field.into(),
                message: message.into(),
            }],
        }
    }
}

#[derive(Default)]
pub struct Checker {
    errors: Vec<FieldError>,
}

impl Checker {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn fail(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(FieldError {
            field: field.into(),
            message: message.into(),
        });
    }

    /// A display name: 1 to 128 characters, no control characters, no
    /// leading or trailing space.
    pub fn name(&mut self, field: &str, value: &str) {
        let n = value.chars().count();
        if n == 0 {
            self.fail(field, "must not be empty");
        } else if n > MAX_NAME {
            self.fail(field, format!("must be at most {MAX_NAME} characters"));
        } else if value.chars().any(char::is_control) {
            self.fail(field, "must not contain control characters");
        } else if value.trim() != value {
            self.fail(field, "must not start or end with whitespace");
        }
    }

    /// Tags: at most 32, each 1 to 64 of `A-Z a-z 0-9 _ - . : / =`, no repeats.
    pub fn tags(&mut self, field: &str, tags: &[String]) {
        if tags.len() > MAX_TAGS {
            self.fail(field, format!("at most {MAX_TAGS} tags"));
            return;
        }
        for (i, t) in tags.iter().enumerate() {
            let ok = !t.is_empty()
                && t.len() <= MAX_TAG
                && t.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.:/=".contains(&b));
            if !ok {
                self.fail(
                    &format!("{field}[{i}]"),
                    format!("a tag is 1 to {MAX_TAG} of A-Z a-z 0-9 _ - . : / ="),
                );
            } else if tags[..i].contains(t) {
                self.fail(&format!("{field}[{i}]"), "repeats an earlier tag");
            }
        }
    }

    /// Metadata: a JSON object of at most 16 KiB.
    pub fn metadata(&mut self, field: &str, value: &serde_json::Value) {
        if !value.is_object() {
            self.fail(field, "must be a JSON object");
        } else if value.to_string().len() > MAX_METADATA_BYTES {
            self.fail(field, format!("must be at most {MAX_METADATA_BYTES} bytes"));
        }
    }

    /// A username: 3 to 64 of `a-z 0-9 . _ @ + -`, starting with a letter or digit.
    pub fn username(&mut self, field: &str, value: &str) {
        let ok = (3..=64).contains(&value.len())
            && value
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._@+-".contains(&b))
            && value.as_bytes()[0].is_ascii_alphanumeric();
        if !ok {
            self.fail(
                field,
                "a username is 3 to 64 of a-z 0-9 . _ @ + -, starting with a letter or digit",
            );
        }
    }

    /// A new password: 12 to 1024 characters.
    pub fn password(&mut self, field: &str, value: &str) {
        let n = value.chars().count();
        if n < MIN_PASSWORD {
            self.fail(field, format!("must be at least {MIN_PASSWORD} characters"));
        } else if n > MAX_PASSWORD {
            self.fail(field, format!("must be at most {MAX_PASSWORD} characters"));
        }
    }

    pub fn finish(self) -> Result<(), Invalid> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(Invalid {
                errors: self.errors,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(f: impl FnOnce(&mut Checker)) -> Result<(), Invalid> {
        let mut c = Checker::new();
        f(&mut c);
        c.finish()
    }

    #[test]
    fn names() {
        assert!(check(|c| c.name("name", "Boiler room 3")).is_ok());
        for bad in ["", " padded", "tab\there", &"x".repeat(129)] {
            assert!(check(|c| c.name("name", bad)).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tags_collect_every_problem() {
        let tags: Vec<String> = ["ok", "", "sp ace", "ok"].map(String::from).into();
        let err = check(|c| c.tags("tags", &tags)).unwrap_err();
        let fields: Vec<_> = err.errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["tags[1]", "tags[2]", "tags[3]"]);
    }

    #[test]
    fn metadata_and_usernames() {
        assert!(check(|c| c.metadata("m", &serde_json::json!({"a": 1}))).is_ok());
        assert!(check(|c| c.metadata("m", &serde_json::json!([1]))).is_err());
        let big = serde_json::json!({"a": "x".repeat(MAX_METADATA_BYTES)});
        assert!(check(|c| c.metadata("m", &big)).is_err());
        assert!(check(|c| c.username("u", "alice@example.com")).is_ok());
        for bad in ["al", "Alice", "-alice", "al ice"] {
            assert!(check(|c| c.username("u", bad)).is_err(), "{bad}");
        }
    }
}
