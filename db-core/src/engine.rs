//! The processing engine, core side: triggers run in `weir-plugin-host`, reached over one
//! `weir.plugin.v1` session. The [`Engine`] ties these together:
//!
//! | module | concern |
//! |---|---|
//! | [`host_process`] | starting and supervising a plugin host this process owns |
//! | [`session`] | the session: connecting with backoff, typed request/reply, the host's queries and writes |
//! | [`delivery`] | WAL triggers: the WAL index, per-trigger cursors, in-order at-least-once delivery, retention |
//! | [`checkpoint`] | durable per-trigger checkpoints |
//! | [`calls`] | schedule and request triggers, error behaviours |
//! | [`admin`] | package installs, plugin files and uploads, dry runs |
//! | [`state`] | log lines and trigger states behind the system tables |
//! | [`write_path`] | what the engine needs of the write path (a trait) |
//!
//! The engine learns about trigger changes from the catalog ([`CatalogObserver`]): every
//! change made through any API (and the engine's own `disable` error behaviour) reaches it
//! before the change is acknowledged, so no endpoint can forget to tell it.

pub mod admin;
pub mod calls;
pub mod checkpoint;
pub mod delivery;
pub mod error;
pub mod host_process;
pub mod lp_arrow;
pub mod session;
pub mod state;
mod tasks;
#[cfg(test)]
mod tests;
pub mod write_path;

pub use admin::TestOutcome;
pub use calls::{HttpAnswer, HttpCall};
pub use error::{EngineError, HostErrorKind, Result};
pub use session::{ConnectError, GrpcConnector, HostConnector, HostStream};
pub use write_path::{WalRows, WriteError, WritePath};

use std::{collections::HashMap, path::PathBuf, sync::Arc, time::Duration};

use arrow::{ipc::writer::StreamWriter, record_batch::RecordBatch};
use futures::TryStreamExt;
use parking_lot::Mutex;
use tokio::sync::watch;
use weir_proto::plugin::v1::{self as pb, core_message};

use crate::{
    catalog::{Catalog, CatalogChange, CatalogObserver, TriggerDef},
    query::{
        QueryExecutor, QueryParams,
        system::{EngineLogRow, EngineView, PluginFileRow, TriggerStatus},
    },
    storage::Storage,
    telemetry::Metrics,
    time::TimeProvider,
    write_buffer::{FlushListener, FlushedWal},
};
use checkpoint::{Checkpoints, TriggerKey};
use delivery::Delivery;
use session::HostLink;
use state::{EngineState, LogLevel};
use tasks::Tasks;

/// Engine settings.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Plugin directory (for a host this process starts).
    pub plugin_dir: PathBuf,
    /// Connect to this host instead of starting one.
    pub host_url: Option<String>,
    /// Interpreter the host makes its venv from.
    pub python: String,
    /// Per-invocation timeout.
    pub plugin_timeout: Duration,
    /// The host binary (default: `weir-plugin-host` next to this executable).
    pub host_bin: Option<PathBuf>,
    /// `--package-manager` for a host this process starts (pip, uv, disabled).
    pub package_manager: String,
    /// Session token for the host: given (`--plugin-host-token`) for a host started
    /// elsewhere, generated for one this process starts.
    pub host_token: Option<String>,
    /// `--plugin-repo` for a host this process starts.
    pub plugin_repo: Option<String>,
    /// `--virtual-env` for a host this process starts (default: `<plugin_dir>/.venv`).
    pub virtual_env: Option<PathBuf>,
    /// A WAL trigger holding more WAL than this is stopped (`None`: never).
    pub max_wal_lag_bytes: Option<u64>,
}

