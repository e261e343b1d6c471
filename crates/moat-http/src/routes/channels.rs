//! Channels and the connections that give devices rights on them.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::page::Page;
use moat_core::store::{Change, ConnectionsOf, all_connections};
use moat_core::validate::Checker;
use moat_core::{Channel, ChannelId, Connection, DeviceId, PayloadPolicy, TenantId, TenantPath};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::devices::PageParams;
use super::{TAG_CHANNELS, empty_object, page};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// The longest retention a channel may ask for: ten years.
pub const MAX_RETENTION_DAYS: u32 = 3650;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewChannel {
    pub name: String,
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
    /// Defaults to `senml`.
    pub payload_policy: Option<PayloadPolicy>,
    /// Days to keep messages; none keeps them forever.
    pub retention_days: Option<u32>,
    /// The largest payload accepted, in bytes (1 to 1048576) [default 65536].
    pub max_payload: Option<u32>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ChannelPatch {
    pub name: Option<String>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<serde_json::Value>,
    pub payload_policy: Option<PayloadPolicy>,
    /// Days to keep messages; `0` keeps them forever.
    pub retention_days: Option<u32>,
    /// The largest payload accepted, in bytes (1 to 1048576).
    pub max_payload: Option<u32>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ChannelListParams {
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Only channels carrying this tag.
    pub tag: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// The rights a connection grants.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rights {
    pub publish: bool,
    pub subscribe: bool,
}

fn check(
    name: Option<&str>,
    tags: Option<&[String]>,
    metadata: Option<&serde_json::Value>,
    retention: Option<u32>,
    max_payload: Option<u32>,
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
    if max_payload.is_some_and(|m| m == 0 || m as usize > moat_core::message::MAX_PAYLOAD) {
        c.fail(
            "max_payload",
            format!("must be between 1 and {}", moat_core::message::MAX_PAYLOAD),
        );
    }
    if retention.is_some_and(|r| r > MAX_RETENTION_DAYS) {
        c.fail(
            "retention_days",
            format!("must be at most {MAX_RETENTION_DAYS}"),
        );
    }
    Ok(c.finish()?)
}

/// Creates a channel.
#[utoipa::path(post, path = "/channels", tag = TAG_CHANNELS, request_body = NewChannel,
    responses((status = 201, body = Channel), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewChannel>,
) -> Result<(StatusCode, Json<Channel>), ApiError> {
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    let id = ChannelId::new();
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::with_id(ResourceKind::Channel, &path, id.0),
            "channel",
            "channel.create",
        )
        .await?;
    check(
        Some(&body.name),
        Some(&body.tags),
        Some(&body.metadata),
        body.retention_days,
        body.max_payload,
    )?;
    if body.retention_days == Some(0) {
        return Err(ApiError::unprocessable(
            "retention_days",
            "must be at least 1; leave it out to keep messages forever",
        ));
    }
    let now = now_millis();
    let channel = Channel {
        id,
        tenant_id,
        name: body.name,
        tags: body.tags,
        metadata: body.metadata,
        payload_policy: body.payload_policy.unwrap_or(PayloadPolicy::Senml),
        retention_days: body.retention_days,
        max_payload: body.max_payload,
        created_at: now,
        updated_at: now,
    };
    let record = caller
        .record("channel.create", format!("channel:{id}"), Outcome::Success)
        .tenant(tenant_id);
    s.store
        .apply(vec![Change::InsertChannel(channel.clone())], Some(record))
        .await?;
    Ok((StatusCode::CREATED, Json(channel)))
}

/// Lists the channels of a tenant.
#[utoipa::path(get, path = "/channels", tag = TAG_CHANNELS, params(ChannelListParams),
    responses((status = 200, body = Page<Channel>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<ChannelListParams>,
) -> Result<Json<Page<Channel>>, ApiError> {
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::Channel, &path),
            "channel",
            "channel.list",
        )
        .await?;
    let mut q = page(p.limit, p.cursor.as_deref())?;
    q.name = p.name;
    q.tag = p.tag;
    Ok(Json(s.store.channels(tenant, &q).await?))
}

async fn load(
    s: &AppState,
    caller: &Caller,
    id: ChannelId,
    kind: ResourceKind,
    action: Action,
    audit: &str,
) -> Result<(Channel, TenantPath), ApiError> {
    let c = s
        .store
        .channel(id)
        .await?
        .ok_or_else(|| ApiError::not_found("channel"))?;
    let path = s.tenant_path(c.tenant_id).await?;
    caller
        .authorize(
            s,
            action,
            Resource::with_id(kind, &path, id.0),
            "channel",
            audit,
        )
        .await?;
    Ok((c, path))
}

/// Reads a channel.
#[utoipa::path(get, path = "/channels/{id}", tag = TAG_CHANNELS, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Channel), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
) -> Result<Json<Channel>, ApiError> {
    Ok(Json(
        load(
            &s,
            &caller,
            id,
            ResourceKind::Channel,
            Action::Read,
            "channel.read",
        )
        .await?
        .0,
    ))
}

