//! Writes: a batch of changes and its audit event in one IMMEDIATE
//! transaction. Constraint violations become `Conflict` with a message a
//! user can act on; a change to a missing row becomes `NotFound`.

use moat_core::TenantPath;
use moat_core::audit::{AuditChain, AuditEvent, AuditRecord};
use moat_core::store::{Change, StoreError};
use rusqlite::{ErrorCode, OptionalExtension, Transaction, TransactionBehavior, params};

use crate::backend;
use crate::rows::{ms, opt_ms};

pub(crate) fn apply(
    conn: &mut rusqlite::Connection,
    chain: &AuditChain,
    changes: Vec<Change>,
    audit: Option<AuditRecord>,
) -> Result<Option<AuditEvent>, StoreError> {
    let tx = conn
        .transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(backend)?;
    for change in changes {
        one(&tx, change)?;
    }
    let event = audit.map(|record| append(&tx, chain, record)).transpose()?;
    tx.commit().map_err(backend)?;
    Ok(event)
}

fn json(v: &impl serde::Serialize) -> String {
    serde_json::to_string(v).expect("domain values serialize")
}

/// Maps a unique-constraint violation to `conflict`, anything else to a
/// backend error.
fn unique(conflict: impl FnOnce() -> String) -> impl FnOnce(rusqlite::Error) -> StoreError {
    move |e| match &e {
        rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => {
            StoreError::Conflict(conflict())
        }
        _ => backend(e),
    }
}

fn exactly_one(what: &'static str) -> impl FnOnce(usize) -> Result<(), StoreError> {
    move |n| {
        if n == 0 {
            Err(StoreError::NotFound(what))
        } else {
            Ok(())
        }
    }
}

