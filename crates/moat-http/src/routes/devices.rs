//! Devices, their states and their keys.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::credential::{self, DeviceKey, TokenKind};
use moat_core::page::Page;
use moat_core::sessions::CutReason;
use moat_core::store::{Change, ConnectionsOf};
use moat_core::validate::Checker;
use moat_core::{Connection, Device, DeviceId, DeviceKeyId, DeviceState, TenantId, TenantPath};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{TAG_DEVICES, empty_object, optional_body, page};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// At most this many usable keys per device.
pub const MAX_DEVICE_KEYS: usize = 10;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewDevice {
    pub name: String,
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    /// Defaults to `active`.
    pub state: Option<DeviceState>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<serde_json::Value>,
    /// `quarantined` and `revoked` cut the device's live sessions at once;
    /// `revoked` is final.
    pub state: Option<DeviceState>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeviceListParams {
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Only devices carrying this tag.
    pub tag: Option<String>,
    pub state: Option<DeviceState>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewDeviceKey {
    /// Days until the key stops working; none = until revoked.
    pub expires_in_days: Option<u32>,
    /// A key of the same device this one rotates: it keeps working for the
    /// rotation overlap, then expires.
    pub replaces: Option<DeviceKeyId>,
}

/// A new key; `token` and `dtls_psk.key` (made from the token's secret)
/// are shown this once and never again.
#[derive(Serialize, ToSchema)]
pub struct IssuedDeviceKey {
    pub key: DeviceKey,
    pub token: String,
    pub dtls_psk: DtlsPsk,
}

/// The same key for CoAP over DTLS with a pre-shared key: the identity and
/// key a DTLS client is given, within the limits of small DTLS stacks such
/// as tinydtls (identity up to 32 bytes, key up to 16). The device's id
/// also works as the identity; it picks the device's newest usable key.
#[derive(Serialize, ToSchema)]
pub struct DtlsPsk {
    /// The key's id, 32 hex digits.
    pub identity: String,
    /// 16 characters (URL-safe base64) derived from the token's secret; a
    /// DTLS client uses them as the key's bytes.
    pub key: String,
}

impl IssuedDeviceKey {
    pub(crate) fn new(key: DeviceKey, token: String, secret: &[u8]) -> Self {
        Self {
            dtls_psk: DtlsPsk {
                identity: key.id.0.simple().to_string(),
                key: moat_core::credential::dtls_psk(secret).to_string(),
            },
            key,
            token,
        }
    }
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

fn check(
    name: Option<&str>,
    tags: Option<&[String]>,
    metadata: Option<&serde_json::Value>,
) -> Result<(), ApiError> {
    let mut c = Checker::new();
    if let Some(n) = name {
        c.name("name", n);
    }
    if let Some(t) = tags {
        c.tags("tags", t);
    }
    if let Some(m) = metadata {
        c.metadata("metadata", m);
    }
    Ok(c.finish()?)
}

/// Registers a device.
#[utoipa::path(post, path = "/devices", tag = TAG_DEVICES, request_body = NewDevice,
    responses((status = 201, body = Device), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewDevice>,
) -> Result<(StatusCode, Json<Device>), ApiError> {
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    let id = DeviceId::new();
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::with_id(ResourceKind::Device, &path, id.0),
            "device",
            "device.create",
        )
        .await?;
    check(Some(&body.name), Some(&body.tags), Some(&body.metadata))?;
    let now = now_millis();
    let device = Device {
        id,
        tenant_id,
        name: body.name,
        tags: body.tags,
        metadata: body.metadata,
        state: body.state.unwrap_or(DeviceState::Active),
        created_at: now,
        updated_at: now,
    };
    let record = caller
        .record("device.create", format!("device:{id}"), Outcome::Success)
        .tenant(tenant_id);
    s.store
        .apply(vec![Change::InsertDevice(device.clone())], Some(record))
        .await?;
    Ok((StatusCode::CREATED, Json(device)))
}

/// Lists the devices of a tenant.
#[utoipa::path(get, path = "/devices", tag = TAG_DEVICES, params(DeviceListParams),
    responses((status = 200, body = Page<Device>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<DeviceListParams>,
) -> Result<Json<Page<Device>>, ApiError> {
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::Device, &path),
            "device",
            "device.list",
        )
        .await?;
    let mut q = page(p.limit, p.cursor.as_deref())?;
    q.name = p.name;
    q.tag = p.tag;
    Ok(Json(s.store.devices(tenant, p.state, &q).await?))
}

/// Loads a device and checks `action` on `kind` (the device itself, its
/// keys or its connections).
async fn load(
    s: &AppState,
    caller: &Caller,
    id: DeviceId,
    kind: ResourceKind,
    action: Action,
    audit: &str,
) -> Result<(Device, TenantPath), ApiError> {
    let d = s
        .store
        .device(id)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?;
    let path = s.tenant_path(d.tenant_id).await?;
    caller
        .authorize(
            s,
            action,
            Resource::with_id(kind, &path, id.0),
            "device",
            audit,
        )
        .await?;
    Ok((d, path))
}

/// Reads a device (a device may read itself).
#[utoipa::path(get, path = "/devices/{id}", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Device), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
) -> Result<Json<Device>, ApiError> {
    Ok(Json(
        load(
            &s,
            &caller,
            id,
            ResourceKind::Device,
            Action::Read,
            "device.read",
        )
        .await?
        .0,
    ))
}

