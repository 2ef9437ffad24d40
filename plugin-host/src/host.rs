//! The host's state and the session with the core: triggers, their workers, and the link
//! that carries plugin queries, writes and logs up to `weir serve`.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    path::{Path, PathBuf},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arrow::{ipc::reader::StreamReader, record_batch::RecordBatch};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use weir_proto::plugin::v1::{self as pb, core_message, host_message};

use crate::{
    cache::GlobalCache,
    marshal,
    venv::Venv,
    worker::{Done, InvokeError, Level, TriggerId, Upstream, Worker, WorkerSpec},
};

/// How long a plugin's query or write may wait for the core.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// Host settings.
#[derive(Debug, Clone)]
pub struct HostConfig {
    /// `--plugin-dir`.
    pub plugin_dir: PathBuf,
    /// Per-invocation timeout.
    pub plugin_timeout: Duration,
    /// Address-space limit per worker process.
    pub worker_memory: Option<u64>,
    /// How packages are installed into the venv.
    pub package_manager: crate::packages::PackageManager,
    /// Where `gh:` plugins come from.
    pub plugin_repo: String,
}

/// The link to the connected core: where host messages go, and the replies we wait for.
#[derive(Debug, Default)]
pub struct CoreLink {
    tx: Mutex<Option<mpsc::Sender<Result<pb::HostMessage, Status>>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<core_message::Body>>>,
    next_id: AtomicU64,
}

