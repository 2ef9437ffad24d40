//! One Python worker process and its private channel.
//!
//! The worker gets one end of a Unix socket pair as an inherited descriptor
//! (`WEIR_IPC_FD`); its stdout and stderr are read separately and logged, so nothing a
//! plugin prints can corrupt the channel. Frames match `weir_plugin/worker.py`:
//! `u32 LE n`, then `u32 LE h`, `h` bytes of JSON header ([`ToWorker`], [`FromWorker`]),
//! and the body.
//!
//! **Process lifecycle.** The worker gets an explicit environment (nothing of the host's
//! secrets), its own process group, and (Linux) SIGKILL when the plugin host dies. A
//! waiter task watches the process itself: when the worker exits, its whole group is
//! killed (children a plugin forked included) and the calls it was running fail at once
//! with its exit status; a timeout, a dropped trigger or the host's shutdown kill the
//! whole group too.
//!
//! A reader task answers the worker's requests (queries and writes go up to the core,
//! global-cache calls are served here) and completes invocations. A message over the size
//! limit fails its call with the size and the limit, and is skipped; the worker lives on.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixStream, unix::OwnedReadHalf, unix::OwnedWriteHalf},
    process::{Child, Command},
    sync::oneshot,
};

use crate::cache::GlobalCache;

/// Largest frame accepted from a worker (and sent to one).
pub const MAX_FRAME: usize = weir_proto::MAX_MESSAGE_BYTES;
/// Largest JSON header read (a header is small; a larger one is a broken worker).
const MAX_HEADER: usize = 64 << 20;

/// Why a plugin's query or write did not reach the core, or what the core answered.
#[derive(Debug, Clone, thiserror::Error)]
pub enum UpstreamError {
    /// No core session.
    #[error("weir serve is not connected to the plugin host")]
    NotConnected,
    /// The session ended before the answer.
    #[error("the connection to weir serve closed")]
    Closed,
    /// No answer in time.
    #[error("weir serve did not answer within {0:?}")]
    NoAnswer(Duration),
    /// The core refused it: its error, worded as InfluxDB 3 words it (the plugin sees it).
    #[error("{0}")]
    Refused(String),
    /// A reply of the wrong kind, or an answer that does not decode.
    #[error("bad answer from weir serve: {0}")]
    Protocol(String),
    /// Dry runs capture writes instead.
    #[error("writes are captured in a dry run")]
    DryRun,
}

/// What a worker needs from the rest of the system.
#[async_trait]
pub trait Upstream: Send + Sync + std::fmt::Debug {
    /// Run SQL for a plugin: the answer as marshal-encoded rows, or the error text.
    async fn query(
        &self,
        trigger: &TriggerId,
        database: &str,
        sql: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, UpstreamError>;
    /// Write line protocol for a plugin now.
    async fn write(
        &self,
        trigger: &TriggerId,
        database: &str,
        lines: Vec<String>,
        no_sync: bool,
    ) -> Result<(), UpstreamError>;
    /// A log line about a trigger.
    fn log(&self, trigger: &TriggerId, level: Level, text: String);
}

/// A trigger's identity.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TriggerId {
    /// Database.
    pub database: String,
    /// Trigger name.
    pub name: String,
}

/// Log levels, as `system.processing_engine_logs` spells them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    /// INFO
    Info,
    /// WARN
    Warn,
    /// ERROR
    Error,
}

impl Level {
    /// As `system.processing_engine_logs` spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }

    fn parse(s: &str) -> Self {
        match s {
            "WARN" => Self::Warn,
            "ERROR" => Self::Error,
            _ => Self::Info,
        }
    }
}

