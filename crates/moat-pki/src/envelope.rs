//! Envelope encryption of stored secrets: AES-256-GCM under the wrapping key
//! derived from the master key, with the secret's name as associated data so
//! that a wrapped value cannot be moved to another name.
//!
//! Layout: 12-byte random nonce, then ciphertext and tag.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand::RngCore;

use crate::PkiError;

pub fn wrap(key: &[u8; 32], name: &str, plaintext: &[u8]) -> Vec<u8> {
    let cipher = Aes256Gcm::new(key.into());
    let mut nonce = [0u8; 12];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let ct = cipher
        .encrypt(
            Nonce::from_slice(&nonce),
            Payload {
                msg: plaintext,
                aad: name.as_bytes(),
            },
        )
        .expect("AES-GCM encryption of an in-memory buffer does not fail");
    let mut out = Vec::with_capacity(12 + ct.len());
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&ct);
    out
}

pub fn unwrap(key: &[u8; 32], name: &str, wrapped: &[u8]) -> Result<Vec<u8>, PkiError> {
    if wrapped.len() < 12 + 16 {
        return Err(PkiError::Unwrap);
    }
    let (nonce, ct) = wrapped.split_at(12);
    Aes256Gcm::new(key.into())
        .decrypt(
            Nonce::from_slice(nonce),
            Payload {
                msg: ct,
                aad: name.as_bytes(),
            },
        )
        .map_err(|_| PkiError::Unwrap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let k = [3u8; 32];
        let w = wrap(&k, "pki/root", b"secret");
        assert_eq!(unwrap(&k, "pki/root", &w).unwrap(), b"secret");
        assert!(unwrap(&[4u8; 32], "pki/root", &w).is_err(), "wrong key");
        assert!(
            unwrap(&k, "pki/other", &w).is_err(),
            "moved to another name"
        );
        assert!(unwrap(&k, "pki/root", &w[..10]).is_err(), "truncated");
    }
}
