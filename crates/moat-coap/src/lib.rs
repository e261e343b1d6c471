//! Moat's CoAP adapter (RFC 7252) over DTLS 1.2 (ADR 006).
//!
//! - [`dtls`]: OpenSSL's DTLS server context (pre-shared keys and
//!   certificates, the cookie exchange) over an in-memory channel per peer.
//! - `endpoint`: one UDP socket, datagrams demultiplexed by address to a
//!   task per peer; state for a new address only for a DTLS ClientHello,
//!   within a cap on handshakes in progress.
//! - `session`: a peer's CoAP state — deduplication by message id, Observe
//!   registrations, block-wise transfers, confirmable notifications with
//!   the RFC's retransmission timers.
//! - `resources`: `/channels/{id}/messages[/{subtopic…}]` (POST publishes,
//!   GET with Observe subscribes) and `/.well-known/core`.
//!
//! Devices are authenticated by the DTLS handshake (their device key as the
//! PSK, or a client certificate the platform's PKI accepts); plain CoAP
//! (development only) takes a device key in the `auth` query. Decisions are
//! the platform's (`moat_core::access`, `authz`), messages go through the
//! channel's policy and the bus like every other protocol's.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use moat_core::DeviceId;
use moat_core::message::bus::Bus;
use moat_core::sessions::SessionRegistry;
use moat_core::store::Store;
use zeroize::Zeroizing;

mod block;
pub mod dtls;
mod endpoint;
pub mod hello;
mod message;
mod resources;
mod session;

pub use endpoint::{Security, bind, run};
pub use message::{Incoming, Malformed, Request, parse_request};

/// The block-wise transfer logic, for the fuzz target in `fuzz/`; not part
/// of the adapter's interface.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::block::{Piece, Upload, block_size, piece};
}

/// The adapter's limits; the binary fills them from its configuration.
#[derive(Clone, Debug)]
pub struct CoapConfig {
    /// Peers (addresses with state) at most; a new one beyond is ignored.
    pub max_peers: usize,
    /// DTLS handshakes in progress at most (each holds OpenSSL state from
    /// the first ClientHello on).
    pub max_handshakes: usize,
    pub handshake_timeout: Duration,
    /// A peer silent this long is forgotten (its DTLS session with it).
    pub idle_timeout: Duration,
    /// Observations one peer may hold.
    pub max_observations: usize,
    /// Block size for responses and notifications (16..=1024, a power of
    /// two); a client may ask for smaller.
    pub block_size: usize,
    /// The largest request body a block-wise upload may assemble (the
    /// channel's own limit applies too).
    pub max_body: usize,
}

impl Default for CoapConfig {
    fn default() -> Self {
        Self {
            max_peers: 100_000,
            max_handshakes: 1024,
            handshake_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(600),
            max_observations: 16,
            block_size: 1024,
            max_body: 1024 * 1024,
        }
    }
}

/// A DTLS pre-shared key and the device it authenticates.
pub struct Psk {
    pub device: DeviceId,
    pub key: Zeroizing<Vec<u8>>,
}

/// The platform's answers about device credentials; the binary implements
/// it with the store and the PKI (and audits refusals).
#[async_trait]
pub trait Credentials: Send + Sync + 'static {
    /// The key for a DTLS-PSK identity (a device id or a device key id),
    /// `None` when there is none usable.
    async fn psk(&self, identity: &[u8], peer: SocketAddr) -> Option<Psk>;
    /// The device a client certificate chain (DER, leaf first) belongs to,
    /// after the same checks as the TLS listeners'; `None` when refused.
    async fn certificate(&self, chain: &[Vec<u8>], peer: SocketAddr) -> Option<DeviceId>;
}

/// What every peer shares: the platform's ports and the limits.
pub struct Coap {
    pub config: CoapConfig,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub sessions: Arc<SessionRegistry>,
    pub credentials: Arc<dyn Credentials>,
}
