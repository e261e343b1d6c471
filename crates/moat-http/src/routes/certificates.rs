//! Device certificates: issuing from a CSR or with a generated key, listing,
//! revoking, renewing (by an admin, or by the device itself), and the CRLs.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use chrono::Utc;
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::authz::{Action, Resource, ResourceKind};
use moat_core::pki::{Certificate, CertificateOrigin};
use moat_core::store::Change;
use moat_core::{AuthorityId, CertificateId, Device, DeviceId, DeviceState};
use moat_pki::PkiError;
use moat_pki::ca::{RevocationReason, Revoked};
use moat_pki::device::{KeyAlgorithm, check_csr};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use super::{TAG_PKI, optional_body};
use crate::auth::{Caller, DeviceCredential};
use crate::extract::{Json, Path};
use crate::pki::IdentityError;
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

impl From<IdentityError> for ApiError {
    fn from(e: IdentityError) -> Self {
        match e {
            IdentityError::Store(e) => e.into(),
            IdentityError::Pki(e) => e.into(),
        }
    }
}

impl From<PkiError> for ApiError {
    fn from(e: PkiError) -> Self {
        match e {
            PkiError::Csr(_) | PkiError::WeakKey(_) => {
                ApiError::unprocessable("csr", e.to_string())
            }
            PkiError::Pem(_)
            | PkiError::NotCa
            | PkiError::OutOfValidity(_)
            | PkiError::Verification(_) => ApiError::unprocessable("certificate", e.to_string()),
            other => {
                tracing::error!(error = %other, "pki failure");
                ApiError::internal()
            }
        }
    }
}

/// How to issue: sign the device's CSR (it keeps its key), or generate a key.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct NewCertificate {
    /// A PEM certificate signing request. Without it, Moat generates the key.
    pub csr: Option<String>,
    /// For a generated key: `ecdsa-p256` (default) or `ed25519`.
    pub key_algorithm: Option<String>,
    /// For a generated key: `pem` (default) or `pkcs12`.
    pub format: Option<String>,
    /// The PKCS#12 password (required with `pkcs12`; at least 8 characters).
    pub pkcs12_password: Option<String>,
    /// Days the certificate is valid [default: the server's, one year].
    pub validity_days: Option<u32>,
    /// A certificate of the same device this one renews: it keeps working
    /// for the rotation overlap, then is revoked as superseded.
    pub replaces: Option<CertificateId>,
}

/// A newly issued certificate; a generated key is shown this once.
#[derive(Serialize, ToSchema)]
pub struct IssuedCertificate {
    pub certificate: Certificate,
    pub certificate_pem: String,
    /// The certificate then its issuing CA, for the TLS client to send.
    pub chain_pem: String,
    /// The platform root CA, for the device to trust the server.
    pub ca_pem: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_key_pem: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pkcs12_base64: Option<String>,
}

/// Why a certificate is revoked.
#[derive(Deserialize, ToSchema, Default)]
#[serde(deny_unknown_fields)]
pub struct Revocation {
    /// `key_compromise`, `superseded`, `cessation_of_operation`,
    /// `affiliation_changed` or `unspecified` (default).
    pub reason: Option<String>,
}

fn reason_code(r: &str) -> Option<RevocationReason> {
    Some(match r {
        "unspecified" => RevocationReason::Unspecified,
        "key_compromise" => RevocationReason::KeyCompromise,
        "affiliation_changed" => RevocationReason::AffiliationChanged,
        "superseded" => RevocationReason::Superseded,
        "cessation_of_operation" => RevocationReason::CessationOfOperation,
        "privilege_withdrawn" => RevocationReason::PrivilegeWithdrawn,
        _ => return None,
    })
}

async fn device_for(
    s: &AppState,
    caller: &Caller,
    id: DeviceId,
    kind: ResourceKind,
    action: Action,
    audit: &str,
) -> Result<Device, ApiError> {
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
    Ok(d)
}