/// How to start a worker.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The trigger it serves.
    pub trigger: TriggerId,
    /// The venv's interpreter.
    pub python: PathBuf,
    /// The venv directory.
    pub venv: PathBuf,
    /// `--plugin-dir`.
    pub plugin_dir: PathBuf,
    /// Absolute path of the plugin file or package directory.
    pub plugin_path: PathBuf,
    /// `trigger_arguments` (`None`: the plugin gets `None`).
    pub args: Option<BTreeMap<String, String>>,
    /// Run invocations concurrently on threads.
    pub run_async: bool,
    /// Address-space limit of the process, bytes.
    pub memory_limit: Option<u64>,
    /// Capture `write_sync*` instead of writing (dry runs).
    pub dry_run: bool,
    /// `process_writes` arguments come as columns (`marshal::wal_call_args_columns`), which
    /// the worker builds into rows itself; only when the venv's speedups were built.
    pub columns: bool,
    /// With the speedups: keep freed allocator arenas mapped for the next batch.
    pub arena_cache: bool,
    /// The process's whole environment ([`crate::env::worker_environment`]).
    pub env: Arc<Vec<(String, String)>>,
    /// Filesystem confinement applied to the process (`None`: unconfined).
    pub confinement: Option<Arc<crate::confine::Confinement>>,
    /// Fork the worker from this fork server (`None`, or the fork server unavailable:
    /// start it with exec).
    pub fork: Option<Arc<crate::forkserver::ForkServer>>,
}

/// The outcome of one invocation, as the worker reports it.
#[derive(Debug, Clone, Default)]
pub struct Done {
    /// Success.
    pub ok: bool,
    /// Error text.
    pub error: Option<String>,
    /// Python traceback.
    pub traceback: Option<String>,
    /// Buffered writes per database, to commit.
    pub writes: BTreeMap<String, Vec<String>>,
    /// Wall time.
    pub duration: Duration,
    /// A request plugin's HTTP answer (when it succeeded).
    pub response: Option<HttpResponse>,
    /// Set by the host: the call timed out.
    pub timed_out: bool,
    /// Set by the host: the trigger is stopped by the crash-loop breaker.
    pub stopped: bool,
    /// The worker did not run the call: the arguments it was to find staged were not
    /// there (the caller sends them again with the call).
    pub unstaged: bool,
    /// The id under which the next call's arguments were sent ahead with this one.
    pub staged: Option<u64>,
}

/// The HTTP answer a request plugin's return value converts to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, including the content type.
    pub headers: BTreeMap<String, String>,
    /// Body.
    pub body: Vec<u8>,
}

/// Why an invocation did not complete.
#[derive(Debug, Clone, thiserror::Error)]
pub enum InvokeError {
    /// Past the timeout: the worker was killed.
    #[error("the plugin did not finish within {0:?}; its worker process was killed")]
    Timeout(Duration),
    /// The worker process died.
    #[error("the plugin's worker process exited ({0}) during the call")]
    Crashed(String),
    /// The worker sent a message over the size limit (its call fails; the worker is fine).
    #[error("{0}")]
    TooLarge(String),
    /// The worker could not be started.
    #[error("cannot start the plugin worker: {0}")]
    Spawn(String),
    /// The plugin file is missing or refused (nothing was started).
    #[error("{0}")]
    Plugin(String),
    /// The worker ended during the call because another call on it crashed it or was
    /// timed out (not this call's fault).
    #[error("the plugin's worker process ended during the call because another call on it failed ({0})")]
    Lost(String),
}

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<Result<Done, InvokeError>>>>>;

/// A message to a worker (the frame's JSON header).
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum ToWorker<'a> {
    Init {
        trigger: &'a str,
        database: &'a str,
        plugin_path: &'a std::path::Path,
        args: &'a Option<BTreeMap<String, String>>,
        run_async: bool,
        threads: u32,
        dry_run: bool,
        columns: bool,
        arena_cache: bool,
    },
    Invoke {
        id: u64,
        entry: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        staged: Option<u64>,
    },
    Stage {
        id: u64,
    },
    QueryResult {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    WriteResult {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        error: Option<String>,
    },
    CacheResult {
        id: u64,
        #[serde(skip_serializing_if = "Option::is_none")]
        found: Option<bool>,
    },
}

/// The HTTP answer part of a `done` header.
#[derive(Debug, Deserialize)]
struct ResponseHeader {
    #[serde(default = "internal_error")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
}

fn internal_error() -> u16 {
    500
}

