//! The embedded bus: [`LocalBus::publish`] hands messages to the message
//! store's group-commit writer and, once they are durable, offers them to
//! every live subscriber whose filter matches.
//!
//! Fan-out never waits: each subscriber has a bounded queue, and one that
//! is full is cut off (its adapter closes the session as a slow consumer),
//! so a stalled client neither slows the others nor grows memory.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock, Weak};

use async_trait::async_trait;
use moat_core::ChannelId;
use moat_core::message::bus::{Bus, Filter, Subscription};
use moat_core::message::{Message, MessageStore, Protocol};
use moat_core::store::StoreError;
use tokio::sync::mpsc;

struct Subscriber {
    id: u64,
    /// `None`: every message of every channel.
    filter: Option<Filter>,
    /// Messages published over this protocol are not for this subscriber.
    skip: Option<Protocol>,
    tx: mpsc::Sender<Arc<Message>>,
    cut_off: Arc<AtomicBool>,
}

#[derive(Default)]
struct Registry {
    /// Keyed by channel; `None` holds the subscribers to every channel.
    by_channel: HashMap<Option<ChannelId>, Vec<Subscriber>>,
}

pub struct LocalBus {
    store: Arc<dyn MessageStore>,
    registry: Arc<RwLock<Registry>>,
    next_id: AtomicU64,
}

impl LocalBus {
    pub fn new(store: Arc<dyn MessageStore>) -> Arc<Self> {
        Arc::new(Self {
            store,
            registry: Arc::default(),
            next_id: AtomicU64::new(1),
        })
    }

    /// Live subscribers, for metrics and tests.
    pub fn subscribers(&self) -> usize {
        self.read().by_channel.values().map(Vec::len).sum()
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Registry> {
        // Each write is one push or one retain: a poisoned lock is whole.
        self.registry
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn fan_out(&self, messages: &[Arc<Message>]) {
        let mut full = Vec::new();
        {
            let reg = self.read();
            let every = reg.by_channel.get(&None);
            for m in messages {
                let subs = reg.by_channel.get(&Some(m.channel_id));
                let subs = subs.into_iter().chain(every).flatten();
                let wanted = |s: &&Subscriber| {
                    s.skip != Some(m.protocol) && s.filter.as_ref().is_none_or(|f| f.matches(m))
                };
                for s in subs.filter(wanted) {
                    match s.tx.try_send(Arc::clone(m)) {
                        Ok(()) => {}
                        Err(mpsc::error::TrySendError::Full(_)) => {
                            s.cut_off.store(true, Ordering::Relaxed);
                            full.push((s.filter.as_ref().map(|f| f.channel), s.id));
                        }
                        // Gone: its drop unsubscribes it.
                        Err(mpsc::error::TrySendError::Closed(_)) => {}
                    }
                }
            }
        }
        for (channel, id) in full {
            metrics::counter!("moat_bus_slow_consumers_total").increment(1);
            remove(&self.registry, channel, id);
        }
    }
}

fn remove(registry: &RwLock<Registry>, channel: Option<ChannelId>, id: u64) {
    let mut reg = registry
        .write()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(subs) = reg.by_channel.get_mut(&channel) {
        subs.retain(|s| s.id != id);
        if subs.is_empty() {
            reg.by_channel.remove(&channel);
        }
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, messages: Vec<Arc<Message>>) -> Result<Vec<i64>, StoreError> {
        let seqs = self.store.append(messages.clone()).await?;
        self.fan_out(&messages);
        Ok(seqs)
    }

    fn subscribe(&self, filter: Filter, capacity: usize) -> Box<dyn Subscription> {
        self.add(Some(filter), None, capacity)
    }

    fn subscribe_all(&self, capacity: usize, skip: Option<Protocol>) -> Box<dyn Subscription> {
        self.add(None, skip, capacity)
    }
}

impl LocalBus {
    fn add(
        &self,
        filter: Option<Filter>,
        skip: Option<Protocol>,
        capacity: usize,
    ) -> Box<dyn Subscription> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let cut_off = Arc::new(AtomicBool::new(false));
        let channel = filter.as_ref().map(|f| f.channel);
        self.registry
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .by_channel
            .entry(channel)
            .or_default()
            .push(Subscriber {
                id,
                filter,
                skip,
                tx,
                cut_off: Arc::clone(&cut_off),
            });
        Box::new(Local {
            rx,
            cut_off,
            registry: Arc::downgrade(&self.registry),
            channel,
            id,
        })
    }
}

struct Local {
    rx: mpsc::Receiver<Arc<Message>>,
    cut_off: Arc<AtomicBool>,
    registry: Weak<RwLock<Registry>>,
    channel: Option<ChannelId>,
    id: u64,
}

#[async_trait]
impl Subscription for Local {
    async fn recv(&mut self) -> Option<Arc<Message>> {
        // A cut-off subscriber gets nothing more, even what was queued: its
        // stream has a gap, and the adapter must say so by closing.
        if self.cut_off.load(Ordering::Relaxed) {
            return None;
        }
        self.rx.recv().await
    }

    fn cut_off(&self) -> bool {
        self.cut_off.load(Ordering::Relaxed)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        if let Some(r) = self.registry.upgrade() {
            remove(&r, self.channel, self.id);
        }
    }
}

#[cfg(test)]
mod tests;
