//! Printing answers: a table for people, or the server's JSON for scripts.

use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::Value;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

/// What is printed, which decides the table's columns.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Tenant,
    User,
    Device,
    DeviceKey,
    Channel,
    Connection,
    ApiKey,
    Audit,
    Certificate,
    Authority,
    /// `moat pki expiring`'s rows, made by the command.
    Expiring,
    ClaimCode,
    /// New claim codes' rows, made by the command.
    NewClaimCode,
}

impl Kind {
    fn columns(self) -> &'static [&'static str] {
        match self {
            Kind::Tenant => &["id", "name", "parent_id", "tags", "created_at"],
            Kind::User => &[
                "id",
                "username",
                "display_name",
                "role",
                "disabled",
                "tenant_id",
            ],
            Kind::Device => &["id", "name", "state", "tags", "tenant_id", "created_at"],
            Kind::DeviceKey => &["id", "device_id", "created_at", "expires_at", "revoked_at"],
            Kind::Channel => &[
                "id",
                "name",
                "payload_policy",
                "retention_days",
                "tags",
                "tenant_id",
            ],
            Kind::Connection => &[
                "channel_id",
                "device_id",
                "publish",
                "subscribe",
                "updated_at",
            ],
            Kind::ApiKey => &[
                "id",
                "name",
                "role",
                "tenant_id",
                "expires_at",
                "revoked_at",
            ],
            Kind::Audit => &[
                "seq", "time", "actor", "action", "target", "outcome", "source",
            ],
            Kind::Certificate => &[
                "id",
                "serial",
                "key_algorithm",
                "origin",
                "not_after",
                "revoked_at",
                "revocation_reason",
            ],
            Kind::Authority => &["id", "kind", "subject", "jit", "not_after", "tenant_id"],
            Kind::Expiring => &["kind", "device", "id", "not_after"],
            Kind::ClaimCode => &[
                "id",
                "device_id",
                "tenant_id",
                "expires_at",
                "claimed_at",
                "claimed_by",
                "used_at",
            ],
            Kind::NewClaimCode => &["code", "device", "expires_at"],
        }
    }
}

fn cell(v: &Value) -> String {
    match v {
        Value::Null => String::new(),
        Value::String(s) => s.clone(),
        Value::Array(a) => a.iter().map(cell).collect::<Vec<_>>().join(", "),
        other => other.to_string(),
    }
}

/// Prints one object, a list, or a page (`items` and `next_cursor`).
pub(crate) fn print(v: &Value, kind: Kind, format: Format) {
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(v).unwrap_or_default());
        return;
    }
    let (rows, cursor) = match v {
        Value::Object(m) if m.contains_key("items") => (
            m["items"].as_array().cloned().unwrap_or_default(),
            m.get("next_cursor").and_then(Value::as_str),
        ),
        Value::Array(a) => (a.clone(), None),
        Value::Object(m) => {
            let mut t = Table::new();
            t.load_preset(UTF8_FULL_CONDENSED);
            for (k, val) in m {
                t.add_row(vec![k.clone(), cell(val)]);
            }
            println!("{t}");
            return;
        }
        other => {
            println!("{}", cell(other));
            return;
        }
    };
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(kind.columns().to_vec());
    for r in &rows {
        t.add_row(
            kind.columns()
                .iter()
                .map(|c| cell(&r[*c]))
                .collect::<Vec<_>>(),
        );
    }
    println!("{t}");
    if let Some(c) = cursor {
        eprintln!("more: --cursor {c} (or --all)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_flatten_values() {
        assert_eq!(cell(&serde_json::json!(["a", "b"])), "a, b");
        assert_eq!(cell(&Value::Null), "");
        assert_eq!(cell(&serde_json::json!(true)), "true");
    }
}
