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

/// Claim codes: 12 characters of Crockford's base32 (60 random bits),
/// printed `XXXX-XXXX-XXXX`. Readers forgive case, dashes, spaces, and the
/// look-alikes Crockford maps (`I`, `L` → `1`, `O` → `0`).
pub mod claim {
    use hmac::{Hmac, Mac};
    use rand::RngCore;
    use sha2::Sha256;

    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    const LEN: usize = 12;

    /// A fresh code, formatted for printing.
    pub fn generate() -> String {
        let mut bytes = [0u8; 8];
        rand::rngs::OsRng.fill_bytes(&mut bytes);
        let mut bits = u64::from_le_bytes(bytes);
        let mut out = String::with_capacity(LEN + 2);
        for i in 0..LEN {
            if i > 0 && i % 4 == 0 {
                out.push('-');
            }
            out.push(char::from(ALPHABET[(bits & 31) as usize]));
            bits >>= 5;
        }
        out
    }

    /// The canonical form of a code someone typed, or `None` if it cannot be
    /// one.
    pub fn normalize(input: &str) -> Option<String> {
        let mut out = String::with_capacity(LEN);
        for c in input.chars() {
            let c = match c.to_ascii_uppercase() {
                '-' | ' ' => continue,
                'I' | 'L' => '1',
                'O' => '0',
                c if c.is_ascii() && ALPHABET.contains(&(c as u8)) => c,
                _ => return None,
            };
            if out.len() == LEN {
                return None;
            }
            out.push(c);
        }
        (out.len() == LEN).then_some(out)
    }

    /// A 32-byte subkey of `key` for `label` (HMAC-SHA256, as HKDF-Expand's
    /// first block).
    pub fn derive_key(key: &[u8; 32], label: &str) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key length");
        mac.update(label.as_bytes());
        mac.update(&[1]);
        mac.finalize().into_bytes().into()
    }

    /// What the store keeps of a normalized code: a keyed hash, so a copy of
    /// the database does not let anyone try codes offline.
    pub fn hash(key: &[u8; 32], normalized: &str) -> String {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(key).expect("hmac takes any key length");
        mac.update(normalized.as_bytes());
        hex::encode(mac.finalize().into_bytes())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn generated_codes_read_back_in_any_typing() {
            for _ in 0..100 {
                let code = generate();
                assert_eq!(code.len(), 14);
                let n = normalize(&code).unwrap();
                assert_eq!(normalize(&code.to_lowercase()), Some(n.clone()));
                assert_eq!(normalize(&code.replace('-', " ")), Some(n));
            }
        }

        #[test]
        fn look_alikes_map_and_junk_is_refused() {
            assert_eq!(normalize("oiL0-0000-0000").as_deref(), Some("011000000000"));
            assert_eq!(normalize("0000-0000-000"), None);
            assert_eq!(normalize("0000-0000-00000"), None);
            assert_eq!(normalize("0000-0000-000U"), None);
            assert_eq!(normalize("0000-0000-000é"), None);
        }

        #[test]
        fn the_hash_depends_on_the_key() {
            assert_ne!(hash(&[1; 32], "A"), hash(&[2; 32], "A"));
            assert_eq!(hash(&[1; 32], "A"), hash(&[1; 32], "A"));
        }
    }
}