/// A certificate made for a device and not stored yet.
pub(crate) struct Minted {
    pub(crate) record: Certificate,
    pub(crate) cert_pem: String,
    pub(crate) chain_pem: String,
    pub(crate) key_pem: Option<String>,
    pub(crate) pkcs12_base64: Option<String>,
}

impl Minted {
    pub(crate) fn answer(self, s: &AppState) -> IssuedCertificate {
        IssuedCertificate {
            certificate: self.record,
            certificate_pem: self.cert_pem,
            chain_pem: self.chain_pem,
            ca_pem: s.pki.root_pem().to_owned(),
            private_key_pem: self.key_pem,
            pkcs12_base64: self.pkcs12_base64,
        }
    }
}

/// Signs a certificate for `device` with its tenant's CA, from the CSR in
/// `body` or with a generated key; stores nothing.
pub(crate) async fn mint(
    s: &AppState,
    device: &Device,
    body: &NewCertificate,
) -> Result<Minted, ApiError> {
    let validity = match body.validity_days {
        Some(d) if !(1..=3650).contains(&d) => {
            return Err(ApiError::unprocessable(
                "validity_days",
                "must be between 1 and 3650",
            ));
        }
        Some(d) => chrono::Duration::days(d.into()),
        None => s.pki.settings.device_cert_validity,
    };
    let validity = time::Duration::seconds(validity.num_seconds());
    let tenant = s
        .store
        .tenant(device.tenant_id)
        .await?
        .ok_or_else(|| ApiError::not_found("tenant"))?;
    let (authority, ca) = s.pki.tenant_ca(tenant.id, &tenant.name).await?;
    let device_id = device.id.to_string();
    let (cert, key_pem, p12) = match &body.csr {
        Some(csr) => {
            if body.key_algorithm.is_some()
                || body.format.is_some()
                || body.pkcs12_password.is_some()
            {
                return Err(ApiError::unprocessable(
                    "csr",
                    "with a CSR the device keeps its key: key_algorithm, format and pkcs12_password do not apply",
                ));
            }
            let checked = check_csr(csr.as_bytes())?;
            (
                ca.sign_device_csr(checked, &device_id, validity)?,
                None,
                None,
            )
        }
        None => {
            let alg = match body.key_algorithm.as_deref() {
                None | Some("ecdsa-p256") => KeyAlgorithm::EcdsaP256,
                Some("ed25519") => KeyAlgorithm::Ed25519,
                Some(_) => {
                    return Err(ApiError::unprocessable(
                        "key_algorithm",
                        "must be ecdsa-p256 or ed25519",
                    ));
                }
            };
            let (cert, key) = ca.generate_device(&device_id, alg, validity)?;
            match body.format.as_deref() {
                None | Some("pem") => (cert, Some(key.to_string()), None),
                Some("pkcs12") => {
                    let pw = body.pkcs12_password.as_deref().unwrap_or_default();
                    if pw.chars().count() < 8 {
                        return Err(ApiError::unprocessable(
                            "pkcs12_password",
                            "must be at least 8 characters",
                        ));
                    }
                    let p12 = moat_pki::device::pkcs12(&key, &cert.chain_pem, pw, &device.name)?;
                    (
                        cert,
                        None,
                        Some(base64::engine::general_purpose::STANDARD.encode(p12)),
                    )
                }
                Some(_) => return Err(ApiError::unprocessable("format", "must be pem or pkcs12")),
            }
        }
    };
    let record = s.pki.record(
        &cert.info,
        device,
        Some(authority.id),
        CertificateOrigin::Issued,
        &cert.cert_pem,
    );
    Ok(Minted {
        record,
        cert_pem: cert.cert_pem,
        chain_pem: cert.chain_pem,
        key_pem,
        pkcs12_base64: p12,
    })
}