fn one(tx: &Transaction<'_>, change: Change) -> Result<(), StoreError> {
    match change {
        Change::InsertTenant(t) => tx
            .execute(
                "INSERT INTO tenants (id, parent_id, path, name, tags, metadata, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![t.id.to_string(), t.parent_id.map(|p| p.to_string()), t.path.encode(), t.name, json(&t.tags), json(&t.metadata), ms(t.created_at), ms(t.updated_at)],
            )
            .map(drop)
            .map_err(unique(|| format!("a tenant named {:?} already exists here", t.name))),
        Change::UpdateTenant(t) => tx
            .execute(
                "UPDATE tenants SET name = ?2, tags = ?3, metadata = ?4, updated_at = ?5 WHERE id = ?1",
                params![t.id.to_string(), t.name, json(&t.tags), json(&t.metadata), ms(t.updated_at)],
            )
            .map_err(unique(|| format!("a tenant named {:?} already exists here", t.name)))
            .and_then(exactly_one("tenant")),
        Change::DeleteTenant(id) => {
            let id = id.to_string();
            for (table, what) in [("tenants", "child tenants"), ("users", "users"), ("devices", "devices"), ("channels", "channels"), ("api_keys", "API keys")] {
                let col = if table == "tenants" { "parent_id" } else { "tenant_id" };
                let n: i64 = tx
                    .query_row(&format!("SELECT count(*) FROM {table} WHERE {col} = ?1"), [&id], |r| r.get(0))
                    .map_err(backend)?;
                if n > 0 {
                    return Err(StoreError::Conflict(format!("the tenant is not empty: it has {n} {what}; delete them first")));
                }
            }
            tx.execute("DELETE FROM tenants WHERE id = ?1", [&id]).map_err(backend).and_then(exactly_one("tenant"))
        }
        Change::InsertUser(u) => tx
            .execute(
                "INSERT INTO users (id, tenant_id, username, display_name, role, disabled, password_hash, sessions_valid_after, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![u.id.to_string(), u.tenant_id.to_string(), u.username, u.display_name, u.role.as_str(), u.disabled, u.password_hash, ms(u.sessions_valid_after), ms(u.created_at), ms(u.updated_at)],
            )
            .map(drop)
            .map_err(unique(|| format!("the username {:?} is taken", u.username))),
        Change::UpdateUser(u) => tx
            .execute(
                "UPDATE users SET display_name = ?2, role = ?3, disabled = ?4, password_hash = ?5, sessions_valid_after = ?6, updated_at = ?7 WHERE id = ?1",
                params![u.id.to_string(), u.display_name, u.role.as_str(), u.disabled, u.password_hash, ms(u.sessions_valid_after), ms(u.updated_at)],
            )
            .map_err(backend)
            .and_then(exactly_one("user")),
        Change::DeleteUser(id) => tx.execute("DELETE FROM users WHERE id = ?1", [id.to_string()]).map_err(backend).and_then(exactly_one("user")),
        Change::InsertDevice(d) => tx
            .execute(
                "INSERT INTO devices (id, tenant_id, name, tags, metadata, state, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![d.id.to_string(), d.tenant_id.to_string(), d.name, json(&d.tags), json(&d.metadata), d.state.as_str(), ms(d.created_at), ms(d.updated_at)],
            )
            .map(drop)
            .map_err(unique(|| format!("a device named {:?} already exists in this tenant", d.name))),
        Change::UpdateDevice(d) => tx
            .execute(
                "UPDATE devices SET name = ?2, tags = ?3, metadata = ?4, state = ?5, updated_at = ?6 WHERE id = ?1",
                params![d.id.to_string(), d.name, json(&d.tags), json(&d.metadata), d.state.as_str(), ms(d.updated_at)],
            )
            .map_err(unique(|| format!("a device named {:?} already exists in this tenant", d.name)))
            .and_then(exactly_one("device")),
        Change::DeleteDevice(id) => tx.execute("DELETE FROM devices WHERE id = ?1", [id.to_string()]).map_err(backend).and_then(exactly_one("device")),
        Change::InsertChannel(c) => tx
            .execute(
                "INSERT INTO channels (id, tenant_id, name, tags, metadata, payload_policy, retention_days, created_at, updated_at, max_payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
                params![c.id.to_string(), c.tenant_id.to_string(), c.name, json(&c.tags), json(&c.metadata), c.payload_policy.as_str(), c.retention_days, ms(c.created_at), ms(c.updated_at), c.max_payload],
            )
            .map(drop)
            .map_err(unique(|| format!("a channel named {:?} already exists in this tenant", c.name))),
        Change::UpdateChannel(c) => tx
            .execute(
                "UPDATE channels SET name = ?2, tags = ?3, metadata = ?4, payload_policy = ?5, retention_days = ?6, updated_at = ?7, max_payload = ?8 WHERE id = ?1",
                params![c.id.to_string(), c.name, json(&c.tags), json(&c.metadata), c.payload_policy.as_str(), c.retention_days, ms(c.updated_at), c.max_payload],
            )
            .map_err(unique(|| format!("a channel named {:?} already exists in this tenant", c.name)))
            .and_then(exactly_one("channel")),
        Change::DeleteChannel(id) => tx.execute("DELETE FROM channels WHERE id = ?1", [id.to_string()]).map_err(backend).and_then(exactly_one("channel")),
        Change::PutConnection(c) => tx
            .execute(
                "INSERT INTO connections (channel_id, device_id, tenant_id, publish, subscribe, created_at, updated_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)
                 ON CONFLICT (channel_id, device_id) DO UPDATE SET publish = excluded.publish, subscribe = excluded.subscribe, updated_at = excluded.updated_at",
                params![c.channel_id.to_string(), c.device_id.to_string(), c.tenant_id.to_string(), c.publish, c.subscribe, ms(c.created_at), ms(c.updated_at)],
            )
            .map(drop)
            .map_err(|e| match &e {
                rusqlite::Error::SqliteFailure(f, _) if f.code == ErrorCode::ConstraintViolation => StoreError::NotFound("device or channel"),
                _ => backend(e),
            }),
        Change::DeleteConnection { channel_id, device_id } => tx
            .execute("DELETE FROM connections WHERE channel_id = ?1 AND device_id = ?2", [channel_id.to_string(), device_id.to_string()])
            .map_err(backend)
            .and_then(exactly_one("connection")),
        Change::InsertApiKey(k) => tx
            .execute(
                "INSERT INTO api_keys (id, tenant_id, name, role, created_by, created_at, expires_at, revoked_at, secret_hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![k.id.to_string(), k.tenant_id.to_string(), k.name, k.role.as_str(), k.created_by.map(|u| u.to_string()), ms(k.created_at), ms(k.expires_at), opt_ms(k.revoked_at), k.secret_hash],
            )
            .map(drop)
            .map_err(backend),
        Change::RevokeApiKey { id, at } => tx
            .execute("UPDATE api_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1", params![id.to_string(), ms(at)])
            .map_err(backend)
            .and_then(exactly_one("api key")),
        Change::InsertDeviceKey(k) => tx
            .execute(
                "INSERT INTO device_keys (id, tenant_id, device_id, created_at, expires_at, revoked_at, secret_hash, psk_sealed) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![k.id.to_string(), k.tenant_id.to_string(), k.device_id.to_string(), ms(k.created_at), opt_ms(k.expires_at), opt_ms(k.revoked_at), k.secret_hash, k.psk_sealed],
            )
            .map(drop)
            .map_err(backend),
        Change::RevokeDeviceKey { id, at } => tx
            .execute("UPDATE device_keys SET revoked_at = coalesce(revoked_at, ?2) WHERE id = ?1", params![id.to_string(), ms(at)])
            .map_err(backend)
            .and_then(exactly_one("device key")),
        Change::InsertRefreshToken(t) => tx
            .execute(
                "INSERT INTO refresh_tokens (id, user_id, family_id, secret_hash, created_at, expires_at, used_at, revoked_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![t.id.to_string(), t.user_id.to_string(), t.family_id.to_string(), t.secret_hash, ms(t.created_at), ms(t.expires_at), opt_ms(t.used_at), opt_ms(t.revoked_at)],
            )
            .map(drop)
            .map_err(backend),
        Change::UseRefreshToken { id, at } => {
            let n = tx
                .execute("UPDATE refresh_tokens SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL", params![id.to_string(), ms(at)])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("the refresh token was already used".into()));
            }
            Ok(())
        }
        Change::RevokeRefreshFamily { family_id, at } => tx
            .execute("UPDATE refresh_tokens SET revoked_at = ?2 WHERE family_id = ?1 AND revoked_at IS NULL", params![family_id.to_string(), ms(at)])
            .map(drop)
            .map_err(backend),
        Change::RevokeUserRefreshTokens { user_id, at } => tx
            .execute("UPDATE refresh_tokens SET revoked_at = ?2 WHERE user_id = ?1 AND revoked_at IS NULL", params![user_id.to_string(), ms(at)])
            .map(drop)
            .map_err(backend),
        Change::ExpireDeviceKey { id, at } => tx
            .execute("UPDATE device_keys SET expires_at = min(coalesce(expires_at, ?2), ?2) WHERE id = ?1", params![id.to_string(), ms(at)])
            .map_err(backend)
            .and_then(exactly_one("device key")),
        Change::MoveDevice { id, tenant_id, state, at } => {
            let id = id.to_string();
            tx.execute("DELETE FROM connections WHERE device_id = ?1", [&id]).map_err(backend)?;
            tx.execute(
                "UPDATE device_keys SET tenant_id = ?2 WHERE device_id = ?1",
                params![id, tenant_id.to_string()],
            )
            .map_err(backend)?;
            let name: String = tx
                .query_row("SELECT name FROM devices WHERE id = ?1", [&id], |r| r.get(0))
                .optional()
                .map_err(backend)?
                .ok_or(StoreError::NotFound("device"))?;
            tx.execute(
                "UPDATE devices SET tenant_id = ?2, state = ?3, updated_at = ?4 WHERE id = ?1",
                params![id, tenant_id.to_string(), state.as_str(), ms(at)],
            )
            .map(drop)
            .map_err(unique(|| format!("a device named {name:?} already exists in this tenant")))
        }
        Change::InsertAuthority(a) => tx
            .execute(
                "INSERT INTO authorities (id, tenant_id, kind, subject, fingerprint, not_after, jit, cert_pem, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![a.id.to_string(), a.tenant_id.to_string(), a.kind.as_str(), a.subject, a.fingerprint, ms(a.not_after), a.jit.as_str(), a.cert_pem, ms(a.created_at)],
            )
            .map(drop)
            .map_err(unique(|| "this CA is already registered for the tenant".into())),
        Change::UpdateAuthority(a) => tx
            .execute("UPDATE authorities SET jit = ?2 WHERE id = ?1", params![a.id.to_string(), a.jit.as_str()])
            .map_err(backend)
            .and_then(exactly_one("certificate authority")),
        Change::DeleteAuthority(id) => tx
            .execute("DELETE FROM authorities WHERE id = ?1", [id.to_string()])
            .map_err(backend)
            .and_then(exactly_one("certificate authority")),
        Change::InsertCertificate(c) => {
            let path: String = tx
                .query_row("SELECT path FROM tenants WHERE id = ?1", [c.tenant_id.to_string()], |r| r.get(0))
                .optional()
                .map_err(backend)?
                .ok_or(StoreError::NotFound("tenant"))?;
            tx.execute(
                "INSERT INTO certificates (id, tenant_id, tenant_path, device_id, authority_id, serial, fingerprint, subject, key_algorithm, not_before, not_after, origin, created_at, revoked_at, revocation_reason, cert_pem) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                params![c.id.to_string(), c.tenant_id.to_string(), path, c.device_id.to_string(), c.authority_id.map(|a| a.to_string()), c.serial, c.fingerprint, c.subject, c.key_algorithm, ms(c.not_before), ms(c.not_after), c.origin.as_str(), ms(c.created_at), opt_ms(c.revoked_at), c.revocation_reason, c.cert_pem],
            )
            .map(drop)
            .map_err(unique(|| "this certificate is already registered".into()))
        }
        Change::RevokeCertificate { id, at, reason } => tx
            .execute(
                "UPDATE certificates SET revoked_at = min(coalesce(revoked_at, ?2), ?2), revocation_reason = CASE WHEN revoked_at IS NULL OR revoked_at > ?2 THEN ?3 ELSE revocation_reason END WHERE id = ?1",
                params![id.to_string(), ms(at), reason],
            )
            .map_err(backend)
            .and_then(exactly_one("certificate")),
        Change::RevokeDeviceCertificates { device_id, at, reason } => tx
            .execute(
                "UPDATE certificates SET revoked_at = ?2, revocation_reason = ?3 WHERE device_id = ?1 AND (revoked_at IS NULL OR revoked_at > ?2)",
                params![device_id.to_string(), ms(at), reason],
            )
            .map(drop)
            .map_err(backend),
        Change::PutRegistrationCode { tenant_id, code, expires_at } => tx
            .execute(
                "INSERT INTO registration_codes (tenant_id, code, expires_at) VALUES (?1, ?2, ?3) ON CONFLICT (tenant_id) DO UPDATE SET code = excluded.code, expires_at = excluded.expires_at",
                params![tenant_id.to_string(), code, ms(expires_at)],
            )
            .map(drop)
            .map_err(backend),
        Change::InsertClaimCode(c) => tx
            .execute(
                "INSERT INTO claim_codes (id, tenant_id, device_id, code_hash, created_at, expires_at, claimed_at, claimed_by, used_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
                params![c.id.to_string(), c.tenant_id.to_string(), c.device_id.to_string(), c.code_hash, ms(c.created_at), ms(c.expires_at), opt_ms(c.claimed_at), c.claimed_by, opt_ms(c.used_at)],
            )
            .map(drop)
            .map_err(unique(|| "claim code collision; try again".into())),
        Change::ClaimWithCode { id, by, at } => {
            let n = tx
                .execute("UPDATE claim_codes SET claimed_at = ?2, claimed_by = ?3 WHERE id = ?1 AND claimed_at IS NULL", params![id.to_string(), ms(at), by])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("the device was already claimed".into()));
            }
            Ok(())
        }
        Change::UseClaimCode { id, at } => {
            let n = tx
                .execute("UPDATE claim_codes SET used_at = ?2 WHERE id = ?1 AND used_at IS NULL", params![id.to_string(), ms(at)])
                .map_err(backend)?;
            if n == 0 {
                return Err(StoreError::Conflict("the claim code was already used".into()));
            }
            Ok(())
        }
        Change::PutSecret { name, value } => tx
            .execute("INSERT INTO secrets (name, value) VALUES (?1, ?2) ON CONFLICT (name) DO UPDATE SET value = excluded.value", params![name, value])
            .map(drop)
            .map_err(backend),
    }
}

