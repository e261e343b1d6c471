//! Moat's core: the domain model and every decision about it.
//!
//! This crate does no I/O and knows no protocol. Adapters (HTTP, later MQTT
//! and CoAP) translate their requests into calls on these types; backends
//! implement the [`store::Store`] port. Three invariants hold here:
//!
//! - every access decision goes through [`authz::authorize`];
//! - every audit event is linked into the chain by [`audit::AuditChain`];
//! - input from outside is checked by [`validate`] before it becomes a domain value.

pub mod access;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod credential;
pub mod domain;
pub mod ids;
pub mod message;
pub mod page;
pub mod pki;
pub mod senml;
pub mod sessions;
pub mod store;
pub mod throttle;
pub mod validate;

pub use domain::*;
pub use ids::*;