/// What a worker sends (the frame's JSON header).
#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum FromWorker {
    Ready {},
    Done {
        id: u64,
        #[serde(default)]
        ok: bool,
        #[serde(default)]
        error: Option<String>,
        #[serde(default)]
        traceback: Option<String>,
        #[serde(default)]
        writes: Option<BTreeMap<String, Vec<String>>>,
        #[serde(default)]
        response: Option<ResponseHeader>,
        #[serde(default)]
        unstaged: bool,
    },
    Log {
        #[serde(default)]
        level: String,
        #[serde(default)]
        text: String,
    },
    Query {
        id: u64,
        #[serde(default)]
        database: String,
        #[serde(default)]
        sql: String,
        #[serde(default)]
        params: Option<BTreeMap<String, String>>,
    },
    Write {
        id: u64,
        #[serde(default)]
        database: String,
        #[serde(default)]
        lines: Vec<String>,
        #[serde(default)]
        no_sync: bool,
    },
    Cache {
        id: u64,
        #[serde(default)]
        op: String,
        #[serde(default)]
        key: String,
        #[serde(default)]
        ttl: Option<f64>,
    },
}

/// A frame read from a worker.
#[derive(Debug)]
enum Frame {
    /// A message and its body.
    Message(FromWorker, Vec<u8>),
    /// A message too large to accept (its body was skipped): the header, if it could be
    /// read, and the frame's size.
    TooLarge(Option<FromWorker>, usize),
}

fn frame(header: &ToWorker<'_>, body: &[u8]) -> std::io::Result<Vec<u8>> {
    let h = serde_json::to_vec(header).map_err(std::io::Error::other)?;
    let n = 4 + h.len() + body.len();
    if n > MAX_FRAME {
        return Err(std::io::Error::other(format!(
            "a message of {n} bytes is over the {MAX_FRAME}-byte limit between the plugin host and its workers"
        )));
    }
    let mut out = Vec::with_capacity(4 + n);
    out.extend_from_slice(&(n as u32).to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    Ok(out)
}

async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> std::io::Result<Frame> {
    let n = r.read_u32_le().await? as usize;
    let h = r.read_u32_le().await? as usize;
    if n < 4 || 4 + h > n || h > MAX_HEADER {
        return Err(std::io::Error::other(format!("bad frame (length {n}, header {h})")));
    }
    let mut header = vec![0u8; h];
    r.read_exact(&mut header).await?;
    let parsed = serde_json::from_slice::<FromWorker>(&header);
    let body_len = n - 4 - h;
    if n > MAX_FRAME {
        // Skip the body so the channel stays in step; the call fails with the size.
        tokio::io::copy(&mut r.take(body_len as u64), &mut tokio::io::sink()).await?;
        return Ok(Frame::TooLarge(parsed.ok(), n));
    }
    let mut body = vec![0u8; body_len];
    r.read_exact(&mut body).await?;
    let message = parsed.map_err(|e| std::io::Error::other(format!("unreadable message from the worker: {e}")))?;
    Ok(Frame::Message(message, body))
}

/// SIGKILL to a process group (ESRCH, already gone, is fine).
fn kill_group(pgid: Option<u32>) {
    if let Some(pgid) = pgid.and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1) {
        // SAFETY: killpg only sends a signal; the group is the worker's own.
        unsafe {
            libc::killpg(pgid, libc::SIGKILL);
        }
    }
}

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    spec: WorkerSpec,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    /// How the process ended, once it has.
    exited: Arc<Mutex<Option<String>>>,
    /// Set when the process was killed (timeout, drop): no new calls go to it even before
    /// the waiter has seen it exit.
    killed: Arc<AtomicBool>,
    /// The process id, which is also its process group id.
    pid: Option<u32>,
}

impl Drop for Worker {
    fn drop(&mut self) {
        // A trigger dropped or redefined, or the host stopping: the whole group goes.
        kill_group(self.pid);
    }
}

