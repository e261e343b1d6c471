//! The live-session registry: every adapter registers each device session it
//! holds, so that revoking or quarantining a device cuts all of them at once,
//! whatever the protocol.
//!
//! An adapter joins with a callback that closes its session (typically by
//! cancelling a token its connection task watches) and keeps the returned
//! guard for the life of the session; dropping the guard leaves.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::ids::DeviceId;

/// Why a session is cut; adapters turn it into their protocol's reason
/// (an MQTT 5 DISCONNECT reason code, a TLS alert, a WebSocket close code).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CutReason {
    Revoked,
    Quarantined,
    /// Disabled or deleted, or its credentials were withdrawn.
    Withdrawn,
}

type Cut = Arc<dyn Fn(CutReason) + Send + Sync>;
type RightsListener = Arc<dyn Fn(DeviceId) + Send + Sync>;

#[derive(Default)]
pub struct SessionRegistry {
    next: AtomicU64,
    // Held only for map updates; callbacks run after the lock is released.
    sessions: Mutex<HashMap<DeviceId, HashMap<u64, Cut>>>,
    /// Adapters that keep rights in live sessions (an MQTT subscription's
    /// channels) and must re-read them when a device's connections change.
    rights_listeners: Mutex<Vec<RightsListener>>,
}

/// Membership of one session; leaving happens on drop.
pub struct SessionGuard {
    registry: Arc<SessionRegistry>,
    device: DeviceId,
    id: u64,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut map = self
            .registry
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if let Some(s) = map.get_mut(&self.device) {
            s.remove(&self.id);
            if s.is_empty() {
                map.remove(&self.device);
            }
        }
    }
}

impl SessionRegistry {
    pub fn new() -> Arc<Self> {
        Arc::default()
    }

    pub fn join(
        self: &Arc<Self>,
        device: DeviceId,
        cut: impl Fn(CutReason) + Send + Sync + 'static,
    ) -> SessionGuard {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(device)
            .or_default()
            .insert(id, Arc::new(cut));
        SessionGuard {
            registry: Arc::clone(self),
            device,
            id,
        }
    }

    /// Cuts every session of `device`; returns how many there were.
    pub fn cut(&self, device: DeviceId, reason: CutReason) -> usize {
        let cuts: Vec<Cut> = {
            let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
            map.get(&device)
                .map(|s| s.values().cloned().collect())
                .unwrap_or_default()
        };
        for c in &cuts {
            c(reason);
        }
        cuts.len()
    }

    /// Registers `f` to hear of every device whose rights (its connections
    /// to channels) changed. For adapters, once at start.
    pub fn on_rights_changed(&self, f: impl Fn(DeviceId) + Send + Sync + 'static) {
        self.rights_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Arc::new(f));
    }

    /// Says that `device`'s connections changed; called after the change
    /// is committed. Listeners must not block.
    pub fn rights_changed(&self, device: DeviceId) {
        let listeners: Vec<RightsListener> = self
            .rights_listeners
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for l in &listeners {
            l(device);
        }
    }

    pub fn count(&self, device: DeviceId) -> usize {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&device)
            .map_or(0, HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    #[test]
    fn cut_reaches_every_session_and_guards_leave() {
        let reg = SessionRegistry::new();
        let d = DeviceId::new();
        let hits = Arc::new(AtomicUsize::new(0));
        let h1 = Arc::clone(&hits);
        let g1 = reg.join(d, move |_| {
            h1.fetch_add(1, Ordering::SeqCst);
        });
        let h2 = Arc::clone(&hits);
        let g2 = reg.join(d, move |r| {
            assert_eq!(r, CutReason::Revoked);
            h2.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(reg.count(d), 2);
        assert_eq!(reg.cut(d, CutReason::Revoked), 2);
        assert_eq!(hits.load(Ordering::SeqCst), 2);
        drop(g1);
        drop(g2);
        assert_eq!(reg.count(d), 0);
        assert_eq!(reg.cut(d, CutReason::Revoked), 0);
    }

    #[test]
    fn rights_listeners_hear_every_change() {
        let reg = SessionRegistry::new();
        let heard = Arc::new(Mutex::new(Vec::new()));
        let h = Arc::clone(&heard);
        reg.on_rights_changed(move |d| h.lock().unwrap().push(d));
        let d = DeviceId::new();
        reg.rights_changed(d);
        reg.rights_changed(d);
        assert_eq!(*heard.lock().unwrap(), [d, d]);
    }
}
