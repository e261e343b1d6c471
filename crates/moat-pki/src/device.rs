//! Device certificates: checking a CSR, signing it, or making a key and
//! certificate for a device that cannot make its own, optionally as PKCS#12.
//!
//! Whatever the CSR asks for, the certificate names the device by its id
//! (subject CN and a `urn:uuid:` SAN), is for client authentication only, and
//! is valid for the time the platform chooses.

use rcgen::{
    CertificateParams, CertificateSigningRequestParams, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, PKCS_ED25519,
    SanType, SignatureAlgorithm,
};
use rustls_pki_types::CertificateSigningRequestDer;
use time::{Duration, OffsetDateTime};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;
use zeroize::Zeroizing;

use crate::PkiError;
use crate::ca::{Authority, random_serial};
use crate::inspect::{self, CertInfo};

/// The smallest RSA modulus accepted in a CSR.
pub const MIN_RSA_BITS: usize = 2048;

/// Key algorithms Moat generates keys for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyAlgorithm {
    EcdsaP256,
    Ed25519,
}

impl KeyAlgorithm {
    fn rcgen(self) -> &'static SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Ed25519 => &PKCS_ED25519,
        }
    }
}

/// A CSR whose signature and key were checked.
pub struct CheckedCsr {
    params: CertificateSigningRequestParams,
    /// `ecdsa-p256`, `ecdsa-p384`, `ed25519` or `rsa-<bits>`.
    pub key_algorithm: String,
    /// The SHA-256 of the public key (SubjectPublicKeyInfo), hex.
    pub public_key_sha256: String,
}

/// Parses a CSR (PEM, or DER), checks its self-signature, and refuses keys
/// that are weak or of a kind devices should not use.
pub fn check_csr(pem_or_der: &[u8]) -> Result<CheckedCsr, PkiError> {
    let der = if pem_or_der.starts_with(b"-----") {
        let text =
            std::str::from_utf8(pem_or_der).map_err(|_| PkiError::Csr("not PEM text".into()))?;
        pem_block(text, "CERTIFICATE REQUEST")
            .ok_or_else(|| PkiError::Csr("no CERTIFICATE REQUEST block".into()))?
    } else {
        pem_or_der.to_vec()
    };
    let (_, parsed) = x509_parser::certification_request::X509CertificationRequest::from_der(&der)
        .map_err(|e| PkiError::Csr(format!("not a certificate request: {e}")))?;
    let spki = &parsed.certification_request_info.subject_pki;
    let key_algorithm = match spki.parsed() {
        Ok(PublicKey::EC(ec)) => match ec.key_size() {
            256 => "ecdsa-p256".to_owned(),
            384 => "ecdsa-p384".to_owned(),
            bits => {
                return Err(PkiError::WeakKey(format!(
                    "an EC key of {bits} bits (P-256 or P-384 only)"
                )));
            }
        },
        Ok(PublicKey::RSA(rsa)) => {
            let bits = rsa.key_size();
            if bits < MIN_RSA_BITS {
                return Err(PkiError::WeakKey(format!(
                    "an RSA key of {bits} bits (at least {MIN_RSA_BITS})"
                )));
            }
            format!("rsa-{bits}")
        }
        _ if spki.algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            "ed25519".to_owned()
        }
        _ => {
            return Err(PkiError::WeakKey(
                "a key type that is not ECDSA P-256/P-384, Ed25519 or RSA".into(),
            ));
        }
    };
    let public_key_sha256 = inspect::sha256_hex(spki.raw);
    // rcgen verifies the request's signature over its contents.
    let params =
        CertificateSigningRequestParams::from_der(&CertificateSigningRequestDer::from(der))
            .map_err(|e| PkiError::Csr(format!("its signature does not verify ({e})")))?;
    Ok(CheckedCsr {
        params,
        key_algorithm,
        public_key_sha256,
    })
}

/// The first PEM block with `label`, decoded.
pub(crate) fn pem_block(text: &str, label: &str) -> Option<Vec<u8>> {
    use base64::Engine;
    let begin = format!("-----BEGIN {label}-----");
    let end = format!("-----END {label}-----");
    let start = text.find(&begin)? + begin.len();
    let stop = start + text[start..].find(&end)?;
    let b64: String = text[start..stop]
        .chars()
        .filter(|c| !c.is_whitespace())
        .collect();
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

/// A device certificate issued by a tenant's CA.
#[derive(Debug, Clone)]
pub struct DeviceCert {
    pub cert_pem: String,
    /// The device certificate followed by the issuing CA's.
    pub chain_pem: String,
    pub info: CertInfo,
}

fn device_params(device_id: &str, validity: Duration) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Moat device");
    dn.push(DnType::CommonName, device_id);
    params.distinguished_name = dn;
    params.subject_alt_names = vec![SanType::URI(format!("urn:uuid:{device_id}").try_into()?)];
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params.use_authority_key_identifier_extension = true;
    params.serial_number = Some(random_serial());
    let now = OffsetDateTime::now_utc();
    // A little slack for device clocks that run behind.
    params.not_before = now - Duration::minutes(5);
    params.not_after = now + validity;
    Ok(params)
}

impl Authority {
    /// Signs a checked CSR for `device_id`.
    pub fn sign_device_csr(
        &self,
        csr: CheckedCsr,
        device_id: &str,
        validity: Duration,
    ) -> Result<DeviceCert, PkiError> {
        let params = CertificateSigningRequestParams {
            params: device_params(device_id, validity)?,
            public_key: csr.params.public_key,
        };
        let cert = params.signed_by(&self.issuer()?)?;
        self.device_cert(cert.pem())
    }