/// Issues a certificate to `device` from `body`, with `replaces` superseded,
/// and stores it with `extra` changes and the `audit` event (whose target
/// and detail it fills in), all or nothing.
pub(crate) async fn issue(
    s: &AppState,
    device: &Device,
    body: NewCertificate,
    mut audit: AuditRecord,
    extra: Vec<Change>,
) -> Result<IssuedCertificate, ApiError> {
    if device.state == DeviceState::Revoked {
        return Err(ApiError::conflict("the device is revoked"));
    }
    let replaced = match body.replaces {
        Some(id) => Some(
            s.store
                .certificate(id)
                .await?
                .filter(|c| c.device_id == device.id)
                .ok_or_else(|| {
                    ApiError::unprocessable("replaces", "not a certificate of this device")
                })?,
        ),
        None => None,
    };
    let minted = mint(s, device, &body).await?;
    let cert = &minted.record;
    let mut changes = vec![Change::InsertCertificate(cert.clone())];
    changes.extend(extra);
    let overlap_end = Utc::now() + s.pki.settings.rotation_overlap;
    if let Some(old) = &replaced {
        changes.push(Change::RevokeCertificate {
            id: old.id,
            at: overlap_end,
            reason: "superseded".into(),
        });
    }
    audit.target = format!("certificate:{}", cert.id);
    audit.tenant_id = Some(device.tenant_id);
    audit.detail = serde_json::json!({
        "device_id": device.id, "serial": cert.serial, "key_algorithm": cert.key_algorithm,
        "generated_key": minted.key_pem.is_some() || minted.pkcs12_base64.is_some(),
        "replaces": replaced.as_ref().map(|c| c.id),
    });
    s.store.apply(changes, Some(audit)).await?;
    s.pki.device_certificates_changed(device.id, false).await?;
    Ok(minted.answer(s))
}

/// Issues a device certificate: from the device's CSR (it keeps its private
/// key), or with a key Moat generates and returns once (PEM or PKCS#12).
#[utoipa::path(post, path = "/devices/{id}/certificates", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)), request_body = NewCertificate,
    responses((status = 201, body = IssuedCertificate), (status = 403, body = Problem), (status = 404, body = Problem),
        (status = 409, body = Problem), (status = 422, body = Problem)))]
pub async fn create(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<IssuedCertificate>), ApiError> {
    let body: NewCertificate = optional_body(&body)?;
    let device = device_for(
        &s,
        &caller,
        id,
        ResourceKind::Certificate,
        Action::Create,
        "certificate.issue",
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(
            issue(
                &s,
                &device,
                body,
                caller.record("certificate.issue", "-", Outcome::Success),
                Vec::new(),
            )
            .await?,
        ),
    ))
}

/// Lists a device's certificates.
#[utoipa::path(get, path = "/devices/{id}/certificates", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, body = Vec<Certificate>), (status = 404, body = Problem)))]
pub async fn list(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path(id): Path<DeviceId>,
) -> Result<Json<Vec<Certificate>>, ApiError> {
    device_for(
        &s,
        &caller,
        id,
        ResourceKind::Certificate,
        Action::Read,
        "certificate.read",
    )
    .await?;
    Ok(Json(s.store.device_certificates(id).await?))
}

/// Revokes one certificate now; the device's open sessions are cut and it
/// reconnects only with another good certificate.
#[utoipa::path(post, path = "/devices/{id}/certificates/{certificate_id}/revoke", tag = TAG_PKI,
    params(("id" = uuid::Uuid, Path), ("certificate_id" = uuid::Uuid, Path)), request_body = Revocation,
    responses((status = 200, body = Certificate), (status = 403, body = Problem), (status = 404, body = Problem), (status = 422, body = Problem)))]
