//! Who is calling: the `Caller` extractor turns an `Authorization` header into
//! a [`Principal`], and every refusal is counted, throttled per source
//! address and audited.
//!
//! Accepted credentials:
//! - `Bearer <access token>`: a user's JWT from `/auth/login`;
//! - `Bearer moat_ak_…`: an API key;
//! - `Device moat_dk_…`: a device key.

pub mod password;
pub mod tokens;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use chrono::Utc;
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::authn;
use moat_core::authz::{self, Action, Decision, Principal, Resource, Subject};
use moat_core::credential::{self, TokenKind};
use moat_core::{ApiKeyId, DeviceKeyId, DeviceState};

use crate::problem::ApiError;
use crate::state::AppState;

/// An authenticated request's principal and where it came from.
pub struct Caller {
    pub principal: Principal,
    pub source: Option<SocketAddr>,
    /// The device credential presented, for a device's own rotations.
    pub credential: DeviceCredential,
}

/// Which device credential authenticated a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeviceCredential {
    /// Not a device.
    None,
    Key(DeviceKeyId),
    /// The client certificate of the connection, by fingerprint.
    Certificate(String),
}

/// The peer's address, when the request came over a socket.
pub fn source_of(parts: &Parts) -> Option<SocketAddr> {
    parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0)
}

impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, ApiError> {
        let source = source_of(parts);
        let source_key = source.map(|s| s.ip().to_string());
        if let Some(key) = &source_key {
            state
                .sources
                .check(key, Instant::now())
                .map_err(ApiError::too_many)?;
        }
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .and_then(|h| h.to_str().ok());
        let Some(header) = header else {
            if let Some(peer) = parts.extensions.get::<crate::server::PeerDevice>().cloned() {
                return match device_principal(state, peer.device_id).await {
                    Ok(principal) => Ok(Caller {
                        principal,
                        source,
                        credential: DeviceCredential::Certificate(peer.fingerprint),
                    }),
                    Err(Failure::Store(e)) => Err(e),
                    Err(Failure::Refused { kind, reason }) => {
                        Err(
                            refuse(state, source, kind, reason, None, serde_json::Value::Null)
                                .await,
                        )
                    }
                };
            }
            return Err(ApiError::unauthorized(
                "this endpoint needs credentials: an access token, an API key, a device key or a device certificate",
            ));
        };
        match authenticate(state, header).await {
            Ok((principal, credential)) => Ok(Caller {
                principal,
                source,
                credential,
            }),
            Err(Failure::Store(e)) => Err(e),
            Err(Failure::Refused { kind, reason }) => {
                Err(refuse(state, source, kind, reason, None, serde_json::Value::Null).await)
            }
        }
    }
}

enum Failure {
    Refused {
        kind: &'static str,
        reason: &'static str,
    },
    Store(ApiError),
}

impl From<moat_core::store::StoreError> for Failure {
    fn from(e: moat_core::store::StoreError) -> Self {
        Failure::Store(e.into())
    }
}

impl From<authn::DeviceAuthError> for Failure {
    fn from(e: authn::DeviceAuthError) -> Self {
        match e {
            authn::DeviceAuthError::Refused(r) => refused(r.kind, r.reason),
            authn::DeviceAuthError::Store(e) => e.into(),
        }
    }
}

fn refused(kind: &'static str, reason: &'static str) -> Failure {
    Failure::Refused { kind, reason }
}

/// A device that presented a known client certificate; it must be active.
async fn device_principal(state: &AppState, id: moat_core::DeviceId) -> Result<Principal, Failure> {
    let device = authn::active_device(state.store.as_ref(), id, "client_certificate").await?;
    let tenant = state
        .tenant_path(device.tenant_id)
        .await
        .map_err(Failure::Store)?;
    Ok(Principal {
        subject: Subject::Device(device.id),
        tenant,
        role: None,
    })
}

async fn authenticate(
    state: &AppState,
    header: &str,
) -> Result<(Principal, DeviceCredential), Failure> {
    let now = Utc::now();
    let (scheme, token) = header
        .split_once(' ')
        .ok_or(refused("header", "malformed Authorization header"))?;
    let token = token.trim();
    match (scheme, TokenKind::of(token)) {
        ("Bearer", Some(TokenKind::ApiKey)) => {
            let (id, secret) = credential::parse(TokenKind::ApiKey, token)
                .ok_or(refused("api_key", "malformed API key"))?;
            let key = state
                .store
                .api_key(ApiKeyId(id))
                .await?
                .ok_or(refused("api_key", "unknown API key"))?;
            if !credential::verify(&secret, &key.secret_hash) {
                return Err(refused("api_key", "wrong API key secret"));
            }
            if !key.is_usable(now) {
                return Err(refused("api_key", "API key revoked or expired"));
            }
            let tenant = state
                .tenant_path(key.tenant_id)
                .await
                .map_err(Failure::Store)?;
            Ok((
                Principal {
                    subject: Subject::ApiKey(key.id),
                    tenant,
                    role: Some(key.role),
                },
                DeviceCredential::None,
            ))
        }
        ("Device", Some(TokenKind::DeviceKey)) => {
            let (device, key) = authn::device_key(state.store.as_ref(), token, None, now).await?;
            let tenant = state
                .tenant_path(device.tenant_id)
                .await
                .map_err(Failure::Store)?;
            Ok((
                Principal {
                    subject: Subject::Device(device.id),
                    tenant,
                    role: None,
                },
                DeviceCredential::Key(key),
            ))
        }
        ("Bearer", None) => {
            let claims = state
                .tokens
                .verify(token)
                .ok_or(refused("access_token", "invalid or expired access token"))?;
            let user = state
                .store
                .user(claims.sub)
                .await?
                .ok_or(refused("access_token", "user no longer exists"))?;
            if user.disabled {
                return Err(refused("access_token", "user is disabled"));
            }
            if claims.iat_ms < user.sessions_valid_after.timestamp_millis() {
                return Err(refused("access_token", "access token was revoked"));
            }
            let tenant = state
                .tenant_path(user.tenant_id)
                .await
                .map_err(Failure::Store)?;
            Ok((
                Principal {
                    subject: Subject::User(user.id),
                    tenant,
                    role: Some(user.role),
                },
                DeviceCredential::None,
            ))
        }
        _ => Err(refused(
            "header",
            "unsupported credentials; use Bearer <token or API key> or Device <device key>",
        )),
    }
}