/// Links `record` after the last event, inside the caller's transaction.
fn append(
    tx: &Transaction<'_>,
    chain: &AuditChain,
    record: AuditRecord,
) -> Result<AuditEvent, StoreError> {
    let prev: Option<(i64, String)> = tx
        .query_row(
            "SELECT seq, hash FROM audit ORDER BY seq DESC LIMIT 1",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()
        .map_err(backend)?;
    let tenant_path: Option<String> = match record.tenant_id {
        Some(t) => tx
            .query_row(
                "SELECT path FROM tenants WHERE id = ?1",
                [t.to_string()],
                |r| r.get(0),
            )
            .optional()
            .map_err(backend)?
            .or_else(|| Some(TenantPath::root(t).encode())),
        None => None,
    };
    let event = chain.append(prev.as_ref().map(|(s, h)| (*s, h.as_str())), record);
    let r = &event.record;
    tx.execute(
        "INSERT INTO audit (seq, time, actor, tenant_id, tenant_path, action, target, outcome, source, detail, prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![event.seq, ms(r.time), r.actor, r.tenant_id.map(|t| t.to_string()), tenant_path, r.action, r.target, r.outcome.as_str(), r.source, json(&r.detail), event.prev_hash, event.hash],
    )
    .map_err(backend)?;
    Ok(event)
}