/// Start the process: explicit environment, own process group, parent-death signal, the
/// channel descriptor kept across exec, the memory limit.
fn start_process(spec: &WorkerSpec, child_fd: i32) -> std::io::Result<Child> {
    let mut cmd = Command::new(&spec.python);
    cmd.args(["-m", "weir_plugin.worker"])
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .env("WEIR_IPC_FD", child_fd.to_string())
        .current_dir(&spec.plugin_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    child_setup(
        &mut cmd,
        child_fd,
        spec.memory_limit,
        spec.confinement.clone(),
        "the plugin host exited while starting a worker",
    );
    cmd.spawn()
}

/// Set up a Python child of the host (a worker, or the fork server) between fork and exec:
/// `child_fd` is kept across exec, the address space is capped at `memory`, the child is
/// killed with the host (parent-death signal, checked against a host that already exited:
/// the spawn then fails with `host_gone`) and confined.
pub(crate) fn child_setup(
    cmd: &mut Command,
    child_fd: i32,
    memory: Option<u64>,
    confinement: Option<Arc<crate::confine::Confinement>>,
    host_gone: &'static str,
) {
    #[cfg(target_os = "linux")]
    // SAFETY: getpid is async-signal-safe; read before fork.
    let parent = unsafe { libc::getpid() };
    // SAFETY: only async-signal-safe calls (fcntl, setrlimit, prctl, getppid, the Landlock
    // system calls) between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Let the child keep its end of the socket across exec.
            if libc::fcntl(child_fd, libc::F_SETFD, 0) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(bytes) = memory {
                let lim = libc::rlimit { rlim_cur: bytes as libc::rlim_t, rlim_max: bytes as libc::rlim_t };
                if libc::setrlimit(libc::RLIMIT_AS, &lim) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            #[cfg(target_os = "linux")]
            {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other(host_gone));
                }
            }
            if let Some(c) = &confinement {
                c.apply()?;
            }
            Ok(())
        });
    }
}

type Pipe = Box<dyn AsyncRead + Unpin + Send>;

/// A worker process: a child of the host (exec), or of the fork server.
enum Process {
    Exec(Child),
    Forked(oneshot::Receiver<String>),
}

impl Process {
    /// Wait for the process to end; its exit status as text.
    async fn wait(self) -> String {
        match self {
            Self::Exec(mut child) => match child.wait().await {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            },
            Self::Forked(exit) => exit.await.unwrap_or_else(|_| "the fork server went away".to_string()),
        }
    }
}

/// Start the worker's process: forked from the fork server when there is one, else with
/// exec. Returns the process, its pid and its stdout and stderr.
async fn start(spec: &WorkerSpec, channel: &OwnedFd) -> std::io::Result<(Process, Option<u32>, [Option<Pipe>; 2])> {
    if let Some(fork) = &spec.fork
        && let Some(f) = fork.spawn(&spec.python, channel, spec.memory_limit).await
    {
        let out = tokio::net::unix::pipe::Receiver::from_owned_fd(f.stdout)?;
        let err = tokio::net::unix::pipe::Receiver::from_owned_fd(f.stderr)?;
        return Ok((Process::Forked(f.exit), Some(f.pid), [Some(Box::new(out)), Some(Box::new(err))]));
    }
    let mut child = start_process(spec, channel.as_raw_fd())?;
    let pid = child.id();
    let pipes: [Option<Pipe>; 2] =
        [child.stdout.take().map(|s| Box::new(s) as Pipe), child.stderr.take().map(|s| Box::new(s) as Pipe)];
    Ok((Process::Exec(child), pid, pipes))
}

/// Re-emit a worker's stdout (INFO) and stderr (WARN) lines as its trigger's log lines.
fn forward_output(pipes: [Option<Pipe>; 2], trigger: &TriggerId, upstream: &Arc<dyn Upstream>) {
    let [out, err] = pipes;
    let pipes: [(Option<Pipe>, Level); 2] = [(out, Level::Info), (err, Level::Warn)];
    for (pipe, level) in pipes {
        if let Some(pipe) = pipe {
            let upstream = Arc::clone(upstream);
            let trigger = trigger.clone();
            tokio::spawn(async move {
                let mut lines = BufReader::new(pipe).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    upstream.log(&trigger, level, line);
                }
            });
        }
    }
}

/// Fail every call still waiting on a worker that is gone: one is charged with the crash,
/// the others (and every call of a process the host killed) were lost with it.
fn fail_pending(pending: &Pending, status: &str, killed: bool) {
    let mut charged = killed;
    let mut waiting: Vec<_> = pending.lock().drain().collect();
    waiting.sort_by_key(|(id, _)| *id);
    for (_, tx) in waiting {
        let error =
            if charged { InvokeError::Lost(status.to_string()) } else { InvokeError::Crashed(status.to_string()) };
        charged = true;
        let _ = tx.send(Err(error));
    }
}

