//! Writing behind (ADR 007): changes go, in the order they are sent,
//! through one unbounded channel to one task that writes them into a
//! store in batches; nobody on the way waits for a write. A flush waits
//! until every change sent before it is written (or failed).

use std::future::Future;
use std::sync::OnceLock;

use tokio::sync::{mpsc, oneshot};

/// Changes one write takes at most.
const WRITE_BATCH: usize = 1024;

pub(crate) struct WriteBehind<C> {
    /// Set once the task runs; until then changes are not kept.
    tx: OnceLock<mpsc::UnboundedSender<Item<C>>>,
}

enum Item<C> {
    Change(C),
    Flush(oneshot::Sender<()>),
}

impl<C> Default for WriteBehind<C> {
    fn default() -> Self {
        Self {
            tx: OnceLock::new(),
        }
    }
}

impl<C> std::fmt::Debug for WriteBehind<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("on", &self.tx.get().is_some())
            .finish()
    }
}

impl<C: Send + 'static> WriteBehind<C> {
    /// Starts the task: from now on every change sent goes to `write`, a
    /// batch at a time, in order. `write` reports its own failures. False
    /// if it was started already.
    pub(crate) fn start<F, Fut>(&self, mut write: F) -> bool
    where
        F: FnMut(Vec<C>) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send,
    {
        let (tx, mut rx) = mpsc::unbounded_channel();
        if self.tx.set(tx).is_err() {
            return false;
        }
        tokio::spawn(async move {
            let mut taken = Vec::new();
            while rx.recv_many(&mut taken, WRITE_BATCH).await > 0 {
                let mut changes = Vec::with_capacity(taken.len());
                let mut flushes = Vec::new();
                for item in taken.drain(..) {
                    match item {
                        Item::Change(c) => changes.push(c),
                        Item::Flush(done) => flushes.push(done),
                    }
                }
                if !changes.is_empty() {
                    write(changes).await;
                }
                for done in flushes {
                    let _ = done.send(());
                }
            }
        });
        true
    }

    pub(crate) fn is_on(&self) -> bool {
        self.tx.get().is_some()
    }

    /// Queues `change` behind those sent before it; nothing before
    /// [`start`](Self::start).
    pub(crate) fn send(&self, change: C) {
        if let Some(tx) = self.tx.get() {
            let _ = tx.send(Item::Change(change));
        }
    }

    /// Waits until every change sent so far is written (or its write
    /// failed); at once when not started.
    pub(crate) async fn flush(&self) {
        let Some(tx) = self.tx.get() else {
            return;
        };
        let (done, flushed) = oneshot::channel();
        if tx.send(Item::Flush(done)).is_ok() {
            let _ = flushed.await;
        }
    }
}
