//! The platform certificate authority and what it issues.
//!
//! The root CA is an ECDSA P-256 key with a ten-year certificate, allowed one
//! level of intermediates below it (the per-tenant CAs to come). Its key is
//! stored wrapped (see [`crate::envelope`]); this module only deals in PEM.

use std::net::IpAddr;

pub use rcgen::RevocationReason;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use zeroize::Zeroizing;

use crate::PkiError;

/// A CA: its certificate and its signing key.
pub struct Authority {
    cert_pem: String,
    key: KeyPair,
}

/// One entry of a CRL.
pub struct Revoked {
    /// Lower-case hex, as [`crate::inspect::CertInfo::serial`].
    pub serial: String,
    pub at_ms: i64,
    pub reason: RevocationReason,
}

/// A certificate with its new private key.
pub struct Issued {
    pub cert_pem: String,
    pub key_pem: Zeroizing<String>,
    pub not_after: OffsetDateTime,
}

impl Authority {
    /// A new self-signed root CA named `common_name`.
    pub fn generate(common_name: &str, validity: Duration) -> Result<Self, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(1));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity;
        let cert = params.self_signed(&key)?;
        Ok(Self {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CA from its stored certificate and key.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Self, PkiError> {
        let key = KeyPair::from_pem(key_pem)?;
        // Parsing checks the certificate is well formed before it is trusted.
        Issuer::from_ca_cert_pem(cert_pem, &key)?;
        Ok(Self {
            cert_pem: cert_pem.to_owned(),
            key,
        })
    }

    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// The signer rcgen needs, from this CA's certificate and key.
    pub(crate) fn issuer(&self) -> Result<Issuer<'_, &KeyPair>, PkiError> {
        Ok(Issuer::from_ca_cert_pem(&self.cert_pem, &self.key)?)
    }

    /// A tenant's intermediate CA: signs device certificates only (path
    /// length 0), named after the tenant.
    pub fn issue_tenant_ca(&self, tenant: &str, validity: Duration) -> Result<Authority, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&format!("Moat tenant CA {tenant}"));
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Authority {
            cert_pem: cert.pem(),
            key,
        })
    }

    /// A CRL (DER) listing `revoked`, signed by this CA, valid until
    /// `next_update`.
    pub fn crl(
        &self,
        revoked: &[Revoked],
        number: u64,
        next_update: Duration,
    ) -> Result<Vec<u8>, PkiError> {
        let now = OffsetDateTime::now_utc();
        let revoked_certs = revoked
            .iter()
            .map(|r| {
                let serial = hex::decode(&r.serial)
                    .map_err(|_| PkiError::Pem(format!("bad serial {}", r.serial)))?;
                Ok(RevokedCertParams {
                    serial_number: SerialNumber::from_slice(&serial),
                    revocation_time: OffsetDateTime::from_unix_timestamp(r.at_ms.div_euclid(1000))
                        .unwrap_or(now),
                    reason_code: Some(r.reason),
                    invalidity_date: None,
                })
            })
            .collect::<Result<Vec<_>, PkiError>>()?;
        let params = CertificateRevocationListParams {
            this_update: now,
            next_update: now + next_update,
            crl_number: SerialNumber::from(number),
            issuing_distribution_point: None,
            revoked_certs,
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        Ok(params.signed_by(&self.issuer()?)?.der().to_vec())
    }

    pub fn key_pem(&self) -> Zeroizing<String> {
        Zeroizing::new(self.key.serialize_pem())
    }

    /// A TLS server certificate for `names` (DNS names or IP addresses).
    pub fn issue_server(&self, names: &[String], validity: Duration) -> Result<Issued, PkiError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(names.first().map_or("moat", String::as_str));
        params.subject_alt_names = names
            .iter()
            .map(|n| match n.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) if is_dns_name(n) => n
                    .clone()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(PkiError::from),
                Err(_) => Err(PkiError::ServerName(n.clone())),
            })
            .collect::<Result<_, _>>()?;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.serial_number = Some(random_serial());
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + validity;
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Zeroizing::new(key.serialize_pem()),
            not_after: params.not_after,
        })
    }
}

/// A host name as RFC 1123 allows: dot-separated labels of letters, digits
/// and inner hyphens, at most 253 characters.
pub fn is_dns_name(n: &str) -> bool {
    n.len() <= 253
        && n.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Moat");
    dn.push(DnType::CommonName, common_name);
    dn
}

pub(crate) fn random_serial() -> SerialNumber {
    use rand::RngCore;
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[0] &= 0x7f; // keep it positive
    SerialNumber::from_slice(&b)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stored_ca_issues_server_certificates() {
        let ca = Authority::generate("Moat test CA", Duration::days(3650)).unwrap();
        let again = Authority::from_pem(ca.cert_pem(), &ca.key_pem()).unwrap();
        let issued = again
            .issue_server(
                &["localhost".into(), "127.0.0.1".into()],
                Duration::days(365),
            )
            .unwrap();
        assert!(issued.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(issued.not_after > OffsetDateTime::now_utc() + Duration::days(364));
    }

    #[test]
    fn crls_list_revoked_serials_and_are_signed_by_the_ca() {
        use x509_parser::prelude::FromDer;
        let root = Authority::generate("root", Duration::days(10)).unwrap();
        let ca = root.issue_tenant_ca("acme", Duration::days(5)).unwrap();
        let revoked = [Revoked {
            serial: "0a1b2c".into(),
            at_ms: 1_700_000_000_000,
            reason: RevocationReason::KeyCompromise,
        }];
        let der = ca.crl(&revoked, 7, Duration::days(1)).unwrap();
        let (_, crl) =
            x509_parser::revocation_list::CertificateRevocationList::from_der(&der).unwrap();
        assert_eq!(crl.iter_revoked_certificates().count(), 1);
        assert_eq!(
            crl.iter_revoked_certificates().next().unwrap().raw_serial(),
            &[0x0a, 0x1b, 0x2c]
        );
        let ca_cert = crate::inspect::cert_info_pem(ca.cert_pem()).unwrap();
        let (_, ca_x) = x509_parser::certificate::X509Certificate::from_der(&ca_cert.der).unwrap();
        crl.verify_signature(ca_x.public_key()).unwrap();
    }

    #[test]
    fn a_bad_name_is_refused() {
        let ca = Authority::generate("Moat test CA", Duration::days(1)).unwrap();
        assert!(
            ca.issue_server(&["bad name with spaces\u{0}".into()], Duration::days(1))
                .is_err()
        );
    }
}
