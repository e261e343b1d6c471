//! Reading certificates: the facts Moat keeps about one (serial, SHA-256
//! fingerprint, validity, names), and the proof of possession a tenant gives
//! when it registers its own CA.

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::PkiError;

/// What Moat records about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The serial number's DER content octets, lower-case hex.
    pub serial: String,
    /// SHA-256 over the DER certificate, lower-case hex: the key of the
    /// certificate index.
    pub fingerprint: String,
    /// Unix milliseconds.
    pub not_before: i64,
    pub not_after: i64,
    pub subject: String,
    pub subject_cn: Option<String>,
    pub issuer: String,
    /// The device id in a `urn:uuid:` SAN, when there is one.
    pub device_uri: Option<String>,
    pub is_ca: bool,
    /// `ecdsa-p256`, `ed25519`, `rsa-2048`, …
    pub key_algorithm: String,
    /// SHA-256 of the SubjectPublicKeyInfo, hex: the same key in a CSR and
    /// in the certificate made from it hash alike.
    pub public_key_sha256: String,
    pub der: Vec<u8>,
}

pub fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha256(bytes))
}

/// Facts about the first certificate in a PEM text.
pub fn cert_info_pem(pem: &str) -> Result<CertInfo, PkiError> {
    let der = crate::tls::certs_from_pem(pem)?.remove(0);
    cert_info_der(der.as_ref())
}

pub fn cert_info_der(der: &[u8]) -> Result<CertInfo, PkiError> {
    let (_, c) = X509Certificate::from_der(der)
        .map_err(|e| PkiError::Pem(format!("not a certificate: {e}")))?;
    let device_uri = c.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            GeneralName::URI(u) => u.strip_prefix("urn:uuid:").map(str::to_owned),
            _ => None,
        })
    });
    let key_algorithm = match c.public_key().parsed() {
        Ok(x509_parser::public_key::PublicKey::EC(ec)) => format!("ecdsa-p{}", ec.key_size()),
        Ok(x509_parser::public_key::PublicKey::RSA(r)) => format!("rsa-{}", r.key_size()),
        _ if c.public_key().algorithm.algorithm == x509_parser::oid_registry::OID_SIG_ED25519 => {
            "ed25519".into()
        }
        _ => "other".into(),
    };
    Ok(CertInfo {
        serial: hex::encode(c.raw_serial()),
        fingerprint: sha256_hex(der),
        not_before: c.validity().not_before.timestamp() * 1000,
        not_after: c.validity().not_after.timestamp() * 1000,
        subject: c.subject().to_string(),
        subject_cn: c
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(str::to_owned),
        issuer: c.issuer().to_string(),
        device_uri,
        is_ca: c.is_ca(),
        key_algorithm,
        public_key_sha256: sha256_hex(c.public_key().raw),
        der: der.to_vec(),
    })
}

/// Checks a tenant's own CA before it is trusted: it must be a CA
/// certificate, valid now, and `verification_pem` must be a certificate it
/// signed whose common name is `code` (the registration code the platform
/// handed out), proving that whoever registers the CA holds its key.
pub fn check_own_ca(
    ca_pem: &str,
    verification_pem: &str,
    code: &str,
    now_ms: i64,
) -> Result<CertInfo, PkiError> {
    let ca = cert_info_pem(ca_pem)?;
    if !ca.is_ca {
        return Err(PkiError::NotCa);
    }
    if now_ms < ca.not_before || now_ms > ca.not_after {
        return Err(PkiError::OutOfValidity("the CA certificate"));
    }
    let ver = cert_info_pem(verification_pem)?;
    if now_ms < ver.not_before || now_ms > ver.not_after {
        return Err(PkiError::OutOfValidity("the verification certificate"));
    }
    if ver.subject_cn.as_deref() != Some(code) {
        return Err(PkiError::Verification(
            "its common name is not the registration code".into(),
        ));
    }
    let (_, ca_x) = X509Certificate::from_der(&ca.der).map_err(|e| PkiError::Pem(e.to_string()))?;
    let (_, ver_x) =
        X509Certificate::from_der(&ver.der).map_err(|e| PkiError::Pem(e.to_string()))?;
    ver_x
        .verify_signature(Some(ca_x.public_key()))
        .map_err(|_| PkiError::Verification("it is not signed by this CA's key".into()))?;
    Ok(ca)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;
    use rcgen::{CertificateParams, DnType, Issuer, KeyPair};
    use time::Duration;

    fn signed_by(ca: &Authority, cn: &str) -> String {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::default();
        p.distinguished_name.push(DnType::CommonName, cn);
        let k = KeyPair::from_pem(&ca.key_pem()).unwrap();
        let issuer = Issuer::from_ca_cert_pem(ca.cert_pem(), k).unwrap();
        p.signed_by(&key, &issuer).unwrap().pem()
    }

    #[test]
    fn own_cas_are_accepted_only_with_proof_of_possession() {
        let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
        let theirs = Authority::generate("factory CA", Duration::days(100)).unwrap();
        let other = Authority::generate("someone else", Duration::days(100)).unwrap();
        let good = signed_by(&theirs, "CODE-1234");
        assert!(check_own_ca(theirs.cert_pem(), &good, "CODE-1234", now).is_ok());
        assert!(matches!(
            check_own_ca(theirs.cert_pem(), &good, "CODE-9999", now),
            Err(PkiError::Verification(_))
        ));
        let forged = signed_by(&other, "CODE-1234");
        assert!(matches!(
            check_own_ca(theirs.cert_pem(), &forged, "CODE-1234", now),
            Err(PkiError::Verification(_))
        ));
        // A leaf is not a CA.
        assert!(matches!(
            check_own_ca(&good, &good, "CODE-1234", now),
            Err(PkiError::NotCa)
        ));
    }
}
