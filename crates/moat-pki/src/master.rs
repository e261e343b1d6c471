//! The master key: 32 random bytes from which every other key is derived
//! (HKDF-SHA256, one `info` string per purpose), so that one secret protects
//! the database, the audit chain, tokens and wrapped CA keys alike.
//!
//! It lives in a file readable only by its owner (created with mode 0600 on
//! first start), or comes from the environment for operators who keep it in a
//! secret manager.

use std::io::Write;
use std::path::Path;

use base64::Engine;
use hkdf::Hkdf;
use rand::RngCore;
use sha2::Sha256;
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::PkiError;

/// What a derived key is for. Each purpose gets an independent key.
#[derive(Clone, Copy, Debug)]
pub enum Purpose {
    /// SQLCipher's raw database key.
    Database,
    /// HMAC key of the audit hash chain.
    AuditChain,
    /// HS256 key of access tokens.
    AccessTokens,
    /// AES-256-GCM key that wraps stored secrets.
    Wrapping,
    /// SQLCipher's key of the message database (ADR 004).
    Messages,
}

impl Purpose {
    fn info(self) -> &'static [u8] {
        match self {
            Purpose::Database => b"moat/v1/database",
            Purpose::AuditChain => b"moat/v1/audit-chain",
            Purpose::AccessTokens => b"moat/v1/access-tokens",
            Purpose::Wrapping => b"moat/v1/wrapping",
            Purpose::Messages => b"moat/v1/messages",
        }
    }
}

#[derive(Zeroize, ZeroizeOnDrop)]
pub struct MasterKey([u8; 32]);

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(..)")
    }
}

impl MasterKey {
    pub fn generate() -> Self {
        let mut k = [0u8; 32];
        rand::rngs::OsRng.fill_bytes(&mut k);
        Self(k)
    }

    /// Parses 64 hex digits or standard base64 of 32 bytes.
    pub fn parse(text: &str) -> Result<Self, PkiError> {
        let text = text.trim();
        let mut k = [0u8; 32];
        if hex::decode_to_slice(text, &mut k).is_ok() {
            return Ok(Self(k));
        }
        let mut bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|_| PkiError::KeyFormat)?;
        if bytes.len() != 32 {
            bytes.zeroize();
            return Err(PkiError::KeyFormat);
        }
        k.copy_from_slice(&bytes);
        bytes.zeroize();
        Ok(Self(k))
    }

    /// Reads the key at `path`, or creates it (mode 0600) if there is none.
    /// Returns whether it was created. A key file others can read is refused.
    pub fn load_or_create(path: &Path) -> Result<(Self, bool), PkiError> {
        let err = |source| PkiError::KeyFile {
            path: path.display().to_string(),
            source,
        };
        match std::fs::read_to_string(path) {
            Ok(mut text) => {
                check_mode(path)?;
                let key = Self::parse(&text);
                text.zeroize();
                Ok((key?, false))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let key = Self::generate();
                let mut opts = std::fs::OpenOptions::new();
                opts.write(true).create_new(true);
                #[cfg(unix)]
                std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
                let mut f = opts.open(path).map_err(err)?;
                let mut text = hex::encode(key.0);
                text.push('\n');
                let written = f.write_all(text.as_bytes()).and_then(|()| f.sync_all());
                text.zeroize();
                written.map_err(err)?;
                Ok((key, true))
            }
            Err(e) => Err(err(e)),
        }
    }

    /// The key for `purpose`.
    pub fn derive(&self, purpose: Purpose) -> [u8; 32] {
        let hk = Hkdf::<Sha256>::new(Some(b"moat master key"), &self.0);
        let mut out = [0u8; 32];
        hk.expand(purpose.info(), &mut out)
            .expect("32 bytes is a valid HKDF-SHA256 length");
        out
    }
}

#[cfg(unix)]
fn check_mode(path: &Path) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).map_err(|source| PkiError::KeyFile {
        path: path.display().to_string(),
        source,
    })?;
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o077 != 0 {
        return Err(PkiError::KeyFileMode {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_mode(_: &Path) -> Result<(), PkiError> {
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn created_once_with_owner_only_mode_then_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("master.key");
        let (k1, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(created);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            assert_eq!(
                std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
                0o600
            );
        }
        let (k2, created) = MasterKey::load_or_create(&path).unwrap();
        assert!(!created);
        assert_eq!(k1.derive(Purpose::Database), k2.derive(Purpose::Database));
        assert_ne!(k1.derive(Purpose::Database), k1.derive(Purpose::AuditChain));
    }

    #[test]
    fn a_key_file_others_can_read_is_refused() {
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("master.key");
            MasterKey::load_or_create(&path).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert!(matches!(
                MasterKey::load_or_create(&path),
                Err(PkiError::KeyFileMode { .. })
            ));
        }
    }

    #[test]
    fn parses_hex_and_base64_only_of_32_bytes() {
        assert!(MasterKey::parse(&"ab".repeat(32)).is_ok());
        assert!(MasterKey::parse("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=").is_ok());
        assert!(MasterKey::parse("abcd").is_err());
        assert!(MasterKey::parse("").is_err());
    }
}
