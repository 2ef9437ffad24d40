//! The processing engine, core side: triggers run in `weir-plugin-host`, reached over one
//! `weir.plugin.v1` session.
//!
//! - **Host process.** Without `--plugin-host-url`, `weir serve` starts `weir-plugin-host`
//!   (found next to its own executable) as a child that dies with it, and restarts it if
//!   it exits. With a URL it connects to a host started elsewhere. Either way the session
//!   reconnects with backoff.
//! - **WAL triggers.** The write buffer hands every flushed WAL file's rows to
//!   [`Engine`] (a bounded hand-off on the flusher's path: write acks never wait for a
//!   plugin). Each enabled trigger has its own bounded queue and task, so one slow plugin
//!   does not hold up another (a trigger 1,024 files behind skips files, logged in
//!   `system.processing_engine_logs`); a trigger's batches are delivered one at a time, in
//!   WAL order, and a batch whose session broke is sent again after reconnecting. Durable
//!   per-trigger checkpoints keep the WAL files a trigger has not finished and let it resume
//!   after a restart (at least once, in order).
//! - **Plugin calls.** Queries run on the query executor and come back as Arrow IPC;
//!   writes go through the normal write path; buffered writes arrive with the invocation's
//!   `Done` and are committed only when the call succeeded.
//! - **Logs** land in `system.processing_engine_logs`.

pub mod calls;
pub mod lp_arrow;
pub mod schedule;

pub use calls::{HttpAnswer, HttpCall};

use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arrow::{ipc::writer::StreamWriter, record_batch::RecordBatch};
use futures::TryStreamExt;
use parking_lot::Mutex;
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::{mpsc, oneshot, watch},
};
use tokio_stream::wrappers::ReceiverStream;
use weir_proto::plugin::v1::{self as pb, core_message, host_message, plugin_host_client::PluginHostClient};

use crate::{
    catalog::{Catalog, ErrorBehavior, TriggerDef, TriggerSpec},
    lp::Precision,
    query::{
        QueryExecutor, QueryParams,
        system::{EngineLog, LogLevel, PluginFileRow, PluginFiles},
    },
    storage::Storage,
    time::{SystemTime, TimeProvider},
    write_buffer::{FlushListener, FlushedWal, WriteBuffer},
};

/// Flushed WAL files waiting for the engine; beyond this a file is skipped for triggers
/// (and the skip logged) rather than blocking writes.
const FLUSH_QUEUE: usize = 4096;
/// Batches queued per trigger.
const TRIGGER_QUEUE: usize = 1024;
/// Batches of one trigger sent to the host before the oldest is answered.
const WINDOW: usize = 4;

/// The answer of a dry run (`/api/v3/plugin_test/wal`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TestOutcome {
    /// `LEVEL: text` lines the plugin logged.
    pub log_lines: Vec<String>,
    /// Lines it wrote (captured, not applied), by database.
    pub database_writes: BTreeMap<String, Vec<String>>,
    /// Input lines that could not be used, and the plugin's error.
    pub errors: Vec<String>,
    /// Schedule dry runs: the call time used (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_time: Option<String>,
    /// Request dry runs: the HTTP answer, when the plugin succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpAnswer>,
}

/// Errors of calls into the plugin host.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// This server runs without a processing engine.
    #[error("the processing engine is not running")]
    NotRunning,
    /// No session with the plugin host right now.
    #[error("the plugin host is not connected (it may be starting or restarting); try again")]
    Unavailable,
    /// The host's configuration refuses the call (nothing was run).
    #[error("{0}")]
    Refused(String),
    /// The host ran the call and it failed.
    #[error("{0}")]
    Failed(String),
    /// The plugin did not finish in time.
    #[error("{0}")]
    Timeout(String),
    /// The call's input is invalid (nothing was run).
    #[error("{0}")]
    Invalid(String),
    /// It already exists.
    #[error("{0}")]
    Exists(String),
    /// It does not exist.
    #[error("{0}")]
    Missing(String),
}

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
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<host_message::Body>>>>;

/// A schedule trigger's task and the definition it runs.
type ScheduleTask = (Arc<TriggerDef>, tokio::task::AbortHandle);

/// Per-trigger delivery queues, by (database id, trigger name).
type Queues = Mutex<HashMap<(u32, Arc<str>), mpsc::Sender<pb::WalBatch>>>;

/// One live session with the host.
#[derive(Debug)]
struct Session {
    /// Sequence number of the session (a new one after every reconnect).
    number: u64,
    tx: mpsc::Sender<pb::CoreMessage>,
    pending: Pending,
}