impl EngineConfig {
    /// Defaults for a host at `plugin_dir` (tests and tools).
    pub fn new(plugin_dir: PathBuf) -> Self {
        Self {
            plugin_dir,
            host_url: None,
            python: "python3".to_string(),
            plugin_timeout: Duration::from_secs(30),
            host_bin: None,
            package_manager: "pip".to_string(),
            host_token: None,
            plugin_repo: None,
            virtual_env: None,
            max_wal_lag_bytes: Some(DEFAULT_MAX_WAL_LAG),
        }
    }
}

/// Default `--trigger-max-wal-lag`: 2 GiB.
pub const DEFAULT_MAX_WAL_LAG: u64 = 2 << 30;

/// What [`Engine::start`] needs.
#[derive(Debug)]
pub struct EngineArgs {
    /// Settings.
    pub config: EngineConfig,
    /// The catalog (triggers).
    pub catalog: Arc<Catalog>,
    /// Plugin writes and WAL files.
    pub writes: Arc<dyn WritePath>,
    /// Plugin queries.
    pub query: Arc<dyn QueryExecutor>,
    /// Where checkpoints are persisted.
    pub storage: Storage,
    /// The clock for timestamps (sleeps use tokio's clock).
    pub time: Arc<dyn TimeProvider>,
    /// How sessions are opened ([`GrpcConnector`] for a real host).
    pub connector: Arc<dyn HostConnector>,
    /// Where engine metrics go.
    pub metrics: Arc<Metrics>,
}

/// A schedule trigger's task and the definition it runs.
type ScheduleTask = (Arc<TriggerDef>, tokio::task::AbortHandle);

/// The engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    catalog: Arc<Catalog>,
    writes: Arc<dyn WritePath>,
    query: Arc<dyn QueryExecutor>,
    time: Arc<dyn TimeProvider>,
    connector: Arc<dyn HostConnector>,
    metrics: Arc<Metrics>,
    state: EngineState,
    link: HostLink,
    checkpoints: Checkpoints,
    delivery: Delivery,
    /// The task of each enabled schedule trigger, with the definition it runs.
    schedules: Mutex<HashMap<TriggerKey, ScheduleTask>>,
    /// Held while a sync reads the catalog and applies it (WAL and schedule tasks).
    sync_lock: Mutex<()>,
    /// Short-lived tasks (plugin queries and writes, calls, delivery), waited for at
    /// shutdown.
    tasks: Tasks,
    /// The long-running loops (session, housekeeping), ended at shutdown.
    loops: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The supervision of a host this process started, and its stop signal.
    host_task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    host_stop: watch::Sender<bool>,
    /// Set by shutdown: no task starts any more.
    stopping: std::sync::atomic::AtomicBool,
    /// Set once [`Engine::resume`] has loaded the checkpoints: until then every WAL file
    /// is kept (a trigger may need it).
    resumed: std::sync::atomic::AtomicBool,
}

/// RFC 3339 (UTC, milliseconds) of a time in ns.
fn rfc3339(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ipc(batches: &[RecordBatch]) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    ipc_with_schema(first.schema_ref(), batches)
}

