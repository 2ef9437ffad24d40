//! How many worker processes live at once, and how long an idle one lives.
//!
//! Every trigger worker holds a permit of `--max-workers` while its process lives. A call
//! that needs a new worker when none is left stops the least recently used idle worker
//! (no call running on it, nobody about to use it) and takes its permit; when every live
//! worker is busy the call waits (it is queued, never failed) until one is free. Separately,
//! a reaper stops workers idle for longer than `--worker-idle-timeout`. A stopped worker is
//! started again by the next call for its trigger; with the fork server that takes a few
//! milliseconds plus the plugin's import. What a plugin keeps in module globals starts
//! over then (`influxdb3_local.cache` lives in the worker too and starts over as well).

use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use parking_lot::Mutex;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::worker::Worker;

/// A trigger's place for one worker process.
#[derive(Debug, Default)]
pub(crate) struct WorkerSlot {
    /// The live worker and the permit it holds.
    pub(super) worker: tokio::sync::Mutex<Option<(Arc<Worker>, Option<OwnedSemaphorePermit>)>>,
    /// Invocations running on it (an asynchronous trigger picks the least busy slot).
    pub(super) busy: std::sync::atomic::AtomicUsize,
    /// When it was last handed to a call, ms since the pool started.
    last_used: AtomicU64,
}

impl WorkerSlot {
    /// Whether the worker in `held` may be stopped now: dead, or idle (no call running,
    /// nobody holding it but the slot).
    fn stoppable(held: &Option<(Arc<Worker>, Option<OwnedSemaphorePermit>)>) -> bool {
        match held {
            Some((w, _)) => w.is_dead() || Arc::strong_count(w) == 1,
            None => false,
        }
    }
}

/// The cap on live workers and the idle reaper.
#[derive(Debug)]
pub(crate) struct WorkerPool {
    /// `None`: no cap.
    permits: Option<Arc<Semaphore>>,
    max: usize,
    idle_timeout: Option<Duration>,
    slots: Mutex<Vec<Weak<WorkerSlot>>>,
    started: Instant,
}

impl WorkerPool {
    /// `max` live workers (0: no cap); workers idle past `idle_timeout` are stopped.
    pub(crate) fn new(max: usize, idle_timeout: Option<Duration>) -> Arc<Self> {
        let pool = Arc::new(Self {
            permits: (max > 0).then(|| Arc::new(Semaphore::new(max))),
            max,
            idle_timeout,
            slots: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        if let Some(idle) = idle_timeout
            && let Ok(rt) = tokio::runtime::Handle::try_current()
        {
            rt.spawn(reap(Arc::downgrade(&pool), idle));
        }
        pool
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Mark `slot` as used now.
    pub(super) fn touch(&self, slot: &WorkerSlot) {
        slot.last_used.store(self.now_ms(), Ordering::Relaxed);
    }

    /// Remember a slot that now holds a worker (for eviction and reaping).
    pub(super) fn register(&self, slot: &Arc<WorkerSlot>) {
        let mut slots = self.slots.lock();
        if slots.len() > 64 && slots.len().is_power_of_two() {
            slots.retain(|s| s.strong_count() > 0);
        }
        if !slots.iter().any(|s| s.as_ptr() == Arc::as_ptr(slot)) {
            slots.push(Arc::downgrade(slot));
        }
    }

    /// A permit for one more live worker: at once while under the cap; else by stopping
    /// the least recently used idle worker; else by waiting for one to be stopped or to
    /// exit. `None` without a cap.
    pub(super) async fn acquire(&self) -> Option<OwnedSemaphorePermit> {
        let permits = self.permits.as_ref()?;
        let mut logged = false;
        loop {
            if let Ok(p) = Arc::clone(permits).try_acquire_owned() {
                return Some(p);
            }
            if self.evict_one() {
                continue;
            }
            if !logged {
                tracing::debug!(max = self.max, "every worker is busy: the call waits for one (--max-workers)");
                logged = true;
            }
            // Busy workers free their permits by exiting, not by finishing a call, so look
            // for a newly idle one now and then.
            if let Ok(Ok(p)) =
                tokio::time::timeout(Duration::from_millis(50), Arc::clone(permits).acquire_owned()).await
            {
                return Some(p);
            }
        }
    }

    /// Stop the least recently used stoppable worker; whether one was stopped.
    fn evict_one(&self) -> bool {
        let slots: Vec<Arc<WorkerSlot>> = self.slots.lock().iter().filter_map(Weak::upgrade).collect();
        let mut candidates: Vec<(u64, Arc<WorkerSlot>)> = slots
            .into_iter()
            .filter(|s| s.worker.try_lock().is_ok_and(|held| WorkerSlot::stoppable(&held)))
            .map(|s| (s.last_used.load(Ordering::Relaxed), s))
            .collect();
        candidates.sort_by_key(|(used, _)| *used);
        for (_, slot) in candidates {
            if let Ok(mut held) = slot.worker.try_lock()
                && WorkerSlot::stoppable(&held)
            {
                // Dropping the worker kills its process group and returns its permit.
                if let Some((w, _)) = held.take() {
                    tracing::debug!(pid = ?w.pid(), "stopped the least recently used idle worker for another trigger");
                }
                return true;
            }
        }
        false
    }

    /// Stop workers idle for longer than the idle timeout.
    fn reap_idle(&self) {
        let Some(idle) = self.idle_timeout else { return };
        let now = self.now_ms();
        let idle_ms = idle.as_millis() as u64;
        let slots: Vec<Arc<WorkerSlot>> = self.slots.lock().iter().filter_map(Weak::upgrade).collect();
        for slot in slots {
            if now.saturating_sub(slot.last_used.load(Ordering::Relaxed)) < idle_ms {
                continue;
            }
            if let Ok(mut held) = slot.worker.try_lock()
                && WorkerSlot::stoppable(&held)
                && let Some((w, _)) = held.take()
            {
                tracing::debug!(pid = ?w.pid(), idle = ?idle, "stopped an idle worker (--worker-idle-timeout)");
            }
        }
    }
}

async fn reap(pool: Weak<WorkerPool>, idle: Duration) {
    let every = (idle / 4).clamp(Duration::from_millis(50), Duration::from_secs(5));
    loop {
        tokio::time::sleep(every).await;
        match pool.upgrade() {
            Some(p) => p.reap_idle(),
            None => return,
        }
    }
}
