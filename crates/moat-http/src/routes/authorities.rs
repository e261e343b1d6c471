//! Tenants' certificate authorities: the platform-made one, and CAs a tenant
//! brings after proving it holds their key; certificates coming due; the
//! server certificate's renewal.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use moat_core::audit::Outcome;
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::pki::{Authority, AuthorityKind, JitMode};
use moat_core::store::Change;
use moat_core::{AuthorityId, DeviceId, TenantId};
use rand::Rng;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::{TAG_PKI, optional_body};
use crate::auth::Caller;
use crate::extract::{Json, Path, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// How long a registration code may be used.
const REGISTRATION_CODE_TTL: chrono::Duration = chrono::Duration::hours(24);

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct TenantParam {
    /// A tenant below yours [default: yours].
    pub tenant_id: Option<TenantId>,
}

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct TenantBody {
    pub tenant_id: Option<TenantId>,
}

/// The code a verification certificate must carry as its common name.
#[derive(Serialize, ToSchema)]
pub struct RegistrationCode {
    pub code: String,
    pub expires_at: DateTime<Utc>,
}

/// A tenant's own CA, with the proof that the tenant holds its key.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewAuthority {
    pub tenant_id: Option<TenantId>,
    /// The CA certificate (PEM).
    pub certificate_pem: String,
    /// A certificate signed by that CA whose common name is the tenant's
    /// current registration code (PEM).
    pub verification_certificate_pem: String,
    /// What unknown certificates from this CA do on first connection
    /// [default: off].
    pub jit: Option<JitMode>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AuthorityPatch {
    pub jit: JitMode,
}

async fn tenant_scope(
    s: &AppState,
    caller: &Caller,
    tenant: Option<TenantId>,
    action: Action,
    audit: &str,
) -> Result<TenantId, ApiError> {
    let tenant = tenant.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            s,
            action,
            Resource::new(ResourceKind::Authority, &path),
            "certificate authority",
            audit,
        )
        .await?;
    Ok(tenant)
}

async fn load(
    s: &AppState,
    caller: &Caller,
    id: AuthorityId,
    action: Action,
    audit: &str,
) -> Result<Authority, ApiError> {
    let a = s
        .store
        .authority(id)
        .await?
        .ok_or_else(|| ApiError::not_found("certificate authority"))?;
    let path = s.tenant_path(a.tenant_id).await?;
    caller
        .authorize(
            s,
            action,
            Resource::with_id(ResourceKind::Authority, &path, id.0),
            "certificate authority",
            audit,
        )
        .await?;
    Ok(a)
}