impl Worker {
    /// Start the process and wait for its `ready`.
    pub async fn spawn(
        spec: WorkerSpec,
        upstream: Arc<dyn Upstream>,
        cache: Arc<GlobalCache>,
    ) -> Result<Arc<Self>, InvokeError> {
        let spawn_err = |e: std::io::Error| InvokeError::Spawn(e.to_string());
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().map_err(spawn_err)?;
        let theirs: OwnedFd = theirs.into();
        let (process, pid, pipes) = start(&spec, &theirs).await.map_err(spawn_err)?;
        drop(theirs);
        ours.set_nonblocking(true).map_err(spawn_err)?;
        let (mut reader, mut writer) = UnixStream::from_std(ours).map_err(spawn_err)?.into_split();
        forward_output(pipes, &spec.trigger, &upstream);

        let init = ToWorker::Init {
            trigger: &spec.trigger.name,
            database: &spec.trigger.database,
            plugin_path: &spec.plugin_path,
            args: &spec.args,
            run_async: spec.run_async,
            threads: 8,
            dry_run: spec.dry_run,
            columns: spec.columns,
            arena_cache: spec.arena_cache,
        };
        writer.write_all(&frame(&init, &[]).map_err(spawn_err)?).await.map_err(spawn_err)?;
        match tokio::time::timeout(Duration::from_secs(60), read_frame(&mut reader)).await {
            Ok(Ok(Frame::Message(FromWorker::Ready {}, _))) => {}
            Ok(Ok(other)) => {
                kill_group(pid);
                return Err(InvokeError::Spawn(format!("unexpected first message {other:?}")));
            }
            Ok(Err(e)) => {
                kill_group(pid);
                let status = process.wait().await;
                return Err(InvokeError::Spawn(format!("the worker exited before it was ready ({status}; {e})")));
            }
            Err(_) => {
                kill_group(pid);
                return Err(InvokeError::Spawn("the worker did not start within 60 s".to_string()));
            }
        }

        let worker = Arc::new(Self {
            spec,
            writer: tokio::sync::Mutex::new(writer),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            exited: Arc::new(Mutex::new(None)),
            killed: Arc::new(AtomicBool::new(false)),
            pid,
        });
        tokio::spawn(Self::watch(
            process,
            pid,
            Arc::clone(&worker.pending),
            Arc::clone(&worker.exited),
            Arc::clone(&worker.killed),
        ));
        tokio::spawn(Self::read_loop(Arc::downgrade(&worker), reader, upstream, cache));
        Ok(worker)
    }

    /// Wait for the process itself to end (not only its channel: a child it forked may
    /// hold that open), then kill what is left of its group and fail its calls.
    async fn watch(
        process: Process,
        pid: Option<u32>,
        pending: Pending,
        exited: Arc<Mutex<Option<String>>>,
        killed: Arc<AtomicBool>,
    ) {
        let status = process.wait().await;
        kill_group(pid);
        *exited.lock() = Some(status.clone());
        fail_pending(&pending, &status, killed.load(Ordering::Acquire));
    }

    /// Read the worker's messages until the channel closes.
    async fn read_loop(
        w: std::sync::Weak<Self>,
        mut reader: OwnedReadHalf,
        upstream: Arc<dyn Upstream>,
        cache: Arc<GlobalCache>,
    ) {
        let reason = loop {
            let frame = match read_frame(&mut reader).await {
                Ok(f) => f,
                Err(e) => break e.to_string(),
            };
            let Some(worker) = w.upgrade() else { return };
            match frame {
                Frame::Message(message, body) => worker.handle(message, body, &upstream, &cache),
                Frame::TooLarge(header, size) => worker.too_large(header, size),
            }
        };
        // The channel closed or broke: the process is gone or going. Make sure it goes (a
        // broken channel is a crash); the waiter reports how it ended.
        if let Some(worker) = w.upgrade()
            && worker.exited.lock().is_none()
        {
            tracing::debug!(trigger = %worker.spec.trigger.name, %reason, "worker channel closed");
            kill_group(worker.pid);
        }
    }

