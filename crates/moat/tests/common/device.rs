//! Device-side helpers for end-to-end tests: keys and CSRs from the
//! `openssl` CLI, a CA of a tenant's own (rcgen), and HTTPS clients that
//! present a client certificate.

use std::path::Path;
use std::sync::Arc;

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::{Value, json};

use super::{Api, Server};

pub fn openssl(dir: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl runs (scripts/install-test-deps)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A P-256 key and CSR made by openssl; returns (key PEM, CSR PEM).
pub fn openssl_csr(dir: &Path, name: &str) -> (String, String) {
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.csr"),
            "-subj",
            "/CN=ignored",
        ],
    );
    (
        std::fs::read_to_string(dir.join(format!("{name}.key"))).unwrap(),
        std::fs::read_to_string(dir.join(format!("{name}.csr"))).unwrap(),
    )
}

/// A rustls client config trusting the server's CA and presenting `chain`
/// with `key` (which need not match: that is the wrong-key case).
pub fn client_config(server: &Server, chain: &str, key: &str) -> rustls::ClientConfig {
    #[derive(Debug)]
    struct Always(Arc<rustls::sign::CertifiedKey>);
    impl rustls::client::ResolvesClientCert for Always {
        fn resolve(
            &self,
            _: &[&[u8]],
            _: &[rustls::SignatureScheme],
        ) -> Option<Arc<rustls::sign::CertifiedKey>> {
            Some(self.0.clone())
        }
        fn has_certs(&self) -> bool {
            true
        }
    }
    let provider = moat_pki_provider();
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(chain.as_bytes())
        .collect::<Result<_, _>>()
        .unwrap();
    let key = provider
        .key_provider
        .load_private_key(PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap())
        .unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(
        std::fs::read_to_string(server.ca_path())
            .unwrap()
            .as_bytes(),
    ) {
        roots.add(c.unwrap()).unwrap();
    }
    rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_client_cert_resolver(Arc::new(Always(Arc::new(rustls::sign::CertifiedKey::new(
            certs, key,
        )))))
}

pub fn moat_pki_provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// An HTTPS client presenting a client certificate.
pub fn device_client(server: &Server, chain: &str, key: &str) -> reqwest::Client {
    reqwest::Client::builder()
        .use_preconfigured_tls(client_config(server, chain, key))
        .build()
        .unwrap()
}

/// `GET /auth/whoami` with only the client certificate; the status, or 0
/// when the TLS handshake or connection failed.
pub async fn whoami_with_cert(server: &Server, chain: &str, key: &str) -> (u16, Value) {
    match device_client(server, chain, key)
        .get(server.api("/auth/whoami"))
        .send()
        .await
    {
        Ok(r) => (r.status().as_u16(), r.json().await.unwrap_or(Value::Null)),
        Err(_) => (0, Value::Null),
    }
}

/// A CA the tenant holds the key of, as a factory would.
pub struct OwnCa {
    pub key: rcgen::KeyPair,
    pub cert: rcgen::Certificate,
}

impl OwnCa {
    pub fn new(name: &str) -> Self {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        let cert = p.self_signed(&key).unwrap();
        Self { key, cert }
    }

    /// A client certificate for `cn`, valid from `from` to `to` (days from now).
    pub fn sign(&self, cn: &str, from: i64, to: i64) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let now = time::OffsetDateTime::now_utc();
        p.not_before = now + time::Duration::days(from);
        p.not_after = now + time::Duration::days(to);
        let issuer = rcgen::Issuer::from_ca_cert_der(self.cert.der(), &self.key).unwrap();
        (
            p.signed_by(&key, &issuer).unwrap().pem(),
            key.serialize_pem(),
        )
    }

    /// Registers this CA with the tenant of `api`'s caller, proving
    /// possession with a verification certificate over a registration code;
    /// returns the CA's id.
    pub async fn register(&self, api: &Api, jit: &str) -> String {
        let code = api.post("/pki/cas/registration-code", json!({})).await;
        assert_eq!(code.status, 201, "{code:?}");
        let (proof, _) = self.sign(code.body["code"].as_str().unwrap(), 0, 1);
        api.create(
            "/pki/cas",
            json!({"certificate_pem": self.cert.pem(), "verification_certificate_pem": proof, "jit": jit}),
        )
        .await
    }
}
