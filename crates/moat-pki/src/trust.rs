//! Which client certificates are devices: the trust anchors (every tenant's
//! CA) and the certificate index (fingerprint → device), and the rustls
//! client-certificate verifier that every listener shares.
//!
//! The verifier runs inside the TLS handshake, which is synchronous, so it
//! reads an in-memory index rather than the store. The index is loaded at
//! start and kept current by whoever changes certificates, CAs or device
//! states (the API), so a revocation is seen by the very next handshake.
//! Refusals are rustls certificate errors, hence TLS alerts; listeners turn
//! them into audit events with [`refusal_reason`].

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, TrustAnchor, UnixTime};
use uuid::Uuid;

use crate::inspect::sha256;

/// What a CA does with certificates it signed that Moat does not know yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JustInTime {
    /// Refuse them (platform CAs, and tenants' CAs by default).
    Off,
    /// Register the device as `pending`, for an operator to approve.
    Pending,
    /// Register the device as `active` at once.
    Activate,
}

/// A CA whose device certificates are trusted.
#[derive(Clone, Debug)]
pub struct Anchor {
    pub ca_id: Uuid,
    pub tenant_id: Uuid,
    pub cert: CertificateDer<'static>,
    pub jit: JustInTime,
}

/// A certificate in the index.
#[derive(Clone, Debug)]
pub struct Known {
    pub device_id: Uuid,
    pub tenant_id: Uuid,
    /// From this time (Unix ms) on, the certificate is refused: a revocation,
    /// or the end of the overlap after a renewal.
    pub revoked_at: Option<i64>,
}

/// Who a verified certificate belongs to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Device {
        device_id: Uuid,
        tenant_id: Uuid,
        fingerprint: [u8; 32],
    },
    /// Chains to a CA with just-in-time registration; not registered yet.
    Unregistered {
        ca_id: Uuid,
        tenant_id: Uuid,
        activate: bool,
        fingerprint: [u8; 32],
    },
}

/// Why a certificate was refused, beyond what rustls' own errors say.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    #[error("not a device certificate: it chains to a known CA but no device holds it")]
    NotADevice,
    #[error("the device is quarantined")]
    Quarantined,
    #[error("the device is revoked")]
    DeviceRevoked,
    #[error("the certificate belongs to another tenant than its CA")]
    TenantMismatch,
}

#[derive(Default)]
struct Inner {
    /// Parallel vectors: `webpki[i]` is `anchors[i]` as webpki takes it, so
    /// a handshake passes the slice as it is, without copying per check.
    anchors: Vec<Anchor>,
    webpki: Vec<TrustAnchor<'static>>,
    certs: HashMap<[u8; 32], Known>,
    quarantined: HashSet<Uuid>,
    revoked: HashSet<Uuid>,
}

impl Inner {
    fn remove_anchor(&mut self, ca_id: Uuid) {
        if let Some(i) = self.anchors.iter().position(|a| a.ca_id == ca_id) {
            self.anchors.remove(i);
            self.webpki.remove(i);
        }
    }
}

/// The anchors and the index. Cheap to read concurrently; writes are rare.
#[derive(Default)]
pub struct TrustIndex {
    inner: RwLock<Inner>,
}

/// A device's standing, as the verifier needs it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    Good,
    Quarantined,
    Revoked,
}

impl TrustIndex {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        // A panic while holding the lock cannot leave the maps half-written
        // (each write is one insert or remove), so a poisoned lock is usable.
        self.inner
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Adds or replaces (by CA id) a trust anchor.
    pub fn put_anchor(&self, anchor: Anchor) -> Result<(), crate::PkiError> {
        let webpki = webpki::anchor_from_trusted_cert(&anchor.cert)
            .map_err(|e| crate::PkiError::Pem(format!("not a usable CA certificate: {e:?}")))?
            .to_owned();
        let mut w = self.write();
        w.remove_anchor(anchor.ca_id);
        w.anchors.push(anchor);
        w.webpki.push(webpki);
        Ok(())
    }

    pub fn remove_anchor(&self, ca_id: Uuid) {
        self.write().remove_anchor(ca_id);
    }

