//! Rows to domain values and back: times as unix milliseconds, enums as
//! their names, tags and metadata as JSON text.

use chrono::{DateTime, Utc};
use moat_core::audit::{AuditEvent, AuditRecord, Outcome};
use moat_core::credential::{ApiKey, DeviceKey, RefreshToken};
use moat_core::pki::*;
use moat_core::*;
use rusqlite::Row;
use rusqlite::types::Type;

pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn opt_ms(t: Option<DateTime<Utc>>) -> Option<i64> {
    t.map(ms)
}

fn conversion(col: &str, msg: String) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, Type::Text, format!("{col}: {msg}").into())
}

fn time(row: &Row<'_>, col: &str) -> rusqlite::Result<DateTime<Utc>> {
    let v: i64 = row.get(col)?;
    DateTime::from_timestamp_millis(v).ok_or_else(|| conversion(col, format!("{v} is not a time")))
}

fn opt_time(row: &Row<'_>, col: &str) -> rusqlite::Result<Option<DateTime<Utc>>> {
    let v: Option<i64> = row.get(col)?;
    v.map(|v| {
        DateTime::from_timestamp_millis(v)
            .ok_or_else(|| conversion(col, format!("{v} is not a time")))
    })
    .transpose()
}

fn uuid(row: &Row<'_>, col: &str) -> rusqlite::Result<uuid::Uuid> {
    let s: String = row.get(col)?;
    uuid::Uuid::parse_str(&s).map_err(|e| conversion(col, e.to_string()))
}

fn opt_uuid(row: &Row<'_>, col: &str) -> rusqlite::Result<Option<uuid::Uuid>> {
    let s: Option<String> = row.get(col)?;
    s.map(|s| uuid::Uuid::parse_str(&s).map_err(|e| conversion(col, e.to_string())))
        .transpose()
}

fn json<T: serde::de::DeserializeOwned>(row: &Row<'_>, col: &str) -> rusqlite::Result<T> {
    let s: String = row.get(col)?;
    serde_json::from_str(&s).map_err(|e| conversion(col, e.to_string()))
}

fn parsed<T>(row: &Row<'_>, col: &str, parse: impl Fn(&str) -> Option<T>) -> rusqlite::Result<T> {
    let s: String = row.get(col)?;
    parse(&s).ok_or_else(|| conversion(col, format!("unknown value {s:?}")))
}

