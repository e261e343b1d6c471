//! First start: the root tenant and its admin (the CA and the server
//! certificate are `moat_http::pki`'s). Every later start finds them.

use anyhow::Context;
use moat_core::audit::{AuditRecord, Outcome, now_millis};
use moat_core::page::ListQuery;
use moat_core::store::{Change, Store};
use moat_core::validate::Checker;
use moat_core::{Role, Tenant, TenantId, TenantPath, User, UserId};
use rand::Rng;

use crate::config::Config;

pub(crate) const ADMIN_USERNAME: &str = "admin";

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

/// Writes the root CA certificate to `<data_dir>/ca.pem` for clients.
pub(crate) fn write_ca_pem(config: &Config, pem: &str) -> anyhow::Result<()> {
    let ca_path = config.data_dir.join("ca.pem");
    if std::fs::read_to_string(&ca_path).ok().as_deref() != Some(pem) {
        std::fs::write(&ca_path, pem).with_context(|| format!("writing {}", ca_path.display()))?;
    }
    Ok(())
}
