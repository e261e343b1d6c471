//! Signing in and out: passwords for users, rotating refresh tokens, and who
//! am I.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use axum::http::request::Parts;
use chrono::{DateTime, Utc};
use moat_core::audit::{AuditRecord, Outcome, now_millis};
use moat_core::authz::Subject;
use moat_core::credential::{self, RefreshToken, TokenKind};
use moat_core::store::{Change, StoreError};
use moat_core::{RefreshTokenId, Role, TenantId, User};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::TAG_AUTH;
use crate::auth::{Caller, password, refuse, source_of};
use crate::extract::Json;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RefreshRequest {
    pub refresh_token: String,
}

/// A new session: the access token for requests, the refresh token to get
/// the next one.
#[derive(Serialize, ToSchema)]
pub struct Session {
    pub access_token: String,
    pub refresh_token: String,
    pub token_type: &'static str,
    /// Seconds until the access token expires.
    pub expires_in: u64,
    pub user: User,
}

/// Who the credentials belong to.
#[derive(Serialize, ToSchema)]
pub struct WhoAmI {
    #[schema(value_type = Object)]
    pub subject: Subject,
    /// The user's username, the API key's or the device's name.
    pub name: Option<String>,
    pub tenant_id: TenantId,
    pub role: Option<Role>,
}

/// The request's parts, for the peer address (handlers that take a body
/// cannot also take `Caller`).
pub struct Peer(pub Option<std::net::SocketAddr>);

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Peer {
    type Rejection = std::convert::Infallible;
    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(Peer(source_of(parts)))
    }
}

const INVALID_LOGIN: &str = "invalid username or password";

/// Signs in with a username and password.
#[utoipa::path(post, path = "/auth/login", tag = TAG_AUTH, request_body = Login,
    responses((status = 200, body = Session), (status = 401, body = Problem), (status = 429, body = Problem)))]
pub async fn login(
    State(s): State<Arc<AppState>>,
    Peer(source): Peer,
    Json(body): Json<Login>,
) -> Result<Json<Session>, ApiError> {
    let now = Instant::now();
    let account = body.username.to_lowercase();
    let source_key = source.map(|a| a.ip().to_string());
    let throttled = s.accounts.check(&account, now).and_then(|()| {
        source_key
            .as_ref()
            .map_or(Ok(()), |k| s.sources.check(k, now))
    });
    if let Err(retry) = throttled {
        metrics::counter!("moat_auth_failures_total", "kind" => "throttled").increment(1);
        let record = AuditRecord::new(
            "anonymous",
            "auth.login",
            format!("username:{account}"),
            Outcome::Failure,
        )
        .source(source_key.clone())
        .detail(serde_json::json!({"reason": "throttled"}));
        s.store.append_audit(record).await?;
        return Err(ApiError::too_many(retry));
    }
    let user = s.store.user_by_username(&account).await?;
    let ok = password::verify(
        body.password,
        user.as_ref().map(|u| u.password_hash.clone()),
    )
    .await;
    let user = match user {
        Some(u) if ok && !u.disabled => u,
        other => {
            s.accounts.failure(&account, now);
            let reason = match other {
                Some(ref u) if u.disabled && ok => "user is disabled",
                Some(_) => "wrong password",
                None => "unknown username",
            };
            let tenant = other.as_ref().map(|u| u.tenant_id);
            let detail = serde_json::json!({"username": account});
            return Err(refuse(&s, source, "login", reason, tenant, detail)
                .await
                .with_detail(INVALID_LOGIN));
        }
    };
    s.accounts.success(&account);
    let record = AuditRecord::new(
        format!("user:{}", user.id),
        "auth.login",
        format!("user:{}", user.id),
        Outcome::Success,
    )
    .tenant(user.tenant_id)
    .source(source_key);
    let session = start_session(&s, user, None, record).await?;
    Ok(Json(session))
}

/// Issues an access token and a refresh token (continuing `family`, or
/// starting one), committing the refresh token with `record` and any
/// `extra` changes (marking the previous token used).
async fn start_session(
    s: &AppState,
    user: User,
    family: Option<(RefreshTokenId, Change)>,
    record: AuditRecord,
) -> Result<Session, ApiError> {
    let now = now_millis();
    let issued = credential::issue(TokenKind::Refresh);
    let id = RefreshTokenId(issued.id);
    let (family_id, mut changes) = match family {
        Some((f, used)) => (f, vec![used]),
        None => (id, Vec::new()),
    };
    changes.push(Change::InsertRefreshToken(RefreshToken {
        id,
        user_id: user.id,
        family_id,
        secret_hash: issued.hash,
        created_at: now,
        expires_at: now + s.settings.refresh_token_ttl,
        used_at: None,
        revoked_at: None,
    }));
    s.store.apply(changes, Some(record)).await?;
    Ok(Session {
        access_token: s.tokens.issue(user.id, now),
        refresh_token: issued.token,
        token_type: "Bearer",
        expires_in: s.tokens.ttl().as_secs(),
        user,
    })
}

