//! Moat's key material and certificates.
//!
//! - [`master`]: the master key, from which every other key is derived;
//! - [`envelope`]: secrets (CA keys) wrapped under a key derived from it;
//! - [`ca`]: the platform CA and the certificates it issues;
//! - [`device`]: device certificates from CSRs or generated keys, PKCS#12;
//! - [`inspect`]: reading certificates, checking a tenant's own CA;
//! - [`trust`]: which client certificates are devices, and the verifier;
//! - [`resolver`]: the server certificate, replaceable while serving;
//! - [`tls`]: the one rustls configuration every listener uses.

pub mod ca;
pub mod device;
pub mod envelope;
pub mod inspect;
pub mod master;
pub mod resolver;
pub mod tls;
pub mod trust;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("master key file {path}: {source}")]
    KeyFile {
        path: String,
        source: std::io::Error,
    },
    #[error("the master key must be 32 bytes, written as 64 hex digits or base64")]
    KeyFormat,
    #[error(
        "master key file {path} is readable by other users (mode {mode:o}); run chmod 600 on it"
    )]
    KeyFileMode { path: String, mode: u32 },
    #[error("a wrapped secret could not be opened: wrong master key or corrupted data")]
    Unwrap,
    #[error("certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    #[error("tls: {0}")]
    Tls(#[from] rustls::Error),
    #[error("{0:?} is neither a host name nor an IP address")]
    ServerName(String),
    #[error("pem: {0}")]
    Pem(String),
    #[error("certificate request: {0}")]
    Csr(String),
    #[error("weak or unsupported key: {0}")]
    WeakKey(String),
    #[error("not a CA certificate")]
    NotCa,
    #[error("{0} is expired or not yet valid")]
    OutOfValidity(&'static str),
    #[error("verification certificate: {0}")]
    Verification(String),
    #[error("pkcs#12: {0}")]
    Pkcs12(String),
}
