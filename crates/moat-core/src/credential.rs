//! Bearer secrets: API keys, device keys and refresh tokens.
//!
//! Each secret is 128 random bits, shown to its owner once and stored only as
//! a SHA-256 hash (a slow hash buys nothing for a uniformly random 128-bit
//! value). A token names its record, so checking one is a single lookup:
//! `moat_ak_<32 hex id><32 hex secret>`. The prefix says what kind of token
//! it is, which also lets secret scanners recognise a leaked one.

use chrono::{DateTime, Utc};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::domain::Role;
use crate::ids::*;

/// What a token is for; each kind has its own prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenKind {
    ApiKey,
    DeviceKey,
    Refresh,
}

impl TokenKind {
    pub fn prefix(self) -> &'static str {
        match self {
            TokenKind::ApiKey => "moat_ak_",
            TokenKind::DeviceKey => "moat_dk_",
            TokenKind::Refresh => "moat_rt_",
        }
    }

    /// The kind a token claims to be, from its prefix.
    pub fn of(token: &str) -> Option<Self> {
        [TokenKind::ApiKey, TokenKind::DeviceKey, TokenKind::Refresh]
            .into_iter()
            .find(|k| token.starts_with(k.prefix()))
    }
}

/// A freshly made secret: the token goes to the owner once, the hash is kept.
pub struct IssuedToken {
    pub id: Uuid,
    pub token: String,
    pub hash: String,
}

impl std::fmt::Debug for IssuedToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuedToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Makes a new token of `kind` with a fresh time-ordered id.
pub fn issue(kind: TokenKind) -> IssuedToken {
    let id = Uuid::now_v7();
    let mut secret = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut secret);
    let token = format!("{}{}{}", kind.prefix(), id.simple(), hex::encode(secret));
    IssuedToken {
        id,
        hash: hash_secret(&secret),
        token,
    }
}

/// Splits a token into its record id and secret; `None` if it is not a
/// well-formed token of `kind`.
pub fn parse(kind: TokenKind, token: &str) -> Option<(Uuid, [u8; 16])> {
    let rest = token.strip_prefix(kind.prefix())?;
    if rest.len() != 64 || !rest.is_ascii() {
        return None;
    }
    let id = Uuid::try_parse(&rest[..32]).ok()?;
    let mut secret = [0u8; 16];
    hex::decode_to_slice(&rest[32..], &mut secret).ok()?;
    Some((id, secret))
}

/// Characters in a device key's DTLS pre-shared key.
pub const DTLS_PSK_LEN: usize = 16;

/// The DTLS pre-shared key of a device key's secret: 16 characters,
/// URL-safe base64 of the first 96 bits of HMAC-SHA256 keyed by the secret
/// over a fixed label. Text, because libcoap's `coap-client -k` takes the
/// key literally; 16 bytes, because tinydtls (aiocoap's DTLS, and many
/// device stacks) holds at most that (`DTLS_PSK_MAX_KEY_LEN`). 96 bits keep
/// an offline search of a recorded handshake out of reach.
pub fn dtls_psk(secret: &[u8]) -> zeroize::Zeroizing<String> {
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(b"moat dtls psk v1");
    let mut tag = zeroize::Zeroizing::new([0u8; 32]);
    tag.copy_from_slice(&mac.finalize().into_bytes());
    zeroize::Zeroizing::new(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&tag[..12]))
}

pub fn hash_secret(secret: &[u8]) -> String {
    hex::encode(Sha256::digest(secret))
}

/// Compares a presented secret with a stored hash in constant time.
pub fn verify(secret: &[u8], stored_hash: &str) -> bool {
    let computed = hash_secret(secret);
    let (a, b) = (computed.as_bytes(), stored_hash.as_bytes());
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A key for programs acting on a tenant with one role.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct ApiKey {
    pub id: ApiKeyId,
    pub tenant_id: TenantId,
    pub name: String,
    pub role: Role,
    pub created_by: Option<UserId>,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing, default)]
    #[schema(ignore)]
    pub secret_hash: String,
}

impl ApiKey {
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && now < self.expires_at
    }
}

/// A key a device without a certificate presents to prove who it is.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct DeviceKey {
    pub id: DeviceKeyId,
    pub tenant_id: TenantId,
    pub device_id: DeviceId,
    pub created_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing, default)]
    #[schema(ignore)]
    pub secret_hash: String,
    /// The secret itself, sealed under a key derived from the master key,
    /// for DTLS-PSK (which needs the secret, not its hash); `None` for keys
    /// made before CoAP existed.
    #[serde(skip, default)]
    #[schema(ignore)]
    pub psk_sealed: Option<Vec<u8>>,
}

impl DeviceKey {
    pub fn is_usable(&self, now: DateTime<Utc>) -> bool {
        self.revoked_at.is_none() && self.expires_at.is_none_or(|e| now < e)
    }
}

/// A refresh token. Tokens rotate: each use consumes one and issues the next
/// in the same family; presenting a consumed token again means it was stolen,
/// and the whole family is revoked.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RefreshToken {
    pub id: RefreshTokenId,
    pub user_id: UserId,
    /// The id of the first token of the chain of rotations.
    pub family_id: RefreshTokenId,
    pub secret_hash: String,
    pub created_at: DateTime<Utc>,
    pub expires_at: DateTime<Utc>,
    pub used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn issued_tokens_parse_and_verify() {
        for kind in [TokenKind::ApiKey, TokenKind::DeviceKey, TokenKind::Refresh] {
            let t = issue(kind);
            assert_eq!(TokenKind::of(&t.token), Some(kind));
            let (id, secret) = parse(kind, &t.token).expect("parses");
            assert_eq!(id, t.id);
            assert!(verify(&secret, &t.hash));
            assert!(!verify(&[0u8; 16], &t.hash));
        }
    }

    #[test]
    fn dtls_psks_are_16_shell_safe_characters_bound_to_the_secret() {
        let a = dtls_psk(&[1u8; 16]);
        assert_eq!(a.len(), DTLS_PSK_LEN);
        assert!(
            a.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        );
        assert_eq!(*a, *dtls_psk(&[1u8; 16]));
        assert_ne!(*a, *dtls_psk(&[2u8; 16]));
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let t = issue(TokenKind::ApiKey);
        assert!(parse(TokenKind::DeviceKey, &t.token).is_none());
        assert!(parse(TokenKind::ApiKey, &t.token[..t.token.len() - 1]).is_none());
        assert!(parse(TokenKind::ApiKey, "moat_ak_").is_none());
        let non_ascii = format!("moat_ak_{}é", "0".repeat(62));
        assert!(parse(TokenKind::ApiKey, &non_ascii).is_none());
        assert!(parse(TokenKind::ApiKey, &format!("moat_ak_{}", "z".repeat(64))).is_none());
    }
}