/// An IPC stream with `schema` even when there are no batches (an empty answer).
fn ipc_with_schema(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> std::result::Result<Vec<u8>, arrow::error::ArrowError> {
    let mut w = StreamWriter::try_new(Vec::new(), schema)?;
    for b in batches {
        w.write(b)?;
    }
    w.finish()?;
    w.into_inner()
}

fn trigger_message(db: &str, t: &TriggerDef) -> pb::Trigger {
    pb::Trigger {
        database: db.to_string(),
        name: t.name.to_string(),
        plugin_filename: t.plugin_filename.clone(),
        specification: t.specification.to_string(),
        arguments: t.arguments.as_ref().map(|a| pb::Arguments { values: a.clone().into_iter().collect() }),
        run_async: t.run_async,
        workers: t.worker_count(),
    }
}

impl Engine {
    /// Create the engine and start its tasks: the host (started here, or connected to at
    /// `host_url`), the session, the schedules and the housekeeping. WAL triggers start
    /// with [`Engine::resume`]. The caller registers it as the write buffer's
    /// [`FlushListener`].
    pub fn start(args: EngineArgs) -> Arc<Self> {
        let engine = Arc::new(Self {
            checkpoints: Checkpoints::new(args.storage),
            config: args.config,
            catalog: args.catalog,
            writes: args.writes,
            query: args.query,
            time: args.time,
            connector: args.connector,
            metrics: args.metrics,
            state: EngineState::default(),
            link: HostLink::new(),
            delivery: Delivery::new(),
            schedules: Mutex::new(HashMap::new()),
            sync_lock: Mutex::new(()),
            tasks: Tasks::default(),
            loops: Mutex::new(Vec::new()),
            host_task: Mutex::new(None),
            host_stop: watch::channel(false).0,
            stopping: std::sync::atomic::AtomicBool::new(false),
            resumed: std::sync::atomic::AtomicBool::new(false),
        });
        engine.catalog.subscribe(Arc::downgrade(&engine) as std::sync::Weak<dyn CatalogObserver>);
        let (url_tx, url_rx) = watch::channel(engine.config.host_url.clone());
        let encoder = Arc::clone(&engine);
        let loops = vec![
            tokio::spawn(Arc::clone(&engine).connect_loop(url_rx)).abort_handle(),
            tokio::spawn(Arc::clone(&engine).housekeeping()).abort_handle(),
            tokio::spawn(async move { encoder.delivery.encoder().await }).abort_handle(),
        ];
        if engine.config.host_url.is_none() {
            let stop = engine.host_stop.subscribe();
            *engine.host_task.lock() = Some(tokio::spawn(host_process::supervise(engine.config.clone(), url_tx, stop)));
        }
        *engine.loops.lock() = loops;
        engine.sync_schedules();
        engine
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(std::sync::atomic::Ordering::Acquire)
    }

    fn now(&self) -> i64 {
        self.time.now_ns()
    }

    fn record(&self, db: &str, trigger: &str, level: LogLevel, text: impl Into<String>) {
        self.state.push(db, trigger, level, text.into(), self.now());
    }

    /// Whether a session with the plugin host is open.
    pub fn connected(&self) -> bool {
        self.link.is_connected()
    }

    /// After a restart (and before the server takes writes): load the trigger checkpoints,
    /// list the WAL files kept for them, and start every enabled WAL trigger from its
    /// checkpoint (a trigger without one starts with what is flushed from now on).
    pub async fn resume(self: &Arc<Self>) -> std::result::Result<(), checkpoint::Error> {
        let saved = self.checkpoints.load_saved().await;
        let last = self.writes.last_wal_seq();
        let (saved, result) = match saved {
            Ok(s) => (s, Ok(())),
            Err(e) => (HashMap::new(), Err(e)),
        };
        for db in self.catalog.databases() {
            for t in db.triggers.values().filter(|t| !t.disabled && t.spec().is_wal()) {
                let key = (db.id, Arc::clone(&t.name));
                let cp = saved.get(&key).cloned().unwrap_or(checkpoint::Checkpoint { wal_seq: last, stopped: None });
                self.checkpoints.set(key, cp);
            }
        }
        let lowest = self.checkpoints.retain_after();
        match self.writes.wal_files().await {
            Ok(files) => {
                let kept: Vec<(u64, u64)> =
                    files.into_iter().filter(|(seq, _)| lowest.is_some_and(|l| *seq > l)).collect();
                if !kept.is_empty() {
                    tracing::info!(files = kept.len(), "WAL triggers resume from their checkpoints");
                }
                self.delivery.record_stored(&kept);
            }
            Err(e) => tracing::error!(error = %e, "cannot list the WAL files kept for triggers"),
        }
        self.save_checkpoints_now().await;
        self.resumed.store(true, std::sync::atomic::Ordering::Release);
        self.sync_wal_triggers();
        result
    }

    /// Periodic work: persist changed checkpoints, report suppressed log lines, enforce
    /// the retention policy, forget WAL files no trigger needs, update metrics.
    async fn housekeeping(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(e) = self.checkpoints.save_if_dirty().await {
                tracing::warn!(error = %e, "cannot persist trigger checkpoints; retrying");
            }
            self.state.sweep(self.now());
            self.enforce_max_lag();
            match FlushListener::retain_after(self.as_ref()) {
                Some(seq) => self.delivery.forget_through(seq),
                None => self.delivery.forget_through(self.delivery.latest()),
            }
            self.update_metrics();
        }
    }

    fn update_metrics(&self) {
        let rows: Vec<(String, String, u64, u64)> = self
            .checkpoints
            .all()
            .into_iter()
            .filter_map(|((db_id, name), cp)| {
                let db = self.catalog.db_by_id(db_id)?;
                let def = db.triggers.get(name.as_ref())?;
                let (files, bytes) =
                    if cp.stopped.is_some() { (0, 0) } else { self.delivery.lag(cp.wal_seq, db_id, def.spec()) };
                Some((db.name.to_string(), name.to_string(), files, bytes))
            })
            .collect();
        self.metrics.set_trigger_lag(&rows);
    }

    async fn save_checkpoints_now(&self) {
        if let Err(e) = self.checkpoints.save_now().await {
            tracing::warn!(error = %e, "cannot persist trigger checkpoints; retrying");
        }
    }

    /// Stop the engine for shutdown, before the WAL's final flush: no new batches or ticks
    /// start; in-flight work (plugin writes and queries, calls) gets up to `max` to finish;
    /// checkpoints are saved (a batch whose answer did not arrive is delivered again after
    /// the restart); then the session closes and a host this process started is stopped.
    pub async fn shutdown(&self, max: Duration) {
        self.delivery_stop_all();
        if tokio::time::timeout(max, self.tasks.idle(0)).await.is_err() {
            tracing::warn!(tasks = self.tasks.len(), "engine work still running at shutdown; not waiting longer");
        }
        self.save_checkpoints_now().await;
        // A host this process started stops with its workers (SIGTERM, then SIGKILL).
        let _ = self.host_stop.send(true);
        let host_task = self.host_task.lock().take();
        if let Some(task) = host_task {
            let _ = task.await;
        }
        for l in self.loops.lock().drain(..) {
            l.abort();
        }
    }

    fn delivery_stop_all(&self) {
        let _order = self.sync_lock.lock();
        self.stopping.store(true, std::sync::atomic::Ordering::Release);
        self.delivery.stop_all();
        for (_, (_, task)) in self.schedules.lock().drain() {
            task.abort();
        }
    }

    /// Apply a catalog change: trigger states, checkpoints (durable before the change is
    /// acknowledged), tasks, and the host's definitions.
    async fn apply_change(self: &Arc<Self>, change: CatalogChange) {
        match change {
            CatalogChange::Trigger { db, db_id, name } => {
                let def = self.catalog.db_by_id(db_id).and_then(|d| d.triggers.get(name.as_ref()).cloned());
                let key = (db_id, Arc::clone(&name));
                match &def {
                    // Disabled triggers keep their state (why they were disabled stays
                    // readable) and hold no WAL files back.
                    Some(t) if t.disabled => self.checkpoints.remove(&key),
                    // Created or enabled (again): a fresh start from what is flushed from
                    // now on; a changed definition keeps its checkpoint.
                    Some(t) => {
                        if t.spec().is_wal() {
                            let fresh = self.checkpoints.get(&key).is_none();
                            self.checkpoints.get_or_insert(key, self.writes.last_wal_seq());
                            if fresh {
                                self.state.clear(db_id, &name);
                            }
                        } else if self.state.trigger(db_id, &name).is_some_and(|s| s.stopped.is_some()) {
                            self.state.clear(db_id, &name);
                        }
                    }
                    None => {
                        self.checkpoints.remove(&key);
                        self.state.clear(db_id, &name);
                    }
                }
                self.save_checkpoints_now().await;
                self.sync_wal_triggers();
                self.sync_schedules();
                let body = match def {
                    Some(t) if !t.disabled => {
                        core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(trigger_message(&db, &t)) })
                    }
                    _ => core_message::Body::TriggerDrop(pb::TriggerDrop {
                        database: db.to_string(),
                        name: name.to_string(),
                    }),
                };
                self.link.notify(body).await;
            }
            CatalogChange::DatabaseDeleted { db, db_id, triggers } => {
                self.checkpoints.retain(|(id, _)| *id != db_id);
                self.save_checkpoints_now().await;
                self.sync_wal_triggers();
                self.sync_schedules();
                for name in triggers {
                    self.state.clear(db_id, &name);
                    let body = core_message::Body::TriggerDrop(pb::TriggerDrop {
                        database: db.to_string(),
                        name: name.to_string(),
                    });
                    self.link.notify(body).await;
                }
            }
        }
    }

    /// Whether `--skip-to-now` applies to this trigger (a WAL trigger): checked before the
    /// trigger is enabled, so a refused request changes nothing.
    pub fn check_skip_to_now(&self, db: &str, name: &str) -> Result<()> {
        match self.catalog.db(db).and_then(|d| d.triggers.get(name).cloned()) {
            Some(t) if t.spec().is_wal() => Ok(()),
            Some(_) => Err(EngineError::Invalid(format!("--skip-to-now applies to WAL triggers; {name:?} is not one"))),
            // Not found: the enable itself says so.
            None => Ok(()),
        }
    }

    /// Start a stopped WAL trigger again from the newest data (`enable --skip-to-now`).
    pub async fn skip_trigger_to_now(self: &Arc<Self>, db: &str, name: &str) -> Result<()> {
        let schema = self.catalog.db(db).ok_or_else(|| EngineError::Invalid(format!("database {db:?} not found")))?;
        match schema.triggers.get(name) {
            Some(t) if t.spec().is_wal() && !t.disabled => self.skip_to_now(schema.id, name).await,
            Some(_) => {
                Err(EngineError::Invalid(format!("--skip-to-now applies to enabled WAL triggers; {name:?} is not one")))
            }
            None => Err(EngineError::Invalid(format!("trigger {name:?} not found in database {db:?}"))),
        }
    }

    async fn plugin_query(&self, q: pb::Query) -> pb::QueryResult {
        let params = QueryParams::Named(q.params.into_iter().collect());
        let result = async {
            let stream = self.query.query_sql(&q.database, &q.sql, params).await.map_err(|e| e.to_string())?;
            let schema = stream.schema();
            let batches: Vec<RecordBatch> = stream.try_collect().await.map_err(|e| e.to_string())?;
            ipc_with_schema(&schema, &batches).map_err(|e| e.to_string())
        }
        .await;
        match result {
            // The session carries messages up to its limit: a larger answer is the query's
            // error, not a broken session.
            Ok(arrow_ipc) if arrow_ipc.len() > delivery::MAX_BATCH_BYTES => pb::QueryResult {
                error: format!(
                    "the answer to this query is {} bytes of Arrow, over the {} bytes a plugin query may return; \
                     select fewer rows or columns (LIMIT, WHERE)",
                    arrow_ipc.len(),
                    delivery::MAX_BATCH_BYTES
                ),
                arrow_ipc: Vec::new(),
            },
            Ok(arrow_ipc) => pb::QueryResult { error: String::new(), arrow_ipc },
            Err(error) => pb::QueryResult { error, arrow_ipc: Vec::new() },
        }
    }

    /// Write plugin output: all lines or none, nanosecond precision.
    async fn plugin_write(&self, db: &str, lines: &[String], no_sync: bool) -> std::result::Result<(), WriteError> {
        self.writes.write_lines(db, &lines.join("\n"), no_sync).await
    }

    /// Commit an invocation's buffered writes (it succeeded). A rejected write-back is
    /// logged as InfluxDB 3 does, and is the invocation's failure (its error behaviour
    /// applies): the text says which database refused what.
    async fn commit_writes(
        &self,
        db: &str,
        trigger: &str,
        writes: Vec<pb::DatabaseWrites>,
    ) -> std::result::Result<(), String> {
        let mut failed = Vec::new();
        for w in writes {
            if let Err(e) = self.plugin_write(&w.database, &w.lines, false).await {
                let text = format!("error writing back lines to {}: {e}", w.database);
                self.record(db, trigger, LogLevel::Error, text.clone());
                failed.push(text);
            }
        }
        if failed.is_empty() { Ok(()) } else { Err(failed.join("; ")) }
    }
}

