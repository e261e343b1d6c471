//! Brute-force protection: failures counted per key (an account, a source
//! address), answered first with growing delays, then with a lockout.
//!
//! Time is passed in, so the policy is tested without sleeping. Entries live
//! in memory and are bounded: when the table is full, stale entries go first,
//! then the oldest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How many failures are forgiven, and what follows.
#[derive(Clone, Copy, Debug)]
pub struct Policy {
    /// Failures allowed before any delay.
    pub free_failures: u32,
    /// After this many failures the key is locked for `lockout`.
    pub lockout_after: u32,
    pub lockout: Duration,
    /// Failures older than this (since the last one) are forgotten.
    pub window: Duration,
}

impl Policy {
    /// For one account: 5 free tries, then 1 s, 2 s, 4 s… and a 15-minute
    /// lockout at the 10th failure.
    pub const ACCOUNT: Policy = Policy {
        free_failures: 5,
        lockout_after: 10,
        lockout: Duration::from_secs(15 * 60),
        window: Duration::from_secs(15 * 60),
    };

    /// For one source address, which may serve many honest users.
    pub const SOURCE: Policy = Policy {
        free_failures: 20,
        lockout_after: 50,
        lockout: Duration::from_secs(15 * 60),
        window: Duration::from_secs(15 * 60),
    };

    fn block_after(&self, failures: u32) -> Option<Duration> {
        if failures >= self.lockout_after {
            Some(self.lockout)
        } else if failures > self.free_failures {
            let exp = (failures - self.free_failures - 1).min(16);
            Some(Duration::from_secs(1u64 << exp).min(self.lockout))
        } else {
            None
        }
    }
}

#[derive(Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    blocked_until: Option<Instant>,
}

/// Failure counts for one kind of key.
pub struct Throttle {
    policy: Policy,
    capacity: usize,
    // A std mutex: the critical sections are a hash lookup, never held
    // across an await.
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new(policy: Policy, capacity: usize) -> Self {
        Self {
            policy,
            capacity,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// `Err(retry_after)` while `key` is blocked.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.get(key).and_then(|e| e.blocked_until) {
            Some(until) if until > now => Err(round_up(until - now)),
            _ => Ok(()),
        }
    }

    /// Counts a failure; returns the block it starts, if any.
    pub fn failure(&self, key: &str, now: Instant) -> Option<Duration> {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        if !entries.contains_key(key) && entries.len() >= self.capacity {
            self.evict(&mut entries, now);
        }
        let e = entries.entry(key.to_owned()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            blocked_until: None,
        });
        if now.saturating_duration_since(e.last_failure) > self.policy.window {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        let block = self.policy.block_after(e.failures);
        e.blocked_until = block.map(|d| now + d);
        block.map(round_up)
    }

    /// A success forgets the key's failures.
    pub fn success(&self, key: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }

    fn evict(&self, entries: &mut HashMap<String, Entry>, now: Instant) {
        let window = self.policy.window;
        entries.retain(|_, e| {
            e.blocked_until.is_some_and(|u| u > now)
                || now.saturating_duration_since(e.last_failure) <= window
        });
        if entries.len() >= self.capacity {
            if let Some(oldest) = entries
                .iter()
                .min_by_key(|(_, e)| e.last_failure)
                .map(|(k, _)| k.clone())
            {
                entries.remove(&oldest);
            }
        }
    }
}

fn round_up(d: Duration) -> Duration {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    Duration::from_secs(secs.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_then_lock_out() {
        let t = Throttle::new(Policy::ACCOUNT, 100);
        let mut now = Instant::now();
        for _ in 0..5 {
            assert_eq!(t.failure("alice", now), None);
            assert!(t.check("alice", now).is_ok());
        }
        assert_eq!(t.failure("alice", now), Some(Duration::from_secs(1)));
        assert_eq!(t.check("alice", now), Err(Duration::from_secs(1)));
        now += Duration::from_secs(1);
        assert!(t.check("alice", now).is_ok());
        assert_eq!(t.failure("alice", now), Some(Duration::from_secs(2)));
        for _ in 0..3 {
            t.failure("alice", now);
        }
        assert_eq!(t.failure("alice", now), Some(Duration::from_secs(900)));
        assert_eq!(
            t.check("alice", now + Duration::from_secs(899)),
            Err(Duration::from_secs(1))
        );
        assert!(t.check("alice", now + Duration::from_secs(900)).is_ok());
        assert!(t.check("bob", now).is_ok(), "other keys are untouched");
    }

    #[test]
    fn success_and_time_forgive() {
        let t = Throttle::new(Policy::ACCOUNT, 100);
        let now = Instant::now();
        for _ in 0..5 {
            t.failure("a", now);
        }
        t.success("a");
        assert_eq!(t.failure("a", now), None);
        for _ in 0..4 {
            t.failure("a", now);
        }
        let later = now + Policy::ACCOUNT.window + Duration::from_secs(1);
        assert_eq!(t.failure("a", later), None, "the window has passed");
    }

    #[test]
    fn the_table_stays_bounded() {
        let t = Throttle::new(Policy::ACCOUNT, 10);
        let now = Instant::now();
        for i in 0..1000 {
            t.failure(&format!("k{i}"), now);
        }
        assert!(t.entries.lock().unwrap().len() <= 10);
    }
}
