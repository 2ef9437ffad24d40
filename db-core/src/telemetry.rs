//! Prometheus metrics (served at `/metrics`) and logging setup.

use std::{fmt, time::Duration};

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Accepted line-protocol lines.
pub const WRITE_LINES: &str = "weir_write_lines";
/// Rejected line-protocol lines.
pub const WRITE_LINES_REJECTED: &str = "weir_write_lines_rejected";
/// Line-protocol bytes received.
pub const WRITE_BYTES: &str = "weir_write_bytes";
/// WAL flush latency.
pub const WAL_FLUSH_DURATION: &str = "weir_wal_flush_duration_seconds";
/// WAL bytes written.
pub const WAL_FLUSH_BYTES: &str = "weir_wal_flush_bytes";
/// Failed WAL flushes.
pub const WAL_FLUSH_ERRORS: &str = "weir_wal_flush_errors";
/// Queries run.
pub const QUERIES: &str = "weir_queries";
/// Failed queries.
pub const QUERY_ERRORS: &str = "weir_query_errors";
/// Query latency (planning and execution to the last batch).
pub const QUERY_DURATION: &str = "weir_query_duration_seconds";
/// Snapshots persisted.
pub const SNAPSHOTS: &str = "weir_snapshots";
/// Bytes of WAL kept in storage for each enabled WAL trigger (not yet processed by it).
pub const TRIGGER_RETAINED_WAL_BYTES: &str = "weir_trigger_retained_wal_bytes";
/// WAL files with rows for each enabled WAL trigger that it has not processed yet.
pub const TRIGGER_LAG_FILES: &str = "weir_trigger_lag_files";

/// Labels of per-trigger metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TriggerLabels {
    /// Database.
    pub db: String,
    /// Trigger.
    pub trigger: String,
}

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    write_lines: Counter,
    write_lines_rejected: Counter,
    write_bytes: Counter,
    wal_flush_duration: Histogram,
    wal_flush_bytes: Counter,
    wal_flush_errors: Counter,
    queries: Counter,
    query_errors: Counter,
    query_duration: Histogram,
    snapshots: Counter,
    trigger_retained_wal_bytes: Family<TriggerLabels, Gauge>,
    trigger_lag_files: Family<TriggerLabels, Gauge>,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_buckets() -> impl Iterator<Item = f64> {
    [0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0].into_iter()
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A fresh registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        let m = Self {
            write_lines: Counter::default(),
            write_lines_rejected: Counter::default(),
            write_bytes: Counter::default(),
            wal_flush_duration: Histogram::new(latency_buckets()),
            wal_flush_bytes: Counter::default(),
            wal_flush_errors: Counter::default(),
            queries: Counter::default(),
            query_errors: Counter::default(),
            query_duration: Histogram::new(latency_buckets()),
            snapshots: Counter::default(),
            trigger_retained_wal_bytes: Family::default(),
            trigger_lag_files: Family::default(),
            registry: Registry::default(),
        };
        registry.register(WRITE_LINES, "Line-protocol lines accepted", m.write_lines.clone());
        registry.register(WRITE_LINES_REJECTED, "Line-protocol lines rejected", m.write_lines_rejected.clone());
        registry.register(WRITE_BYTES, "Line-protocol bytes received", m.write_bytes.clone());
        registry.register(WAL_FLUSH_DURATION, "Time to write one WAL file durably", m.wal_flush_duration.clone());
        registry.register(WAL_FLUSH_BYTES, "Bytes written to WAL files", m.wal_flush_bytes.clone());
        registry.register(WAL_FLUSH_ERRORS, "WAL files that failed to write", m.wal_flush_errors.clone());
        registry.register(QUERIES, "SQL queries run", m.queries.clone());
        registry.register(QUERY_ERRORS, "SQL queries that failed", m.query_errors.clone());
        registry.register(QUERY_DURATION, "SQL query latency", m.query_duration.clone());
        registry.register(SNAPSHOTS, "Snapshots persisted to Parquet", m.snapshots.clone());
        registry.register(
            TRIGGER_RETAINED_WAL_BYTES,
            "WAL bytes kept in storage for a WAL trigger that has not processed them",
            m.trigger_retained_wal_bytes.clone(),
        );
        registry.register(
            TRIGGER_LAG_FILES,
            "WAL files with rows for a WAL trigger that it has not processed",
            m.trigger_lag_files.clone(),
        );
        Self { registry, ..m }
    }

    /// Record a write request.
    pub fn observe_write(&self, accepted: usize, rejected: usize, bytes: usize) {
        self.write_lines.inc_by(accepted as u64);
        self.write_lines_rejected.inc_by(rejected as u64);
        self.write_bytes.inc_by(bytes as u64);
    }

    /// Record a WAL flush.
    pub fn observe_wal_flush(&self, duration: Duration, bytes: usize, ok: bool) {
        self.wal_flush_duration.observe(duration.as_secs_f64());
        if ok {
            self.wal_flush_bytes.inc_by(bytes as u64);
        } else {
            self.wal_flush_errors.inc();
        }
    }

    /// Record a query.
    pub fn observe_query(&self, duration: Duration, ok: bool) {
        self.queries.inc();
        self.query_duration.observe(duration.as_secs_f64());
        if !ok {
            self.query_errors.inc();
        }
    }

    /// Record a snapshot.
    pub fn observe_snapshot(&self) {
        self.snapshots.inc();
    }

    /// Set the per-trigger WAL gauges to `(db, trigger, lag files, retained bytes)` for
    /// every enabled WAL trigger (others disappear).
    pub fn set_trigger_lag(&self, rows: &[(String, String, u64, u64)]) {
        self.trigger_retained_wal_bytes.clear();
        self.trigger_lag_files.clear();
        for (db, trigger, files, bytes) in rows {
            let labels = TriggerLabels { db: db.clone(), trigger: trigger.clone() };
            self.trigger_lag_files.get_or_create(&labels).set(i64::try_from(*files).unwrap_or(i64::MAX));
            self.trigger_retained_wal_bytes.get_or_create(&labels).set(i64::try_from(*bytes).unwrap_or(i64::MAX));
        }
    }

    /// Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Install the global tracing subscriber with an EnvFilter expression.
pub fn init_logging(filter: &str) {
    let filter =
        tracing_subscriber::EnvFilter::try_new(filter).unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour_logs())
        .try_init();
}

/// Colour in log lines only on a terminal, and never with `NO_COLOR` set (no-color.org).
pub fn colour_logs() -> bool {
    use std::io::IsTerminal as _;
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}
