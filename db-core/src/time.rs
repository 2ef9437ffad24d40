//! Time sources, injectable for tests.

use std::{
    fmt,
    sync::atomic::{AtomicI64, Ordering},
};

/// Provides "now".
pub trait TimeProvider: Send + Sync + fmt::Debug {
    /// Nanoseconds since the Unix epoch.
    fn now_ns(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemTime;

impl TimeProvider for SystemTime {
    fn now_ns(&self) -> i64 {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
    }
}

/// A settable clock for tests.
#[derive(Debug, Default)]
pub struct MockTime(AtomicI64);

impl MockTime {
    /// A clock reading `ns`.
    pub fn new(ns: i64) -> Self {
        Self(AtomicI64::new(ns))
    }

    /// Set the time.
    pub fn set(&self, ns: i64) {
        self.0.store(ns, Ordering::SeqCst);
    }
}

impl TimeProvider for MockTime {
    fn now_ns(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Format ns since the epoch as RFC 3339 (UTC).
pub fn format_rfc3339(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let nanos = ns.rem_euclid(1_000_000_000) as u32;
    chrono::DateTime::from_timestamp(secs, nanos)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true))
        .unwrap_or_else(|| ns.to_string())
}