/// The engine.
#[derive(Debug)]
pub struct Engine {
    config: EngineConfig,
    catalog: Arc<Catalog>,
    buffer: Arc<WriteBuffer>,
    query: Arc<dyn QueryExecutor>,
    log: Arc<EngineLog>,
    next_id: AtomicU64,
    session: watch::Sender<Option<Arc<Session>>>,
    flushes: mpsc::Sender<FlushedWal>,
    flushes_rx: Mutex<Option<mpsc::Receiver<FlushedWal>>>,
    queues: Queues,
    storage: Storage,
    /// Per enabled WAL trigger: the last WAL file its plugin finished.
    checkpoints: Mutex<HashMap<(u32, Arc<str>), u64>>,
    checkpoints_dirty: std::sync::atomic::AtomicBool,
    /// The task of each enabled schedule trigger, with the definition it runs.
    schedules: Mutex<HashMap<(u32, Arc<str>), ScheduleTask>>,
}

/// Object path (below the node prefix) of the trigger checkpoints.
const CHECKPOINTS: &str = "engine/checkpoints.json";

fn checkpoint_key(db_id: u32, name: &str) -> String {
    format!("{db_id}/{name}")
}

impl FlushListener for Engine {
    fn wants(&self, db_id: u32) -> bool {
        self.catalog.db_by_id(db_id).is_some_and(|db| db.triggers.values().any(|t| !t.disabled && t.spec().is_wal()))
    }

    fn retain_after(&self) -> Option<u64> {
        self.checkpoints.lock().values().copied().min()
    }

    fn flushed(&self, wal: FlushedWal) {
        let seq = wal.seq;
        let dbs = wal.db_ids();
        if self.flushes.try_send(wal).is_err() {
            for db in dbs.iter().filter_map(|id| self.catalog.db_by_id(*id)) {
                self.record(&db.name, "", LogLevel::Error, format!(
                    "the processing engine is {FLUSH_QUEUE} WAL files behind: WAL file {seq} was not delivered to triggers"
                ));
            }
        }
    }
}

