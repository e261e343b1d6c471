//! What every handler shares: the store, the session registry, token keys,
//! brute-force throttles and settings.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;
use moat_core::TenantPath;
use moat_core::ids::TenantId;
use moat_core::message::MessageStore;
use moat_core::message::bus::Bus;
use moat_core::sessions::SessionRegistry;
use moat_core::store::Store;
use moat_core::throttle::{Policy, Throttle};

use crate::auth::tokens::AccessTokens;
use crate::problem::ApiError;

/// Tunables the binary passes in from its configuration.
#[derive(Clone, Debug)]
pub struct Settings {
    pub access_token_ttl: Duration,
    pub refresh_token_ttl: Duration,
    /// How often WebSockets are pinged and their credentials checked.
    pub websocket_ping: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            access_token_ttl: Duration::from_secs(3600),
            refresh_token_ttl: Duration::from_secs(30 * 24 * 3600),
            websocket_ping: Duration::from_secs(30),
        }
    }
}

/// The data path: where publishes go and stored messages are read.
pub struct Messaging {
    pub bus: Arc<dyn Bus>,
    pub store: Arc<dyn MessageStore>,
}

pub struct AppState {
    pub store: Arc<dyn Store>,
    pub sessions: Arc<SessionRegistry>,
    /// Device identity: CAs, the trust index, the server certificate.
    pub pki: Arc<crate::pki::Pki>,
    pub tokens: AccessTokens,
    /// Publishing: durable first, then live subscribers (ADR 004).
    pub bus: Arc<dyn Bus>,
    /// Reading stored messages back.
    pub messages: Arc<dyn MessageStore>,
    /// Failed sign-ins per account.
    pub accounts: Throttle,
    /// Failed authentications of any kind per source address.
    pub sources: Throttle,
    pub settings: Settings,
    /// Renders `/metrics`; `None` when no recorder was installed.
    pub metrics: Option<PrometheusHandle>,
    /// Tenants never move, so a tenant's path, once read, stays true. This
    /// saves a read on every authorized request.
    tenant_paths: RwLock<HashMap<TenantId, TenantPath>>,
}

const THROTTLE_CAPACITY: usize = 100_000;
const PATH_CACHE_CAPACITY: usize = 100_000;

impl AppState {
    pub fn new(
        store: Arc<dyn Store>,
        sessions: Arc<SessionRegistry>,
        pki: Arc<crate::pki::Pki>,
        messaging: Messaging,
        token_key: [u8; 32],
        settings: Settings,
        metrics: Option<PrometheusHandle>,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            sessions,
            pki,
            tokens: AccessTokens::new(&token_key, settings.access_token_ttl),
            bus: messaging.bus,
            messages: messaging.store,
            accounts: Throttle::new(Policy::ACCOUNT, THROTTLE_CAPACITY),
            sources: Throttle::new(Policy::SOURCE, THROTTLE_CAPACITY),
            settings,
            metrics,
            tenant_paths: RwLock::new(HashMap::new()),
        })
    }

    /// The path of tenant `id`; 404 if there is no such tenant.
    pub async fn tenant_path(&self, id: TenantId) -> Result<TenantPath, ApiError> {
        if let Some(p) = self
            .tenant_paths
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
        {
            return Ok(p.clone());
        }
        let tenant = self
            .store
            .tenant(id)
            .await?
            .ok_or_else(|| ApiError::not_found("tenant"))?;
        let mut cache = self.tenant_paths.write().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= PATH_CACHE_CAPACITY {
            cache.clear();
        }
        cache.insert(id, tenant.path.clone());
        Ok(tenant.path)
    }

    /// Forgets a deleted tenant.
    pub fn forget_tenant(&self, id: TenantId) {
        self.tenant_paths
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&id);
    }
}
