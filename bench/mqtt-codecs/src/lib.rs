//! Evaluation of MQTT protocol crates for Moat's broker (issue 5, ADR 005).
//!
//! Two candidates are compared on the same inputs:
//!
//! - **mqtt-protocol-core** (`mpc`): a sans-I/O library with typed packets for
//!   v3.1.1 and v5.0 and a connection state machine for the client and the
//!   server role. It is measured at two layers: its packet parser alone
//!   (`PacketBuilder` framing plus the per-type `parse`), and its server
//!   `Connection`, which adds the session-level checks a broker needs.
//! - **rmqtt-codec** (`rmqtt`): a `tokio_util::codec` decoder/encoder for
//!   v3.1.1 and v5.0, with protocol-version detection on CONNECT. It has no
//!   connection state.
//!
//! [`layers`] puts the three decode paths behind one function shape, so that
//! [`probes`] (conformance), [`fuzz`] (panics on hostile input) and [`speed`]
//! (throughput) treat them alike; [`server_role`] drives mqtt-protocol-core's
//! server connection through the flows a broker needs. [`fixtures`] builds
//! the byte strings by hand with [`wire`], so no candidate encodes the inputs
//! it is judged on.
//!
//! `cargo run --release` prints every table of ADR 005; `cargo test` pins the
//! probe verdicts, so a new release of either crate that changes behaviour
//! fails a test instead of silently changing the ADR's numbers.

pub mod fixtures;
pub mod fuzz;
pub mod layers;
pub mod probes;
pub mod server_role;
pub mod speed;
pub mod wire;
