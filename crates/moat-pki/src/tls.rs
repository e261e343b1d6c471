//! The one TLS configuration every listener uses: TLS 1.3 and 1.2, ECDHE key
//! exchange and AEAD suites only (ChaCha20-Poly1305 included for small
//! devices without AES hardware), on the `ring` provider.
//!
//! Client certificates (device identities) are checked by
//! [`crate::trust::DeviceVerifier`]; the server certificate comes from
//! [`crate::resolver::ServerCert`], which renewals replace in place.

use std::sync::Arc;

use rustls::crypto::{CryptoProvider, ring};
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::PkiError;

/// The crypto provider with Moat's suites and groups, most preferred first.
pub fn provider() -> Arc<CryptoProvider> {
    use ring::cipher_suite as cs;
    Arc::new(CryptoProvider {
        cipher_suites: vec![
            cs::TLS13_AES_256_GCM_SHA384,
            cs::TLS13_AES_128_GCM_SHA256,
            cs::TLS13_CHACHA20_POLY1305_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
            cs::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
            cs::TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        ],
        kx_groups: vec![
            ring::kx_group::X25519,
            ring::kx_group::SECP256R1,
            ring::kx_group::SECP384R1,
        ],
        ..ring::default_provider()
    })
}

const VERSIONS: &[&rustls::SupportedProtocolVersion] =
    &[&rustls::version::TLS13, &rustls::version::TLS12];

/// Parses every certificate in a PEM text.
pub fn certs_from_pem(pem: &str) -> Result<Vec<CertificateDer<'static>>, PkiError> {
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<_, _>>()
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    if certs.is_empty() {
        return Err(PkiError::Pem("no certificate found".into()));
    }
    Ok(certs)
}

/// A server configuration presenting `cert_chain_pem` (leaf first) with
/// `key_pem`, offering HTTP/2 and HTTP/1.1 by ALPN.
pub fn server_config(cert_chain_pem: &str, key_pem: &str) -> Result<Arc<ServerConfig>, PkiError> {
    let certs = certs_from_pem(cert_chain_pem)?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|e| PkiError::Pem(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The configuration of every listener: the replaceable server certificate
/// and device client certificates checked by `verifier`, with `alpn`.
pub fn listener_config(
    cert: Arc<crate::resolver::ServerCert>,
    verifier: Arc<crate::trust::DeviceVerifier>,
    alpn: &[&[u8]],
) -> Result<Arc<ServerConfig>, PkiError> {
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(cert);
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}

/// A client configuration that trusts only the CA in `ca_pem`: what the CLI
/// and the tests use to reach a Moat server.
pub fn client_config(ca_pem: &str) -> Result<ClientConfig, PkiError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(ca_pem)? {
        roots.add(c)?;
    }
    Ok(ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(VERSIONS)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;

    #[test]
    fn configs_build_from_issued_material() {
        let ca = Authority::generate("t", time::Duration::days(1)).unwrap();
        let s = ca
            .issue_server(&["localhost".into()], time::Duration::days(1))
            .unwrap();
        let cfg = server_config(&s.cert_pem, &s.key_pem).unwrap();
        assert_eq!(cfg.alpn_protocols[0], b"h2");
        client_config(ca.cert_pem()).unwrap();
        assert!(certs_from_pem("not pem").is_err());
    }
}