    pub fn put_cert(&self, fingerprint: [u8; 32], known: Known) {
        self.write().certs.insert(fingerprint, known);
    }

    pub fn remove_cert(&self, fingerprint: &[u8; 32]) {
        self.write().certs.remove(fingerprint);
    }

    pub fn set_standing(&self, device: Uuid, standing: Standing) {
        let mut w = self.write();
        w.quarantined.remove(&device);
        w.revoked.remove(&device);
        match standing {
            Standing::Good => {}
            Standing::Quarantined => {
                w.quarantined.insert(device);
            }
            Standing::Revoked => {
                w.revoked.insert(device);
            }
        }
    }

    /// The indexed certificate with this fingerprint.
    pub fn known(&self, fingerprint: &[u8; 32]) -> Option<Known> {
        self.read().certs.get(fingerprint).cloned()
    }

    /// The number of indexed certificates (for metrics and tests).
    pub fn len(&self) -> usize {
        self.read().certs.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks a certificate chain at `now` against the anchors alone
    /// (signatures, validity, client-auth usage), not the index: for
    /// certificates brought to Moat before any device presents them
    /// (factory import). Returns the CA it chains to.
    pub fn chain_anchor(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<(Uuid, Uuid), rustls::Error> {
        let inner = self.read();
        let anchor = verify_chain(&inner, end_entity, intermediates, now, provider)?;
        Ok((anchor.ca_id, anchor.tenant_id))
    }

    /// Checks a client's certificate chain at `now`: signature chain, validity
    /// and client-auth usage against the tenants' CAs, then the index.
    pub fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        provider: &CryptoProvider,
    ) -> Result<Verdict, rustls::Error> {
        let inner = self.read();
        let anchor = verify_chain(&inner, end_entity, intermediates, now, provider)?;
        let fingerprint = sha256(end_entity.as_ref());
        // `now` has whole seconds: a revocation counts from the start of its
        // second, never later than it was made.
        let now_s = i64::try_from(now.as_secs()).unwrap_or(i64::MAX);
        match inner.certs.get(&fingerprint) {
            Some(k) => {
                if k.tenant_id != anchor.tenant_id {
                    return Err(other(Refusal::TenantMismatch));
                }
                if k.revoked_at.is_some_and(|at| at.div_euclid(1000) <= now_s) {
                    return Err(rustls::Error::InvalidCertificate(CertificateError::Revoked));
                }
                if inner.revoked.contains(&k.device_id) {
                    return Err(other(Refusal::DeviceRevoked));
                }
                if inner.quarantined.contains(&k.device_id) {
                    return Err(other(Refusal::Quarantined));
                }
                Ok(Verdict::Device {
                    device_id: k.device_id,
                    tenant_id: k.tenant_id,
                    fingerprint,
                })
            }
            None => match anchor.jit {
                JustInTime::Off => Err(other(Refusal::NotADevice)),
                jit => Ok(Verdict::Unregistered {
                    ca_id: anchor.ca_id,
                    tenant_id: anchor.tenant_id,
                    activate: jit == JustInTime::Activate,
                    fingerprint,
                }),
            },
        }
    }
}

/// The anchor `end_entity` chains to, checked by webpki.
fn verify_chain<'a>(
    inner: &'a Inner,
    end_entity: &CertificateDer<'_>,
    intermediates: &[CertificateDer<'_>],
    now: UnixTime,
    provider: &CryptoProvider,
) -> Result<&'a Anchor, rustls::Error> {
    let ee = webpki::EndEntityCert::try_from(end_entity).map_err(|e| cert_error(&e))?;
    let path = ee
        .verify_for_usage(
            provider.signature_verification_algorithms.all,
            &inner.webpki,
            intermediates,
            now,
            webpki::KeyUsage::client_auth(),
            None,
            None,
        )
        .map_err(|e| cert_error(&e))?;
    let used = path.anchor();
    let used = inner
        .webpki
        .iter()
        .position(|w| std::ptr::eq(w, used))
        .expect("webpki returns one of the anchors it was given");
    Ok(&inner.anchors[used])
}

fn other(r: Refusal) -> rustls::Error {
    rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(r))))
}

