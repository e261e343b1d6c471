//! `moat pki`: the certificate authorities behind device identity — a
//! tenant's CAs (the platform-made one and those a tenant brings), CRLs, the
//! root CA certificate, and what is coming due for renewal.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use reqwest::Method;
use serde_json::{Value, json};

use super::certificates::write_file;
use super::output::{self, Format, Kind};
use super::resources::{done, object, tenant_id, with_query};
use super::{Global, http::Session, show};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum PkiCommand {
    /// Lists the credentials that expire soon, soonest first: what is due
    /// for renewal (in your tenant and below, or --tenant's).
    Expiring {
        /// Within this many days.
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long)]
        tenant: Option<String>,
        /// At most this many (1–1000) [default: the server's, 100].
        #[arg(long)]
        limit: Option<u32>,
    },
    /// Manages a tenant's certificate authorities.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Writes a CRL (DER): a tenant CA's with --ca, else the root CA's.
    Crl {
        /// The CA (an id from `moat pki ca list`).
        #[arg(long, value_name = "CA_ID")]
        ca: Option<uuid::Uuid>,
        #[arg(long, value_name = "FILE")]
        out: PathBuf,
    },
    /// Prints the platform root CA certificate (PEM), or writes it to --out.
    CaPem {
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

#[derive(clap::Subcommand, Debug)]
pub(crate) enum CaCommand {
    /// Lists a tenant's CAs.
    List {
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Shows a CA.
    Get { id: uuid::Uuid },
    /// Registers a CA of the tenant's own. First get a registration code
    /// (`moat pki ca registration-code`), then sign with that CA a
    /// verification certificate whose common name is the code.
    Register {
        /// The CA certificate (PEM).
        #[arg(long, value_name = "FILE")]
        cert: PathBuf,
        /// A certificate signed by that CA, with the registration code as
        /// its common name (PEM).
        #[arg(long, value_name = "FILE")]
        verification_cert: PathBuf,
        /// What unknown certificates from this CA do on first connection
        /// [default: off].
        #[arg(long, value_enum)]
        jit: Option<JitArg>,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Changes what unknown certificates from a tenant's own CA do.
    Update {
        id: uuid::Uuid,
        #[arg(long, value_enum)]
        jit: JitArg,
    },
    /// Deregisters a tenant's own CA: its certificates stop working at once.
    Delete { id: uuid::Uuid },
    /// Prints a registration code (valid 24 hours) for `moat pki ca register`.
    RegistrationCode {
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Just-in-time registration: refuse unknown certificates, register their
/// devices `pending`, or register them `active`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum JitArg {
    Off,
    Pending,
    Activate,
}

impl JitArg {
    fn as_str(self) -> &'static str {
        match self {
            JitArg::Off => "off",
            JitArg::Pending => "pending",
            JitArg::Activate => "activate",
        }
    }
}

pub(crate) async fn run(c: PkiCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let mut s = Session::open(g)?;
    let s = &mut s;
    match c {
        PkiCommand::Expiring {
            days,
            tenant,
            limit,
        } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let path = with_query(
                "/pki/expiring",
                &[
                    ("days", Some(days.to_string())),
                    ("tenant_id", t),
                    ("limit", limit.map(|l| l.to_string())),
                ],
            );
            let v = s.get(&path).await?;
            if g.output == Format::Json {
                output::print(&v, Kind::Expiring, g.output);
            } else {
                output::print(&expiring_rows(&v), Kind::Expiring, g.output);
            }
            Ok(ExitCode::SUCCESS)
        }
        PkiCommand::Ca(c) => ca(s, c, g).await,
        PkiCommand::Crl { ca, out } => {
            let path = match ca {
                Some(id) => format!("/pki/cas/{id}/crl"),
                None => "/pki/crl".to_owned(),
            };
            let der = s.public_bytes(&path).await?;
            write_file(&out, &der, false)?;
            eprintln!(
                "CRL written to {} ({} bytes, DER)",
                out.display(),
                der.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        PkiCommand::CaPem { out } => {
            let pem = s.public_bytes("/pki/ca.pem").await?;
            match out {
                Some(p) => {
                    write_file(&p, &pem, false)?;
                    eprintln!("root CA certificate written to {}", p.display());
                }
                None => print!("{}", String::from_utf8_lossy(&pem)),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The expiring list as table rows: what it is, whose, and when.
fn expiring_rows(v: &Value) -> Value {
    let rows = v.as_array().map_or(&[][..], Vec::as_slice);
    Value::Array(
        rows.iter()
            .map(|r| {
                json!({
                    "kind": r.get("kind").cloned().unwrap_or_else(|| json!("certificate")),
                    "device": r["device_id"],
                    "id": r["id"],
                    "not_after": r.get("not_after").or_else(|| r.get("expires_at")),
                })
            })
            .collect(),
    )
}

async fn ca(s: &mut Session, c: CaCommand, g: &Global) -> anyhow::Result<ExitCode> {
    let f = g.output;
    match c {
        CaCommand::List { tenant } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let path = with_query("/pki/cas", &[("tenant_id", t)]);
            show(s, Method::GET, &path, None, Kind::Authority, f).await
        }
        CaCommand::Get { id } => {
            let path = format!("/pki/cas/{id}");
            show(s, Method::GET, &path, None, Kind::Authority, f).await
        }
        CaCommand::Register {
            cert,
            verification_cert,
            jit,
            tenant,
        } => {
            let read = |p: &PathBuf, what: &str| {
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading the {what} {}", p.display()))
            };
            let t = tenant_id(s, tenant.as_deref()).await?;
            let body = object(vec![
                ("tenant_id", t.map(Value::from)),
                (
                    "certificate_pem",
                    Some(json!(read(&cert, "CA certificate")?)),
                ),
                (
                    "verification_certificate_pem",
                    Some(json!(read(&verification_cert, "verification certificate")?)),
                ),
                ("jit", jit.map(|j| json!(j.as_str()))),
            ]);
            let body = Some(Value::Object(body));
            show(s, Method::POST, "/pki/cas", body, Kind::Authority, f).await
        }
        CaCommand::Update { id, jit } => {
            let body = Some(json!({ "jit": jit.as_str() }));
            let path = format!("/pki/cas/{id}");
            show(s, Method::PATCH, &path, body, Kind::Authority, f).await
        }
        CaCommand::Delete { id } => {
            let said = format!("certificate authority {id} deregistered");
            done(s, Method::DELETE, &format!("/pki/cas/{id}"), said).await
        }
        CaCommand::RegistrationCode { tenant } => {
            let t = tenant_id(s, tenant.as_deref()).await?;
            let body = Value::Object(object(vec![("tenant_id", t.map(Value::from))]));
            let v = s
                .call(Method::POST, "/pki/cas/registration-code", Some(body))
                .await?;
            if f == Format::Json {
                output::print(&v, Kind::Authority, f);
            } else {
                // The code alone on stdout, so that a script can capture it.
                eprintln!(
                    "registration code valid until {}; sign a verification certificate with it as the common name:",
                    v["expires_at"].as_str().unwrap_or("?")
                );
                println!("{}", v["code"].as_str().unwrap_or_default());
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiring_rows_say_what_whose_and_when() {
        let v = json!([{"id": "c1", "device_id": "d1", "not_after": "2030-01-01T00:00:00Z"},
            {"kind": "device_key", "id": "k1", "device_id": "d2", "expires_at": "2030-02-01T00:00:00Z"}]);
        assert_eq!(
            expiring_rows(&v),
            json!([{"kind": "certificate", "device": "d1", "id": "c1", "not_after": "2030-01-01T00:00:00Z"},
                {"kind": "device_key", "device": "d2", "id": "k1", "not_after": "2030-02-01T00:00:00Z"}])
        );
    }
}
