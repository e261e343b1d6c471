//! Wiring the MQTT broker into `moat serve`: its listeners (TLS always,
//! plain only with `--insecure-dev`) and the bridge from the platform's PKI
//! to the broker's certificate-to-device mapping.

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use moat_core::DeviceId;
use moat_http::pki::Pki;
use moat_mqtt::server::IdentifyDevice;
use rustls_pki_types::CertificateDer;

/// The PKI, as the broker's listeners ask it who a certificate names.
pub(crate) struct PkiIdentify(pub(crate) Arc<Pki>);

#[async_trait]
impl IdentifyDevice for PkiIdentify {
    async fn identify(
        &self,
        leaf: &CertificateDer<'static>,
        peer: SocketAddr,
    ) -> Result<Option<DeviceId>, String> {
        self.0
            .identify(leaf, peer)
            .await
            .map(|found| found.map(|(device, _fingerprint)| device))
            .map_err(|e| e.to_string())
    }

    async fn refused(&self, error: &rustls::Error, peer: SocketAddr) {
        self.0.refused(error, peer).await;
    }
}