fn cert_error(e: &webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let ce = match e {
        E::CertExpired { .. } => CertificateError::Expired,
        E::CertNotValidYet { .. } => CertificateError::NotValidYet,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::BadDer | E::BadDerTime => CertificateError::BadEncoding,
        E::CertRevoked => CertificateError::Revoked,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        E::CaUsedAsEndEntity => CertificateError::InvalidPurpose,
        _ => CertificateError::ApplicationVerificationFailure,
    };
    rustls::Error::InvalidCertificate(ce)
}

/// A short, stable reason for an audit event from a failed handshake's error.
pub fn refusal_reason(e: &rustls::Error) -> Option<String> {
    let rustls::Error::InvalidCertificate(ce) = e else {
        return None;
    };
    Some(match ce {
        CertificateError::Expired | CertificateError::ExpiredContext { .. } => "expired".into(),
        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
            "not yet valid".into()
        }
        CertificateError::UnknownIssuer => {
            "unknown issuer (self-signed, or not a tenant's CA)".into()
        }
        CertificateError::BadSignature => {
            "bad signature (a key that does not match the certificate)".into()
        }
        CertificateError::Revoked => "revoked".into(),
        CertificateError::InvalidPurpose | CertificateError::InvalidPurposeContext { .. } => {
            "not for client authentication".into()
        }
        CertificateError::BadEncoding => "malformed".into(),
        CertificateError::Other(OtherError(inner)) => inner.to_string(),
        other => format!("{other:?}"),
    })
}

/// The client-certificate verifier for every listener: optional on HTTPS
/// (users and apps come without certificates), mandatory where only devices
/// connect.
pub struct DeviceVerifier {
    index: Arc<TrustIndex>,
    provider: Arc<CryptoProvider>,
    mandatory: bool,
}

impl std::fmt::Debug for DeviceVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceVerifier")
            .field("mandatory", &self.mandatory)
            .finish_non_exhaustive()
    }
}

impl DeviceVerifier {
    pub fn new(index: Arc<TrustIndex>, mandatory: bool) -> Arc<Self> {
        Arc::new(Self {
            index,
            provider: crate::tls::provider(),
            mandatory,
        })
    }
}