#[async_trait::async_trait]
impl CatalogObserver for Engine {
    async fn changed(self: Arc<Self>, change: CatalogChange) {
        self.apply_change(change).await;
    }
}

impl FlushListener for Engine {
    fn wants(&self, db_id: u32) -> bool {
        self.catalog.db_by_id(db_id).is_some_and(|db| db.triggers.values().any(|t| !t.disabled && t.spec().is_wal()))
    }

    fn retain_after(&self) -> Option<u64> {
        if !self.resumed.load(std::sync::atomic::Ordering::Acquire) {
            return Some(0);
        }
        self.checkpoints.retain_after()
    }

    fn flushed(&self, wal: FlushedWal) {
        self.wal_flushed(wal);
    }
}

#[async_trait::async_trait]
impl EngineView for Engine {
    fn log_rows(&self, database: &str) -> Vec<EngineLogRow> {
        self.state.log_rows(database)
    }

    fn trigger_status(&self, db_id: u32, t: &TriggerDef) -> TriggerStatus {
        let s = self.state.trigger(db_id, &t.name).unwrap_or_default();
        let cp = self.checkpoints.get(&(db_id, Arc::clone(&t.name))).filter(|_| t.spec().is_wal() && !t.disabled);
        let lag =
            cp.as_ref().filter(|cp| cp.stopped.is_none()).map(|cp| self.delivery.lag(cp.wal_seq, db_id, t.spec()));
        let lag_stopped = cp.as_ref().and_then(|cp| cp.stopped.clone());
        let lagging = match (self.config.max_wal_lag_bytes, lag) {
            (Some(max), Some((_, bytes))) => bytes > max / 2,
            _ => false,
        };
        let state = match () {
            _ if t.disabled => "DISABLED",
            _ if s.stopped.is_some() || lag_stopped.is_some() || !self.link.is_connected() => "STOPPED",
            _ if lagging => "LAGGING",
            _ => "RUNNING",
        };
        TriggerStatus {
            state,
            last_error: lag_stopped.or(s.stopped).or(s.last_error),
            last_error_at: s.last_error_at,
            attempts: s.attempts,
            runs: s.runs,
            failures: s.failures,
            missed_ticks: s.missed_ticks,
            checkpoint: cp.map(|cp| cp.wal_seq),
            lag: lag.map(|(files, _)| files),
            retained_wal_bytes: lag.map(|(_, bytes)| bytes),
        }
    }

    async fn plugin_files(&self) -> std::result::Result<Vec<PluginFileRow>, String> {
        let files = Engine::plugin_files(self).await.map_err(|e| e.to_string())?;
        Ok(files
            .into_iter()
            .map(|f| PluginFileRow {
                plugin_name: f.plugin_name,
                file_name: f.file_name,
                file_path: f.file_path,
                size_bytes: f.size_bytes,
                last_modified_ms: f.last_modified_ms,
            })
            .collect())
    }
}
