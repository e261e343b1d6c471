//! First start: the root tenant and its admin, the CA and the server
//! certificate. Every later start finds them and goes on.

use std::sync::Arc;

use anyhow::Context;
use base64::Engine;
use moat_core::audit::{AuditRecord, Outcome, now_millis};
use moat_core::page::ListQuery;
use moat_core::store::{Change, Store};
use moat_core::validate::Checker;
use moat_core::{Role, Tenant, TenantId, TenantPath, User, UserId};
use moat_pki::ca::Authority;
use moat_pki::envelope;
use moat_pki::master::{MasterKey, Purpose};
use rand::Rng;
use serde::{Deserialize, Serialize};

use crate::config::Config;

pub(crate) const ADMIN_USERNAME: &str = "admin";
const CA_CERT: &str = "pki/root-ca.crt";
const CA_KEY: &str = "pki/root-ca.key";
const SERVER: &str = "pki/server";
/// A server certificate this close to expiry is replaced at start.
const RENEW_BEFORE: time::Duration = time::Duration::days(30);

/// Creates the root tenant and the bootstrap admin if there is no tenant yet.
/// The admin's password comes from `MOAT_ADMIN_PASSWORD`, or is made up and
/// printed once on standard output (never logged).
pub(crate) async fn admin(store: &dyn Store) -> anyhow::Result<()> {
    if !store
        .tenants(None, &ListQuery::first(1))
        .await?
        .items
        .is_empty()
    {
        return Ok(());
    }
    let (password, generated) = match std::env::var("MOAT_ADMIN_PASSWORD") {
        Ok(p) => {
            let mut c = Checker::new();
            c.password("MOAT_ADMIN_PASSWORD", &p);
            c.finish()?;
            (p, false)
        }
        Err(_) => (random_password(), true),
    };
    let now = now_millis();
    let tenant_id = TenantId::new();
    let tenant = Tenant {
        id: tenant_id,
        parent_id: None,
        path: TenantPath::root(tenant_id),
        name: "root".into(),
        tags: Vec::new(),
        metadata: serde_json::json!({}),
        created_at: now,
        updated_at: now,
    };
    let hash = moat_http::auth::password::hash(password.clone())
        .await
        .map_err(|e| anyhow::anyhow!(e.detail))?;
    let user = User {
        id: UserId::new(),
        tenant_id,
        username: ADMIN_USERNAME.into(),
        display_name: "Bootstrap admin".into(),
        role: Role::Admin,
        disabled: false,
        password_hash: hash,
        sessions_valid_after: now,
        created_at: now,
        updated_at: now,
    };
    let record = AuditRecord::new(
        "system",
        "system.bootstrap",
        format!("user:{}", user.id),
        Outcome::Success,
    )
    .tenant(tenant_id);
    store
        .apply(
            vec![Change::InsertTenant(tenant), Change::InsertUser(user)],
            Some(record),
        )
        .await?;
    if generated {
        println!("bootstrap admin created: username {ADMIN_USERNAME}, password {password}");
        println!("(shown this once; sign in and change it)");
    } else {
        println!(
            "bootstrap admin created: username {ADMIN_USERNAME}, password from MOAT_ADMIN_PASSWORD"
        );
    }
    Ok(())
}

fn random_password() -> String {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut rng = rand::rngs::OsRng;
    (0..24)
        .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
        .collect()
}

/// The stored server certificate, its wrapped key and what it was made for.
#[derive(Serialize, Deserialize)]
struct ServerCert {
    cert_pem: String,
    key_wrapped: String,
    names: Vec<String>,
    not_after: i64,
}

/// Loads or creates the CA and the server certificate, writes the CA
/// certificate to `<data_dir>/ca.pem` for clients, and returns the TLS
/// configuration every listener uses.
pub(crate) async fn pki(
    store: &dyn Store,
    master: &MasterKey,
    config: &Config,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let wrap_key = master.derive(Purpose::Wrapping);
    let ca = match (store.secret(CA_CERT).await?, store.secret(CA_KEY).await?) {
        (Some(cert), Some(key)) => {
            let key = envelope::unwrap(&wrap_key, CA_KEY, &key)?;
            Authority::from_pem(&String::from_utf8(cert)?, std::str::from_utf8(&key)?)?
        }
        _ => {
            let ca = Authority::generate("Moat Root CA", time::Duration::days(3650))?;
            let record = AuditRecord::new("system", "pki.ca.create", "ca:root", Outcome::Success);
            store
                .apply(
                    vec![
                        Change::PutSecret {
                            name: CA_CERT.into(),
                            value: ca.cert_pem().as_bytes().to_vec(),
                        },
                        Change::PutSecret {
                            name: CA_KEY.into(),
                            value: envelope::wrap(&wrap_key, CA_KEY, ca.key_pem().as_bytes()),
                        },
                    ],
                    Some(record),
                )
                .await?;
            tracing::info!("created the platform root CA");
            ca
        }
    };

    let stored: Option<ServerCert> = store
        .secret(SERVER)
        .await?
        .and_then(|v| serde_json::from_slice(&v).ok());
    let fresh_until = (time::OffsetDateTime::now_utc() + RENEW_BEFORE).unix_timestamp();
    let (cert_pem, key_pem) =
        match stored {
            Some(s) if s.names == config.server_names && s.not_after > fresh_until => {
                let key = envelope::unwrap(
                    &wrap_key,
                    SERVER,
                    &base64::engine::general_purpose::STANDARD.decode(&s.key_wrapped)?,
                )?;
                (s.cert_pem, String::from_utf8(key)?)
            }
            _ => {
                let issued = ca
                    .issue_server(&config.server_names, time::Duration::days(365))
                    .context("issuing the server certificate")?;
                let stored =
                    ServerCert {
                        cert_pem: issued.cert_pem.clone(),
                        key_wrapped: base64::engine::general_purpose::STANDARD
                            .encode(envelope::wrap(&wrap_key, SERVER, issued.key_pem.as_bytes())),
                        names: config.server_names.clone(),
                        not_after: issued.not_after.unix_timestamp(),
                    };
                let record = AuditRecord::new(
                    "system",
                    "pki.server_cert.issue",
                    "cert:server",
                    Outcome::Success,
                )
                .detail(serde_json::json!({"names": config.server_names}));
                store
                    .apply(
                        vec![Change::PutSecret {
                            name: SERVER.into(),
                            value: serde_json::to_vec(&stored)?,
                        }],
                        Some(record),
                    )
                    .await?;
                tracing::info!(names = ?config.server_names, "issued the server certificate");
                (issued.cert_pem, issued.key_pem.to_string())
            }
        };

    let ca_path = config.data_dir.join("ca.pem");
    if std::fs::read_to_string(&ca_path).ok().as_deref() != Some(ca.cert_pem()) {
        std::fs::write(&ca_path, ca.cert_pem())
            .with_context(|| format!("writing {}", ca_path.display()))?;
    }
    Ok(moat_pki::tls::server_config(&cert_pem, &key_pem)?)
}
