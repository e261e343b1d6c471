//! The tamper-evident audit log: events linked into a keyed hash chain.
//!
//! Each event's `hash` is HMAC-SHA256, under a key derived from the master
//! key, over the event's own fields, its sequence number and the previous
//! event's hash. Editing an event breaks its own hash; deleting one leaves a
//! gap in the sequence; re-linking the chain after either needs the key,
//! which never leaves the server. (Cutting events off the end is caught by
//! comparing with a head the operator recorded: `moat audit verify` prints it.)

use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;
use utoipa::ToSchema;

use crate::ids::TenantId;

/// The hash before the first event.
pub const GENESIS: &str = "0000000000000000000000000000000000000000000000000000000000000000";

/// How an audited attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Success,
    /// The caller could not be authenticated or the request was invalid.
    Failure,
    /// Authenticated, but not allowed.
    Denied,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Success => "success",
            Outcome::Failure => "failure",
            Outcome::Denied => "denied",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [Outcome::Success, Outcome::Failure, Outcome::Denied]
            .into_iter()
            .find(|o| o.as_str() == s)
    }
}

/// An event before it is linked into the chain.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditRecord {
    /// When it happened, to the millisecond.
    pub time: DateTime<Utc>,
    /// Who acted: `user:<id>`, `apikey:<id>`, `device:<id>`, `system`, or
    /// `anonymous` (with the name that was tried in `detail`).
    pub actor: String,
    /// The tenant the event belongs to; it decides who may read it.
    pub tenant_id: Option<TenantId>,
    /// What was done, as `kind.verb`: `device.create`, `auth.login`.
    pub action: String,
    /// What it was done to: `device:<id>`, `user:<id>`.
    pub target: String,
    pub outcome: Outcome,
    /// The peer's address, when the event came from the network.
    pub source: Option<String>,
    /// Anything else worth keeping; never a secret.
    pub detail: serde_json::Value,
}

impl AuditRecord {
    pub fn new(
        actor: impl Into<String>,
        action: impl Into<String>,
        target: impl Into<String>,
        outcome: Outcome,
    ) -> Self {
        Self {
            time: now_millis(),
            actor: actor.into(),
            tenant_id: None,
            action: action.into(),
            target: target.into(),
            outcome,
            source: None,
            detail: serde_json::Value::Null,
        }
    }

    pub fn tenant(mut self, tenant: TenantId) -> Self {
        self.tenant_id = Some(tenant);
        self
    }

    pub fn source(mut self, source: Option<String>) -> Self {
        self.source = source;
        self
    }

    pub fn detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = detail;
        self
    }
}

/// The current time, cut to milliseconds so that it survives storage exactly.
pub fn now_millis() -> DateTime<Utc> {
    DateTime::from_timestamp_millis(Utc::now().timestamp_millis()).unwrap_or_default()
}

/// An event as stored: its place in the chain and its link.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct AuditEvent {
    pub seq: i64,
    #[serde(flatten)]
    pub record: AuditRecord,
    pub prev_hash: String,
    pub hash: String,
}

/// Computes and checks links. Holds the chain key.
#[derive(Clone)]
pub struct AuditChain {
    key: [u8; 32],
}

impl std::fmt::Debug for AuditChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditChain { .. }")
    }
}

/// The fields a link covers, in a fixed order.
#[derive(Serialize)]
struct Canonical<'a> {
    seq: i64,
    prev: &'a str,
    time_ms: i64,
    actor: &'a str,
    tenant: Option<TenantId>,
    action: &'a str,
    target: &'a str,
    outcome: Outcome,
    source: Option<&'a str>,
    detail: &'a serde_json::Value,
}

impl AuditChain {
    pub fn new(key: [u8; 32]) -> Self {
        Self { key }
    }

