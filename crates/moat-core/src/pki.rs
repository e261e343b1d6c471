//! Device identity records: the tenants' certificate authorities, the
//! certificates devices present, and the one-time codes that claim a device
//! into a tenant. The cryptography lives in `moat-pki`; these are the facts
//! the platform keeps and decides on.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::ids::*;

/// Who holds a CA's key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum AuthorityKind {
    /// Moat made it under the platform root; its key is wrapped in the store.
    Platform,
    /// The tenant brought it and proved it holds its key; Moat has no key.
    Own,
}

/// What a CA's certificates do the first time Moat sees them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum JitMode {
    /// Unknown certificates are refused.
    Off,
    /// The device is registered `pending` until an operator activates it.
    Pending,
    /// The device is registered `active`.
    Activate,
}

impl JitMode {
    pub fn as_str(self) -> &'static str {
        match self {
            JitMode::Off => "off",
            JitMode::Pending => "pending",
            JitMode::Activate => "activate",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [JitMode::Off, JitMode::Pending, JitMode::Activate]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

impl AuthorityKind {
    pub fn as_str(self) -> &'static str {
        match self {
            AuthorityKind::Platform => "platform",
            AuthorityKind::Own => "own",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [AuthorityKind::Platform, AuthorityKind::Own]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A tenant's certificate authority.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Authority {
    pub id: AuthorityId,
    pub tenant_id: TenantId,
    pub kind: AuthorityKind,
    pub subject: String,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
    pub not_after: DateTime<Utc>,
    pub jit: JitMode,
    pub cert_pem: String,
    pub created_at: DateTime<Utc>,
}

/// How Moat came to know a certificate.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CertificateOrigin {
    /// Signed by a tenant CA from a CSR, or with a key Moat generated.
    Issued,
    /// Imported in bulk with a device (factory provisioning).
    Imported,
    /// Registered on the device's first connection (just in time).
    JustInTime,
}

impl CertificateOrigin {
    pub fn as_str(self) -> &'static str {
        match self {
            CertificateOrigin::Issued => "issued",
            CertificateOrigin::Imported => "imported",
            CertificateOrigin::JustInTime => "just_in_time",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            CertificateOrigin::Issued,
            CertificateOrigin::Imported,
            CertificateOrigin::JustInTime,
        ]
        .into_iter()
        .find(|m| m.as_str() == s)
    }
}

/// A certificate a device presents.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Certificate {
    pub id: CertificateId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub authority_id: Option<AuthorityId>,
    /// Lower-case hex.
    pub serial: String,
    /// SHA-256 of the DER certificate, hex: how a TLS peer is recognized.
    pub fingerprint: String,
    pub subject: String,
    pub key_algorithm: String,
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
    pub origin: CertificateOrigin,
    pub created_at: DateTime<Utc>,
    /// From then on the certificate is refused. In the future while a
    /// renewal's overlap lasts.
    pub revoked_at: Option<DateTime<Utc>>,
    /// RFC 5280 reason: `key_compromise`, `superseded`, `cessation_of_operation`, …
    pub revocation_reason: Option<String>,
    pub cert_pem: String,
}

impl Certificate {
    /// Whether it is accepted at `now`.
    pub fn is_valid_at(&self, now: DateTime<Utc>) -> bool {
        self.not_before <= now && now <= self.not_after && self.revoked_at.is_none_or(|r| now < r)
    }
}

/// A one-time code that claims a device into the tenant of whoever presents
/// it, and then lets the device fetch its credentials once.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ClaimCode {
    pub id: ClaimCodeId,
    /// The tenant the device waits in until it is claimed.
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub claimed_at: Option<DateTime<Utc>>,
    /// `user:<id>` or `apikey:<id>`.
    pub claimed_by: Option<String>,
    /// When the device fetched its credentials with it; then it is spent.
    pub used_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing, default)]
    #[schema(ignore)]
    pub code_hash: String,
}