fn level(l: Level) -> pb::LogLevel {
    match l {
        Level::Info => pb::LogLevel::Info,
        Level::Warn => pb::LogLevel::Warn,
        Level::Error => pb::LogLevel::Error,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl CoreLink {
    fn sender(&self) -> Option<mpsc::Sender<Result<pb::HostMessage, Status>>> {
        self.tx.lock().clone()
    }

    /// Send a request to the core and wait for its reply.
    async fn request(&self, body: host_message::Body) -> Result<core_message::Body, String> {
        let tx = self.sender().ok_or("weir serve is not connected to the plugin host")?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.pending.lock().insert(id, reply_tx);
        let msg = pb::HostMessage { id, body: Some(body) };
        if tx.send(Ok(msg)).await.is_err() {
            self.pending.lock().remove(&id);
            return Err("the connection to weir serve closed".to_string());
        }
        match tokio::time::timeout(UPSTREAM_TIMEOUT, reply_rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err("the connection to weir serve closed".to_string()),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(format!("weir serve did not answer within {UPSTREAM_TIMEOUT:?}"))
            }
        }
    }

    fn resolve(&self, id: u64, body: core_message::Body) {
        if let Some(tx) = self.pending.lock().remove(&id) {
            let _ = tx.send(body);
        }
    }

    /// Send without waiting (events, replies).
    async fn send(&self, id: u64, body: host_message::Body) {
        if let Some(tx) = self.sender() {
            let _ = tx.send(Ok(pb::HostMessage { id, body: Some(body) })).await;
        }
    }
}

#[async_trait]
impl Upstream for CoreLink {
    async fn query(
        &self,
        trigger: &TriggerId,
        database: &str,
        sql: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        let body = host_message::Body::Query(pb::Query {
            database: database.to_string(),
            sql: sql.to_string(),
            params: params.into_iter().collect(),
            trigger: trigger.name.clone(),
        });
        match self.request(body).await? {
            core_message::Body::QueryResult(r) if r.error.is_empty() && r.arrow_ipc.is_empty() => {
                marshal::query_rows(&[]).map_err(|e| e.to_string())
            }
            core_message::Body::QueryResult(r) if r.error.is_empty() => {
                let reader = StreamReader::try_new(Cursor::new(r.arrow_ipc), None).map_err(|e| e.to_string())?;
                let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
                marshal::query_rows(&batches).map_err(|e| e.to_string())
            }
            core_message::Body::QueryResult(r) => Err(r.error),
            other => Err(format!("unexpected reply to a query: {other:?}")),
        }
    }

    async fn write(
        &self,
        trigger: &TriggerId,
        database: &str,
        lines: Vec<String>,
        no_sync: bool,
    ) -> Result<(), String> {
        let body = host_message::Body::Write(pb::Write {
            database: database.to_string(),
            lines,
            no_sync,
            trigger: trigger.name.clone(),
        });
        match self.request(body).await? {
            core_message::Body::WriteResult(r) if r.error.is_empty() => Ok(()),
            core_message::Body::WriteResult(r) => Err(r.error),
            other => Err(format!("unexpected reply to a write: {other:?}")),
        }
    }

    fn log(&self, trigger: &TriggerId, l: Level, text: String) {
        let Some(tx) = self.sender() else {
            tracing::info!(trigger = %trigger.name, database = %trigger.database, "{text}");
            return;
        };
        let msg = pb::HostMessage {
            id: 0,
            body: Some(host_message::Body::Log(pb::Log {
                database: trigger.database.clone(),
                trigger: trigger.name.clone(),
                level: level(l) as i32,
                text,
                time_ns: now_ns(),
            })),
        };
        // Logs never block a worker: a full queue drops the line (and says so here).
        if tx.try_send(Ok(msg)).is_err() {
            tracing::warn!(trigger = %trigger.name, "log line dropped: the queue to weir serve is full");
        }
    }
}

/// The upstream of a dry-run worker: queries go to the core, logs are collected.
#[derive(Debug)]
struct TestUpstream {
    link: Arc<CoreLink>,
    logs: Mutex<Vec<String>>,
}

#[async_trait]
impl Upstream for TestUpstream {
    async fn query(
        &self,
        trigger: &TriggerId,
        database: &str,
        sql: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, String> {
        self.link.query(trigger, database, sql, params).await
    }

    async fn write(
        &self,
        _trigger: &TriggerId,
        _database: &str,
        _lines: Vec<String>,
        _no_sync: bool,
    ) -> Result<(), String> {
        Err("writes are captured in a dry run".to_string())
    }

    fn log(&self, _trigger: &TriggerId, l: Level, text: String) {
        self.logs.lock().push(format!("{}: {text}", l.as_str()));
    }
}

/// A trigger and its worker processes.
#[derive(Debug)]
pub struct TriggerRuntime {
    def: pb::Trigger,
    spec: WorkerSpec,
    /// One slot per worker process (`workers`, at least 1); a synchronous trigger only
    /// uses the first, so its calls share one trigger cache in strict order.
    workers: Vec<WorkerSlot>,
    /// Held across an invocation of a synchronous trigger: strict order, one at a time.
    order: tokio::sync::Mutex<()>,
    /// Worker failures (could not start, or died during a call) in a row.
    crashes: std::sync::atomic::AtomicU32,
    /// Set by the crash-loop breaker: calls fail at once with this reason.
    stopped: Mutex<Option<String>>,
}

/// Worker failures in a row after which a trigger is stopped (until it is redefined,
/// disabled and enabled).
pub const CRASH_LIMIT: u32 = 5;

#[derive(Debug, Default)]
struct WorkerSlot {
    worker: tokio::sync::Mutex<Option<Arc<Worker>>>,
    /// Invocations running on it (an asynchronous trigger picks the least busy slot).
    busy: std::sync::atomic::AtomicUsize,
}

impl TriggerRuntime {
    fn new(def: pb::Trigger, spec: WorkerSpec) -> Self {
        let n = if def.run_async { def.workers.clamp(1, 64) as usize } else { 1 };
        Self {
            def,
            spec,
            workers: (0..n).map(|_| WorkerSlot::default()).collect(),
            order: tokio::sync::Mutex::new(()),
            crashes: std::sync::atomic::AtomicU32::new(0),
            stopped: Mutex::new(None),
        }
    }

    fn least_busy(&self) -> &WorkerSlot {
        self.workers.iter().min_by_key(|w| w.busy.load(Ordering::Relaxed)).expect("at least one worker slot")
    }
}

/// A trigger invocation's outcome as the core gets it.
fn done_message(done: Done) -> pb::Done {
    pb::Done {
        ok: done.ok,
        error: done.error.unwrap_or_default(),
        traceback: done.traceback.unwrap_or_default(),
        writes: done.writes.into_iter().map(|(database, lines)| pb::DatabaseWrites { database, lines }).collect(),
        duration_ns: done.duration.as_nanos() as u64,
        response: done.response.map(|r| pb::HttpResponse {
            status: u32::from(r.status),
            headers: r.headers.into_iter().collect(),
            body: r.body,
        }),
        timed_out: done.timed_out,
        stopped: done.stopped,
    }
}

fn failed(error: String) -> Done {
    Done { ok: false, error: Some(error), ..Done::default() }
}

/// `error executing plugin: <error>` and the traceback, as the engine log shows it.
fn error_text(done: &Done) -> String {
    let mut text = format!("error executing plugin: {}", done.error.as_deref().unwrap_or("unknown error"));
    if let Some(tb) = done.traceback.as_deref().filter(|t| !t.is_empty()) {
        text.push('\n');
        text.push_str(tb.trim_end());
    }
    text
}

/// An RFC 3339 rendering of a fire time in ns.
fn fire_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// A WAL batch ready for `process_writes`.
#[derive(Debug)]
struct EncodedWal {
    /// marshal-encoded `[table_batches]` (rows, or columns for workers with the speedups).
    args: Vec<u8>,
    rows: usize,
    tables: usize,
}

/// `columns`: as [`marshal::wal_call_args_columns`] (workers with the speedups), else as rows.
fn encode_wal(batch: &pb::WalBatch, columns: bool) -> Result<EncodedWal, String> {
    let mut tables = Vec::with_capacity(batch.tables.len());
    let mut rows = 0;
    for t in &batch.tables {
        let reader = StreamReader::try_new(Cursor::new(&t.arrow_ipc[..]), None).map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        tables.push((t.table_name.clone(), batches));
    }
    let args = if columns { marshal::wal_call_args_columns(&tables) } else { marshal::wal_call_args(&tables) };
    let args = args.map_err(|e| e.to_string())?;
    Ok(EncodedWal { args, rows, tables: tables.len() })
}

/// A batch in a trigger's pipeline, encoding (or encoded).
#[derive(Debug)]
struct Queued {
    id: u64,
    seq: u64,
    epoch: u64,
    encoding: Encoding,
}

#[derive(Debug)]
enum Encoding {
    Running(tokio::task::JoinHandle<Result<EncodedWal, String>>),
    Done(Result<EncodedWal, String>),
}

impl Queued {
    /// The batch encoded for Python (waiting for the encoder the first time).
    async fn encoded(&mut self) -> Result<&EncodedWal, String> {
        if let Encoding::Running(task) = &mut self.encoding {
            let result = task.await.unwrap_or_else(|e| Err(format!("encoding the batch failed: {e}")));
            self.encoding = Encoding::Done(result);
        }
        match &self.encoding {
            Encoding::Done(result) => result.as_ref().map_err(Clone::clone),
            Encoding::Running(_) => unreachable!("replaced above"),
        }
    }

    /// Whether encoding has finished (so [`Queued::encoded`] does not wait).
    fn is_encoded(&self) -> bool {
        match &self.encoding {
            Encoding::Running(task) => task.is_finished(),
            Encoding::Done(_) => true,
        }
    }

    fn abort(&self) {
        if let Encoding::Running(task) = &self.encoding {
            task.abort();
        }
    }
}

/// The plugin host.
#[derive(Debug)]
pub struct Host {
    config: HostConfig,
    venv: Venv,
    cache: Arc<GlobalCache>,
    link: Arc<CoreLink>,
    triggers: Mutex<HashMap<TriggerId, Arc<TriggerRuntime>>>,
    /// Per-trigger ordered queues of WAL batches (bounded in practice: the core keeps at
    /// most a few batches per trigger in flight).
    pipelines: Mutex<HashMap<TriggerId, mpsc::UnboundedSender<Queued>>>,
    /// Incremented by every new session; batches queued by an ended session are not run
    /// (the core sends them again on the new one, in order).
    epoch: AtomicU64,
    gh: crate::gh::GhCache,
}

impl Host {
    /// A host over a prepared venv.
    pub fn new(config: HostConfig, venv: Venv) -> Arc<Self> {
        Arc::new(Self {
            venv,
            cache: Arc::new(GlobalCache::default()),
            link: Arc::new(CoreLink::default()),
            triggers: Mutex::new(HashMap::new()),
            pipelines: Mutex::new(HashMap::new()),
            epoch: AtomicU64::new(0),
            gh: crate::gh::GhCache::new(&config.plugin_repo, &config.plugin_dir),
            config,
        })
    }

    /// The venv in use.
    pub fn venv(&self) -> &Venv {
        &self.venv
    }

    fn log(&self, id: &TriggerId, l: Level, text: impl Into<String>) {
        self.link.log(id, l, text.into());
    }

    fn set_trigger(&self, def: pb::Trigger) {
        let id = TriggerId { database: def.database.clone(), name: def.name.clone() };
        let plugin_path = self.config.plugin_dir.join(&def.plugin_filename);
        let spec = WorkerSpec {
            trigger: id.clone(),
            python: self.venv.python.clone(),
            venv: self.venv.dir.clone(),
            plugin_dir: self.config.plugin_dir.clone(),
            plugin_path,
            args: def.arguments.as_ref().map(|a| a.values.clone().into_iter().collect()),
            run_async: def.run_async,
            memory_limit: self.config.worker_memory,
            dry_run: false,
            columns: self.venv.native,
        };
        let mut triggers = self.triggers.lock();
        if triggers.get(&id).is_some_and(|t| t.def == def) {
            return;
        }
        // A new or changed definition: its old workers (if any) go with the old runtime.
        triggers.insert(id, Arc::new(TriggerRuntime::new(def, spec)));
    }

    /// Make the running triggers exactly `defs`: unchanged ones keep their workers (and
    /// trigger caches), others are dropped or (re)defined.
    fn sync_triggers(&self, defs: Vec<pb::Trigger>) {
        let keep: std::collections::HashSet<TriggerId> =
            defs.iter().map(|d| TriggerId { database: d.database.clone(), name: d.name.clone() }).collect();
        self.triggers.lock().retain(|id, _| keep.contains(id));
        self.pipelines.lock().retain(|id, _| keep.contains(id));
        for def in defs {
            self.set_trigger(def);
        }
    }

    fn drop_trigger(&self, database: &str, name: &str) {
        let id = TriggerId { database: database.to_string(), name: name.to_string() };
        self.triggers.lock().remove(&id);
        self.pipelines.lock().remove(&id);
    }

    async fn worker(&self, rt: &TriggerRuntime, slot: &WorkerSlot) -> Result<Arc<Worker>, InvokeError> {
        let mut slot = slot.worker.lock().await;
        if let Some(w) = slot.as_ref().filter(|w| !w.is_dead()) {
            return Ok(Arc::clone(w));
        }
        let mut spec = rt.spec.clone();
        spec.plugin_path = self.plugin_path(&rt.def.plugin_filename).await.map_err(InvokeError::Plugin)?;
        let upstream: Arc<dyn Upstream> = Arc::clone(&self.link) as Arc<dyn Upstream>;
        let w = Worker::spawn(spec, upstream, Arc::clone(&self.cache)).await?;
        *slot = Some(Arc::clone(&w));
        Ok(w)
    }

    /// Run one invocation of a trigger: a synchronous trigger's calls one at a time in
    /// arrival order, an asynchronous trigger's on its least busy worker.
    /// With a `deadline` (the caller stops waiting then), a call still queued or waiting
    /// for its worker at the deadline is not run, and a running one gets at most the time
    /// left.
    /// `ahead`: a synchronous trigger's next arguments, sent to the worker behind this call
    /// (see [`Worker::invoke_staged`]); `staged`: this call's, sent so before.
    async fn invoke(
        &self,
        rt: &TriggerRuntime,
        entry: &str,
        args: &[u8],
        deadline: Option<std::time::SystemTime>,
        staged: Option<u64>,
        ahead: Option<&[u8]>,
    ) -> Result<Done, InvokeError> {
        let _order = if rt.def.run_async { None } else { Some(rt.order.lock().await) };
        let slot = rt.least_busy();
        slot.busy.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let worker = self.worker(rt, slot).await?;
            let mut timeout = self.config.plugin_timeout;
            if let Some(d) = deadline {
                let left = d.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
                if left.is_zero() {
                    return Err(InvokeError::Timeout(timeout));
                }
                timeout = timeout.min(left);
            }
            let ahead = ahead.filter(|_| !rt.def.run_async);
            worker.invoke_staged(entry, args, staged, timeout, ahead).await
        }
        .await;
        slot.busy.fetch_sub(1, Ordering::Relaxed);
        result
    }

    /// The file or package a trigger's `plugin_filename` names: inside the plugin
    /// directory, or a `gh:` plugin's cached copy.
    async fn plugin_path(&self, name: &str) -> Result<PathBuf, String> {
        match crate::gh::gh_path(name) {
            Some(path) => self.gh.resolve(path).await,
            None => crate::paths::resolve(&self.config.plugin_dir, name),
        }
    }

    fn runtime(&self, tid: &TriggerId) -> Result<Arc<TriggerRuntime>, String> {
        self.triggers.lock().get(tid).cloned().ok_or_else(|| {
            format!("trigger {} in database {} is not running in the plugin host", tid.name, tid.database)
        })
    }

    /// Run a schedule tick and answer with `Done`.
    fn schedule_tick(self: &Arc<Self>, id: u64, tick: pb::ScheduleTick) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let tid = TriggerId { database: tick.database, name: tick.trigger };
            let args = marshal::schedule_call_args(tick.call_time_s);
            let started = format!("starting execution for scheduled time {}", fire_time(tick.scheduled_ns));
            let done = host.run_call(&tid, "process_scheduled_call", &args, Some(started), None, None, None).await;
            host.link.send(id, host_message::Body::Done(done_message(done))).await;
        });
    }

    /// Run a request trigger for one HTTP request and answer with `Done` (with the HTTP
    /// answer when the plugin succeeded).
    fn http_request(self: &Arc<Self>, id: u64, req: pb::HttpRequest) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let tid = TriggerId { database: req.database, name: req.trigger };
            let args = marshal::request_call_args(req.query.iter(), req.headers.iter(), &req.body);
            let deadline =
                (req.deadline_ns > 0).then(|| std::time::UNIX_EPOCH + Duration::from_nanos(req.deadline_ns as u64));
            let done = host.run_call(&tid, "process_request", &args, None, deadline, None, None).await;
            host.link.send(id, host_message::Body::Done(done_message(done))).await;
        });
    }

    /// Invoke `entry` for a trigger and log the outcome (errors with their traceback);
    /// `started` is logged first when given.
    async fn run_call(
        &self,
        tid: &TriggerId,
        entry: &str,
        args: &[u8],
        started: Option<String>,
        deadline: Option<std::time::SystemTime>,
        staged: Option<u64>,
        ahead: Option<&[u8]>,
    ) -> Done {
        let rt = match self.runtime(tid) {
            Ok(rt) => rt,
            Err(e) => {
                self.log(tid, Level::Error, e.clone());
                return failed(e);
            }
        };
        if let Some(reason) = rt.stopped.lock().clone() {
            return Done { stopped: true, ..failed(reason) };
        }
        if let Some(text) = started {
            self.log(tid, Level::Info, text);
        }
        match self.invoke(&rt, entry, args, deadline, staged, ahead).await {
            Ok(done) => {
                rt.crashes.store(0, Ordering::Relaxed);
                if done.ok {
                    // Request triggers log only failures: a line per request would flood the log.
                    if entry != "process_request" {
                        self.log(tid, Level::Info, format!("finished execution in {:?}", done.duration));
                    }
                } else {
                    self.log(tid, Level::Error, error_text(&done));
                }
                done
            }
            Err(e) => {
                let timed_out = matches!(e, InvokeError::Timeout(_));
                let mut text = e.to_string();
                self.log(tid, Level::Error, format!("error executing plugin: {text}"));
                let crashes = match e {
                    InvokeError::Crashed(_) | InvokeError::Spawn(_) => rt.crashes.fetch_add(1, Ordering::Relaxed) + 1,
                    InvokeError::Timeout(_) | InvokeError::Plugin(_) | InvokeError::Lost(_) => 0,
                };
                let stopped = crashes >= CRASH_LIMIT;
                if stopped {
                    text = format!(
                        "trigger stopped: its worker failed {crashes} times in a row (last: {text}); \
                         fix the plugin, then disable and enable the trigger"
                    );
                    self.log(tid, Level::Error, text.clone());
                    *rt.stopped.lock() = Some(text.clone());
                }
                Done { timed_out, stopped, ..failed(text) }
            }
        }
    }

    /// Accept a WAL batch: decode and encode it for Python right away (on the blocking
    /// pool, overlapping the call before it), then queue it behind the trigger's earlier
    /// batches, which run one at a time in arrival order.
    fn wal_batch(self: &Arc<Self>, id: u64, batch: pb::WalBatch) {
        let tid = TriggerId { database: batch.database.clone(), name: batch.trigger.clone() };
        let seq = batch.wal_seq;
        let columns = self.venv.native;
        let encoding = Encoding::Running(tokio::task::spawn_blocking(move || encode_wal(&batch, columns)));
        let tx = {
            let mut pipelines = self.pipelines.lock();
            pipelines
                .entry(tid.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(Arc::clone(self).wal_pipeline(tid.clone(), rx));
                    tx
                })
                .clone()
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let _ = tx.send(Queued { id, seq, epoch, encoding });
    }

    /// Run a trigger's queued batches in order and answer each with `Done`. The next
    /// batch, when already queued and encoded, goes to the worker right behind the current
    /// one, so the worker starts it without waiting for megabytes of rows to cross the socket.
    async fn wal_pipeline(self: Arc<Self>, tid: TriggerId, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let mut next: Option<Queued> = None;
        // (batch id, the stage holding its arguments)
        let mut staged: Option<(u64, u64)> = None;
        loop {
            let mut q = match next.take() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            let epoch = self.epoch.load(Ordering::Acquire);
            if q.epoch != epoch {
                // Its session ended: the core sends it again, in order, on the new one.
                q.abort();
                continue;
            }
            let (id, seq) = (q.id, q.seq);
            let result = match q.encoded().await {
                Ok(encoded) => {
                    next = rx.try_recv().ok();
                    let mine = staged.take().filter(|(batch, _)| *batch == id).map(|(_, stage)| stage);
                    let next_id = next.as_ref().map(|n| n.id);
                    let ahead = match next.as_mut() {
                        Some(n) if n.epoch == epoch && n.is_encoded() => {
                            n.encoded().await.ok().map(|e| e.args.as_slice())
                        }
                        _ => None,
                    };
                    let done = self.run_wal(&tid, seq, encoded, mine, ahead).await;
                    staged = next_id.zip(done.staged);
                    Ok(done)
                }
                Err(e) => Err(e),
            };
            let done = result.unwrap_or_else(|e| {
                self.log(&tid, Level::Error, e.clone());
                failed(e)
            });
            self.link.send(id, host_message::Body::Done(done_message(done))).await;
        }
    }

    async fn run_wal(
        &self,
        tid: &TriggerId,
        seq: u64,
        encoded: &EncodedWal,
        staged: Option<u64>,
        ahead: Option<&[u8]>,
    ) -> Done {
        let started =
            format!("starting execution with {} rows from {} tables (WAL file {seq})", encoded.rows, encoded.tables);
        self.run_call(tid, "process_writes", &encoded.args, Some(started), None, staged, ahead).await
    }

    /// Dry-run a plugin in a fresh worker that captures writes: `entry` with `args`
    /// (built once the plugin path is known to be valid); logs are returned, not recorded.
    async fn dry_run(
        &self,
        database: &str,
        plugin_filename: &str,
        arguments: Option<&pb::Arguments>,
        entry: &str,
        args: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> pb::TestResult {
        let upstream = Arc::new(TestUpstream { link: Arc::clone(&self.link), logs: Mutex::new(Vec::new()) });
        let mut result = pb::TestResult::default();
        let outcome = async {
            let plugin_path = self.plugin_path(plugin_filename).await?;
            let args = args()?;
            let spec = WorkerSpec {
                trigger: TriggerId { database: database.to_string(), name: "plugin_test".into() },
                python: self.venv.python.clone(),
                venv: self.venv.dir.clone(),
                plugin_dir: self.config.plugin_dir.clone(),
                plugin_path,
                args: arguments.map(|a| a.values.clone().into_iter().collect()),
                run_async: false,
                memory_limit: self.config.worker_memory,
                dry_run: true,
                columns: self.venv.native,
            };
            let worker = Worker::spawn(spec, Arc::clone(&upstream) as Arc<dyn Upstream>, Arc::clone(&self.cache))
                .await
                .map_err(|e| e.to_string())?;
            let done = worker.invoke(entry, &args, self.config.plugin_timeout).await;
            worker.kill();
            done.map_err(|e| e.to_string())
        }
        .await;
        match outcome {
            Ok(done) => {
                let done = done_message(done);
                if !done.ok {
                    result.errors.push(done.error);
                }
                result.writes = done.writes;
                result.response = done.response;
            }
            Err(e) => result.errors.push(e),
        }
        result.log_lines = std::mem::take(&mut *upstream.logs.lock());
        result
    }

    async fn test_wal(&self, req: pb::TestWal) -> pb::TestResult {
        let batch =
            pb::WalBatch { database: req.database.clone(), trigger: "test".into(), wal_seq: 0, tables: req.tables };
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_writes", || {
            encode_wal(&batch, self.venv.native).map(|e| e.args)
        })
        .await
    }

    async fn test_schedule(&self, req: pb::TestSchedule) -> pb::TestResult {
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_scheduled_call", || {
            Ok(marshal::schedule_call_args(req.call_time_s))
        })
        .await
    }

    async fn test_request(&self, req: pb::TestRequest) -> pb::TestResult {
        let r = req.request.unwrap_or_default();
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_request", || {
            Ok(marshal::request_call_args(r.query.iter(), r.headers.iter(), &r.body))
        })
        .await
    }

    async fn install(&self, req: pb::InstallPackages) -> Result<String, crate::packages::InstallError> {
        use crate::packages::{Install, InstallError, install};
        let what = if req.requirements_file.is_empty() {
            Install::Packages(req.packages)
        } else if Path::new(&req.requirements_file).is_absolute() {
            Install::Requirements(PathBuf::from(&req.requirements_file))
        } else {
            Install::Requirements(
                crate::paths::resolve(&self.config.plugin_dir, &req.requirements_file).map_err(InstallError::Failed)?,
            )
        };
        tracing::info!(?what, "installing packages into the plugin venv");
        install(self.config.package_manager, &self.venv.python, what).await
    }

    /// Serve one core session until its stream ends.
    pub async fn session(
        self: Arc<Self>,
        mut inbound: Streaming<pb::CoreMessage>,
        tx: mpsc::Sender<Result<pb::HostMessage, Status>>,
    ) {
        // A new session takes over the link (the core reconnected; the old stream may not
        // have noticed yet). Remember ours so its end does not clear a newer one.
        let ours = tx.clone();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        *self.link.tx.lock() = Some(tx);
        // Requests of a previous session would never get their replies: fail them now.
        self.link.pending.lock().clear();
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "session with weir serve ended");
                    break;
                }
            };
            let Some(body) = msg.body else { continue };
            match body {
                core_message::Body::Hello(h) => {
                    tracing::info!(core = %h.core_version, node = %h.node_id, "weir serve connected");
                    let reply = pb::HelloReply {
                        host_version: env!("CARGO_PKG_VERSION").to_string(),
                        python_version: self.venv.version.clone(),
                        plugin_dir: self.config.plugin_dir.display().to_string(),
                    };
                    self.link.send(msg.id, host_message::Body::Hello(reply)).await;
                }
                core_message::Body::TriggerSet(t) => {
                    if let Some(def) = t.trigger {
                        self.set_trigger(def);
                    }
                }
                core_message::Body::TriggerDrop(t) => self.drop_trigger(&t.database, &t.name),
                core_message::Body::TriggerSync(sync) => self.sync_triggers(sync.triggers),
                core_message::Body::WalBatch(b) => self.wal_batch(msg.id, b),
                core_message::Body::TestWal(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let reply = host.test_wal(req).await;
                        host.link.send(msg.id, host_message::Body::TestResult(reply)).await;
                    });
                }
                core_message::Body::TestSchedule(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let reply = host.test_schedule(req).await;
                        host.link.send(msg.id, host_message::Body::TestResult(reply)).await;
                    });
                }
                core_message::Body::TestRequest(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let reply = host.test_request(req).await;
                        host.link.send(msg.id, host_message::Body::TestResult(reply)).await;
                    });
                }
                core_message::Body::ListPluginFiles(_) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let dir = host.config.plugin_dir.clone();
                        let reply = match tokio::task::spawn_blocking(move || crate::files::list(&dir)).await {
                            Ok(Ok(files)) => pb::PluginFiles { files, error: String::new() },
                            Ok(Err(error)) => pb::PluginFiles { files: Vec::new(), error },
                            Err(e) => pb::PluginFiles { files: Vec::new(), error: e.to_string() },
                        };
                        host.link.send(msg.id, host_message::Body::PluginFiles(reply)).await;
                    });
                }
                core_message::Body::PutPlugin(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let dir = host.config.plugin_dir.clone();
                        let name = req.plugin_name.clone();
                        let result = tokio::task::spawn_blocking(move || crate::files::put(&dir, &req)).await;
                        let reply = match result {
                            Ok(Ok(())) => {
                                tracing::info!(plugin = %name, "plugin written");
                                pb::AdminResult { ok: true, ..Default::default() }
                            }
                            Ok(Err(e)) => pb::AdminResult {
                                ok: false,
                                kind: match e {
                                    crate::files::FileError::Invalid(_) => "invalid",
                                    crate::files::FileError::Exists(_) => "exists",
                                    crate::files::FileError::Missing(_) => "missing",
                                    crate::files::FileError::Io(_) => "",
                                }
                                .to_string(),
                                error: e.to_string(),
                                ..Default::default()
                            },
                            Err(e) => pb::AdminResult { ok: false, error: e.to_string(), ..Default::default() },
                        };
                        host.link.send(msg.id, host_message::Body::AdminResult(reply)).await;
                    });
                }
                core_message::Body::FetchPlugin(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let result = match crate::gh::gh_path(&req.name) {
                            Some(path) => host.gh.fetch(path).await.map(|_| ()),
                            None => Err(format!("{} is not a gh: plugin", req.name)),
                        };
                        let reply = match result {
                            Ok(()) => pb::AdminResult { ok: true, ..Default::default() },
                            Err(error) => {
                                pb::AdminResult { ok: false, kind: "invalid".to_string(), error, ..Default::default() }
                            }
                        };
                        host.link.send(msg.id, host_message::Body::AdminResult(reply)).await;
                    });
                }
                core_message::Body::ScheduleTick(tick) => self.schedule_tick(msg.id, tick),
                core_message::Body::HttpRequest(req) => self.http_request(msg.id, req),
                core_message::Body::InstallPackages(req) => {
                    let host = Arc::clone(&self);
                    tokio::spawn(async move {
                        let result = host.install(req).await;
                        let reply = match result {
                            Ok(output) => pb::AdminResult { ok: true, output, ..Default::default() },
                            Err(e) => pb::AdminResult {
                                ok: false,
                                refused: matches!(e, crate::packages::InstallError::Disabled),
                                error: e.to_string(),
                                ..Default::default()
                            },
                        };
                        host.link.send(msg.id, host_message::Body::AdminResult(reply)).await;
                    });
                }
                core_message::Body::Ping(p) => {
                    self.link.send(msg.id, host_message::Body::Pong(pb::Pong { nonce: p.nonce })).await;
                }
                reply @ (core_message::Body::QueryResult(_) | core_message::Body::WriteResult(_)) => {
                    self.link.resolve(msg.id, reply);
                }
            }
        }
        let mut link = self.link.tx.lock();
        if link.as_ref().is_some_and(|t| t.same_channel(&ours)) {
            *link = None;
            drop(link);
            // Requests waiting on this session get "connection closed" now.
            self.link.pending.lock().clear();
        }
    }
}
