//! The MQTT wire protocol as Moat sees it, in front of mqtt-protocol-core
//! (ADR 005).
//!
//! The crate parses packets and drives each connection's state; this module
//! holds what Moat adds on the packet path. So far that is the packet guard:
//! pure functions over bytes, no I/O, which the adapter runs on every frame
//! before `Connection::recv` sees it.

mod guard;

pub use guard::{
    Frame, MAX_REMAINING_LENGTH, Violation, check_connect_flags, check_fixed_header, check_packet,
    frame, guard_connect_properties, is_v5_connect,
};
