//! Claiming in the field, for devices that leave the factory without a key.
//!
//! An admin issues claim codes: each makes a `pending` device in the
//! admin's tenant (the pool) and a one-time code printed on the box. A
//! logged-in operator or admin of any tenant presents the code to claim the
//! device into their tenant; the device then presents the same code once to
//! `/bootstrap` and gets its certificate from that tenant's CA. Codes are
//! short, so guessing is throttled per source address and every wrong code
//! is audited; the store keeps only keyed hashes of them.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::State;
use axum::http::StatusCode;
use chrono::Utc;
use moat_core::audit::{AuditRecord, Outcome, now_millis};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::page::Page;
use moat_core::pki::{ClaimCode, claim};
use moat_core::store::Change;
use moat_core::validate::Checker;
use moat_core::{ClaimCodeId, Device, DeviceId, DeviceState, TenantId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use super::auth::Peer;
use super::certificates::{IssuedCertificate, NewCertificate, issue};
use super::{TAG_PKI, empty_object, optional_body, page};
use crate::auth::{Caller, refuse};
use crate::extract::{Json, Query};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

/// At most this many codes in one request.
pub const MAX_CLAIM_CODES: u32 = 1000;

/// The one answer to every wrong, expired or spent code: no hint which.
const INVALID_CODE: &str = "no such claim code, or it expired or was used";

#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewClaimCodes {
    /// How many devices and codes to make [default: 1, at most 1000].
    pub count: Option<u32>,
    /// Where the devices wait until claimed [default: the caller's tenant].
    pub tenant_id: Option<TenantId>,
    /// The devices are named `<prefix>-<12 hex digits>` [default: `claim`].
    pub name_prefix: Option<String>,
    /// Days until an unclaimed code expires [default: 30, at most 365].
    pub expires_in_days: Option<u32>,
}

/// A new code, shown this once, with the device it claims.
#[derive(Serialize, ToSchema)]
pub struct IssuedClaimCode {
    pub code: String,
    pub claim_code: ClaimCode,
    pub device: Device,
}

#[derive(Serialize, ToSchema)]
pub struct IssuedClaimCodes {
    pub codes: Vec<IssuedClaimCode>,
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ClaimCodeListParams {
    /// Defaults to the caller's own tenant.
    pub tenant_id: Option<TenantId>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Claim {
    /// The code from the device's label; case, dashes and spaces are forgiven.
    pub code: String,
    /// Where the device goes [default: the caller's tenant].
    pub tenant_id: Option<TenantId>,
    /// A new name for the device.
    pub name: Option<String>,
}

/// What a claimed device sends to get its credentials: the code, and a CSR
/// (or nothing, to have a key generated).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Bootstrap {
    pub code: String,
    pub csr: Option<String>,
    /// For a generated key: `ecdsa-p256` (default) or `ed25519`.
    pub key_algorithm: Option<String>,
    /// For a generated key: `pem` (default) or `pkcs12`.
    pub format: Option<String>,
    pub pkcs12_password: Option<String>,
    pub validity_days: Option<u32>,
}

/// Issues claim codes, each with a new `pending` device waiting for it.
#[utoipa::path(post, path = "/claim-codes", tag = TAG_PKI, request_body = NewClaimCodes,
    responses((status = 201, body = IssuedClaimCodes), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IssuedClaimCodes>), ApiError> {
    let body: NewClaimCodes = optional_body(&body)?;
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::new(ResourceKind::ClaimCode, &path),
            "claim code",
            "claim_code.create",
        )
        .await?;
    let count = body.count.unwrap_or(1);
    let days = body.expires_in_days.unwrap_or(30);
    let prefix = body.name_prefix.unwrap_or_else(|| "claim".into());
    let mut c = Checker::new();
    if !(1..=MAX_CLAIM_CODES).contains(&count) {
        c.fail("count", format!("must be between 1 and {MAX_CLAIM_CODES}"));
    }
    if !(1..=365).contains(&days) {
        c.fail("expires_in_days", "must be between 1 and 365");
    }
    // The longest name it makes must be a valid name.
    c.name("name_prefix", &format!("{prefix}-000000000000"));
    c.finish()?;