pub async fn revoke(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Path((id, cert_id)): Path<(DeviceId, CertificateId)>,
    body: axum::body::Bytes,
) -> Result<Json<Certificate>, ApiError> {
    let body: Revocation = optional_body(&body)?;
    let device = device_for(
        &s,
        &caller,
        id,
        ResourceKind::Certificate,
        Action::Update,
        "certificate.revoke",
    )
    .await?;
    let reason = body.reason.unwrap_or_else(|| "unspecified".into());
    if reason_code(&reason).is_none() {
        return Err(ApiError::unprocessable(
            "reason",
            "not a revocation reason this server knows",
        ));
    }
    let cert = s
        .store
        .certificate(cert_id)
        .await?
        .filter(|c| c.device_id == id)
        .ok_or_else(|| ApiError::not_found("certificate"))?;
    let record = caller
        .record(
            "certificate.revoke",
            format!("certificate:{cert_id}"),
            Outcome::Success,
        )
        .tenant(device.tenant_id)
        .detail(serde_json::json!({ "device_id": id, "serial": cert.serial, "reason": reason }));
    s.store
        .apply(
            vec![Change::RevokeCertificate {
                id: cert_id,
                at: Utc::now(),
                reason,
            }],
            Some(record),
        )
        .await?;
    s.pki.device_certificates_changed(id, true).await?;
    let cert = s
        .store
        .certificate(cert_id)
        .await?
        .ok_or_else(|| ApiError::not_found("certificate"))?;
    Ok(Json(cert))
}

/// A device renews its own certificate with a new CSR, authenticated by its
/// current certificate (or device key). The certificate it presented keeps
/// working for the rotation overlap.
#[utoipa::path(post, path = "/device/certificates", tag = TAG_PKI, request_body = NewCertificate,
    responses((status = 201, body = IssuedCertificate), (status = 401, body = Problem), (status = 403, body = Problem), (status = 422, body = Problem)))]
pub async fn renew_own(
    State(s): State<Arc<AppState>>,
    caller: Caller,
    Json(mut body): Json<NewCertificate>,
) -> Result<(StatusCode, Json<IssuedCertificate>), ApiError> {
    let moat_core::authz::Subject::Device(id) = caller.principal.subject else {
        return Err(ApiError::forbidden(
            "this endpoint is for devices renewing their own certificate",
        ));
    };
    if body.csr.is_none() {
        return Err(ApiError::unprocessable(
            "csr",
            "a device renews with a CSR; its key never leaves it",
        ));
    }
    let device = device_for(
        &s,
        &caller,
        id,
        ResourceKind::Certificate,
        Action::Create,
        "certificate.renew",
    )
    .await?;
    let current = s.store.device_certificates(id).await?;
    body.replaces = match &caller.credential {
        DeviceCredential::Certificate(fp) => {
            current.iter().find(|c| &c.fingerprint == fp).map(|c| c.id)
        }
        _ => current
            .iter()
            .rev()
            .find(|c| c.is_valid_at(Utc::now()))
            .map(|c| c.id),
    };
    Ok((
        StatusCode::CREATED,
        Json(
            issue(
                &s,
                &device,
                body,
                caller.record("certificate.renew", "-", Outcome::Success),
                Vec::new(),
            )
            .await?,
        ),
    ))
}

/// The platform root CA's certificate (PEM).
#[utoipa::path(get, path = "/pki/ca.pem", tag = TAG_PKI, responses((status = 200, content_type = "application/x-pem-file", body = String)))]
pub async fn root_pem(State(s): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, "application/x-pem-file")],
        s.pki.root_pem().to_owned(),
    )
        .into_response()
}

/// The root CA's CRL (DER): revoked tenant CAs. Device certificates are on
/// their CA's CRL, `/pki/cas/{id}/crl`. Public, as CRLs are.
#[utoipa::path(get, path = "/pki/crl", tag = TAG_PKI, responses((status = 200, content_type = "application/pkix-crl", body = Vec<u8>)))]
pub async fn root_crl(State(s): State<Arc<AppState>>) -> Result<Response, ApiError> {
    let der = s
        .pki
        .root()
        .crl(&[], crl_number(), time::Duration::days(1))?;
    Ok(crl_response(der))
}