    fn handle(
        self: &Arc<Self>,
        message: FromWorker,
        body: Vec<u8>,
        upstream: &Arc<dyn Upstream>,
        cache: &Arc<GlobalCache>,
    ) {
        match message {
            FromWorker::Done { id, ok, error, traceback, writes, response, unstaged } => {
                let done = Done {
                    ok,
                    error,
                    traceback,
                    writes: writes.unwrap_or_default(),
                    duration: Duration::ZERO,
                    response: response.map(|r| HttpResponse { status: r.status, headers: r.headers, body }),
                    unstaged,
                    ..Done::default()
                };
                if let Some(tx) = self.pending.lock().remove(&id) {
                    let _ = tx.send(Ok(done));
                }
            }
            FromWorker::Log { level, text } => upstream.log(&self.spec.trigger, Level::parse(&level), text),
            FromWorker::Ready {} => tracing::warn!(trigger = %self.spec.trigger.name, "a second ready from a worker"),
            request @ (FromWorker::Query { .. } | FromWorker::Write { .. } | FromWorker::Cache { .. }) => {
                let worker = Arc::clone(self);
                let upstream = Arc::clone(upstream);
                let cache = Arc::clone(cache);
                tokio::spawn(async move { worker.serve_request(request, body, upstream, cache).await });
            }
        }
    }

