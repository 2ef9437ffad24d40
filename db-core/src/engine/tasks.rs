//! Ownership of the engine's short-lived tasks (plugin queries and writes, calls, delivery
//! loops), so shutdown can wait for them to finish before the WAL's final flush.

use std::{
    future::Future,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
};

use tokio::sync::Notify;

/// Counts running tasks and wakes a waiter when few enough are left.
#[derive(Debug, Default)]
pub(super) struct Tasks {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    running: AtomicUsize,
    changed: Notify,
}

/// Decrements the count when the task ends (also when it panics or is aborted).
struct Guard(Arc<Inner>);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.running.fetch_sub(1, Ordering::AcqRel);
        self.0.changed.notify_waiters();
    }
}

impl Tasks {
    /// Spawn a tracked task.
    pub(super) fn spawn<F>(&self, fut: F) -> tokio::task::AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.inner.running.fetch_add(1, Ordering::AcqRel);
        let guard = Guard(Arc::clone(&self.inner));
        tokio::spawn(async move {
            let _guard = guard;
            fut.await;
        })
        .abort_handle()
    }

    /// Tasks running now.
    pub(super) fn len(&self) -> usize {
        self.inner.running.load(Ordering::Acquire)
    }

    /// Wait until at most `left` tasks are running.
    pub(super) async fn idle(&self, left: usize) {
        loop {
            let changed = self.inner.changed.notified();
            if self.len() <= left {
                return;
            }
            changed.await;
        }
    }
}
