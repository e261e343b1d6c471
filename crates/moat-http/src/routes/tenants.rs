//! Tenants and their children.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::page::Page;
use moat_core::store::Change;
use moat_core::validate::Checker;
use moat_core::{Tenant, TenantId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{TAG_TENANTS, empty_object, page};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    pub name: String,
    /// The parent; defaults to the caller's own tenant.
    pub parent_id: Option<TenantId>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default = "empty_object")]
    pub metadata: serde_json::Value,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    pub name: Option<String>,
    pub tags: Option<Vec<String>>,
    pub metadata: Option<serde_json::Value>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantListParams {
    /// List the children of this tenant; defaults to the caller's own.
    pub parent_id: Option<TenantId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    /// Only tenants carrying this tag.
    pub tag: Option<String>,
    /// Page size, 1 to 500 (default 50).
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
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

/// Creates a child tenant.
#[utoipa::path(post, path = "/tenants", tag = TAG_TENANTS, request_body = NewTenant,
    responses((status = 201, body = Tenant), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewTenant>,
) -> Result<(StatusCode, Json<Tenant>), ApiError> {
    let parent_id = body.parent_id.unwrap_or(caller.principal.tenant_id());
    let parent = s.tenant_path(parent_id).await?;
    let id = TenantId::new();
    let path = parent.child(id);
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::with_id(ResourceKind::Tenant, &path, id.0),
            "tenant",
            "tenant.create",
        )
        .await?;
    check(Some(&body.name), Some(&body.tags), Some(&body.metadata))?;
    let now = now_millis();
    let tenant = Tenant {
        id,
        parent_id: Some(parent_id),
        path,
        name: body.name,
        tags: body.tags,
        metadata: body.metadata,
        created_at: now,
        updated_at: now,
    };
    // The tenant's CA is made with it, in the same transaction.
    let (ca_changes, authority, ca) = s.pki.new_tenant_ca(id, &tenant.name)?;
    let record = caller
        .record("tenant.create", format!("tenant:{id}"), Outcome::Success)
        .tenant(id)
        .detail(serde_json::json!({ "authority_id": authority.id }));
    let mut changes = vec![Change::InsertTenant(tenant.clone())];
    changes.extend(ca_changes);
    s.store.apply(changes, Some(record)).await?;
    s.pki.adopt(&authority, ca)?;
    Ok((StatusCode::CREATED, Json(tenant)))
}

/// Lists the children of a tenant.
#[utoipa::path(get, path = "/tenants", tag = TAG_TENANTS, params(TenantListParams),
    responses((status = 200, body = Page<Tenant>), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<TenantListParams>,
) -> Result<Json<Page<Tenant>>, ApiError> {
    let parent = p.parent_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(parent).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::Tenant, &path),
            "tenant",
            "tenant.list",
        )
        .await?;
    let mut q = page(p.limit, p.cursor.as_deref())?;
    q.name = p.name;
    q.tag = p.tag;
    Ok(Json(s.store.tenants(Some(parent), &q).await?))
}

async fn load(
    s: &AppState,
    caller: &Caller,
    id: TenantId,
    action: Action,
    audit: &str,
) -> Result<Tenant, ApiError> {
    let t = s
        .store
        .tenant(id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    caller
        .authorize(
            s,
            action,
            Resource::with_id(ResourceKind::Tenant, &t.path, id.0),
            "tenant",
            audit,
        )
        .await?;
    Ok(t)
}

/// Reads a tenant.
#[utoipa::path(get, path = "/tenants/{id}", tag = TAG_TENANTS, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Tenant), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<TenantId>,
) -> Result<Json<Tenant>, ApiError> {
    Ok(Json(
        load(&s, &caller, id, Action::Read, "tenant.read").await?,
    ))
}

/// Renames a tenant or changes its tags and metadata.
#[utoipa::path(patch, path = "/tenants/{id}", tag = TAG_TENANTS, params(("id" = uuid::Uuid, Path)), request_body = TenantPatch,
    responses((status = 200, body = Tenant), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<TenantId>,
    Json(body): Json<TenantPatch>,
) -> Result<Json<Tenant>, ApiError> {
    let mut t = load(&s, &caller, id, Action::Update, "tenant.update").await?;
    check(
        body.name.as_deref(),
        body.tags.as_deref(),
        body.metadata.as_ref(),
    )?;
    if let Some(n) = body.name {
        t.name = n;
    }
    if let Some(tags) = body.tags {
        t.tags = tags;
    }
    if let Some(m) = body.metadata {
        t.metadata = m;
    }
    t.updated_at = now_millis();
    let record = caller
        .record("tenant.update", format!("tenant:{id}"), Outcome::Success)
        .tenant(id);
    s.store
        .apply(vec![Change::UpdateTenant(t.clone())], Some(record))
        .await?;
    Ok(Json(t))
}

/// Deletes an empty tenant (no children, users, devices, channels or keys).
#[utoipa::path(delete, path = "/tenants/{id}", tag = TAG_TENANTS, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<TenantId>,
) -> Result<StatusCode, ApiError> {
    let t = load(&s, &caller, id, Action::Delete, "tenant.delete").await?;
    let mut record = caller.record("tenant.delete", format!("tenant:{id}"), Outcome::Success);
    record.tenant_id = t.parent_id.or(Some(id));
    s.store
        .apply(vec![Change::DeleteTenant(id)], Some(record))
        .await?;
    s.forget_tenant(id);
    Ok(StatusCode::NO_CONTENT)
}