impl ClientCertVerifier for DeviceVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        self.mandatory
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // One name per tenant would make every handshake grow with the
        // platform; devices know which certificate to send.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.index
            .check(end_entity, intermediates, now, &self.provider)?;
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ca::Authority;
    use crate::device::{KeyAlgorithm, check_csr};
    use crate::tls::certs_from_pem;
    use time::Duration;

    fn now() -> UnixTime {
        UnixTime::now()
    }

    struct World {
        index: Arc<TrustIndex>,
        provider: Arc<CryptoProvider>,
        ca: Authority,
        ca_id: Uuid,
        tenant: Uuid,
    }

    fn world() -> World {
        let root = Authority::generate("root", Duration::days(10)).unwrap();
        let ca = root.issue_tenant_ca("acme", Duration::days(5)).unwrap();
        let index = TrustIndex::new();
        let (ca_id, tenant) = (Uuid::now_v7(), Uuid::now_v7());
        let cert = certs_from_pem(ca.cert_pem()).unwrap().remove(0);
        index
            .put_anchor(Anchor {
                ca_id,
                tenant_id: tenant,
                cert,
                jit: JustInTime::Off,
            })
            .unwrap();
        World {
            index,
            provider: crate::tls::provider(),
            ca,
            ca_id,
            tenant,
        }
    }

    fn leaf(pem: &str) -> CertificateDer<'static> {
        certs_from_pem(pem).unwrap().remove(0)
    }

    fn reason(r: Result<Verdict, rustls::Error>) -> String {
        refusal_reason(&r.expect_err("refused")).unwrap()
    }

    #[test]
    fn known_certificates_map_to_their_device_until_revoked_or_quarantined() {
        let w = world();
        let device = Uuid::now_v7();
        let (cert, _) =
            w.ca.generate_device(
                &device.to_string(),
                KeyAlgorithm::EcdsaP256,
                Duration::days(1),
            )
            .unwrap();
        let der = leaf(&cert.cert_pem);
        assert_eq!(
            reason(w.index.check(&der, &[], now(), &w.provider)),
            Refusal::NotADevice.to_string()
        );
        let fp = sha256(der.as_ref());
        w.index.put_cert(
            fp,
            Known {
                device_id: device,
                tenant_id: w.tenant,
                revoked_at: None,
            },
        );
        let v = w.index.check(&der, &[], now(), &w.provider).unwrap();
        assert_eq!(
            v,
            Verdict::Device {
                device_id: device,
                tenant_id: w.tenant,
                fingerprint: fp
            }
        );
        w.index.set_standing(device, Standing::Quarantined);
        assert_eq!(
            reason(w.index.check(&der, &[], now(), &w.provider)),
            "the device is quarantined"
        );
        w.index.set_standing(device, Standing::Good);
        // Revocation in the future (a renewal's overlap) still admits.
        let later = UnixTime::now().as_secs() as i64 * 1000 + 60_000;
        w.index.put_cert(
            fp,
            Known {
                device_id: device,
                tenant_id: w.tenant,
                revoked_at: Some(later),
            },
        );
        assert!(w.index.check(&der, &[], now(), &w.provider).is_ok());
        w.index.put_cert(
            fp,
            Known {
                device_id: device,
                tenant_id: w.tenant,
                revoked_at: Some(0),
            },
        );
        assert_eq!(
            reason(w.index.check(&der, &[], now(), &w.provider)),
            "revoked"
        );
    }

    #[test]
    fn expired_foreign_and_self_signed_certificates_are_refused() {
        let w = world();
        let (cert, _) =
            w.ca.generate_device("d", KeyAlgorithm::EcdsaP256, Duration::days(1))
                .unwrap();
        let der = leaf(&cert.cert_pem);
        let in_two_days = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() + 2 * 86_400,
        ));
        assert_eq!(
            reason(w.index.check(&der, &[], in_two_days, &w.provider)),
            "expired"
        );
        let a_year_ago = UnixTime::since_unix_epoch(std::time::Duration::from_secs(
            UnixTime::now().as_secs() - 365 * 86_400,
        ));
        assert_eq!(
            reason(w.index.check(&der, &[], a_year_ago, &w.provider)),
            "not yet valid"
        );
        let stranger = Authority::generate("stranger", Duration::days(10)).unwrap();
        let (theirs, _) = stranger
            .generate_device("d", KeyAlgorithm::EcdsaP256, Duration::days(1))
            .unwrap();
        assert!(
            reason(
                w.index
                    .check(&leaf(&theirs.cert_pem), &[], now(), &w.provider)
            )
            .starts_with("unknown issuer")
        );
        // A CA certificate is not a device's.
        assert!(
            w.index
                .check(&leaf(w.ca.cert_pem()), &[], now(), &w.provider)
                .is_err()
        );
    }

    #[test]
    fn a_just_in_time_ca_admits_unknown_certificates_as_unregistered() {
        let w = world();
        let cert = certs_from_pem(w.ca.cert_pem()).unwrap().remove(0);
        w.index
            .put_anchor(Anchor {
                ca_id: w.ca_id,
                tenant_id: w.tenant,
                cert,
                jit: JustInTime::Pending,
            })
            .unwrap();
        let csr = {
            let key = rcgen::KeyPair::generate().unwrap();
            rcgen::CertificateParams::default()
                .serialize_request(&key)
                .unwrap()
                .pem()
                .unwrap()
        };
        let signed =
            w.ca.sign_device_csr(check_csr(csr.as_bytes()).unwrap(), "x", Duration::days(1))
                .unwrap();
        match w
            .index
            .check(&leaf(&signed.cert_pem), &[], now(), &w.provider)
            .unwrap()
        {
            Verdict::Unregistered {
                ca_id, activate, ..
            } => assert!(ca_id == w.ca_id && !activate),
            v => panic!("{v:?}"),
        }
        w.index.remove_anchor(w.ca_id);
        assert!(
            w.index
                .check(&leaf(&signed.cert_pem), &[], now(), &w.provider)
                .is_err()
        );
    }
}
