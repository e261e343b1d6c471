//! `moat device cert`: issuing a device its certificate (from its CSR, or
//! with a key the server generates), listing and revoking them; `--out`
//! writes what a device needs to connect into one directory.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use base64::Engine;
use reqwest::Method;
use serde_json::{Value, json};

use super::output::{self, Format, Kind};
use super::resources::{object, resolve_in};
use super::{Global, http::Session, read_password, show};

#[derive(clap::Subcommand, Debug)]
pub(crate) enum DeviceCertCommand {
    /// Issues a certificate: from the device's CSR (it keeps its key), or
    /// with a key the server generates and shows this once.
    ///
    /// With --out DIR, writes `<device>.crt`, `<device>.chain.pem` (the
    /// certificate then its CA, for the TLS client to send), `<device>.key`
    /// (mode 0600) or `<device>.p12`, and `ca.pem` (to trust the server).
    /// Without it, prints the certificate and the key.
    Issue {
        /// The device (name or id).
        device: String,
        #[arg(long)]
        tenant: Option<String>,
        /// A PEM certificate signing request made on the device.
        #[arg(long, value_name = "FILE")]
        csr: Option<PathBuf>,
        /// The key to generate [default: ecdsa-p256].
        #[arg(long, value_enum, conflicts_with = "csr")]
        key_algorithm: Option<KeyAlgorithmArg>,
        /// Return the generated key and certificate as PKCS#12, protected by
        /// a password (asked for, or read with --password-stdin).
        #[arg(long, conflicts_with = "csr")]
        pkcs12: bool,
        /// Read the PKCS#12 password from the first line of standard input.
        #[arg(long, requires = "pkcs12")]
        password_stdin: bool,
        /// Days the certificate is valid [default: the server's].
        #[arg(long)]
        validity_days: Option<u32>,
        /// A certificate of this device that the new one renews: it keeps
        /// working for the rotation overlap, then is revoked as superseded.
        #[arg(long, value_name = "CERT_ID")]
        replaces: Option<uuid::Uuid>,
        /// Write the files into this directory instead of printing them.
        #[arg(long, value_name = "DIR")]
        out: Option<PathBuf>,
    },
    /// Lists a device's certificates.
    List {
        device: String,
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Revokes a certificate now; the device's sessions with it are cut.
    Revoke {
        device: String,
        cert_id: uuid::Uuid,
        #[arg(long)]
        tenant: Option<String>,
        /// Why [default: unspecified].
        #[arg(long, value_enum)]
        reason: Option<ReasonArg>,
    },
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum KeyAlgorithmArg {
    EcdsaP256,
    Ed25519,
}

impl KeyAlgorithmArg {
    fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithmArg::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithmArg::Ed25519 => "ed25519",
        }
    }
}

/// RFC 5280 revocation reasons, as the API names them.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum ReasonArg {
    Unspecified,
    KeyCompromise,
    AffiliationChanged,
    Superseded,
    CessationOfOperation,
    PrivilegeWithdrawn,
}

impl ReasonArg {
    fn as_str(self) -> &'static str {
        match self {
            ReasonArg::Unspecified => "unspecified",
            ReasonArg::KeyCompromise => "key_compromise",
            ReasonArg::AffiliationChanged => "affiliation_changed",
            ReasonArg::Superseded => "superseded",
            ReasonArg::CessationOfOperation => "cessation_of_operation",
            ReasonArg::PrivilegeWithdrawn => "privilege_withdrawn",
        }
    }
}