/// Records a refused authentication: counted, throttled per source, audited.
/// Returns the 401 to send (or a 429 when this failure started a block).
pub async fn refuse(
    state: &AppState,
    source: Option<SocketAddr>,
    kind: &'static str,
    reason: &'static str,
    tenant: Option<moat_core::TenantId>,
    detail: serde_json::Value,
) -> ApiError {
    metrics::counter!("moat_auth_failures_total", "kind" => kind).increment(1);
    tracing::info!(kind, reason, source = ?source, "authentication refused");
    if let Some(s) = source {
        state.sources.failure(&s.ip().to_string(), Instant::now());
    }
    let mut detail = detail;
    if detail.is_null() {
        detail = serde_json::json!({});
    }
    detail["reason"] = reason.into();
    let mut record = AuditRecord::new("anonymous", format!("auth.{kind}"), "-", Outcome::Failure)
        .source(source.map(|s| s.ip().to_string()))
        .detail(detail);
    record.tenant_id = tenant;
    if let Err(e) = state.store.append_audit(record).await {
        tracing::error!(error = %e, "could not audit an authentication failure");
    }
    ApiError::unauthorized(reason)
}

impl Caller {
    /// The caller as it stands now, for connections that outlive their
    /// request (WebSockets): `None` once its credential no longer works — a
    /// user disabled, deleted or signed out everywhere after `since`, an API
    /// key revoked or expired, a device no longer active or its key
    /// withdrawn. A user's changed role is picked up.
    pub async fn current(
        &self,
        state: &AppState,
        since: chrono::DateTime<Utc>,
    ) -> Result<Option<Caller>, ApiError> {
        let now = Utc::now();
        let role = match self.principal.subject {
            Subject::User(id) => match state.store.user(id).await? {
                Some(u) if !u.disabled && u.sessions_valid_after <= since => Some(u.role),
                _ => return Ok(None),
            },
            Subject::ApiKey(id) => match state.store.api_key(id).await? {
                Some(k) if k.is_usable(now) => Some(k.role),
                _ => return Ok(None),
            },
            Subject::Device(id) => {
                match state.store.device(id).await? {
                    Some(d) if d.state == DeviceState::Active => {}
                    _ => return Ok(None),
                }
                if let DeviceCredential::Key(key) = &self.credential {
                    match state.store.device_key(*key).await? {
                        Some(k) if k.is_usable(now) => {}
                        _ => return Ok(None),
                    }
                }
                None
            }
        };
        Ok(Some(Caller {
            principal: authz::Principal {
                role,
                ..self.principal.clone()
            },
            source: self.source,
            credential: self.credential.clone(),
        }))
    }

    pub fn actor(&self) -> String {
        self.principal.subject.to_string()
    }

    /// An audit record of something this caller did, in their tenant.
    pub fn record(&self, action: &str, target: impl Into<String>, outcome: Outcome) -> AuditRecord {
        AuditRecord::new(self.actor(), action, target, outcome)
            .tenant(self.principal.tenant_id())
            .source(self.source.map(|s| s.ip().to_string()))
    }

    /// Asks the one decision function. A refused change is audited
    /// (`audit_action` names it); refused reads are not, to keep the log
    /// about changes.
    pub async fn authorize(
        &self,
        state: &AppState,
        action: Action,
        resource: Resource<'_>,
        what: &str,
        audit_action: &str,
    ) -> Result<(), ApiError> {
        let decision = authz::authorize(&self.principal, action, &resource);
        if decision == Decision::Allow {
            return Ok(());
        }
        if action != Action::Read {
            metrics::counter!("moat_access_denied_total").increment(1);
            let target = resource
                .id
                .map_or_else(|| what.to_owned(), |id| format!("{what}:{id}"));
            let record = self
                .record(audit_action, target, Outcome::Denied)
                .detail(serde_json::json!({ "decision": format!("{decision:?}") }));
            if let Err(e) = state.store.append_audit(record).await {
                tracing::error!(error = %e, "could not audit a denial");
            }
        }
        Err(ApiError::denied(decision, what))
    }
}