    /// Makes a key and a certificate for `device_id`; the key is returned
    /// once, as PKCS#8 PEM.
    pub fn generate_device(
        &self,
        device_id: &str,
        alg: KeyAlgorithm,
        validity: Duration,
    ) -> Result<(DeviceCert, Zeroizing<String>), PkiError> {
        let key = KeyPair::generate_for(alg.rcgen())?;
        let cert = device_params(device_id, validity)?.signed_by(&key, &self.issuer()?)?;
        Ok((
            self.device_cert(cert.pem())?,
            Zeroizing::new(key.serialize_pem()),
        ))
    }

    fn device_cert(&self, cert_pem: String) -> Result<DeviceCert, PkiError> {
        let info = inspect::cert_info_pem(&cert_pem)?;
        let chain_pem = format!("{cert_pem}{}", self.cert_pem());
        Ok(DeviceCert {
            cert_pem,
            chain_pem,
            info,
        })
    }
}

/// A PKCS#12 file holding `key_pem` and `chain_pem` (leaf first), encrypted
/// with `password` (PBES2, AES-256, HMAC-SHA-256).
pub fn pkcs12(
    key_pem: &str,
    chain_pem: &str,
    password: &str,
    alias: &str,
) -> Result<Vec<u8>, PkiError> {
    let key_der = pem_block(key_pem, "PRIVATE KEY")
        .ok_or_else(|| PkiError::Pem("no PRIVATE KEY block".into()))?;
    let key = p12_keystore::PrivateKey::from_der(&key_der)
        .map_err(|e| PkiError::Pkcs12(e.to_string()))?;
    let certs = crate::tls::certs_from_pem(chain_pem)?
        .iter()
        .map(|c| {
            p12_keystore::Certificate::from_der(c.as_ref())
                .map_err(|e| PkiError::Pkcs12(e.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let local_id = inspect::sha256(certs_first_der(chain_pem)?.as_ref()).to_vec();
    let chain = p12_keystore::PrivateKeyChain::new(local_id, key, certs);
    let mut store = p12_keystore::KeyStore::new();
    store.add_entry(alias, p12_keystore::KeyStoreEntry::PrivateKeyChain(chain));
    store
        .writer(password)
        .write()
        .map_err(|e| PkiError::Pkcs12(e.to_string()))
}

fn certs_first_der(chain_pem: &str) -> Result<rustls_pki_types::CertificateDer<'static>, PkiError> {
    Ok(crate::tls::certs_from_pem(chain_pem)?.remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn csr_for(alg: &'static SignatureAlgorithm) -> String {
        let key = KeyPair::generate_for(alg).unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name
            .push(DnType::CommonName, "whatever the device says");
        p.serialize_request(&key).unwrap().pem().unwrap()
    }

    #[test]
    fn csrs_of_accepted_kinds_are_signed_for_the_device_id() {
        let root = Authority::generate("root", Duration::days(10)).unwrap();
        let ca = root.issue_tenant_ca("acme", Duration::days(5)).unwrap();
        for (alg, name) in [
            (&PKCS_ECDSA_P256_SHA256, "ecdsa-p256"),
            (&PKCS_ED25519, "ed25519"),
            (&rcgen::PKCS_ECDSA_P384_SHA384, "ecdsa-p384"),
        ] {
            let csr = check_csr(csr_for(alg).as_bytes()).unwrap();
            assert_eq!(csr.key_algorithm, name);
            let id = "0199a0b0-0000-7000-8000-000000000001";
            let cert = ca.sign_device_csr(csr, id, Duration::days(365)).unwrap();
            assert_eq!(cert.info.subject_cn.as_deref(), Some(id));
            assert_eq!(cert.info.device_uri.as_deref(), Some(id));
            assert!(cert.chain_pem.ends_with(ca.cert_pem()));
        }
    }

    #[test]
    fn bad_csrs_are_refused_with_the_reason() {
        assert!(matches!(check_csr(b"hello"), Err(PkiError::Csr(_))));
        // A tampered signature: flip a byte near the end of the DER.
        let pem = csr_for(&PKCS_ECDSA_P256_SHA256);
        let mut der = pem_block(&pem, "CERTIFICATE REQUEST").unwrap();
        let n = der.len();
        der[n - 3] ^= 0x55;
        assert!(
            matches!(check_csr(&der), Err(PkiError::Csr(_))),
            "a bad signature is refused"
        );
    }

    #[test]
    fn generated_keys_come_back_as_pem_and_pkcs12() {
        let root = Authority::generate("root", Duration::days(10)).unwrap();
        let ca = root.issue_tenant_ca("acme", Duration::days(5)).unwrap();
        for alg in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Ed25519] {
            let (cert, key) = ca.generate_device("d", alg, Duration::days(1)).unwrap();
            assert!(key.contains("PRIVATE KEY"));
            let p12 = pkcs12(&key, &cert.chain_pem, "secret", "d").unwrap();
            let back = p12_keystore::KeyStore::from_pkcs12(
                &p12,
                "secret",
                p12_keystore::Pkcs12ImportPolicy::Strict,
            )
            .unwrap();
            assert_eq!(back.private_key_chain().unwrap().1.certs().len(), 2);
        }
    }
}