pub(crate) async fn run(
    s: &mut Session,
    c: DeviceCertCommand,
    g: &Global,
) -> anyhow::Result<ExitCode> {
    match c {
        DeviceCertCommand::Issue {
            device,
            tenant,
            csr,
            key_algorithm,
            pkcs12,
            password_stdin,
            validity_days,
            replaces,
            out,
        } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            let csr = match csr {
                Some(p) => Some(
                    std::fs::read_to_string(&p)
                        .with_context(|| format!("reading the CSR {}", p.display()))?,
                ),
                None => None,
            };
            let password = if pkcs12 {
                Some(read_password(
                    password_stdin,
                    "PKCS#12 password: ",
                    !password_stdin,
                )?)
            } else {
                None
            };
            let body = object(vec![
                ("csr", csr.map(Value::from)),
                ("key_algorithm", key_algorithm.map(|a| json!(a.as_str()))),
                ("format", pkcs12.then(|| json!("pkcs12"))),
                ("pkcs12_password", password.map(Value::from)),
                ("validity_days", validity_days.map(Value::from)),
                ("replaces", replaces.map(|r| json!(r))),
            ]);
            let v = s
                .call(
                    Method::POST,
                    &format!("/devices/{id}/certificates"),
                    Some(Value::Object(body)),
                )
                .await?;
            match out {
                Some(dir) => {
                    // Files are named after the device, which an id does not say.
                    let name = if uuid::Uuid::parse_str(&device).is_ok() {
                        let d = s.get(&format!("/devices/{id}")).await?;
                        d["name"].as_str().unwrap_or(&device).to_owned()
                    } else {
                        device
                    };
                    let written = write_issued(&v, &dir, &name)?;
                    eprintln!(
                        "certificate {} issued to {name}; wrote {}",
                        v["certificate"]["id"].as_str().unwrap_or("?"),
                        written.join(", ")
                    );
                    output::print(&v["certificate"], Kind::Certificate, g.output);
                }
                None => print_issued(&v, g.output),
            }
            Ok(ExitCode::SUCCESS)
        }
        DeviceCertCommand::List { device, tenant } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            let path = format!("/devices/{id}/certificates");
            show(s, Method::GET, &path, None, Kind::Certificate, g.output).await
        }
        DeviceCertCommand::Revoke {
            device,
            cert_id,
            tenant,
            reason,
        } => {
            let id = resolve_in(s, "device", "/devices", &device, tenant.as_deref()).await?;
            let body = Value::Object(object(vec![("reason", reason.map(|r| json!(r.as_str())))]));
            let path = format!("/devices/{id}/certificates/{cert_id}/revoke");
            let code = show(
                s,
                Method::POST,
                &path,
                Some(body),
                Kind::Certificate,
                g.output,
            )
            .await?;
            eprintln!("certificate {cert_id} revoked");
            Ok(code)
        }
    }
}

/// Prints a certificate and its generated key (shown this once), or the
/// whole answer as JSON.
fn print_issued(v: &Value, format: Format) {
    if format == Format::Json {
        output::print(v, Kind::Certificate, format);
        return;
    }
    let id = v["certificate"]["id"].as_str().unwrap_or("?");
    print!("{}", v["certificate_pem"].as_str().unwrap_or_default());
    if let Some(key) = v["private_key_pem"].as_str() {
        print!("{key}");
        eprintln!("certificate {id} issued; this is the only time its private key is shown");
    } else if let Some(p12) = v["pkcs12_base64"].as_str() {
        println!("{p12}");
        eprintln!(
            "certificate {id} issued; the PKCS#12 (base64, after the certificate) is shown this once"
        );
    } else {
        eprintln!("certificate {id} issued");
    }
}

/// Writes what a device needs into `dir`; returns the file names.
fn write_issued(v: &Value, dir: &Path, name: &str) -> anyhow::Result<Vec<String>> {
    let name = file_stem(name)?;
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let text = |key: &str| v[key].as_str().map(|s| s.as_bytes().to_vec());
    let mut files = vec![
        (format!("{name}.crt"), text("certificate_pem"), false),
        (format!("{name}.chain.pem"), text("chain_pem"), false),
        ("ca.pem".to_owned(), text("ca_pem"), false),
        (format!("{name}.key"), text("private_key_pem"), true),
    ];
    if let Some(b64) = v["pkcs12_base64"].as_str() {
        let der = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .context("the server's PKCS#12 is not base64")?;
        files.push((format!("{name}.p12"), Some(der), true));
    }
    let mut written = Vec::new();
    for (file, bytes, secret) in files {
        let Some(bytes) = bytes else { continue };
        let path = dir.join(&file);
        write_file(&path, &bytes, secret)?;
        written.push(path.display().to_string());
    }
    Ok(written)
}

/// A device name as a file name; one that would leave the directory is refused.
pub(crate) fn file_stem(name: &str) -> anyhow::Result<&str> {
    if name.is_empty() || name.starts_with('.') || name.contains(['/', '\\', '\0']) {
        anyhow::bail!("the device name {name:?} cannot be a file name; rename the device");
    }
    Ok(name)
}

/// Writes a file; a secret one is created readable by its owner only.
pub(crate) fn write_file(path: &Path, bytes: &[u8], secret: bool) -> anyhow::Result<()> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    let mut f = opts
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    if secret {
        // An existing file keeps its mode on open; tighten it.
        use std::os::unix::fs::PermissionsExt;
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
    }
    f.write_all(bytes)
        .with_context(|| format!("writing {}", path.display()))
}
