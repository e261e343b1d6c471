//! Users, their roles, and signing them out everywhere.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use moat_core::audit::{Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind, Subject};
use moat_core::page::{ListQuery, MAX_LIMIT, Page};
use moat_core::store::Change;
use moat_core::validate::Checker;
use moat_core::{Role, TenantId, User, UserId};
use serde::Deserialize;
use utoipa::{IntoParams, ToSchema};

use super::{TAG_USERS, page};
use crate::auth::{Caller, password};
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    /// 3 to 64 of `a-z 0-9 . _ @ + -`; unique across the platform.
    pub username: String,
    /// At least 12 characters.
    pub password: String,
    pub role: Role,
    /// Defaults to the username.
    pub display_name: Option<String>,
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub display_name: Option<String>,
    /// Needs an admin above the user; nobody changes their own role.
    pub role: Option<Role>,
    /// Disabling signs the user out everywhere.
    pub disabled: Option<bool>,
    /// A new password; signs the user out everywhere.
    pub password: Option<String>,
    /// Required to change one's own password.
    pub current_password: Option<String>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct UserListParams {
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    /// Case-insensitive substring of the username or display name.
    pub name: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

/// Creates a user.
#[utoipa::path(post, path = "/users", tag = TAG_USERS, request_body = NewUser,
    responses((status = 201, body = User), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewUser>,
) -> Result<(StatusCode, Json<User>), ApiError> {
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    let id = UserId::new();
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::with_id(ResourceKind::User, &path, id.0),
            "user",
            "user.create",
        )
        .await?;
    let mut c = Checker::new();
    c.username("username", &body.username);
    c.password("password", &body.password);
    if let Some(d) = &body.display_name {
        c.name("display_name", d);
    }
    c.finish()?;
    let now = now_millis();
    let user = User {
        id,
        tenant_id,
        display_name: body.display_name.unwrap_or_else(|| body.username.clone()),
        username: body.username,
        role: body.role,
        disabled: false,
        password_hash: password::hash(body.password).await?,
        sessions_valid_after: now,
        created_at: now,
        updated_at: now,
    };
    let record = caller
        .record("user.create", format!("user:{id}"), Outcome::Success)
        .tenant(tenant_id)
        .detail(serde_json::json!({"username": user.username, "role": user.role}));
    s.store
        .apply(vec![Change::InsertUser(user.clone())], Some(record))
        .await?;
    Ok((StatusCode::CREATED, Json(user)))
}

/// Lists the users of a tenant.
#[utoipa::path(get, path = "/users", tag = TAG_USERS, params(UserListParams),
    responses((status = 200, body = Page<User>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<UserListParams>,
) -> Result<Json<Page<User>>, ApiError> {
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::User, &path),
            "user",
            "user.list",
        )
        .await?;
    let mut q = page(p.limit, p.cursor.as_deref())?;
    q.name = p.name;
    Ok(Json(s.store.users(tenant, &q).await?))
}

async fn load(
    s: &AppState,
    caller: &Caller,
    id: UserId,
    actions: &[Action],
    audit: &str,
) -> Result<User, ApiError> {
    let u = s
        .store
        .user(id)
        .await?
        .ok_or_else(|| ApiError::not_found("user"))?;
    let path = s.tenant_path(u.tenant_id).await?;
    for a in actions {
        caller
            .authorize(
                s,
                *a,
                Resource::with_id(ResourceKind::User, &path, id.0),
                "user",
                audit,
            )
            .await?;
    }
    Ok(u)
}

fn is_enabled_admin(u: &User) -> bool {
    u.role == Role::Admin && !u.disabled
}

/// Refuses to demote, disable or delete `admin`, an enabled admin, if no
/// other enabled admin is left in its tenant.
///
/// Without this an admin API key, or an admin of a tenant above, could
/// leave a tenant that no user of its own can manage. The check reads
/// before the change commits, so two concurrent changes to two admins can
/// still both pass it.
async fn keep_an_admin(s: &AppState, admin: &User) -> Result<(), ApiError> {
    // The store has no count of admins: page through the tenant's users
    // until another enabled admin turns up.
    let mut q = ListQuery::first(MAX_LIMIT);
    loop {
        let page = s.store.users(admin.tenant_id, &q).await?;
        if page
            .items
            .iter()
            .any(|u| u.id != admin.id && is_enabled_admin(u))
        {
            return Ok(());
        }
        match (&page.next_cursor, page.items.last()) {
            (Some(_), Some(last)) => q.after = Some(last.id.0),
            _ => break,
        }
    }
    Err(ApiError::conflict(
        "a tenant keeps at least one enabled admin",
    ))
}