    /// A message over the size limit: its call (or request) fails with the size and the
    /// limit; the worker is not at fault for the crash-loop breaker.
    fn too_large(self: &Arc<Self>, header: Option<FromWorker>, size: usize) {
        let text = format!("the plugin sent a message of {size} bytes, over the {MAX_FRAME}-byte limit");
        self.spec_log(&text);
        let reply = match header {
            Some(FromWorker::Done { id, .. }) => {
                if let Some(tx) = self.pending.lock().remove(&id) {
                    let _ = tx.send(Err(InvokeError::TooLarge(format!("{text} (its answer or buffered writes)"))));
                }
                return;
            }
            Some(FromWorker::Query { id, .. }) => ToWorker::QueryResult { id, error: Some(text) },
            Some(FromWorker::Write { id, .. }) => ToWorker::WriteResult { id, error: Some(text) },
            Some(FromWorker::Cache { id, .. }) => ToWorker::CacheResult { id, found: Some(false) },
            _ => return,
        };
        let worker = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = worker.send(&reply, &[]).await {
                tracing::debug!(error = %e, "worker went away before its reply");
            }
        });
    }

    fn spec_log(&self, text: &str) {
        tracing::warn!(trigger = %self.spec.trigger.name, "{text}");
    }

    /// Whether the process is gone.
    pub fn is_dead(&self) -> bool {
        self.killed.load(Ordering::Acquire) || self.exited.lock().is_some()
    }

    /// Process id (also the id of its process group).
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Kill the process and everything it started now.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Release);
        kill_group(self.pid);
    }

    async fn send(&self, header: &ToWorker<'_>, body: &[u8]) -> std::io::Result<()> {
        let bytes = frame(header, body)?;
        self.writer.lock().await.write_all(&bytes).await
    }

    async fn serve_request(
        &self,
        request: FromWorker,
        body: Vec<u8>,
        upstream: Arc<dyn Upstream>,
        cache: Arc<GlobalCache>,
    ) {
        let (reply, reply_body) = match request {
            FromWorker::Query { id, database, sql, params } => {
                match upstream.query(&self.spec.trigger, &database, &sql, params.unwrap_or_default()).await {
                    Ok(rows) => (ToWorker::QueryResult { id, error: None }, rows),
                    Err(e) => (ToWorker::QueryResult { id, error: Some(e.to_string()) }, Vec::new()),
                }
            }
            FromWorker::Write { id, database, lines, no_sync } => {
                match upstream.write(&self.spec.trigger, &database, lines, no_sync).await {
                    Ok(()) => (ToWorker::WriteResult { id, error: None }, Vec::new()),
                    Err(e) => (ToWorker::WriteResult { id, error: Some(e.to_string()) }, Vec::new()),
                }
            }
            FromWorker::Cache { id, op, key, ttl } => {
                let ttl = ttl.and_then(|t| Duration::try_from_secs_f64(t).ok());
                match op.as_str() {
                    "put" => {
                        cache.put(key, body, ttl);
                        (ToWorker::CacheResult { id, found: None }, Vec::new())
                    }
                    "get" => match cache.get(&key) {
                        Some(v) => (ToWorker::CacheResult { id, found: Some(true) }, v),
                        None => (ToWorker::CacheResult { id, found: Some(false) }, Vec::new()),
                    },
                    _ => (ToWorker::CacheResult { id, found: Some(cache.delete(&key)) }, Vec::new()),
                }
            }
            _ => return,
        };
        // An answer over the frame limit goes back as that request's error (the plugin
        // raises it), never as nothing.
        let sent = match frame(&reply, &reply_body) {
            Ok(bytes) => self.writer.lock().await.write_all(&bytes).await,
            Err(e) => {
                let failed = match reply {
                    ToWorker::QueryResult { id, .. } => ToWorker::QueryResult { id, error: Some(e.to_string()) },
                    ToWorker::CacheResult { id, .. } => ToWorker::CacheResult { id, found: Some(false) },
                    other => other,
                };
                self.send(&failed, &[]).await
            }
        };
        if let Err(e) = sent {
            tracing::debug!(error = %e, "worker went away before its reply");
        }
    }

    /// Run `entry` with marshal-encoded call arguments; kills the worker past `timeout`.
    pub async fn invoke(&self, entry: &str, args: &[u8], timeout: Duration) -> Result<Done, InvokeError> {
        self.call(entry, args, None, timeout, None).await
    }

    /// [`Worker::invoke`], where the arguments may already be in the worker (`staged`: the
    /// id a previous call's [`Done::staged`] gave; sent again if the worker does not have
    /// them), and where `ahead` (the next call's arguments) is sent right behind the call,
    /// while it runs, so the worker has them when the next call comes; [`Done::staged`]
    /// then names them.
    pub async fn invoke_staged(
        &self,
        entry: &str,
        args: &[u8],
        staged: Option<u64>,
        timeout: Duration,
        ahead: Option<&[u8]>,
    ) -> Result<Done, InvokeError> {
        match self.call(entry, args, staged, timeout, ahead).await {
            Ok(done) if done.unstaged => self.call(entry, args, None, timeout, ahead).await,
            other => other,
        }
    }

    async fn call(
        &self,
        entry: &str,
        args: &[u8],
        staged: Option<u64>,
        timeout: Duration,
        ahead: Option<&[u8]>,
    ) -> Result<Done, InvokeError> {
        if let Some(status) = self.exited.lock().clone() {
            return Err(InvokeError::Crashed(status));
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().insert(id, tx);
        let started = Instant::now();
        let invoke = match staged {
            None => frame(&ToWorker::Invoke { id, entry, staged: None }, args),
            Some(stage) => frame(&ToWorker::Invoke { id, entry, staged: Some(stage) }, &[]),
        };
        // Arguments over the message limit are this call's failure, not the worker's.
        let invoke = match invoke {
            Ok(bytes) => bytes,
            Err(e) => {
                self.pending.lock().remove(&id);
                return Err(InvokeError::TooLarge(e.to_string()));
            }
        };
        if let Err(e) = self.writer.lock().await.write_all(&invoke).await {
            self.pending.lock().remove(&id);
            return Err(InvokeError::Crashed(e.to_string()));
        }
        let reply = async {
            match tokio::time::timeout(timeout, rx).await {
                Ok(Ok(result)) => result.map(|mut d| {
                    d.duration = started.elapsed();
                    d
                }),
                Ok(Err(_)) => Err(InvokeError::Crashed("channel closed".to_string())),
                Err(_) => {
                    self.pending.lock().remove(&id);
                    self.kill();
                    Err(InvokeError::Timeout(timeout))
                }
            }
        };
        // Behind the invoke on the socket, never before it. Not cancelled (a frame is
        // written whole): if the worker hangs, the timeout above kills it and the write fails.
        let stage = async {
            let body = ahead?;
            let stage = NEXT_STAGE.fetch_add(1, Ordering::Relaxed);
            self.send(&ToWorker::Stage { id: stage }, body).await.ok().map(|()| stage)
        };
        let (result, stage) = tokio::join!(reply, stage);
        result.map(|mut d| {
            d.staged = stage;
            d
        })
    }
}

/// Ids of staged arguments, unique across workers (a replaced worker never matches).
static NEXT_STAGE: AtomicU64 = AtomicU64::new(1);
