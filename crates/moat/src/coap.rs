//! Wiring CoAP into `moat serve`: the platform's answers about device
//! credentials for DTLS — a device key's sealed secret as the pre-shared
//! key, and the PKI's checks for client certificates.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use moat_coap::{Credentials, Psk};
use moat_core::audit::{AuditRecord, Outcome};
use moat_core::store::Store;
use moat_core::{DeviceId, DeviceKeyId};
use moat_http::pki::Pki;
use rustls_pki_types::CertificateDer;
use zeroize::Zeroizing;

pub(crate) struct PlatformCredentials {
    pub(crate) store: Arc<dyn Store>,
    pub(crate) pki: Arc<Pki>,
}

impl PlatformCredentials {
    async fn refused(&self, peer: SocketAddr, reason: &'static str) {
        metrics::counter!("moat_coap_auth_failures_total", "reason" => reason).increment(1);
        let record = AuditRecord::new(
            "anonymous",
            "auth.coap.psk",
            format!("peer:{peer}"),
            Outcome::Denied,
        )
        .detail(serde_json::json!({ "reason": reason }));
        if let Err(e) = self.store.append_audit(record).await {
            tracing::error!(error = %e, "could not audit a refused DTLS identity");
        }
    }
}

#[async_trait]
impl Credentials for PlatformCredentials {
    /// The identity is a device key's id (that key) or a device's id (its
    /// newest usable key that has a DTLS secret); the PSK is
    /// `credential::dtls_psk` of the key's secret.
    async fn psk(&self, identity: &[u8], peer: SocketAddr) -> Option<Psk> {
        let Some(id) = std::str::from_utf8(identity)
            .ok()
            .and_then(|s| uuid::Uuid::try_parse(s).ok())
        else {
            self.refused(peer, "malformed identity").await;
            return None;
        };
        let now = chrono::Utc::now();
        let found = match self.store.device_key(DeviceKeyId(id)).await {
            Ok(Some(k)) => Some(k),
            Ok(None) => match self.store.device_keys(DeviceId(id)).await {
                Ok(keys) => keys
                    .into_iter()
                    .filter(|k| k.is_usable(now) && k.psk_sealed.is_some())
                    .max_by_key(|k| k.created_at),
                Err(e) => {
                    tracing::error!(error = %e, "could not read device keys");
                    return None;
                }
            },
            Err(e) => {
                tracing::error!(error = %e, "could not read a device key");
                return None;
            }
        };
        let Some(key) = found else {
            self.refused(peer, "unknown identity").await;
            return None;
        };
        if !key.is_usable(now) {
            self.refused(peer, "device key revoked or expired").await;
            return None;
        }
        let Some(sealed) = key.psk_sealed.as_deref() else {
            self.refused(peer, "the key predates DTLS; rotate it").await;
            return None;
        };
        match self.pki.open_device_secret(key.id, sealed) {
            Ok(secret) => Some(Psk {
                device: key.device_id,
                key: Zeroizing::new(
                    moat_core::credential::dtls_psk(&Zeroizing::new(secret))
                        .as_bytes()
                        .to_vec(),
                ),
            }),
            Err(e) => {
                tracing::error!(error = %e, "could not open a sealed device secret");
                None
            }
        }
    }

    async fn certificate(&self, chain: &[Vec<u8>], peer: SocketAddr) -> Option<DeviceId> {
        let leaf = CertificateDer::from(chain.first()?.clone());
        let intermediates: Vec<CertificateDer<'static>> = chain[1..]
            .iter()
            .map(|c| CertificateDer::from(c.clone()))
            .collect();
        if let Err(e) = self.pki.check_client_chain(&leaf, &intermediates) {
            self.pki.refused(&e, peer).await;
            return None;
        }
        match self.pki.identify(&leaf, peer).await {
            Ok(found) => found.map(|(device, _fingerprint)| device),
            Err(e) => {
                tracing::error!(error = %e, "could not identify a DTLS client certificate");
                None
            }
        }
    }
}