/// Renames a device, changes its tags, metadata or state.
#[utoipa::path(patch, path = "/devices/{id}", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path)), request_body = DevicePatch,
    responses((status = 200, body = Device), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
    Json(body): Json<DevicePatch>,
) -> Result<Json<Device>, ApiError> {
    let (mut d, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Device,
        Action::Update,
        "device.update",
    )
    .await?;
    check(
        body.name.as_deref(),
        body.tags.as_deref(),
        body.metadata.as_ref(),
    )?;
    let before = d.state;
    if let Some(state) = body.state {
        if !d.state.may_become(state) {
            return Err(ApiError::conflict(
                "a revoked device stays revoked; register a new device instead",
            ));
        }
        d.state = state;
    }
    if let Some(n) = body.name {
        d.name = n;
    }
    if let Some(t) = body.tags {
        d.tags = t;
    }
    if let Some(m) = body.metadata {
        d.metadata = m;
    }
    d.updated_at = now_millis();
    let action = match (before, d.state) {
        (a, b) if a == b => "device.update",
        (_, DeviceState::Revoked) => "device.revoke",
        (_, DeviceState::Quarantined) => "device.quarantine",
        (_, DeviceState::Active) => "device.activate",
        (_, DeviceState::Pending) => "device.update",
    };
    let record = caller
        .record(action, format!("device:{id}"), Outcome::Success)
        .tenant(d.tenant_id)
        .detail(serde_json::json!({"state": d.state, "previous_state": before}));
    let mut changes = vec![Change::UpdateDevice(d.clone())];
    let revoking = before != DeviceState::Revoked && d.state == DeviceState::Revoked;
    if revoking {
        // A revoked device's certificates go on its CA's CRL.
        changes.push(Change::RevokeDeviceCertificates {
            device_id: id,
            at: now_millis(),
            reason: "cessation_of_operation".into(),
        });
    }
    s.store.apply(changes, Some(record)).await?;
    if revoking {
        s.pki.device_certificates_changed(id, false).await?;
    }
    s.pki.device_state_changed(id, d.state);
    Ok(Json(d))
}

fn cut(s: &AppState, id: DeviceId, reason: CutReason) {
    let n = s.sessions.cut(id, reason);
    if n > 0 {
        tracing::info!(device = %id, sessions = n, ?reason, "cut device sessions");
    }
}

/// Deletes a device with its keys and connections.
#[utoipa::path(delete, path = "/devices/{id}", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
) -> Result<StatusCode, ApiError> {
    let (d, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Device,
        Action::Delete,
        "device.delete",
    )
    .await?;
    let record = caller
        .record("device.delete", format!("device:{id}"), Outcome::Success)
        .tenant(d.tenant_id);
    // Its certificates stay, revoked, on the CRL until they expire.
    let revoke = Change::RevokeDeviceCertificates {
        device_id: id,
        at: now_millis(),
        reason: "cessation_of_operation".into(),
    };
    s.store
        .apply(vec![revoke, Change::DeleteDevice(id)], Some(record))
        .await?;
    s.pki.device_certificates_changed(id, false).await?;
    cut(&s, id, CutReason::Withdrawn);
    Ok(StatusCode::NO_CONTENT)
}