/// A tenant CA's CRL (DER), signed by that CA. Public, as CRLs are.
#[utoipa::path(get, path = "/pki/cas/{id}/crl", tag = TAG_PKI, params(("id" = uuid::Uuid, Path)),
    responses((status = 200, content_type = "application/pkix-crl", body = Vec<u8>), (status = 404, body = Problem)))]
pub async fn ca_crl(
    State(s): State<Arc<AppState>>,
    Path(id): Path<AuthorityId>,
) -> Result<Response, ApiError> {
    let a = s
        .store
        .authority(id)
        .await?
        .ok_or_else(|| ApiError::not_found("certificate authority"))?;
    if a.kind != moat_core::pki::AuthorityKind::Platform {
        return Err(ApiError::not_found(
            "CRL (a tenant's own CA publishes its own)",
        ));
    }
    let ca = s.pki.signer(&a).await?;
    let revoked: Vec<Revoked> = s
        .store
        .revoked_certificates(id, Utc::now())
        .await?
        .into_iter()
        .map(|c| Revoked {
            at_ms: c.revoked_at.map_or(0, |t| t.timestamp_millis()),
            reason: c
                .revocation_reason
                .as_deref()
                .and_then(reason_code)
                .unwrap_or(RevocationReason::Unspecified),
            serial: c.serial,
        })
        .collect();
    Ok(crl_response(ca.crl(
        &revoked,
        crl_number(),
        time::Duration::hours(1),
    )?))
}

/// CRL numbers only grow: the time in milliseconds does.
fn crl_number() -> u64 {
    u64::try_from(Utc::now().timestamp_millis()).unwrap_or_default()
}

fn crl_response(der: Vec<u8>) -> Response {
    (
        [
            (header::CONTENT_TYPE, "application/pkix-crl"),
            (header::CACHE_CONTROL, "max-age=60"),
        ],
        der,
    )
        .into_response()
}

/// A device rotates its own key: authenticated by its current device key,
/// it gets a new one (shown once); the old one keeps working for the
/// rotation overlap, then expires.
#[utoipa::path(post, path = "/device/keys", tag = TAG_PKI,
    responses((status = 201, body = crate::routes::devices::IssuedDeviceKey), (status = 401, body = Problem), (status = 403, body = Problem)))]
pub async fn rotate_own_key(
    State(s): State<Arc<AppState>>,
    caller: Caller,
) -> Result<(StatusCode, Json<crate::routes::devices::IssuedDeviceKey>), ApiError> {
    let (moat_core::authz::Subject::Device(id), DeviceCredential::Key(old)) =
        (caller.principal.subject, &caller.credential)
    else {
        return Err(ApiError::forbidden(
            "this endpoint is for devices rotating the device key they authenticated with",
        ));
    };
    let device = device_for(
        &s,
        &caller,
        id,
        ResourceKind::DeviceKey,
        Action::Create,
        "device_key.rotate",
    )
    .await?;
    let old_key = s
        .store
        .device_key(*old)
        .await?
        .ok_or_else(|| ApiError::not_found("device key"))?;
    let now = Utc::now();
    let expires_at = old_key.expires_at.map(|e| now + (e - old_key.created_at));
    let issued = crate::routes::devices::new_key(&s, &device, now, expires_at).await?;
    let key = &issued.key;
    let record = caller
        .record(
            "device_key.rotate",
            format!("device_key:{}", key.id),
            Outcome::Success,
        )
        .tenant(device.tenant_id)
        .detail(serde_json::json!({ "device_id": id, "replaces": old }));
    let changes = vec![
        Change::InsertDeviceKey(key.clone()),
        Change::ExpireDeviceKey {
            id: *old,
            at: now + s.pki.settings.rotation_overlap,
        },
    ];
    s.store.apply(changes, Some(record)).await?;
    Ok((StatusCode::CREATED, Json(issued)))
}