pub(crate) fn tenant(row: &Row<'_>) -> rusqlite::Result<Tenant> {
    Ok(Tenant {
        id: TenantId(uuid(row, "id")?),
        parent_id: opt_uuid(row, "parent_id")?.map(TenantId),
        path: parsed(row, "path", TenantPath::decode)?,
        name: row.get("name")?,
        tags: json(row, "tags")?,
        metadata: json(row, "metadata")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn user(row: &Row<'_>) -> rusqlite::Result<User> {
    Ok(User {
        id: UserId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        username: row.get("username")?,
        display_name: row.get("display_name")?,
        role: parsed(row, "role", Role::parse)?,
        disabled: row.get("disabled")?,
        password_hash: row.get("password_hash")?,
        sessions_valid_after: time(row, "sessions_valid_after")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn device(row: &Row<'_>) -> rusqlite::Result<Device> {
    Ok(Device {
        id: DeviceId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        name: row.get("name")?,
        tags: json(row, "tags")?,
        metadata: json(row, "metadata")?,
        state: parsed(row, "state", DeviceState::parse)?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn channel(row: &Row<'_>) -> rusqlite::Result<Channel> {
    Ok(Channel {
        id: ChannelId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        name: row.get("name")?,
        tags: json(row, "tags")?,
        metadata: json(row, "metadata")?,
        payload_policy: parsed(row, "payload_policy", PayloadPolicy::parse)?,
        retention_days: row.get("retention_days")?,
        max_payload: row.get("max_payload")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn connection(row: &Row<'_>) -> rusqlite::Result<Connection> {
    Ok(Connection {
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        device_id: DeviceId(uuid(row, "device_id")?),
        channel_id: ChannelId(uuid(row, "channel_id")?),
        publish: row.get("publish")?,
        subscribe: row.get("subscribe")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
    })
}

pub(crate) fn api_key(row: &Row<'_>) -> rusqlite::Result<ApiKey> {
    Ok(ApiKey {
        id: ApiKeyId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        name: row.get("name")?,
        role: parsed(row, "role", Role::parse)?,
        created_by: opt_uuid(row, "created_by")?.map(UserId),
        created_at: time(row, "created_at")?,
        expires_at: time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        secret_hash: row.get("secret_hash")?,
    })
}

pub(crate) fn device_key(row: &Row<'_>) -> rusqlite::Result<DeviceKey> {
    Ok(DeviceKey {
        id: DeviceKeyId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        device_id: DeviceId(uuid(row, "device_id")?),
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        secret_hash: row.get("secret_hash")?,
        psk_sealed: row.get("psk_sealed")?,
    })
}

pub(crate) fn refresh_token(row: &Row<'_>) -> rusqlite::Result<RefreshToken> {
    Ok(RefreshToken {
        id: RefreshTokenId(uuid(row, "id")?),
        user_id: UserId(uuid(row, "user_id")?),
        family_id: RefreshTokenId(uuid(row, "family_id")?),
        secret_hash: row.get("secret_hash")?,
        created_at: time(row, "created_at")?,
        expires_at: time(row, "expires_at")?,
        used_at: opt_time(row, "used_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

pub(crate) fn audit_event(row: &Row<'_>) -> rusqlite::Result<AuditEvent> {
    Ok(AuditEvent {
        seq: row.get("seq")?,
        record: AuditRecord {
            time: time(row, "time")?,
            actor: row.get("actor")?,
            tenant_id: opt_uuid(row, "tenant_id")?.map(TenantId),
            action: row.get("action")?,
            target: row.get("target")?,
            outcome: parsed(row, "outcome", Outcome::parse)?,
            source: row.get("source")?,
            detail: json(row, "detail")?,
        },
        prev_hash: row.get("prev_hash")?,
        hash: row.get("hash")?,
    })
}

pub(crate) fn authority(row: &Row<'_>) -> rusqlite::Result<Authority> {
    Ok(Authority {
        id: AuthorityId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        kind: parsed(row, "kind", AuthorityKind::parse)?,
        subject: row.get("subject")?,
        fingerprint: row.get("fingerprint")?,
        not_after: time(row, "not_after")?,
        jit: parsed(row, "jit", JitMode::parse)?,
        cert_pem: row.get("cert_pem")?,
        created_at: time(row, "created_at")?,
    })
}

pub(crate) fn certificate(row: &Row<'_>) -> rusqlite::Result<Certificate> {
    Ok(Certificate {
        id: CertificateId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        device_id: DeviceId(uuid(row, "device_id")?),
        authority_id: opt_uuid(row, "authority_id")?.map(AuthorityId),
        serial: row.get("serial")?,
        fingerprint: row.get("fingerprint")?,
        subject: row.get("subject")?,
        key_algorithm: row.get("key_algorithm")?,
        not_before: time(row, "not_before")?,
        not_after: time(row, "not_after")?,
        origin: parsed(row, "origin", CertificateOrigin::parse)?,
        created_at: time(row, "created_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
        revocation_reason: row.get("revocation_reason")?,
        cert_pem: row.get("cert_pem")?,
    })
}

pub(crate) fn claim_code(row: &Row<'_>) -> rusqlite::Result<ClaimCode> {
    Ok(ClaimCode {
        id: ClaimCodeId(uuid(row, "id")?),
        tenant_id: TenantId(uuid(row, "tenant_id")?),
        device_id: DeviceId(uuid(row, "device_id")?),
        created_at: time(row, "created_at")?,
        expires_at: time(row, "expires_at")?,
        claimed_at: opt_time(row, "claimed_at")?,
        claimed_by: row.get("claimed_by")?,
        used_at: opt_time(row, "used_at")?,
        code_hash: row.get("code_hash")?,
    })
}