/// Changes a channel's name, tags, metadata, payload policy or retention.
#[utoipa::path(patch, path = "/channels/{id}", tag = TAG_CHANNELS, params(("id" = uuid::Uuid, Path)), request_body = ChannelPatch,
    responses((status = 200, body = Channel), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
    Json(body): Json<ChannelPatch>,
) -> Result<Json<Channel>, ApiError> {
    let (mut c, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Channel,
        Action::Update,
        "channel.update",
    )
    .await?;
    check(
        body.name.as_deref(),
        body.tags.as_deref(),
        body.metadata.as_ref(),
        body.retention_days,
        body.max_payload,
    )?;
    if let Some(n) = body.name {
        c.name = n;
    }
    if let Some(t) = body.tags {
        c.tags = t;
    }
    if let Some(m) = body.metadata {
        c.metadata = m;
    }
    if let Some(p) = body.payload_policy {
        c.payload_policy = p;
    }
    if let Some(r) = body.retention_days {
        c.retention_days = (r > 0).then_some(r);
    }
    if let Some(m) = body.max_payload {
        c.max_payload = Some(m);
    }
    c.updated_at = now_millis();
    let record = caller
        .record("channel.update", format!("channel:{id}"), Outcome::Success)
        .tenant(c.tenant_id);
    s.store
        .apply(vec![Change::UpdateChannel(c.clone())], Some(record))
        .await?;
    Ok(Json(c))
}

/// Deletes a channel and its connections.
#[utoipa::path(delete, path = "/channels/{id}", tag = TAG_CHANNELS, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
) -> Result<StatusCode, ApiError> {
    let (c, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Channel,
        Action::Delete,
        "channel.delete",
    )
    .await?;
    // Read before the deletion takes the connections with it: these
    // devices' live sessions stop reading the channel.
    let connected = all_connections(&*s.store, ConnectionsOf::Channel(id)).await?;
    let record = caller
        .record("channel.delete", format!("channel:{id}"), Outcome::Success)
        .tenant(c.tenant_id);
    s.store
        .apply(vec![Change::DeleteChannel(id)], Some(record))
        .await?;
    for conn in connected {
        s.sessions.rights_changed(conn.device_id);
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Lists the devices connected to a channel.
#[utoipa::path(get, path = "/channels/{id}/connections", tag = TAG_CHANNELS, params(("id" = uuid::Uuid, Path), PageParams),
    responses((status = 200, body = Page<Connection>), (status = 404, body = Problem)))]
pub async fn connections(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ChannelId>,
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
        s.store.connections(ConnectionsOf::Channel(id), &q).await?,
    ))
}

/// Connects a device to a channel with publish and/or subscribe rights, or
/// changes the rights of an existing connection.
#[utoipa::path(put, path = "/channels/{id}/connections/{device_id}", tag = TAG_CHANNELS,
    params(("id" = uuid::Uuid, Path), ("device_id" = uuid::Uuid, Path)), request_body = Rights,
    responses((status = 200, body = Connection), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn connect(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path((id, device_id)): Path<(ChannelId, DeviceId)>,
    Json(rights): Json<Rights>,
) -> Result<Json<Connection>, ApiError> {
    let (channel, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Connection,
        Action::Create,
        "connection.put",
    )
    .await?;
    let device = s
        .store
        .device(device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("device"))?;
    let device_path = s.tenant_path(device.tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::with_id(ResourceKind::Device, &device_path, device_id.0),
            "device",
            "connection.put",
        )
        .await?;
    if device.tenant_id != channel.tenant_id {
        return Err(ApiError::unprocessable(
            "device_id",
            "the device and the channel belong to different tenants",
        ));
    }
    if !rights.publish && !rights.subscribe {
        return Err(ApiError::unprocessable(
            "publish",
            "grant publish, subscribe or both; to remove the connection, DELETE it",
        ));
    }
    let now = now_millis();
    let created_at = s
        .store
        .connection(id, device_id)
        .await?
        .map_or(now, |c| c.created_at);
    let conn = Connection {
        tenant_id: channel.tenant_id,
        device_id,
        channel_id: id,
        publish: rights.publish,
        subscribe: rights.subscribe,
        created_at,
        updated_at: now,
    };
    let record = caller
        .record(
            "connection.put",
            format!("channel:{id}/device:{device_id}"),
            Outcome::Success,
        )
        .tenant(channel.tenant_id)
        .detail(serde_json::json!({"publish": conn.publish, "subscribe": conn.subscribe}));
    s.store
        .apply(vec![Change::PutConnection(conn.clone())], Some(record))
        .await?;
    // Live sessions (an MQTT subscription) re-read the device's rights.
    s.sessions.rights_changed(device_id);
    Ok(Json(conn))
}

/// Disconnects a device from a channel.
#[utoipa::path(delete, path = "/channels/{id}/connections/{device_id}", tag = TAG_CHANNELS,
    params(("id" = uuid::Uuid, Path), ("device_id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn disconnect(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path((id, device_id)): Path<(ChannelId, DeviceId)>,
) -> Result<StatusCode, ApiError> {
    let (channel, _) = load(
        &s,
        &caller,
        id,
        ResourceKind::Connection,
        Action::Delete,
        "connection.delete",
    )
    .await?;
    s.store
        .connection(id, device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("connection"))?;
    let record = caller
        .record(
            "connection.delete",
            format!("channel:{id}/device:{device_id}"),
            Outcome::Success,
        )
        .tenant(channel.tenant_id);
    s.store
        .apply(
            vec![Change::DeleteConnection {
                channel_id: id,
                device_id,
            }],
            Some(record),
        )
        .await?;
    s.sessions.rights_changed(device_id);
    Ok(StatusCode::NO_CONTENT)
}