    let now = now_millis();
    let expires_at = now + chrono::Duration::days(days.into());
    let mut changes = Vec::new();
    let mut codes = Vec::new();
    for _ in 0..count {
        let id = DeviceId::new();
        let simple = id.0.simple().to_string();
        let device = Device {
            id,
            tenant_id,
            name: format!("{prefix}-{}", &simple[simple.len() - 12..]),
            tags: vec!["claimable".into()],
            metadata: empty_object(),
            state: DeviceState::Pending,
            created_at: now_millis(),
            updated_at: now_millis(),
        };
        let code = claim::generate();
        let normalized = claim::normalize(&code).expect("a generated code reads back");
        let record = ClaimCode {
            id: ClaimCodeId::new(),
            tenant_id,
            device_id: id,
            created_at: now,
            expires_at,
            claimed_at: None,
            claimed_by: None,
            used_at: None,
            code_hash: s.pki.claim_code_hash(&normalized),
        };
        changes.push(Change::InsertDevice(device.clone()));
        changes.push(Change::InsertClaimCode(record.clone()));
        codes.push(IssuedClaimCode {
            code,
            claim_code: record,
            device,
        });
    }
    let record = caller
        .record(
            "claim_code.create",
            format!("tenant:{tenant_id}"),
            Outcome::Success,
        )
        .tenant(tenant_id)
        .detail(serde_json::json!({ "count": count, "expires_at": expires_at }));
    s.store.apply(changes, Some(record)).await?;
    Ok((StatusCode::CREATED, Json(IssuedClaimCodes { codes })))
}

/// Lists the claim codes issued in a tenant (never the codes themselves).
#[utoipa::path(get, path = "/claim-codes", tag = TAG_PKI, params(ClaimCodeListParams),
    responses((status = 200, body = Page<ClaimCode>), (status = 403, body = Problem), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Query(p): Query<ClaimCodeListParams>,
) -> Result<Json<Page<ClaimCode>>, ApiError> {
    let tenant_id = p.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Read,
            Resource::new(ResourceKind::ClaimCode, &path),
            "claim code",
            "claim_code.read",
        )
        .await?;
    let q = page(p.limit, p.cursor.as_deref())?;
    Ok(Json(s.store.claim_codes(tenant_id, &q).await?))
}

/// The code's record if `input` is a live code; `None` counts as a guess.
async fn live_code(s: &AppState, input: &str) -> Result<Option<ClaimCode>, ApiError> {
    let Some(normalized) = claim::normalize(input) else {
        return Ok(None);
    };
    let found = s
        .store
        .claim_code_by_hash(&s.pki.claim_code_hash(&normalized))
        .await?;
    Ok(found.filter(|c| c.used_at.is_none() && Utc::now() < c.expires_at))
}

/// A 429 while `source` is blocked for guessing.
fn throttled(s: &AppState, source: Option<std::net::SocketAddr>) -> Result<(), ApiError> {
    if let Some(ip) = source.map(|a| a.ip().to_string())
        && let Err(retry) = s.sources.check(&ip, Instant::now())
    {
        metrics::counter!("moat_auth_failures_total", "kind" => "throttled").increment(1);
        return Err(ApiError::too_many(retry));
    }
    Ok(())
}

