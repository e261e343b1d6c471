//! The device-identity service the API and every listener share: the root
//! CA, the tenants' CAs (keys unwrapped on first use), the trust index the
//! TLS verifier reads, the server certificate, and what happens when a
//! device's standing changes (index updated, live sessions cut).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, RwLock};

use base64::Engine;
use chrono::{DateTime, Utc};
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::pki::{Authority, AuthorityKind, Certificate, CertificateOrigin, JitMode};
use moat_core::sessions::{CutReason, SessionRegistry};
use moat_core::store::{Change, Store, StoreError};
use moat_core::{AuthorityId, CertificateId, Device, DeviceId, DeviceState, TenantId};
use moat_pki::ca::Authority as Ca;
use moat_pki::inspect::{self, CertInfo};
use moat_pki::resolver::ServerCert;
use moat_pki::trust::{Anchor, JustInTime, Known, Standing, TrustIndex, Verdict};
use moat_pki::{PkiError, envelope};
use rustls_pki_types::CertificateDer;
use serde::{Deserialize, Serialize};

const ROOT_CERT: &str = "pki/root-ca.crt";
const ROOT_KEY: &str = "pki/root-ca.key";
const SERVER: &str = "pki/server";

/// Lifetimes and windows; the binary fills them from its configuration.
#[derive(Clone, Debug)]
pub struct PkiSettings {
    pub device_cert_validity: chrono::Duration,
    /// How long a renewed certificate or rotated key keeps working.
    pub rotation_overlap: chrono::Duration,
    pub tenant_ca_validity: chrono::Duration,
    pub server_cert_validity: chrono::Duration,
    /// Renew the server certificate when it has less than this left.
    pub server_renew_before: chrono::Duration,
    pub server_names: Vec<String>,
}