#[async_trait::async_trait]
impl PluginFiles for Engine {
    async fn plugin_files(&self) -> Result<Vec<PluginFileRow>, String> {
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

fn random_id_base() -> u64 {
    let mut b = [0u8; 8];
    let _ = getrandom::fill(&mut b);
    // Leave plenty of room before wrapping.
    u64::from_le_bytes(b) >> 2
}

fn now() -> i64 {
    SystemTime.now_ns()
}

/// RFC 3339 (UTC, milliseconds) of a time in ns.
fn rfc3339(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

fn ipc(batches: &[RecordBatch]) -> Result<Vec<u8>, arrow::error::ArrowError> {
    let Some(first) = batches.first() else { return Ok(Vec::new()) };
    ipc_with_schema(first.schema_ref(), batches)
}

/// An IPC stream with `schema` even when there are no batches (an empty answer).
fn ipc_with_schema(
    schema: &arrow::datatypes::SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<u8>, arrow::error::ArrowError> {
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
        specification: t.specification.clone(),
        arguments: t.arguments.as_ref().map(|a| pb::Arguments { values: a.clone().into_iter().collect() }),
        run_async: t.run_async,
        workers: t.workers.max(1),
    }
}

impl Engine {
    /// Create the engine, register it with the write buffer and start its tasks.
    pub fn start(
        config: EngineConfig,
        catalog: Arc<Catalog>,
        buffer: Arc<WriteBuffer>,
        query: Arc<dyn QueryExecutor>,
        log: Arc<EngineLog>,
        storage: Storage,
    ) -> Arc<Self> {
        let (flushes, flushes_rx) = mpsc::channel(FLUSH_QUEUE);
        let (session, _) = watch::channel(None);
        let engine = Arc::new(Self {
            config,
            catalog,
            buffer: Arc::clone(&buffer),
            query,
            log,
            // Random start: a host that outlived a previous core never matches a late reply
            // of the old session to a request of this one.
            next_id: AtomicU64::new(random_id_base()),
            session,
            flushes,
            flushes_rx: Mutex::new(Some(flushes_rx)),
            queues: Mutex::new(HashMap::new()),
            storage,
            checkpoints: Mutex::new(HashMap::new()),
            checkpoints_dirty: std::sync::atomic::AtomicBool::new(false),
            schedules: Mutex::new(HashMap::new()),
        });
        buffer.set_flush_listener(Arc::clone(&engine) as Arc<dyn FlushListener>);
        let files: Arc<dyn PluginFiles> = Arc::clone(&engine) as Arc<dyn PluginFiles>;
        engine.log.set_plugin_files(Arc::downgrade(&files));
        let (url_tx, url_rx) = watch::channel(engine.config.host_url.clone());
        if engine.config.host_url.is_none() {
            tokio::spawn(Arc::clone(&engine).supervise_host(url_tx));
        }
        tokio::spawn(Arc::clone(&engine).connect_loop(url_rx));
        tokio::spawn(Arc::clone(&engine).deliver_loop());
        tokio::spawn(Arc::clone(&engine).persist_checkpoints());
        engine.sync_schedules();
        engine
    }

    fn record(&self, db: &str, trigger: &str, level: LogLevel, text: impl Into<String>) {
        self.log.push(db, trigger, level, text.into(), now());
    }

    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Install packages (or a requirements file on the host) into the plugin venv; the
    /// package manager's output.
    pub async fn install(&self, packages: Vec<String>, requirements_file: String) -> Result<String, EngineError> {
        let body = core_message::Body::InstallPackages(pb::InstallPackages { packages, requirements_file });
        match self.request(body, Duration::from_secs(900), "the install").await? {
            host_message::Body::AdminResult(r) if r.ok => Ok(r.output),
            host_message::Body::AdminResult(r) if r.refused => Err(EngineError::Refused(r.error)),
            host_message::Body::AdminResult(r) => Err(EngineError::Failed(r.error)),
            other => Err(EngineError::Failed(format!("unexpected reply: {other:?}"))),
        }
    }

    /// The files of the plugin directory, as the host sees them.
    pub async fn plugin_files(&self) -> Result<Vec<pb::PluginFile>, EngineError> {
        let body = core_message::Body::ListPluginFiles(pb::ListPluginFiles {});
        match self.request(body, Duration::from_secs(30), "listing plugin files").await? {
            host_message::Body::PluginFiles(f) if f.error.is_empty() => Ok(f.files),
            host_message::Body::PluginFiles(f) => Err(EngineError::Failed(f.error)),
            other => Err(EngineError::Failed(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Fetch a `gh:` plugin into the host's cache (trigger creation); a clear error if it
    /// cannot be fetched.
    pub async fn fetch_plugin(&self, name: &str) -> Result<(), EngineError> {
        let body = core_message::Body::FetchPlugin(pb::FetchPlugin { name: name.to_string() });
        match self.request(body, Duration::from_secs(90), "fetching the plugin").await? {
            host_message::Body::AdminResult(r) if r.ok => Ok(()),
            host_message::Body::AdminResult(r) => Err(EngineError::Invalid(r.error)),
            other => Err(EngineError::Failed(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Write a plugin file or replace a plugin directory on the host (atomically).
    pub async fn put_plugin(&self, req: pb::PutPlugin) -> Result<(), EngineError> {
        match self.request(core_message::Body::PutPlugin(req), Duration::from_secs(120), "the upload").await? {
            host_message::Body::AdminResult(r) if r.ok => Ok(()),
            host_message::Body::AdminResult(r) => Err(match r.kind.as_str() {
                "invalid" => EngineError::Invalid(r.error),
                "exists" => EngineError::Exists(r.error),
                "missing" => EngineError::Missing(r.error),
                _ => EngineError::Failed(r.error),
            }),
            other => Err(EngineError::Failed(format!("unexpected reply: {other:?}"))),
        }
    }

    /// Send an admin request on the current session and wait up to `deadline` for its
    /// reply; `what` names it in the timeout error.
    async fn request(
        &self,
        body: core_message::Body,
        deadline: Duration,
        what: &str,
    ) -> Result<host_message::Body, EngineError> {
        let reply = self.send(body).await.ok_or(EngineError::Unavailable)?;
        match tokio::time::timeout(deadline, reply).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(EngineError::Unavailable),
            Err(_) => Err(EngineError::Failed(format!(
                "{what} did not finish within {}",
                humantime::format_duration(deadline)
            ))),
        }
    }

    /// Send an event (no reply) on the current session, if there is one.
    async fn notify(&self, body: core_message::Body) {
        let session = self.session.borrow().clone();
        if let Some(s) = session {
            let _ = s.tx.send(pb::CoreMessage { id: 0, body: Some(body) }).await;
        }
    }

    /// Dry-run a WAL plugin on `lp` (parsed without the catalog; nothing is written): the
    /// `/api/v3/plugin_test/wal` answer.
    pub async fn test_wal(
        &self,
        database: &str,
        plugin_filename: &str,
        lp: &str,
        arguments: Option<BTreeMap<String, String>>,
    ) -> Result<TestOutcome, EngineError> {
        let (tables, mut errors) = lp_arrow::tables(lp, now()).map_err(|e| EngineError::Failed(e.to_string()))?;
        let mut rows = Vec::with_capacity(tables.len());
        for (name, batch) in tables {
            let arrow_ipc = ipc(&[batch]).map_err(|e| EngineError::Failed(e.to_string()))?;
            rows.push(pb::TableRows { table_name: name, arrow_ipc });
        }
        let body = core_message::Body::TestWal(pb::TestWal {
            database: database.to_string(),
            plugin_filename: plugin_filename.to_string(),
            tables: rows,
            arguments: arguments.map(|a| pb::Arguments { values: a.into_iter().collect() }),
        });
        let mut outcome = self.dry_run(body).await?;
        errors.append(&mut outcome.errors);
        outcome.errors = errors;
        Ok(outcome)
    }

    /// Send a dry-run request (`TestWal`, `TestSchedule`, `TestRequest`) and shape its answer.
    async fn dry_run(&self, body: core_message::Body) -> Result<TestOutcome, EngineError> {
        let deadline = self.config.plugin_timeout + Duration::from_secs(60);
        match self.request(body, deadline, "the dry run").await? {
            host_message::Body::TestResult(r) => Ok(TestOutcome {
                log_lines: r.log_lines,
                database_writes: r.writes.into_iter().map(|w| (w.database, w.lines)).collect(),
                errors: r.errors,
                trigger_time: None,
                response: r.response.map(HttpAnswer::from),
            }),
            other => Err(EngineError::Failed(format!("unexpected reply: {other:?}"))),
        }
    }

    /// A database is being deleted: stop its triggers in the host.
    pub async fn database_deleted(self: &Arc<Self>, db: &str, db_id: u32, triggers: &[Arc<str>]) {
        self.checkpoints.lock().retain(|(id, _), _| *id != db_id);
        self.checkpoints_dirty.store(true, Ordering::Release);
        self.sync_schedules();
        for name in triggers {
            self.log.clear_state(db_id, name);
            let body =
                core_message::Body::TriggerDrop(pb::TriggerDrop { database: db.to_string(), name: name.to_string() });
            self.notify(body).await;
        }
    }

    /// A trigger was created, enabled, disabled or deleted: tell the host.
    pub async fn trigger_changed(self: &Arc<Self>, db: &str, name: &str) {
        let schema = self.catalog.db(db);
        let def = schema.as_ref().and_then(|d| d.triggers.get(name).cloned());
        self.sync_schedules();
        if let Some(d) = &schema {
            let key = (d.id, Arc::from(name));
            match &def {
                // Disabled triggers keep their state (why they were disabled stays readable).
                Some(t) if t.disabled => {}
                // Deleted, or created or enabled (again): a fresh start (a stopped trigger
                // runs again).
                _ => self.log.clear_state(d.id, name),
            }
            let mut cps = self.checkpoints.lock();
            match &def {
                // Enabled (again): it starts with what is flushed from now on.
                Some(t) if !t.disabled && t.spec().is_wal() => {
                    let cp = *cps.entry(key).or_insert_with(|| self.buffer.last_wal_seq());
                    self.log.update_state(d.id, &t.name, |s| s.checkpoint = Some(cp));
                }
                // Disabled or deleted triggers hold no WAL files back.
                _ => {
                    cps.remove(&key);
                }
            }
        }
        // Durable before the caller answers: after a crash the trigger's starting point is
        // known, so it resumes instead of starting over from "now".
        if schema.is_some() {
            self.save_checkpoints().await;
        }
        let body = match def {
            Some(t) if !t.disabled => {
                core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(trigger_message(db, &t)) })
            }
            _ => core_message::Body::TriggerDrop(pb::TriggerDrop { database: db.to_string(), name: name.to_string() }),
        };
        self.notify(body).await;
    }

    /// Start the host as a child and keep it running; publishes its URL.
    async fn supervise_host(self: Arc<Self>, url: watch::Sender<Option<String>>) {
        let bin = self.config.host_bin.clone().unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(|d| d.join("weir-plugin-host")))
                .unwrap_or_else(|| PathBuf::from("weir-plugin-host"))
        });
        let mut backoff = Duration::from_millis(200);
        loop {
            let mut cmd = tokio::process::Command::new(&bin);
            cmd.arg("--bind")
                .arg("127.0.0.1:0")
                .arg("--plugin-dir")
                .arg(&self.config.plugin_dir)
                .arg("--python")
                .arg(&self.config.python)
                .arg("--plugin-timeout")
                .arg(humantime::format_duration(self.config.plugin_timeout).to_string())
                .arg("--package-manager")
                .arg(&self.config.package_manager)
                .args(self.config.plugin_repo.iter().flat_map(|r| ["--plugin-repo", r.as_str()]))
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::inherit())
                .kill_on_drop(true);
            // The session token goes by environment, not argv, so `ps` does not show it.
            match &self.config.host_token {
                Some(t) => cmd.env("WEIR_PLUGIN_HOST_TOKEN", t),
                None => cmd.env_remove("WEIR_PLUGIN_HOST_TOKEN"),
            };
            // SAFETY: prctl is async-signal-safe; the child gets SIGTERM when we die.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                    Ok(())
                });
            }
            let mut child = match cmd.spawn() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(bin = %bin.display(), error = %e, "cannot start the plugin host; retrying");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                    continue;
                }
            };
            let stdout = child.stdout.take().expect("piped");
            let mut lines = BufReader::new(stdout).lines();
            let started = std::time::Instant::now();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("Weir plugin host listening on ") {
                    tracing::info!(url = addr, pid = ?child.id(), "plugin host started");
                    let _ = url.send(Some(addr.trim().to_string()));
                    break;
                }
            }
            // Keep draining its stdout so it never blocks.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
            let status = child.wait().await;
            let _ = url.send(None);
            tracing::warn!(?status, "the plugin host exited; restarting it");
            if started.elapsed() > Duration::from_secs(60) {
                backoff = Duration::from_millis(200);
            }
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(Duration::from_secs(30));
        }
    }

    /// Keep a session open to the current host URL.
    async fn connect_loop(self: Arc<Self>, mut url: watch::Receiver<Option<String>>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(target) = url.borrow_and_update().clone() else {
                if url.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match self.run_session(&target).await {
                Ok(()) => backoff = Duration::from_millis(100),
                Err(e) => tracing::warn!(url = %target, error = %e, "plugin host session failed"),
            }
            // Calls still waiting on the old session fail now (and are sent again later).
            self.log.set_connected(false);
            if let Some(old) = self.session.send_replace(None) {
                old.pending.lock().clear();
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = url.changed() => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(10));
        }
    }

    async fn run_session(self: &Arc<Self>, url: &str) -> anyhow::Result<()> {
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await?;
        let mut client = PluginHostClient::new(channel)
            .max_decoding_message_size(256 * 1024 * 1024)
            .max_encoding_message_size(256 * 1024 * 1024);
        let (tx, rx) = mpsc::channel(1024);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = &self.config.host_token {
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse()?);
        }
        let mut inbound = client.session(request).await?.into_inner();
        let session = Arc::new(Session { number: self.id(), tx, pending: Arc::new(Mutex::new(HashMap::new())) });
        let hello = pb::CoreMessage {
            id: self.id(),
            body: Some(core_message::Body::Hello(pb::Hello {
                core_version: env!("CARGO_PKG_VERSION").to_string(),
                node_id: String::new(),
            })),
        };
        session.tx.send(hello).await?;
        let triggers = self
            .catalog
            .databases()
            .iter()
            .flat_map(|db| {
                db.triggers.values().filter(|t| !t.disabled).map(|t| trigger_message(&db.name, t)).collect::<Vec<_>>()
            })
            .collect();
        let sync = core_message::Body::TriggerSync(pb::TriggerSync { triggers });
        session.tx.send(pb::CoreMessage { id: 0, body: Some(sync) }).await?;
        tracing::info!(url, "connected to the plugin host");
        self.session.send_replace(Some(Arc::clone(&session)));
        self.log.set_connected(true);
        while let Some(msg) = inbound.message().await? {
            let Some(body) = msg.body else { continue };
            match body {
                host_message::Body::Log(l) => {
                    let level = match pb::LogLevel::try_from(l.level).unwrap_or(pb::LogLevel::Info) {
                        pb::LogLevel::Warn => LogLevel::Warn,
                        pb::LogLevel::Error => LogLevel::Error,
                        _ => LogLevel::Info,
                    };
                    self.log.push(
                        &l.database,
                        &l.trigger,
                        level,
                        l.text,
                        if l.time_ns > 0 { l.time_ns } else { now() },
                    );
                }
                host_message::Body::Query(q) => {
                    let engine = Arc::clone(self);
                    let tx = session.tx.clone();
                    tokio::spawn(async move {
                        let body = engine.plugin_query(q).await;
                        let _ = tx
                            .send(pb::CoreMessage { id: msg.id, body: Some(core_message::Body::QueryResult(body)) })
                            .await;
                    });
                }
                host_message::Body::Write(w) => {
                    let engine = Arc::clone(self);
                    let tx = session.tx.clone();
                    tokio::spawn(async move {
                        let error =
                            engine.plugin_write(&w.database, &w.lines, w.no_sync).await.err().unwrap_or_default();
                        let reply = core_message::Body::WriteResult(pb::WriteResult { error });
                        let _ = tx.send(pb::CoreMessage { id: msg.id, body: Some(reply) }).await;
                    });
                }
                reply @ (host_message::Body::Done(_)
                | host_message::Body::Hello(_)
                | host_message::Body::Pong(_)
                | host_message::Body::AdminResult(_)
                | host_message::Body::TestResult(_)
                | host_message::Body::PluginFiles(_)) => {
                    if let Some(tx) = session.pending.lock().remove(&msg.id) {
                        let _ = tx.send(reply);
                    }
                }
            }
        }
        Ok(())
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
            Ok(arrow_ipc) => pb::QueryResult { error: String::new(), arrow_ipc },
            Err(error) => pb::QueryResult { error, arrow_ipc: Vec::new() },
        }
    }

    /// Write plugin output: all lines or none, nanosecond precision.
    async fn plugin_write(&self, db: &str, lines: &[String], no_sync: bool) -> Result<(), String> {
        let body = lines.join("\n");
        match self.buffer.write_lp(db, &body, Precision::Nanosecond, false, no_sync).await {
            Ok(outcome) if outcome.errors.is_empty() => Ok(()),
            Ok(outcome) => Err(outcome.errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; ")),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Fan flushed WAL files out to the enabled WAL triggers of their databases.
    async fn deliver_loop(self: Arc<Self>) {
        let Some(mut rx) = self.flushes_rx.lock().take() else { return };
        while let Some(wal) = rx.recv().await {
            self.fan_out(&wal, |_, _| true);
        }
    }

    /// Queue `wal`'s rows for each enabled WAL trigger of their databases that `wanted`
    /// accepts (by database id and trigger name).
    fn fan_out(self: &Arc<Self>, wal: &FlushedWal, wanted: impl Fn(u32, &str) -> bool) {
        for db_id in wal.db_ids() {
            let Some(db) = self.catalog.db_by_id(db_id) else { continue };
            let triggers: Vec<Arc<TriggerDef>> = db
                .triggers
                .values()
                .filter(|t| !t.disabled && t.spec().is_wal() && wanted(db_id, &t.name))
                .cloned()
                .collect();
            if triggers.is_empty() {
                continue;
            }
            let tables = wal.tables(&self.catalog, db_id);
            let mut encoded: Vec<(Arc<str>, Vec<u8>)> = Vec::with_capacity(tables.len());
            for (name, batches) in &tables {
                match ipc(batches) {
                    Ok(bytes) => encoded.push((Arc::clone(name), bytes)),
                    Err(e) => tracing::error!(table = %name, error = %e, "cannot encode flushed rows"),
                }
            }
            for t in triggers {
                let chosen: Vec<pb::TableRows> = encoded
                    .iter()
                    .filter(|(name, _)| match t.spec() {
                        TriggerSpec::Table(want) => want == name.as_ref(),
                        _ => true,
                    })
                    .map(|(name, bytes)| pb::TableRows { table_name: name.to_string(), arrow_ipc: bytes.clone() })
                    .collect();
                // Weir: a table trigger is not called for a flush without its table.
                if chosen.is_empty() {
                    continue;
                }
                let batch = pb::WalBatch {
                    database: db.name.to_string(),
                    trigger: t.name.to_string(),
                    wal_seq: wal.seq,
                    tables: chosen,
                };
                self.enqueue(db_id, &t.name, batch);
            }
        }
    }

    /// After a restart: load the trigger checkpoints and queue, for every enabled WAL
    /// trigger, the WAL files it has not finished (kept by snapshots for it), in order,
    /// ahead of anything flushed from now on. Call before the server takes writes.
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let path = self.storage.path(CHECKPOINTS);
        let saved: HashMap<String, u64> = match self.storage.get(&path).await? {
            Some(bytes) => serde_json::from_slice(&bytes).map_err(|e| anyhow::anyhow!("reading {path}: {e}"))?,
            None => HashMap::new(),
        };
        let last = self.buffer.last_wal_seq();
        {
            let mut cps = self.checkpoints.lock();
            for db in self.catalog.databases() {
                for t in db.triggers.values().filter(|t| !t.disabled && t.spec().is_wal()) {
                    // A trigger without a checkpoint starts with what is flushed from now on.
                    let cp = saved.get(&checkpoint_key(db.id, &t.name)).copied().unwrap_or(last);
                    cps.insert((db.id, Arc::clone(&t.name)), cp);
                    self.log.update_state(db.id, &t.name, |s| s.checkpoint = Some(cp));
                }
            }
        }
        let lowest = self.checkpoints.lock().values().copied().min();
        let Some(lowest) = lowest else { return Ok(()) };
        let mut replayed = 0;
        for seq in self.buffer.wal_seqs().await? {
            if seq <= lowest || seq > last {
                continue;
            }
            let Some(wal) = self.buffer.read_wal_file(seq).await? else { continue };
            let cps = self.checkpoints.lock().clone();
            self.fan_out(&wal, |db_id, name| cps.get(&(db_id, Arc::from(name))).is_some_and(|cp| *cp < seq));
            replayed += 1;
        }
        if replayed > 0 {
            tracing::info!(files = replayed, "WAL triggers resume from their checkpoints");
        }
        Ok(())
    }

    /// Write changed checkpoints to the object store, at most once a second (progress lost
    /// in a crash only means those batches are delivered again).
    async fn persist_checkpoints(self: Arc<Self>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            if self.checkpoints_dirty.swap(false, Ordering::AcqRel) {
                self.save_checkpoints().await;
            }
        }
    }

    async fn save_checkpoints(&self) {
        let map: HashMap<String, u64> =
            self.checkpoints.lock().iter().map(|((db, name), cp)| (checkpoint_key(*db, name), *cp)).collect();
        let bytes = serde_json::to_vec(&map).unwrap_or_default();
        if let Err(e) = self.storage.put_durable(&self.storage.path(CHECKPOINTS), bytes.into()).await {
            tracing::warn!(error = %e, "cannot persist trigger checkpoints; retrying");
            self.checkpoints_dirty.store(true, Ordering::Release);
        }
    }

    fn checkpoint(&self, db_id: u32, name: &Arc<str>, seq: u64) {
        let mut cps = self.checkpoints.lock();
        let cp = cps.entry((db_id, Arc::clone(name))).or_insert(0);
        if seq > *cp {
            *cp = seq;
            self.checkpoints_dirty.store(true, Ordering::Release);
            self.log.update_state(db_id, name, |s| s.checkpoint = Some(seq));
        }
    }

    fn enqueue(self: &Arc<Self>, db_id: u32, name: &Arc<str>, batch: pb::WalBatch) {
        let key = (db_id, Arc::clone(name));
        let (db, seq) = (batch.database.clone(), batch.wal_seq);
        let mut batch = Some(batch);
        // Twice at most: a queue whose task just ended (its trigger was disabled and
        // enabled again) is replaced by a new one.
        for _ in 0..2 {
            let tx = {
                let mut queues = self.queues.lock();
                queues
                    .entry(key.clone())
                    .or_insert_with(|| {
                        let (tx, rx) = mpsc::channel(TRIGGER_QUEUE);
                        tokio::spawn(Arc::clone(self).trigger_loop(key.clone(), rx));
                        tx
                    })
                    .clone()
            };
            match tx.try_send(batch.take().expect("put back below")) {
                Ok(()) => return,
                Err(mpsc::error::TrySendError::Closed(b)) => {
                    self.queues.lock().remove(&key);
                    batch = Some(b);
                }
                // A full queue (a trigger far behind) skips this file for that trigger
                // only, so one slow plugin never holds up the others.
                Err(mpsc::error::TrySendError::Full(_)) => {
                    self.record(
                        &db,
                        name,
                        LogLevel::Error,
                        format!("trigger is {TRIGGER_QUEUE} WAL files behind: WAL file {seq} was not delivered to it"),
                    );
                    return;
                }
            }
        }
    }

    /// Deliver one trigger's batches in order, up to [`WINDOW`] in flight (the host runs
    /// them one at a time, in order, and prepares the next while one runs). Replies are
    /// handled in order; when the session breaks, every unanswered batch is sent again
    /// (at least once). A `retry` or `disable` trigger has one batch in flight, so a
    /// failed batch is retried (or the trigger stopped) before any later one runs.
    async fn trigger_loop(self: Arc<Self>, key: (u32, Arc<str>), mut rx: mpsc::Receiver<pb::WalBatch>) {
        let (db_id, name) = key;
        let mut pending: std::collections::VecDeque<pb::WalBatch> = std::collections::VecDeque::new();
        let mut waiting: std::collections::VecDeque<oneshot::Receiver<host_message::Body>> =
            std::collections::VecDeque::new();
        let mut announced: Option<u64> = None;
        let mut attempt = 1;
        loop {
            while pending.len() < WINDOW {
                let next = if pending.is_empty() {
                    match rx.recv().await {
                        Some(b) => b,
                        None => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(b) => b,
                        Err(_) => break,
                    }
                };
                pending.push_back(next);
            }
            // Stop if the trigger was deleted or disabled meanwhile (a later batch for it
            // starts a new queue).
            let def = self
                .catalog
                .db_by_id(db_id)
                .and_then(|d| Some((d.name.clone(), d.triggers.get(name.as_ref()).cloned()?)))
                .filter(|(_, t)| !t.disabled);
            let Some((db_name, def)) = def else {
                self.queues.lock().remove(&(db_id, Arc::clone(&name)));
                return;
            };
            if waiting.is_empty() {
                self.announce(&mut announced, &db_name, &def).await;
            }
            let window = if def.error_behavior == ErrorBehavior::Log { WINDOW } else { 1 };
            while waiting.len() < pending.len().min(window) {
                let batch = pending[waiting.len()].clone();
                match self.send(core_message::Body::WalBatch(batch)).await {
                    Some(reply) => waiting.push_back(reply),
                    None => break,
                }
            }
            let Some(reply) = waiting.pop_front() else {
                self.wait_for_session().await;
                continue;
            };
            // The host enforces the plugin timeout; this only guards against a lost reply.
            let deadline = self.config.plugin_timeout * (WINDOW as u32) + Duration::from_secs(60);
            match tokio::time::timeout(deadline, reply).await {
                Ok(Ok(host_message::Body::Done(done))) => {
                    let failure = (!done.ok).then(|| (done.error.clone(), done.stopped));
                    if done.ok {
                        let batch = pending.front().expect("a reply has its batch");
                        self.commit_writes(&batch.database, &batch.trigger, done.writes).await;
                    }
                    match self.after_call(db_id, &db_name, &def, attempt, failure) {
                        calls::Next::Retry(delay) => {
                            tokio::time::sleep(delay).await;
                            attempt += 1;
                        }
                        next => {
                            let batch = pending.pop_front().expect("a reply has its batch");
                            self.checkpoint(db_id, &name, batch.wal_seq);
                            attempt = 1;
                            if next == calls::Next::Stop {
                                // Being disabled: its catalog change ends this task.
                                self.queues.lock().remove(&(db_id, Arc::clone(&name)));
                                return;
                            }
                        }
                    }
                }
                Ok(Ok(other)) => {
                    tracing::error!(?other, "unexpected reply to a WAL batch");
                    pending.pop_front();
                }
                // The session ended (or the reply was lost): send the rest again.
                _ => {
                    waiting.clear();
                    self.wait_for_session().await;
                }
            }
        }
    }

    /// Define the trigger on the current session unless `announced` says it already was
    /// (messages on one session arrive in order), so a batch or tick never overtakes its
    /// trigger's creation or a reconnect.
    async fn announce(&self, announced: &mut Option<u64>, db: &str, def: &TriggerDef) {
        let current = self.session.borrow().clone();
        if let Some(s) = current
            && *announced != Some(s.number)
        {
            let set = core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(trigger_message(db, def)) });
            if s.tx.send(pb::CoreMessage { id: 0, body: Some(set) }).await.is_ok() {
                *announced = Some(s.number);
            }
        }
    }

    /// Send a request on the current session; the receiver gets its reply (`None`: no
    /// session).
    async fn send(&self, body: core_message::Body) -> Option<oneshot::Receiver<host_message::Body>> {
        let session = self.session.borrow().clone()?;
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        session.pending.lock().insert(id, tx);
        if session.tx.send(pb::CoreMessage { id, body: Some(body) }).await.is_err() {
            session.pending.lock().remove(&id);
            return None;
        }
        Some(rx)
    }

    async fn wait_for_session(&self) {
        let mut rx = self.session.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|s| s.is_some())).await;
    }

    /// Commit an invocation's buffered writes (it succeeded); a rejected write-back is
    /// logged as InfluxDB 3 does.
    async fn commit_writes(&self, db: &str, trigger: &str, writes: Vec<pb::DatabaseWrites>) {
        for w in writes {
            if let Err(e) = self.plugin_write(&w.database, &w.lines, false).await {
                self.record(db, trigger, LogLevel::Error, format!("error writing back lines to {}: {e}", w.database));
            }
        }
    }
}