    /// The hash of `record` placed at `seq` after `prev_hash`.
    pub fn link(&self, seq: i64, prev_hash: &str, record: &AuditRecord) -> String {
        let canonical = Canonical {
            seq,
            prev: prev_hash,
            time_ms: record.time.timestamp_millis(),
            actor: &record.actor,
            tenant: record.tenant_id,
            action: &record.action,
            target: &record.target,
            outcome: record.outcome,
            source: record.source.as_deref(),
            detail: &record.detail,
        };
        let bytes = serde_json::to_vec(&canonical).expect("canonical audit form serializes");
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.key).expect("hmac takes any key length");
        mac.update(&bytes);
        hex::encode(mac.finalize().into_bytes())
    }

    /// Links `record` after `prev` (the last stored event, if any).
    pub fn append(&self, prev: Option<(i64, &str)>, record: AuditRecord) -> AuditEvent {
        let (seq, prev_hash) = match prev {
            Some((s, h)) => (s + 1, h.to_owned()),
            None => (1, GENESIS.to_owned()),
        };
        let hash = self.link(seq, &prev_hash, &record);
        AuditEvent {
            seq,
            record,
            prev_hash,
            hash,
        }
    }

    pub fn verifier(&self) -> Verifier<'_> {
        Verifier {
            chain: self,
            next_seq: 1,
            last_hash: GENESIS.to_owned(),
        }
    }
}

/// Where and how the chain is broken.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Break {
    #[error("event {expected} is missing (the next event present is {found})")]
    Missing { expected: i64, found: i64 },
    #[error("event {seq} does not follow the event before it")]
    Unlinked { seq: i64 },
    #[error("event {seq} was altered: its contents do not match its hash")]
    Altered { seq: i64 },
}

impl Break {
    /// The sequence number of the first event that cannot be trusted.
    pub fn seq(&self) -> i64 {
        match self {
            Break::Missing { expected, .. } => *expected,
            Break::Unlinked { seq } | Break::Altered { seq } => *seq,
        }
    }
}

/// Checks a chain one event at a time, in sequence order, so that a store
/// can stream it without holding the log in memory.
pub struct Verifier<'a> {
    chain: &'a AuditChain,
    next_seq: i64,
    last_hash: String,
}

impl Verifier<'_> {
    pub fn push(&mut self, e: &AuditEvent) -> Result<(), Break> {
        if e.seq != self.next_seq {
            return Err(Break::Missing {
                expected: self.next_seq,
                found: e.seq,
            });
        }
        if e.prev_hash != self.last_hash {
            return Err(Break::Unlinked { seq: e.seq });
        }
        if self.chain.link(e.seq, &e.prev_hash, &e.record) != e.hash {
            return Err(Break::Altered { seq: e.seq });
        }
        self.next_seq += 1;
        self.last_hash.clone_from(&e.hash);
        Ok(())
    }

    /// The number of events checked so far and the last hash.
    pub fn head(&self) -> (i64, &str) {
        (self.next_seq - 1, &self.last_hash)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chain_of(n: usize) -> (AuditChain, Vec<AuditEvent>) {
        let c = AuditChain::new([7; 32]);
        let mut v: Vec<AuditEvent> = Vec::new();
        for i in 0..n {
            let prev = v.last().map(|e| (e.seq, e.hash.as_str()));
            let e = c.append(
                prev,
                AuditRecord::new("system", "test.event", format!("t:{i}"), Outcome::Success),
            );
            v.push(e);
        }
        (c, v)
    }

    fn verify(c: &AuditChain, v: &[AuditEvent]) -> Result<(), Break> {
        let mut ver = c.verifier();
        v.iter().try_for_each(|e| ver.push(e))
    }

    #[test]
    fn an_intact_chain_verifies() {
        let (c, v) = chain_of(5);
        assert_eq!(verify(&c, &v), Ok(()));
    }

    #[test]
    fn edits_deletions_and_relinks_are_found_where_they_are() {
        let (c, mut v) = chain_of(5);
        v[2].record.actor = "user:mallory".into();
        assert_eq!(verify(&c, &v), Err(Break::Altered { seq: 3 }));

        let (c, mut v) = chain_of(5);
        v.remove(1);
        assert_eq!(
            verify(&c, &v),
            Err(Break::Missing {
                expected: 2,
                found: 3
            })
        );

        // Renumbering after a deletion still breaks the link.
        let (c, mut v) = chain_of(5);
        v.remove(1);
        for (i, e) in v.iter_mut().enumerate() {
            e.seq = i as i64 + 1;
        }
        assert_eq!(verify(&c, &v), Err(Break::Unlinked { seq: 2 }));

        // A forger without the key cannot re-link.
        let (c, v) = chain_of(3);
        let forged = AuditChain::new([8; 32]);
        assert_eq!(verify(&forged, &v), Err(Break::Altered { seq: 1 }));
        assert_eq!(verify(&c, &v), Ok(()));
    }
}