impl Default for PkiSettings {
    fn default() -> Self {
        Self {
            device_cert_validity: chrono::Duration::days(365),
            rotation_overlap: chrono::Duration::days(7),
            tenant_ca_validity: chrono::Duration::days(5 * 365),
            server_cert_validity: chrono::Duration::days(365),
            server_renew_before: chrono::Duration::days(30),
            server_names: vec!["localhost".into(), "127.0.0.1".into(), "::1".into()],
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}

/// The stored server certificate, its wrapped key and what it was made for.
#[derive(Serialize, Deserialize)]
struct StoredServerCert {
    cert_pem: String,
    key_wrapped: String,
    names: Vec<String>,
    not_after: i64,
}

pub struct Pki {
    store: Arc<dyn Store>,
    sessions: Arc<SessionRegistry>,
    wrap_key: [u8; 32],
    /// Keys the hashes of claim codes.
    claim_key: [u8; 32],
    root: Ca,
    /// Tenant CAs with their keys, by CA id, unwrapped on first use.
    signers: RwLock<HashMap<AuthorityId, Arc<Ca>>>,
    /// Serializes the creation of tenant CAs, so a tenant gets one.
    creating: tokio::sync::Mutex<()>,
    pub index: Arc<TrustIndex>,
    pub server_cert: Arc<ServerCert>,
    pub settings: PkiSettings,
}

fn secret_name(ca: AuthorityId) -> String {
    format!("pki/ca/{ca}.key")
}

fn to_chrono(ms: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

fn time_dur(d: chrono::Duration) -> time::Duration {
    time::Duration::seconds(d.num_seconds())
}

fn jit(mode: JitMode, kind: AuthorityKind) -> JustInTime {
    match (kind, mode) {
        (AuthorityKind::Platform, _) | (_, JitMode::Off) => JustInTime::Off,
        (_, JitMode::Pending) => JustInTime::Pending,
        (_, JitMode::Activate) => JustInTime::Activate,
    }
}

impl Pki {
    /// Loads (or on first start creates) the root CA and the server
    /// certificate, and builds the trust index from the store.
    pub async fn open(
        store: Arc<dyn Store>,
        sessions: Arc<SessionRegistry>,
        wrap_key: [u8; 32],
        settings: PkiSettings,
    ) -> Result<Arc<Self>, IdentityError> {
        let root = match (
            store.secret(ROOT_CERT).await?,
            store.secret(ROOT_KEY).await?,
        ) {
            (Some(cert), Some(key)) => {
                let key = envelope::unwrap(&wrap_key, ROOT_KEY, &key)?;
                let cert =
                    String::from_utf8(cert).map_err(|_| PkiError::Pem("stored root CA".into()))?;
                let key = String::from_utf8(key)
                    .map_err(|_| PkiError::Pem("stored root CA key".into()))?;
                Ca::from_pem(&cert, &key)?
            }
            _ => {
                let ca = Ca::generate("Moat Root CA", time::Duration::days(3650))?;
                let record =
                    AuditRecord::new("system", "pki.ca.create", "ca:root", Outcome::Success);
                let changes = vec![
                    Change::PutSecret {
                        name: ROOT_CERT.into(),
                        value: ca.cert_pem().as_bytes().to_vec(),
                    },
                    Change::PutSecret {
                        name: ROOT_KEY.into(),
                        value: envelope::wrap(&wrap_key, ROOT_KEY, ca.key_pem().as_bytes()),
                    },
                ];
                store.apply(changes, Some(record)).await?;
                tracing::info!("created the platform root CA");
                ca
            }
        };
        let (chain, key) =
            Self::load_or_issue_server_cert(&*store, &root, &wrap_key, &settings, false).await?;
        // A subkey for claim codes: HMAC of a label under the wrapping key,
        // so neither key can stand in for the other.
        let claim_key = moat_core::pki::claim::derive_key(&wrap_key, "moat/v1/claim-codes");
        let pki = Arc::new(Self {
            store,
            sessions,
            wrap_key,
            claim_key,
            root,
            signers: RwLock::new(HashMap::new()),
            creating: tokio::sync::Mutex::new(()),
            index: TrustIndex::new(),
            server_cert: ServerCert::new(&chain, &key)?,
            settings,
        });
        pki.reload_index().await?;
        Ok(pki)
    }

    /// What the store keeps of a (normalized) claim code.
    pub fn claim_code_hash(&self, normalized: &str) -> String {
        moat_core::pki::claim::hash(&self.claim_key, normalized)
    }

    pub fn root_pem(&self) -> &str {
        self.root.cert_pem()
    }

    /// Checks a client certificate chain as the TLS listeners' verifier
    /// does (trust anchors, validity, revocation, the device's standing):
    /// for DTLS, where OpenSSL only proves the client holds the key.
    pub fn check_client_chain(
        &self,
        leaf: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
    ) -> Result<(), rustls::Error> {
        self.index
            .check(
                leaf,
                intermediates,
                rustls_pki_types::UnixTime::now(),
                &moat_pki::tls::provider(),
            )
            .map(drop)
    }

    /// The server's certificate chain and private key (PEM), for listeners
    /// that cannot use the rustls resolver (DTLS).
    pub async fn server_identity_pem(&self) -> Result<(String, String), IdentityError> {
        Self::load_or_issue_server_cert(
            &*self.store,
            &self.root,
            &self.wrap_key,
            &self.settings,
            false,
        )
        .await
    }

    /// Seals a device key's secret for DTLS-PSK, bound to the key's id.
    pub fn seal_device_secret(&self, key: moat_core::DeviceKeyId, secret: &[u8]) -> Vec<u8> {
        envelope::wrap(&self.wrap_key, &device_secret_name(key), secret)
    }

    /// Opens what [`seal_device_secret`](Self::seal_device_secret) sealed
    /// for the same key.
    pub fn open_device_secret(
        &self,
        key: moat_core::DeviceKeyId,
        sealed: &[u8],
    ) -> Result<Vec<u8>, PkiError> {
        envelope::unwrap(&self.wrap_key, &device_secret_name(key), sealed)
    }

    pub fn root(&self) -> &Ca {
        &self.root
    }

    /// Rebuilds the trust index from the store.
    pub async fn reload_index(&self) -> Result<(), IdentityError> {
        for a in self.store.all_authorities().await? {
            self.put_anchor(&a)?;
        }
        let now = Utc::now();
        let certs = self.store.live_certificates(now).await?;
        for c in &certs {
            self.index_cert(c);
        }
        for (d, state) in self.store.blocked_devices().await? {
            self.index.set_standing(d.0, standing(state));
        }
        tracing::info!(certificates = certs.len(), "trust index loaded");
        Ok(())
    }

    pub fn put_anchor(&self, a: &Authority) -> Result<(), IdentityError> {
        let cert = moat_pki::tls::certs_from_pem(&a.cert_pem)?.remove(0);
        self.index.put_anchor(Anchor {
            ca_id: a.id.0,
            tenant_id: a.tenant_id.0,
            cert,
            jit: jit(a.jit, a.kind),
        })?;
        Ok(())
    }

    /// Checks a device certificate brought in from outside (a factory's):
    /// `chain_pem` holds it, then any intermediates. It must chain to one of
    /// `tenant`'s CAs, be valid now, allow client authentication and not be a
    /// CA. Returns its facts and the CA; the error says why not, for the user.
    pub fn check_imported(
        &self,
        chain_pem: &str,
        tenant: TenantId,
    ) -> Result<(CertInfo, AuthorityId), String> {
        let certs = moat_pki::tls::certs_from_pem(chain_pem).map_err(|e| e.to_string())?;
        let info = inspect::cert_info_der(certs[0].as_ref()).map_err(|e| e.to_string())?;
        if info.is_ca {
            return Err("a CA certificate, not a device's".into());
        }
        let provider = moat_pki::tls::provider();
        let (ca, owner) = self
            .index
            .chain_anchor(
                &certs[0],
                &certs[1..],
                rustls_pki_types::UnixTime::now(),
                &provider,
            )
            .map_err(|e| {
                moat_pki::trust::refusal_reason(&e)
                    .map_or_else(|| format!("refused: {e}"), |r| format!("refused: {r}"))
            })?;
        if owner != tenant.0 {
            return Err("it does not chain to a CA of this tenant".into());
        }
        Ok((info, AuthorityId(ca)))
    }

    pub fn index_cert(&self, c: &Certificate) {
        let fp = hex::decode(&c.fingerprint)
            .ok()
            .and_then(|v| <[u8; 32]>::try_from(v.as_slice()).ok());
        if let Some(fp) = fp {
            self.index.put_cert(
                fp,
                Known {
                    device_id: c.device_id.0,
                    tenant_id: c.tenant_id.0,
                    revoked_at: c.revoked_at.map(|r| r.timestamp_millis()),
                },
            );
        }
    }

    /// Applies a device's new state to the index and cuts its sessions when
    /// it may no longer connect.
    pub fn device_state_changed(&self, device: DeviceId, state: DeviceState) {
        self.index.set_standing(device.0, standing(state));
        let reason = match state {
            DeviceState::Revoked => CutReason::Revoked,
            DeviceState::Quarantined => CutReason::Quarantined,
            DeviceState::Pending => CutReason::Withdrawn,
            DeviceState::Active => return,
        };
        let n = self.sessions.cut(device, reason);
        if n > 0 {
            tracing::info!(device = %device, sessions = n, ?reason, "cut device sessions");
        }
    }

    /// Re-reads a device's certificates into the index (after revocations)
    /// and cuts its sessions, which reconnect only with a good certificate.
    pub async fn device_certificates_changed(
        &self,
        device: DeviceId,
        cut: bool,
    ) -> Result<(), IdentityError> {
        for c in self.store.device_certificates(device).await? {
            self.index_cert(&c);
        }
        if cut {
            self.sessions.cut(device, CutReason::Revoked);
        }
        Ok(())
    }

    /// The platform CA of a tenant, created on first use for tenants older
    /// than device PKI.
    pub async fn tenant_ca(
        &self,
        tenant: TenantId,
        tenant_name: &str,
    ) -> Result<(Authority, Arc<Ca>), IdentityError> {
        if let Some(found) = self.platform_ca_of(tenant).await? {
            return Ok(found);
        }
        let _guard = self.creating.lock().await;
        if let Some(found) = self.platform_ca_of(tenant).await? {
            return Ok(found);
        }
        let (changes, authority, ca) = self.new_tenant_ca(tenant, tenant_name)?;
        let record = AuditRecord::new(
            "system",
            "pki.ca.create",
            format!("ca:{}", authority.id),
            Outcome::Success,
        )
        .tenant(tenant);
        self.store.apply(changes, Some(record)).await?;
        self.adopt(&authority, ca.clone())?;
        Ok((authority, ca))
    }

    async fn platform_ca_of(
        &self,
        tenant: TenantId,
    ) -> Result<Option<(Authority, Arc<Ca>)>, IdentityError> {
        let Some(a) = self
            .store
            .authorities(tenant)
            .await?
            .into_iter()
            .rev()
            .find(|a| a.kind == AuthorityKind::Platform)
        else {
            return Ok(None);
        };
        let ca = self.signer(&a).await?;
        Ok(Some((a, ca)))
    }

    /// The signing CA behind a platform authority.
    pub async fn signer(&self, a: &Authority) -> Result<Arc<Ca>, IdentityError> {
        if let Some(ca) = self
            .signers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(&a.id)
        {
            return Ok(ca.clone());
        }
        let name = secret_name(a.id);
        let wrapped = self
            .store
            .secret(&name)
            .await?
            .ok_or(StoreError::NotFound("CA key"))?;
        let key = envelope::unwrap(&self.wrap_key, &name, &wrapped)?;
        let key = String::from_utf8(key).map_err(|_| PkiError::Pem("stored CA key".into()))?;
        let ca = Arc::new(Ca::from_pem(&a.cert_pem, &key)?);
        self.signers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(a.id, ca.clone());
        Ok(ca)
    }

    /// The changes that create a tenant's CA (to commit with the tenant),
    /// and the CA; call [`Pki::adopt`] once they are committed.
    pub fn new_tenant_ca(
        &self,
        tenant: TenantId,
        tenant_name: &str,
    ) -> Result<(Vec<Change>, Authority, Arc<Ca>), IdentityError> {
        let ca = self
            .root
            .issue_tenant_ca(tenant_name, time_dur(self.settings.tenant_ca_validity))?;
        let info = inspect::cert_info_pem(ca.cert_pem())?;
        let authority = Authority {
            id: AuthorityId::new(),
            tenant_id: tenant,
            kind: AuthorityKind::Platform,
            subject: info.subject,
            fingerprint: info.fingerprint,
            not_after: to_chrono(info.not_after),
            jit: JitMode::Off,
            cert_pem: ca.cert_pem().to_owned(),
            created_at: Utc::now(),
        };
        let name = secret_name(authority.id);
        let changes = vec![
            Change::PutSecret {
                value: envelope::wrap(&self.wrap_key, &name, ca.key_pem().as_bytes()),
                name,
            },
            Change::InsertAuthority(authority.clone()),
        ];
        Ok((changes, authority, Arc::new(ca)))
    }

    /// Starts trusting a committed tenant CA.
    pub fn adopt(&self, a: &Authority, ca: Arc<Ca>) -> Result<(), IdentityError> {
        self.put_anchor(a)?;
        self.signers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(a.id, ca);
        Ok(())
    }

    /// A certificate record for `info`, issued to `device`.
    pub fn record(
        &self,
        info: &CertInfo,
        device: &Device,
        authority: Option<AuthorityId>,
        origin: CertificateOrigin,
        cert_pem: &str,
    ) -> Certificate {
        Certificate {
            id: CertificateId::new(),
            tenant_id: device.tenant_id,
            device_id: device.id,
            authority_id: authority,
            serial: info.serial.clone(),
            fingerprint: info.fingerprint.clone(),
            subject: info.subject.clone(),
            key_algorithm: info.key_algorithm.clone(),
            not_before: to_chrono(info.not_before),
            not_after: to_chrono(info.not_after),
            origin,
            created_at: Utc::now(),
            revoked_at: None,
            revocation_reason: None,
            cert_pem: cert_pem.to_owned(),
        }
    }

    /// Who the client certificate of a finished handshake belongs to;
    /// registers a device just in time when its CA says so. `None`: not a
    /// device (which the verifier should already have refused).
    pub async fn identify(
        &self,
        leaf: &CertificateDer<'static>,
        peer: SocketAddr,
    ) -> Result<Option<(DeviceId, String)>, IdentityError> {
        // The verifier has just checked this certificate: a known one needs
        // only its device; the full check runs again only for unknown ones.
        let fingerprint = inspect::sha256(leaf.as_ref());
        if let Some(k) = self.index.known(&fingerprint) {
            return Ok(Some((DeviceId(k.device_id), hex::encode(fingerprint))));
        }
        let provider = moat_pki::tls::provider();
        let verdict =
            match self
                .index
                .check(leaf, &[], rustls_pki_types::UnixTime::now(), &provider)
            {
                Ok(v) => v,
                Err(_) => return Ok(None),
            };
        match verdict {
            Verdict::Device {
                device_id,
                fingerprint,
                ..
            } => Ok(Some((DeviceId(device_id), hex::encode(fingerprint)))),
            Verdict::Unregistered {
                ca_id,
                tenant_id,
                activate,
                fingerprint,
            } => {
                self.register_just_in_time(
                    leaf,
                    AuthorityId(ca_id),
                    TenantId(tenant_id),
                    activate,
                    hex::encode(fingerprint),
                    peer,
                )
                .await
            }
        }
    }

    async fn register_just_in_time(
        &self,
        leaf: &CertificateDer<'static>,
        ca: AuthorityId,
        tenant: TenantId,
        activate: bool,
        fingerprint: String,
        peer: SocketAddr,
    ) -> Result<Option<(DeviceId, String)>, IdentityError> {
        let _guard = self.creating.lock().await;
        // Two first connections at once: the second finds the first's work.
        if let Some(c) = self.store.certificate_by_fingerprint(&fingerprint).await? {
            self.index_cert(&c);
            return Ok(Some((c.device_id, fingerprint)));
        }
        let info = inspect::cert_info_der(leaf.as_ref())?;
        let base = info
            .subject_cn
            .clone()
            .filter(|n| usable_name(n))
            .unwrap_or_else(|| format!("device-{}", &fingerprint[..12]));
        let now = Utc::now();
        let mut device = Device {
            id: DeviceId::new(),
            tenant_id: tenant,
            name: base.clone(),
            tags: vec!["registered:just-in-time".into()],
            metadata: serde_json::json!({ "certificate_subject": info.subject }),
            state: if activate {
                DeviceState::Active
            } else {
                DeviceState::Pending
            },
            created_at: now,
            updated_at: now,
        };
        let mut attempt = 0;
        loop {
            let cert = self.record(
                &info,
                &device,
                Some(ca),
                CertificateOrigin::JustInTime,
                &pem(leaf.as_ref()),
            );
            let record = AuditRecord::new(format!("device:{}", device.id), "device.register_jit", format!("device:{}", device.id), Outcome::Success)
                .tenant(tenant)
                .source(Some(peer.ip().to_string()))
                .detail(serde_json::json!({ "authority": ca, "fingerprint": fingerprint, "state": device.state.as_str() }));
            match self
                .store
                .apply(
                    vec![
                        Change::InsertDevice(device.clone()),
                        Change::InsertCertificate(cert.clone()),
                    ],
                    Some(record),
                )
                .await
            {
                Ok(_) => {
                    self.index_cert(&cert);
                    tracing::info!(device = %device.id, tenant = %tenant, "registered a device just in time");
                    return Ok(Some((device.id, fingerprint)));
                }
                // The name is taken: make it unique with the fingerprint.
                Err(StoreError::Conflict(_)) if attempt == 0 => {
                    attempt += 1;
                    device.name = format!("{base}-{}", &fingerprint[..8]);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Audits a refused client certificate (reason from the TLS error).
    pub async fn refused(&self, error: &rustls::Error, peer: SocketAddr) {
        let Some(reason) = moat_pki::trust::refusal_reason(error) else {
            return;
        };
        metrics::counter!("moat_auth_failures_total", "kind" => "client_certificate").increment(1);
        tracing::info!(%reason, peer = %peer, "client certificate refused");
        let record = AuditRecord::new(
            "anonymous",
            "auth.client_certificate",
            "-",
            Outcome::Failure,
        )
        .source(Some(peer.ip().to_string()))
        .detail(serde_json::json!({ "reason": reason }));
        if let Err(e) = self.store.append_audit(record).await {
            tracing::error!(error = %e, "could not audit a refused certificate");
        }
    }

    async fn load_or_issue_server_cert(
        store: &dyn Store,
        root: &Ca,
        wrap_key: &[u8; 32],
        settings: &PkiSettings,
        force: bool,
    ) -> Result<(String, String), IdentityError> {
        let stored: Option<StoredServerCert> = store
            .secret(SERVER)
            .await?
            .and_then(|v| serde_json::from_slice(&v).ok());
        let fresh_until = (Utc::now() + settings.server_renew_before).timestamp();
        if let Some(s) = stored
            .filter(|s| !force && s.names == settings.server_names && s.not_after > fresh_until)
        {
            let wrapped = base64::engine::general_purpose::STANDARD
                .decode(&s.key_wrapped)
                .map_err(|_| PkiError::Unwrap)?;
            let key = envelope::unwrap(wrap_key, SERVER, &wrapped)?;
            return Ok((
                s.cert_pem,
                String::from_utf8(key).map_err(|_| PkiError::Unwrap)?,
            ));
        }
        let issued = root.issue_server(
            &settings.server_names,
            time_dur(settings.server_cert_validity),
        )?;
        let stored = StoredServerCert {
            cert_pem: issued.cert_pem.clone(),
            key_wrapped: base64::engine::general_purpose::STANDARD.encode(envelope::wrap(
                wrap_key,
                SERVER,
                issued.key_pem.as_bytes(),
            )),
            names: settings.server_names.clone(),
            not_after: issued.not_after.unix_timestamp(),
        };
        let serial = inspect::cert_info_pem(&issued.cert_pem)?.serial;
        let record = AuditRecord::new(
            "system",
            "pki.server_cert.issue",
            "cert:server",
            Outcome::Success,
        )
        .detail(serde_json::json!({ "names": settings.server_names, "serial": serial }));
        let value = serde_json::to_vec(&stored).map_err(|e| StoreError::Backend(e.to_string()))?;
        store
            .apply(
                vec![Change::PutSecret {
                    name: SERVER.into(),
                    value,
                }],
                Some(record),
            )
            .await?;
        tracing::info!(names = ?settings.server_names, "issued the server certificate");
        Ok((issued.cert_pem, issued.key_pem.to_string()))
    }

    /// Renews the server certificate when due (or now, with `force`) and
    /// presents the new one from the next handshake on. Returns whether it
    /// renewed.
    pub async fn renew_server_cert(&self, force: bool) -> Result<bool, IdentityError> {
        let before = self.server_cert.leaf_der();
        let (chain, key) = Self::load_or_issue_server_cert(
            &*self.store,
            &self.root,
            &self.wrap_key,
            &self.settings,
            force,
        )
        .await?;
        self.server_cert.replace(&chain, &key)?;
        Ok(self.server_cert.leaf_der() != before)
    }
}

/// A certificate's common name that can serve as a device name as it is.
fn usable_name(n: &str) -> bool {
    !n.is_empty() && n.chars().count() <= 128 && !n.chars().any(char::is_control) && n.trim() == n
}

fn standing(state: DeviceState) -> Standing {
    match state {
        DeviceState::Quarantined => Standing::Quarantined,
        DeviceState::Revoked => Standing::Revoked,
        DeviceState::Active | DeviceState::Pending => Standing::Good,
    }
}

/// A DER certificate as PEM.
pub fn pem(der: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str("-----END CERTIFICATE-----\n");
    out
}

/// The envelope name of a device key's sealed secret.
fn device_secret_name(key: moat_core::DeviceKeyId) -> String {
    format!("device-key-secret:{}", key.0)
}
