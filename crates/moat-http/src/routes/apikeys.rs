//! API keys: credentials for programs, scoped to one tenant and one role,
//! expiring, revocable, shown once.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::credential::{self, ApiKey, TokenKind};
use moat_core::page::Page;
use moat_core::store::Change;
use moat_core::validate::Checker;
use moat_core::{ApiKeyId, Role, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{TAG_KEYS, page};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

pub const DEFAULT_DAYS: u32 = 90;
pub const MAX_DAYS: u32 = 365;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewApiKey {
    pub name: String,
    /// The role the key acts with.
    pub role: Role,
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    /// 1 to 365 days; default 90.
    pub expires_in_days: Option<u32>,
}

/// A new key; `token` is shown this once and never again.
#[derive(Serialize, ToSchema)]
pub struct IssuedApiKey {
    pub key: ApiKey,
    pub token: String,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ApiKeyListParams {
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    /// Case-insensitive substring of the name.
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Creates an API key.
#[utoipa::path(post, path = "/apikeys", tag = TAG_KEYS, request_body = NewApiKey,
    responses((status = 201, body = IssuedApiKey), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewApiKey>,
) -> Result<(StatusCode, Json<IssuedApiKey>), ApiError> {
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::new(ResourceKind::ApiKey, &path),
            "api key",
            "api_key.create",
        )
        .await?;
    let days = body.expires_in_days.unwrap_or(DEFAULT_DAYS);
    let mut c = Checker::new();
    c.name("name", &body.name);
    if !(1..=MAX_DAYS).contains(&days) {
        c.fail(
            "expires_in_days",
            format!("must be between 1 and {MAX_DAYS}"),
        );
    }
    c.finish()?;
    let issued = credential::issue(TokenKind::ApiKey);
    let now = now_millis();
    let key = ApiKey {
        id: ApiKeyId(issued.id),
        tenant_id,
        name: body.name,
        role: body.role,
        created_by: match caller.principal.subject {
            moat_core::authz::Subject::User(u) => Some(u),
            _ => None,
        },
        created_at: now,
        expires_at: now + chrono::Duration::days(days.into()),
        revoked_at: None,
        secret_hash: issued.hash,
    };
    let record = caller
        .record(
            "api_key.create",
            format!("api_key:{}", key.id),
            Outcome::Success,
        )
        .tenant(tenant_id)
        .detail(serde_json::json!({"role": key.role, "expires_at": key.expires_at}));
    s.store
        .apply(vec![Change::InsertApiKey(key.clone())], Some(record))
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(IssuedApiKey {
            key,
            token: issued.token,
        }),
    ))
}

/// Lists a tenant's API keys (never their secrets).
#[utoipa::path(get, path = "/apikeys", tag = TAG_KEYS, params(ApiKeyListParams),
    responses((status = 200, body = Page<ApiKey>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<ApiKeyListParams>,
) -> Result<Json<Page<ApiKey>>, ApiError> {
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::ApiKey, &path),
            "api key",
            "api_key.list",
        )
        .await?;
    let mut q = page(p.limit, p.cursor.as_deref())?;
    q.name = p.name;
    Ok(Json(s.store.api_keys(tenant, &q).await?))
}

async fn load(
    s: &AppState,
    caller: &Caller,
    id: ApiKeyId,
    action: Action,
    audit: &str,
) -> Result<ApiKey, ApiError> {
    let k = s
        .store
        .api_key(id)
        .await?
        .ok_or_else(|| ApiError::not_found("api key"))?;
    let path = s.tenant_path(k.tenant_id).await?;
    caller
        .authorize(
            s,
            action,
            Resource::with_id(ResourceKind::ApiKey, &path, id.0),
            "api key",
            audit,
        )
        .await?;
    Ok(k)
}

/// Reads an API key.
#[utoipa::path(get, path = "/apikeys/{id}", tag = TAG_KEYS, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = ApiKey), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ApiKeyId>,
) -> Result<Json<ApiKey>, ApiError> {
    Ok(Json(
        load(&s, &caller, id, Action::Read, "api_key.read").await?,
    ))
}

/// Revokes an API key; it stops working at once.
#[utoipa::path(delete, path = "/apikeys/{id}", tag = TAG_KEYS, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<ApiKeyId>,
) -> Result<StatusCode, ApiError> {
    let k = load(&s, &caller, id, Action::Delete, "api_key.revoke").await?;
    if k.revoked_at.is_none() {
        let record = caller
            .record("api_key.revoke", format!("api_key:{id}"), Outcome::Success)
            .tenant(k.tenant_id);
        s.store
            .apply(
                vec![Change::RevokeApiKey {
                    id,
                    at: now_millis(),
                }],
                Some(record),
            )
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}
