//! Access tokens: short-lived JWTs (HS256 under a key derived from the master
//! key). They carry only who and when; role and tenant are read afresh on
//! every request, so a role change or a disabled account takes effect at once.

use std::time::Duration;

use chrono::{DateTime, Utc};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use moat_core::ids::UserId;
use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user.
    pub sub: UserId,
    /// Issued at, seconds (RFC 7519).
    pub iat: i64,
    /// Expires at, seconds.
    pub exp: i64,
    /// Issued at, milliseconds: compared with the user's
    /// `sessions_valid_after` to honour "sign out everywhere".
    pub iat_ms: i64,
    pub iss: String,
}

const ISSUER: &str = "moat";

pub struct AccessTokens {
    enc: EncodingKey,
    dec: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl AccessTokens {
    pub fn new(key: &[u8; 32], ttl: Duration) -> Self {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.set_issuer(&[ISSUER]);
        validation.leeway = 0;
        validation.set_required_spec_claims(&["exp", "iat", "sub", "iss"]);
        Self {
            enc: EncodingKey::from_secret(key),
            dec: DecodingKey::from_secret(key),
            validation,
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    pub fn issue(&self, user: UserId, now: DateTime<Utc>) -> String {
        let claims = Claims {
            sub: user,
            iat: now.timestamp(),
            exp: now.timestamp() + self.ttl.as_secs() as i64,
            iat_ms: now.timestamp_millis(),
            iss: ISSUER.into(),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.enc)
            .expect("HS256 signing does not fail")
    }

    /// The claims of a valid, unexpired token.
    pub fn verify(&self, token: &str) -> Option<Claims> {
        jsonwebtoken::decode::<Claims>(token, &self.dec, &self.validation)
            .ok()
            .map(|d| d.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_with_their_key_and_before_expiry() {
        let t = AccessTokens::new(&[1; 32], Duration::from_secs(3600));
        let user = UserId::new();
        let tok = t.issue(user, Utc::now());
        assert_eq!(t.verify(&tok).unwrap().sub, user);
        assert!(
            AccessTokens::new(&[2; 32], Duration::from_secs(3600))
                .verify(&tok)
                .is_none()
        );
        let old = t.issue(user, Utc::now() - chrono::Duration::hours(2));
        assert!(t.verify(&old).is_none(), "expired");
        assert!(t.verify("not.a.jwt").is_none());
    }
}