/// A refresh token that was presented, checked against the store.
async fn check_refresh(
    s: &AppState,
    token: &str,
    source: Option<std::net::SocketAddr>,
) -> Result<RefreshToken, ApiError> {
    let refused = |reason| refuse(s, source, "refresh", reason, None, serde_json::Value::Null);
    if let Some(k) = source {
        s.sources
            .check(&k.ip().to_string(), Instant::now())
            .map_err(ApiError::too_many)?;
    }
    let Some((id, secret)) = credential::parse(TokenKind::Refresh, token) else {
        return Err(refused("malformed refresh token").await);
    };
    let Some(rt) = s.store.refresh_token(RefreshTokenId(id)).await? else {
        return Err(refused("unknown refresh token").await);
    };
    if !credential::verify(&secret, &rt.secret_hash) {
        return Err(refused("wrong refresh token secret").await);
    }
    if rt.revoked_at.is_some() || rt.expires_at <= Utc::now() {
        return Err(refused("refresh token revoked or expired").await);
    }
    Ok(rt)
}

/// Trades a refresh token for a new session. Each refresh token works once;
/// presenting a used one again revokes its whole family, since one of the
/// two presenters stole it.
#[utoipa::path(post, path = "/auth/refresh", tag = TAG_AUTH, request_body = RefreshRequest,
    responses((status = 200, body = Session), (status = 401, body = Problem)))]
pub async fn refresh(
    State(s): State<Arc<AppState>>,
    Peer(source): Peer,
    Json(body): Json<RefreshRequest>,
) -> Result<Json<Session>, ApiError> {
    let rt = check_refresh(&s, &body.refresh_token, source).await?;
    let now = now_millis();
    let user = match s.store.user(rt.user_id).await? {
        Some(u) if !u.disabled => u,
        other => {
            let tenant = other.map(|u| u.tenant_id);
            return Err(refuse(
                &s,
                source,
                "refresh",
                "user disabled or deleted",
                tenant,
                serde_json::Value::Null,
            )
            .await);
        }
    };
    let source_key = source.map(|a| a.ip().to_string());
    if rt.used_at.is_some() {
        return Err(reuse_detected(&s, &rt, &user, source_key, now).await);
    }
    let record = AuditRecord::new(
        format!("user:{}", user.id),
        "auth.refresh",
        format!("user:{}", user.id),
        Outcome::Success,
    )
    .tenant(user.tenant_id)
    .source(source_key.clone());
    let used = Change::UseRefreshToken { id: rt.id, at: now };
    match start_session(&s, user.clone(), Some((rt.family_id, used)), record).await {
        // Another request used the token between our read and our write.
        Err(e) if e.status == StatusCode::CONFLICT => {
            Err(reuse_detected(&s, &rt, &user, source_key, now).await)
        }
        other => other.map(Json),
    }
}

async fn reuse_detected(
    s: &AppState,
    rt: &RefreshToken,
    user: &User,
    source: Option<String>,
    now: DateTime<Utc>,
) -> ApiError {
    metrics::counter!("moat_auth_failures_total", "kind" => "refresh_reuse").increment(1);
    tracing::warn!(user = %user.id, "a used refresh token was presented again; revoking its family");
    let record = AuditRecord::new(
        "anonymous",
        "auth.refresh_reuse",
        format!("user:{}", user.id),
        Outcome::Failure,
    )
    .tenant(user.tenant_id)
    .source(source);
    if let Err(e) = s
        .store
        .apply(
            vec![Change::RevokeRefreshFamily {
                family_id: rt.family_id,
                at: now,
            }],
            Some(record),
        )
        .await
    {
        tracing::error!(error = %e, "could not revoke a refresh token family");
    }
    ApiError::unauthorized("refresh token already used; every session of this sign-in was revoked")
}

/// Signs out: revokes the refresh token and every token rotated from the
/// same sign-in.
#[utoipa::path(post, path = "/auth/logout", tag = TAG_AUTH, request_body = RefreshRequest,
    responses((status = 204), (status = 401, body = Problem)))]
pub async fn logout(
    State(s): State<Arc<AppState>>,
    Peer(source): Peer,
    Json(body): Json<RefreshRequest>,
) -> Result<StatusCode, ApiError> {
    let rt = check_refresh(&s, &body.refresh_token, source).await?;
    let tenant = s.store.user(rt.user_id).await?.map(|u| u.tenant_id);
    let mut record = AuditRecord::new(
        format!("user:{}", rt.user_id),
        "auth.logout",
        format!("user:{}", rt.user_id),
        Outcome::Success,
    )
    .source(source.map(|a| a.ip().to_string()));
    record.tenant_id = tenant;
    match s
        .store
        .apply(
            vec![Change::RevokeRefreshFamily {
                family_id: rt.family_id,
                at: now_millis(),
            }],
            Some(record),
        )
        .await
    {
        Ok(_) | Err(StoreError::NotFound(_)) => Ok(StatusCode::NO_CONTENT),
        Err(e) => Err(e.into()),
    }
}

/// Tells who the presented credentials belong to.
#[utoipa::path(get, path = "/auth/whoami", tag = TAG_AUTH,
    responses((status = 200, body = WhoAmI), (status = 401, body = Problem)))]
pub async fn whoami(
    State(s): State<Arc<AppState>>,
    caller: Caller,
) -> Result<Json<WhoAmI>, ApiError> {
    let name = match caller.principal.subject {
        Subject::User(id) => s.store.user(id).await?.map(|u| u.username),
        Subject::ApiKey(id) => s.store.api_key(id).await?.map(|k| k.name),
        Subject::Device(id) => s.store.device(id).await?.map(|d| d.name),
    };
    Ok(Json(WhoAmI {
        subject: caller.principal.subject,
        name,
        tenant_id: caller.principal.tenant_id(),
        role: caller.principal.role,
    }))
}
