//! Claim codes: one-time codes printed on (or shipped with) a device. An
//! admin makes them, each with a device waiting for its owner; whoever
//! presents a code claims the device into their tenant (`moat device
//! claim`), and the device then fetches its certificate with the same code
//! (`POST /api/v1/bootstrap`).

use std::process::ExitCode;

use reqwest::Method;
use serde_json::{Value, json};

use super::output::{self, Format, Kind};
use super::resources::{Paging, list, object, tenant_id};
use super::{Global, http::Session, show};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum ClaimCodeCommand {
    /// Makes claim codes, each with a new device waiting to be claimed; the
    /// codes are shown this once.
    Create {
        /// How many (1–1000).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The waiting devices' names start with this.
        #[arg(long)]
        prefix: Option<String>,
        /// Days the codes may be used (1–365) [default: the server's, 30].
        #[arg(long)]
        expires_in_days: Option<u32>,
        /// Where the devices wait until claimed [default: your tenant].
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Lists claim codes (never the codes themselves).
    List {
        #[arg(long)]
        tenant: Option<String>,
        #[command(flatten)]
        paging: Paging,
    },
}

pub(crate) async fn run(c: ClaimCodeCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(g)?;
    let s = &mut s;
    match c {
        ClaimCodeCommand::Create {
            count,
            prefix,
            expires_in_days,
            tenant,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let body = object(vec![
                ("count", Some(json!(count))),
                ("tenant_id", t.map(Value::from)),
                ("name_prefix", prefix.map(Value::from)),
                ("expires_in_days", expires_in_days.map(Value::from)),
            ]);
            let v = s
                .call(Method::POST, "/claim-codes", Some(Value::Object(body)))
                .await?;
            if g.output == Format::Json {
                output::print(&v, Kind::NewClaimCode, g.output);
            } else {
                let codes = v["codes"].as_array().map_or(&[][..], Vec::as_slice);
                let rows: Vec<Value> = codes
                    .iter()
                    .map(|c| {
                        json!({
                            "code": c["code"],
                            "device": c["device"]["name"],
                            "expires_at": c["claim_code"]["expires_at"],
                        })
                    })
                    .collect();
                output::print(&Value::Array(rows), Kind::NewClaimCode, g.output);
                eprintln!(
                    "{} claim code(s) made; this is the only time they are shown",
                    codes.len()
                );
            }
            Ok(ExitCode::SUCCESS)
        }
        ClaimCodeCommand::List { tenant, paging } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            list(
                s,
                "/claim-codes",
                vec![("tenant_id", t)],
                paging,
                Kind::ClaimCode,
                g,
            )
            .await
        }
    }
}

/// `moat device claim`: moves the code's device into your tenant (or
/// --tenant), optionally renamed.
pub(crate) async fn claim(
    s: &mut Session,
    code: String,
    name: Option<String>,
    tenant: Option<String>,
    g: &Global,
) -> anyhow::Result<ExitCode> {
    let t = tenant_id(s, tenant.as_deref()).await?;
    let body = object(vec![
        ("code", Some(json!(code))),
        ("tenant_id", t.map(Value::from)),
        ("name", name.map(Value::from)),
    ]);
    let body = Some(Value::Object(body));
    show(s, Method::POST, "/claims", body, Kind::Device, g.output).await
}
