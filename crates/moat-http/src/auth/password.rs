//! Password hashing with Argon2id (the crate's defaults, OWASP's minimum:
//! 19 MiB, 2 passes). Hashing is deliberately slow, so it runs on the
//! blocking pool, never on the async workers.

use argon2::Argon2;
use argon2::password_hash::{
    PasswordHash, PasswordHasher, PasswordVerifier, SaltString, rand_core::OsRng,
};

use crate::problem::ApiError;

pub async fn hash(password: String) -> Result<String, ApiError> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
    })
    .await
    .map_err(|_| ApiError::internal())?
    .map_err(|e| {
        tracing::error!(error = %e, "password hashing failed");
        ApiError::internal()
    })
}

/// Whether `password` matches `phc`. With `phc = None` (no such user) a
/// dummy hash is checked anyway, so that timing does not tell which
/// usernames exist.
pub async fn verify(password: String, phc: Option<String>) -> bool {
    tokio::task::spawn_blocking(move || {
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| DUMMY.to_owned());
        let ok = PasswordHash::new(&phc)
            .map(|h| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &h)
                    .is_ok()
            })
            .unwrap_or(false);
        ok && known
    })
    .await
    .unwrap_or(false)
}

/// An Argon2id hash (default parameters) of a random password nobody knows.
const DUMMY: &str = "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRzb21lc2FsdA$Fz3qcKkDwx8IhHkz0BSo1fPvkdTT0Vwz5kU6vj0D0bY";

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hashes_verify_and_unknown_users_never_do() {
        let h = hash("a long enough password".into()).await.unwrap();
        assert!(h.starts_with("$argon2id$"));
        assert!(verify("a long enough password".into(), Some(h.clone())).await);
        assert!(!verify("wrong".into(), Some(h)).await);
        assert!(!verify("anything".into(), None).await);
        assert!(
            PasswordHash::new(DUMMY).is_ok(),
            "the dummy hash parses, so it costs a real verification"
        );
    }
}