/// Claims a device into the caller's tenant with the code on its label.
#[utoipa::path(post, path = "/claims", tag = TAG_PKI, request_body = Claim,
    responses((status = 200, body = Device), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn claim_device(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(body): Json<Claim>,
) -> Result<Json<Device>, ApiError> {
    throttled(&s, caller.source)?;
    let tenant_id = body.tenant_id.unwrap_or(caller.principal.tenant_id());
    let path = s.tenant_path(tenant_id).await?;
    caller
        .authorize(
            &s,
            Action::Create,
            Resource::new(ResourceKind::Device, &path),
            "device",
            "device.claim",
        )
        .await?;
    if let Some(n) = &body.name {
        let mut c = Checker::new();
        c.name("name", n);
        c.finish()?;
    }
    let code = match live_code(&s, &body.code).await? {
        Some(c) if c.claimed_at.is_none() => c,
        _ => {
            metrics::counter!("moat_auth_failures_total", "kind" => "claim_code").increment(1);
            if let Some(a) = caller.source {
                s.sources.failure(&a.ip().to_string(), Instant::now());
            }
            let record = caller
                .record("device.claim", "-", Outcome::Failure)
                .detail(serde_json::json!({ "reason": "invalid claim code" }));
            s.store.append_audit(record).await?;
            return Err(ApiError::not_found("claim code").with_detail(INVALID_CODE));
        }
    };
    let mut device = s
        .store
        .device(code.device_id)
        .await?
        .ok_or_else(|| ApiError::not_found("claim code").with_detail(INVALID_CODE))?;
    if device.state == DeviceState::Revoked {
        return Err(ApiError::conflict(
            "the device was revoked; it cannot be claimed",
        ));
    }
    let now = now_millis();
    let mut changes = vec![
        Change::ClaimWithCode {
            id: code.id,
            by: caller.actor(),
            at: now,
        },
        Change::MoveDevice {
            id: device.id,
            tenant_id,
            state: DeviceState::Active,
            at: now,
        },
    ];
    device.tenant_id = tenant_id;
    device.state = DeviceState::Active;
    device.updated_at = now_millis();
    device.tags.retain(|t| t != "claimable");
    device.name = body.name.unwrap_or(device.name);
    changes.push(Change::UpdateDevice(device.clone()));
    let record = caller
        .record(
            "device.claim",
            format!("device:{}", device.id),
            Outcome::Success,
        )
        .tenant(tenant_id)
        .detail(serde_json::json!({ "claim_code": code.id, "from_tenant": code.tenant_id }));
    s.store.apply(changes, Some(record)).await?;
    s.pki.device_state_changed(device.id, DeviceState::Active);
    Ok(Json(device))
}

/// A claimed device fetches its certificate with its claim code, once. No
/// other credentials: the code is the credential.
#[utoipa::path(post, path = "/bootstrap", tag = TAG_PKI, request_body = Bootstrap, security(()),
    responses((status = 201, body = IssuedCertificate), (status = 401, body = Problem), (status = 403, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem), (status = 429, body = Problem)))]
pub async fn bootstrap(
    State(s): State<Arc<AppState>>,
    Peer(source): Peer,
    Json(body): Json<Bootstrap>,
) -> Result<(StatusCode, Json<IssuedCertificate>), ApiError> {
    throttled(&s, source)?;
    let Some(code) = live_code(&s, &body.code).await? else {
        return Err(refuse(
            &s,
            source,
            "claim_code",
            INVALID_CODE,
            None,
            serde_json::Value::Null,
        )
        .await);
    };
    if code.claimed_at.is_none() {
        return Err(ApiError::forbidden(
            "the device is not claimed yet: an operator claims it with this code first",
        ));
    }
    let device = s
        .store
        .device(code.device_id)
        .await?
        .filter(|d| d.state == DeviceState::Active)
        .ok_or_else(|| ApiError::forbidden("the device may not connect (not active)"))?;
    let audit = AuditRecord::new(
        format!("device:{}", device.id),
        "certificate.bootstrap",
        "-",
        Outcome::Success,
    )
    .source(source.map(|a| a.ip().to_string()));
    let request = NewCertificate {
        csr: body.csr,
        key_algorithm: body.key_algorithm,
        format: body.format,
        pkcs12_password: body.pkcs12_password,
        validity_days: body.validity_days,
        replaces: None,
    };
    let spend = Change::UseClaimCode {
        id: code.id,
        at: Utc::now(),
    };
    let issued = issue(&s, &device, request, audit, vec![spend])
        .await
        .map_err(|e| {
            if e.status == StatusCode::CONFLICT {
                ApiError::unauthorized(INVALID_CODE)
            } else {
                e
            }
        })?;
    Ok((StatusCode::CREATED, Json(issued)))
}