/// Reads a user.
#[utoipa::path(get, path = "/users/{id}", tag = TAG_USERS, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = User), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<Json<User>, ApiError> {
    Ok(Json(
        load(&s, &caller, id, &[Action::Read], "user.read").await?,
    ))
}

/// Changes a user's display name, role, password or disabled flag.
#[utoipa::path(patch, path = "/users/{id}", tag = TAG_USERS, params(("id" = uuid::Uuid, Path)), request_body = UserPatch,
    responses((status = 200, body = User), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<UserId>,
    Json(body): Json<UserPatch>,
) -> Result<Json<User>, ApiError> {
    let mut actions = Vec::new();
    if body.role.is_some() || body.disabled.is_some() {
        actions.push(Action::Update);
    }
    if body.display_name.is_some() || body.password.is_some() {
        actions.push(Action::UpdateProfile);
    }
    if actions.is_empty() {
        actions.push(Action::UpdateProfile);
    }
    let mut user = load(&s, &caller, id, &actions, "user.update").await?;
    let mut c = Checker::new();
    if let Some(d) = &body.display_name {
        c.name("display_name", d);
    }
    if let Some(p) = &body.password {
        c.password("password", p);
    }
    c.finish()?;
    let demoted = body.role.is_some_and(|r| r != Role::Admin);
    if is_enabled_admin(&user) && (demoted || body.disabled == Some(true)) {
        keep_an_admin(&s, &user).await?;
    }
    let is_self = caller.principal.subject == Subject::User(id);
    let now = now_millis();
    let mut sign_out = false;
    if let Some(pw) = body.password {
        if is_self {
            let Some(current) = body.current_password else {
                return Err(ApiError::unprocessable(
                    "current_password",
                    "required to change your own password",
                ));
            };
            if !password::verify(current, Some(user.password_hash.clone())).await {
                return Err(ApiError::forbidden("the current password is wrong"));
            }
        }
        user.password_hash = password::hash(pw).await?;
        sign_out = true;
    }
    if let Some(d) = body.display_name {
        user.display_name = d;
    }
    if let Some(r) = body.role {
        user.role = r;
    }
    if let Some(d) = body.disabled {
        sign_out |= d && !user.disabled;
        user.disabled = d;
    }
    user.updated_at = now;
    let mut changes = Vec::new();
    if sign_out {
        user.sessions_valid_after = now + chrono::Duration::milliseconds(1);
        changes.push(Change::RevokeUserRefreshTokens {
            user_id: id,
            at: now,
        });
    }
    changes.insert(0, Change::UpdateUser(user.clone()));
    let record = caller
        .record("user.update", format!("user:{id}"), Outcome::Success)
        .tenant(user.tenant_id)
        .detail(serde_json::json!({"role": user.role, "disabled": user.disabled, "signed_out": sign_out}));
    s.store.apply(changes, Some(record)).await?;
    Ok(Json(user))
}

/// Deletes a user.
#[utoipa::path(delete, path = "/users/{id}", tag = TAG_USERS, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<StatusCode, ApiError> {
    let u = load(&s, &caller, id, &[Action::Delete], "user.delete").await?;
    if is_enabled_admin(&u) {
        keep_an_admin(&s, &u).await?;
    }
    let record = caller
        .record("user.delete", format!("user:{id}"), Outcome::Success)
        .tenant(u.tenant_id);
    s.store
        .apply(vec![Change::DeleteUser(id)], Some(record))
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Signs a user out everywhere: every refresh token is revoked and every
/// access token already issued stops working.
#[utoipa::path(post, path = "/users/{id}/sessions/revoke", tag = TAG_USERS, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn revoke_sessions(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<UserId>,
) -> Result<StatusCode, ApiError> {
    let mut u = load(
        &s,
        &caller,
        id,
        &[Action::RevokeSessions],
        "user.revoke_sessions",
    )
    .await?;
    let now = now_millis();
    u.sessions_valid_after = now + chrono::Duration::milliseconds(1);
    u.updated_at = now;
    let record = caller
        .record(
            "user.revoke_sessions",
            format!("user:{id}"),
            Outcome::Success,
        )
        .tenant(u.tenant_id);
    s.store
        .apply(
            vec![
                Change::UpdateUser(u),
                Change::RevokeUserRefreshTokens {
                    user_id: id,
                    at: now,
                },
            ],
            Some(record),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}