/// Issues a device key, for devices that cannot hold a certificate. The
/// token is returned once.
#[utoipa::path(post, path = "/devices/{id}/keys", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path)), request_body = NewDeviceKey,
    responses((status = 201, body = IssuedDeviceKey), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create_key(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IssuedDeviceKey>), ApiError> {
    // The body is optional: an empty one takes the defaults.
    let body: NewDeviceKey = optional_body(&body)?;
    let (d, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::DeviceKey,
        Action::Create,
        "device_key.create",
    )
    .await?;
    if let Some(days) = body.expires_in_days {
        if !(1..=3650).contains(&days) {
            return Err(ApiError::unprocessable(
                "expires_in_days",
                "must be between 1 and 3650",
            ));
        }
    }
    if d.state == DeviceState::Revoked {
        return Err(ApiError::conflict("the device is revoked"));
    }
    let now = now_millis();
    let expires_at = body
        .expires_in_days
        .map(|days| now + chrono::Duration::days(days.into()));
    let replaced = match body.replaces {
        Some(old) => Some(
            s.store
                .device_key(old)
                .await?
                .filter(|k| k.device_id == d.id && k.is_usable(now))
                .ok_or_else(|| {
                    ApiError::unprocessable("replaces", "not a usable key of this device")
                })?,
        ),
        None => None,
    };
    let issued = new_key(&s, &d, now, expires_at).await?;
    let key = &issued.key;
    let record = caller
        .record(
            "device_key.create",
            format!("device_key:{}", key.id),
            Outcome::Success,
        )
        .tenant(d.tenant_id)
        .detail(serde_json::json!({"device_id": id, "replaces": body.replaces}));
    let mut changes = vec![Change::InsertDeviceKey(key.clone())];
    if let Some(old) = replaced {
        changes.push(Change::ExpireDeviceKey {
            id: old.id,
            at: now + s.pki.settings.rotation_overlap,
        });
    }
    s.store.apply(changes, Some(record)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}

/// A new key for `d` and its token (to show once), unless the device
/// already has [`MAX_DEVICE_KEYS`] usable keys. Issuing and rotating share it.
pub(crate) async fn new_key(
    s: &AppState,
    d: &Device,
    now: chrono::DateTime<chrono::Utc>,
    expires_at: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<IssuedDeviceKey, ApiError> {
    let usable = s
        .store
        .device_keys(d.id)
        .await?
        .iter()
        .filter(|k| k.is_usable(now))
        .count();
    if usable >= MAX_DEVICE_KEYS {
        return Err(ApiError::conflict(format!(
            "the device already has {MAX_DEVICE_KEYS} usable keys; revoke one first"
        )));
    }
    let issued = credential::issue(TokenKind::DeviceKey);
    let id = DeviceKeyId(issued.id);
    let (_, secret) =
        credential::parse(TokenKind::DeviceKey, &issued.token).ok_or_else(ApiError::internal)?;
    let key = DeviceKey {
        id,
        tenant_id: d.tenant_id,
        device_id: d.id,
        created_at: now,
        expires_at,
        revoked_at: None,
        secret_hash: issued.hash,
        psk_sealed: Some(s.pki.seal_device_secret(id, &secret)),
    };
    Ok(IssuedDeviceKey::new(key, issued.token, &secret))
}

/// Lists a device's keys (never their secrets).
#[utoipa::path(get, path = "/devices/{id}/keys", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Vec<DeviceKey>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list_keys(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
) -> Result<Json<Vec<DeviceKey>>, ApiError> {
    load(
        &s,
        &caller,
        id,
        ResourceKind::DeviceKey,
        Action::Read,
        "device_key.list",
    )
    .await?;
    Ok(Json(s.store.device_keys(id).await?))
}

/// Revokes a device key; sessions the device holds are cut.
#[utoipa::path(delete, path = "/devices/{id}/keys/{key_id}", tag = TAG_DEVICES,
    params(("id" = uuid::Uuid, Path), ("key_id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_key(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path((id, key_id)): Path<(DeviceId, DeviceKeyId)>,
) -> Result<StatusCode, ApiError> {
    let (d, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::DeviceKey,
        Action::Delete,
        "device_key.revoke",
    )
    .await?;
    let key = s
        .store
        .device_key(key_id)
        .await?
        .filter(|k| k.device_id == id)
        .ok_or_else(|| ApiError::not_found("device key"))?;
    if key.revoked_at.is_none() {
        let record = caller
            .record(
                "device_key.revoke",
                format!("device_key:{key_id}"),
                Outcome::Success,
            )
            .tenant(d.tenant_id);
        s.store
            .apply(
                vec![Change::RevokeDeviceKey {
                    id: key_id,
                    at: now_millis(),
                }],
                Some(record),
            )
            .await?;
        cut(&s, id, CutReason::Withdrawn);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the channels a device is connected to.
#[utoipa::path(get, path = "/devices/{id}/connections", tag = TAG_DEVICES, params(("id" = uuid::Uuid, Path), PageParams),
    responses((status = 200, body = Page<Connection>), (status = 404, body = Problem)))]
pub async fn connections(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
    Query(p): Query<PageParams>,
) -> Result<Json<Page<Connection>>, ApiError> {
    load(
        &s,
        &caller,
        id,
        ResourceKind::Connection,
        Action::Read,
        "connection.list",
    )
    .await?;
    let q = page(p.limit, p.cursor.as_deref())?;
    Ok(Json(
        s.store.connections(ConnectionsOf::Device(id), &q).await?,
    ))
}