/// Lists a tenant's CAs (the platform-made one is created on first use).
#[utoipa::path(get, path = "/pki/cas", tag = TAG_PKI, params(TenantParam),
    responses((status = 200, body = Vec<Authority>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<TenantParam>,
) -> Result<Json<Vec<Authority>>, ApiError> {
    let tenant = tenant_scope(&s, &caller, p.tenant_id, Action::Read, "authority.read").await?;
    let t = s
        .store
        .tenant(tenant)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    s.pki.tenant_ca(tenant, &t.name).await?;
    Ok(Json(s.store.authorities(tenant).await?))
}

/// Shows a CA.
#[utoipa::path(get, path = "/pki/cas/{id}", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Authority), (status = 404, body = Problem)))]
pub async fn get(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<AuthorityId>,
) -> Result<Json<Authority>, ApiError> {
    Ok(Json(
        load(&s, &caller, id, Action::Read, "authority.read").await?,
    ))
}

/// Hands out a fresh registration code (valid 24 hours) for registering a
/// tenant's own CA.
#[utoipa::path(post, path = "/pki/cas/registration-code", tag = TAG_PKI, request_body = TenantBody,
    responses((status = 201, body = RegistrationCode), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn registration_code(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<RegistrationCode>), ApiError> {
    let body: TenantBody = optional_body(&body)?;
    let tenant = tenant_scope(
        &s,
        &caller,
        body.tenant_id,
        Action::Create,
        "authority.registration_code",
    )
    .await?;
    let code: String = {
        let mut rng = rand::rngs::OsRng;
        (0..32)
            .map(|_| char::from(b"0123456789abcdef"[rng.gen_range(0..16)]))
            .collect()
    };
    let expires_at = Utc::now() + REGISTRATION_CODE_TTL;
    let record = caller
        .record(
            "authority.registration_code",
            format!("tenant:{tenant}"),
            Outcome::Success,
        )
        .tenant(tenant);
    s.store
        .apply(
            vec![Change::PutRegistrationCode {
                tenant_id: tenant,
                code: code.clone(),
                expires_at,
            }],
            Some(record),
        )
        .await?;
    Ok((
        StatusCode::CREATED,
        Json(RegistrationCode { code, expires_at }),
    ))
}

/// Registers a tenant's own CA: its certificate, and a verification
/// certificate it signed over the tenant's registration code.
#[utoipa::path(post, path = "/pki/cas", tag = TAG_PKI, request_body = NewAuthority,
    responses((status = 201, body = Authority), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn register(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<NewAuthority>,
) -> Result<(StatusCode, Json<Authority>), ApiError> {
    let tenant = tenant_scope(
        &s,
        &caller,
        body.tenant_id,
        Action::Create,
        "authority.register",
    )
    .await?;
    let now = Utc::now();
    let code = match s.store.registration_code(tenant).await? {
        Some((code, expires)) if expires > now => code,
        _ => {
            return Err(ApiError::unprocessable(
                "verification_certificate_pem",
                "no current registration code: ask for one at /pki/cas/registration-code",
            ));
        }
    };
    let info = moat_pki::inspect::check_own_ca(
        &body.certificate_pem,
        &body.verification_certificate_pem,
        &code,
        now.timestamp_millis(),
    )?;
    let authority = Authority {
        id: AuthorityId::new(),
        tenant_id: tenant,
        kind: AuthorityKind::Own,
        subject: info.subject.clone(),
        fingerprint: info.fingerprint.clone(),
        not_after: DateTime::from_timestamp_millis(info.not_after).unwrap_or_default(),
        jit: body.jit.unwrap_or(JitMode::Off),
        cert_pem: crate::pki::pem(&info.der),
        created_at: now,
    };
    let record = caller
        .record("authority.register", format!("authority:{}", authority.id), Outcome::Success)
        .tenant(tenant)
        .detail(serde_json::json!({ "subject": authority.subject, "fingerprint": authority.fingerprint, "jit": authority.jit }));
    // The code is spent: a new registration needs a new one.
    let spent = Change::PutRegistrationCode {
        tenant_id: tenant,
        code: String::new(),
        expires_at: now,
    };
    s.store
        .apply(
            vec![Change::InsertAuthority(authority.clone()), spent],
            Some(record),
        )
        .await?;
    s.pki.put_anchor(&authority)?;
    Ok((StatusCode::CREATED, Json(authority)))
}

/// Changes what a tenant's own CA does with unknown certificates.
#[utoipa::path(patch, path = "/pki/cas/{id}", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)), request_body = AuthorityPatch,
    responses((status = 200, body = Authority), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn update(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<AuthorityId>,
    Json(body): Json<AuthorityPatch>,
) -> Result<Json<Authority>, ApiError> {
    let mut a = load(&s, &caller, id, Action::Update, "authority.update").await?;
    if a.kind == AuthorityKind::Platform && body.jit != JitMode::Off {
        return Err(ApiError::conflict(
            "just-in-time registration is for a tenant's own CAs; the platform CA issues every certificate itself",
        ));
    }
    a.jit = body.jit;
    let record = caller
        .record(
            "authority.update",
            format!("authority:{id}"),
            Outcome::Success,
        )
        .tenant(a.tenant_id)
        .detail(serde_json::json!({ "jit": a.jit }));
    s.store
        .apply(vec![Change::UpdateAuthority(a.clone())], Some(record))
        .await?;
    s.pki.put_anchor(&a)?;
    Ok(Json(a))
}

/// Deregisters a tenant's own CA: its certificates stop working at once.
#[utoipa::path(delete, path = "/pki/cas/{id}", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)),
    responses((status = 204), (status = 404, body = Problem), (status = 409, body = Problem)))]
pub async fn delete(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<AuthorityId>,
) -> Result<StatusCode, ApiError> {
    let a = load(&s, &caller, id, Action::Delete, "authority.delete").await?;
    if a.kind == AuthorityKind::Platform {
        return Err(ApiError::conflict(
            "the platform CA of a tenant goes with the tenant",
        ));
    }
    let record = caller
        .record(
            "authority.delete",
            format!("authority:{id}"),
            Outcome::Success,
        )
        .tenant(a.tenant_id);
    s.store
        .apply(vec![Change::DeleteAuthority(id)], Some(record))
        .await?;
    s.pki.index.remove_anchor(id.0);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ExpiringParams {
    /// Credentials expiring within this many days (1–3650).
    pub days: u32,
    pub tenant_id: Option<TenantId>,
    /// At most this many (default 100, at most 1000).
    pub limit: Option<u32>,
}

/// What kind of credential is due.
#[derive(Serialize, ToSchema, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    Certificate,
    DeviceKey,
}

/// A device credential that expires soon.
#[derive(Serialize, ToSchema)]
pub struct Expiring {
    pub kind: CredentialKind,
    /// The certificate's or the key's id.
    pub id: uuid::Uuid,
    pub device_id: DeviceId,
    pub tenant_id: TenantId,
    pub not_after: chrono::DateTime<Utc>,
    /// For certificates: the serial, lower-case hex.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

/// Valid certificates and device keys in a tenant and below that expire
/// within `days`, soonest first: what is due for renewal or rotation.
#[utoipa::path(get, path = "/pki/expiring", tag = TAG_PKI, params(ExpiringParams),
    responses((status = 200, body = Vec<Expiring>), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn expiring(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<ExpiringParams>,
) -> Result<Json<Vec<Expiring>>, ApiError> {
    if !(1..=3650).contains(&p.days) {
        return Err(ApiError::unprocessable(
            "days",
            "must be between 1 and 3650",
        ));
    }
    let limit = p.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::unprocessable(
            "limit",
            "must be between 1 and 1000",
        ));
    }
    let tenant = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::Certificate, &path),
            "certificate",
            "certificate.read",
        )
        .await?;
    let now = Utc::now();
    let before = now + chrono::Duration::days(p.days.into());
    let certs = s
        .store
        .expiring_certificates(&path, now, before, limit)
        .await?;
    let keys = s
        .store
        .expiring_device_keys(&path, now, before, limit)
        .await?;
    let mut due: Vec<Expiring> = certs
        .into_iter()
        .map(|c| Expiring {
            kind: CredentialKind::Certificate,
            id: c.id.0,
            device_id: c.device_id,
            tenant_id: c.tenant_id,
            not_after: c.not_after,
            serial: Some(c.serial),
        })
        .chain(keys.into_iter().filter_map(|k| {
            Some(Expiring {
                kind: CredentialKind::DeviceKey,
                id: k.id.0,
                device_id: k.device_id,
                tenant_id: k.tenant_id,
                not_after: k.expires_at?,
                serial: None,
            })
        }))
        .collect();
    due.sort_by_key(|e| e.not_after);
    due.truncate(limit as usize);
    Ok(Json(due))
}

/// Renews the server certificate now; new connections get the new one
/// without a restart. For the root tenant's admins.
#[utoipa::path(post, path = "/pki/server-certificate/renew", tag = TAG_PKI,
    responses((status = 204), (status = 403, body = Problem)))]
pub async fn renew_server(
    State(s): State<Arc<AppState>>,
    caller: Caller,
) -> Result<StatusCode, ApiError> {
    if caller.principal.tenant.0.len() != 1 {
        return Err(ApiError::forbidden(
            "only the root tenant's admins renew the server certificate",
        ));
    }
    caller
        .authorize(
            &s,
            Action::Update,
            Resource::new(ResourceKind::Authority, &caller.principal.tenant),
            "certificate authority",
            "pki.server_cert.renew",
        )
        .await?;
    s.pki.renew_server_cert(true).await?;
    Ok(StatusCode::NO_CONTENT)
}
