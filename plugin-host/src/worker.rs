//! One Python worker process and its private channel.
//!
//! The worker gets one end of a Unix socket pair as an inherited descriptor
//! (`WEIR_IPC_FD`); its stdout and stderr are read separately and logged, so nothing a
//! plugin prints can corrupt the channel. Frames match `weir_plugin/worker.py`:
//! `u32 LE n`, then `u32 LE h`, `h` bytes of JSON header, and the body.
//!
//! A reader task answers the worker's requests (queries and writes go up to the core,
//! global-cache calls are served here) and completes invocations. An invocation that
//! outlives its timeout kills the process; a process that dies fails every invocation it
//! was running with a clear error, and the trigger spawns a new one for the next call.

use std::{
    collections::{BTreeMap, HashMap},
    os::fd::{AsRawFd, OwnedFd},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use async_trait::async_trait;
use parking_lot::Mutex;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader},
    net::{UnixStream, unix::OwnedWriteHalf},
    process::{Child, Command},
    sync::oneshot,
};

use crate::cache::GlobalCache;

/// Largest frame accepted from a worker.
const MAX_FRAME: usize = weir_proto::MAX_MESSAGE_BYTES;

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
    ) -> Result<Vec<u8>, String>;
    /// Write line protocol for a plugin now.
    async fn write(&self, trigger: &TriggerId, database: &str, lines: Vec<String>, no_sync: bool)
    -> Result<(), String>;
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

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    spec: WorkerSpec,
    writer: tokio::sync::Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    child: Mutex<Option<Child>>,
    exited: Arc<Mutex<Option<String>>>,
    /// Set when the process was killed (timeout, drop): no new calls go to it even before
    /// the reader task has seen it exit.
    killed: std::sync::atomic::AtomicBool,
    pid: Option<u32>,
}

fn frame(header: &Value, body: &[u8]) -> Vec<u8> {
    let h = serde_json::to_vec(header).expect("JSON values serialize");
    let mut out = Vec::with_capacity(8 + h.len() + body.len());
    out.extend_from_slice(&((4 + h.len() + body.len()) as u32).to_le_bytes());
    out.extend_from_slice(&(h.len() as u32).to_le_bytes());
    out.extend_from_slice(&h);
    out.extend_from_slice(body);
    out
}

async fn read_frame(r: &mut (impl AsyncReadExt + Unpin)) -> std::io::Result<(Value, Vec<u8>)> {
    let n = r.read_u32_le().await? as usize;
    if !(4..=MAX_FRAME).contains(&n) {
        return Err(std::io::Error::other(format!("bad frame length {n}")));
    }
    let mut buf = vec![0u8; n];
    r.read_exact(&mut buf).await?;
    let h = u32::from_le_bytes(buf[..4].try_into().expect("4 bytes")) as usize;
    if 4 + h > n {
        return Err(std::io::Error::other("bad header length"));
    }
    let header: Value = serde_json::from_slice(&buf[4..4 + h]).map_err(std::io::Error::other)?;
    let body = buf.split_off(4 + h);
    Ok((header, body))
}

fn str_field(v: &Value, key: &str) -> String {
    v.get(key).and_then(Value::as_str).unwrap_or_default().to_string()
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
        let child_fd = theirs.as_raw_fd();
        let mut cmd = Command::new(&spec.python);
        cmd.args(["-m", "weir_plugin.worker"])
            .env("WEIR_IPC_FD", child_fd.to_string())
            .env("PYTHONPATH", crate::venv::runtime_dir(&spec.venv))
            .env("VIRTUAL_ENV", &spec.venv)
            .env("PLUGIN_DIR", &spec.plugin_dir)
            .env("TZ", std::env::var("TZ").unwrap_or_else(|_| "UTC".to_string()))
            .env("PYTHONUNBUFFERED", "1")
            .current_dir(&spec.plugin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let memory = spec.memory_limit;
        // SAFETY: only async-signal-safe calls (fcntl, setrlimit) between fork and exec.
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
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(spawn_err)?;
        drop(theirs);
        let pid = child.id();
        ours.set_nonblocking(true).map_err(spawn_err)?;
        let stream = UnixStream::from_std(ours).map_err(spawn_err)?;
        let (mut reader, mut writer) = stream.into_split();

        for (pipe, level) in [
            (child.stdout.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), Level::Info),
            (child.stderr.take().map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), Level::Warn),
        ] {
            if let Some(pipe) = pipe {
                let upstream = Arc::clone(&upstream);
                let trigger = spec.trigger.clone();
                tokio::spawn(async move {
                    let mut lines = BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        upstream.log(&trigger, level, line);
                    }
                });
            }
        }

        let init = json!({
            "type": "init",
            "trigger": spec.trigger.name,
            "database": spec.trigger.database,
            "plugin_path": spec.plugin_path,
            "args": spec.args,
            "run_async": spec.run_async,
            "threads": 8,
            "dry_run": spec.dry_run,
            "columns": spec.columns,
        });
        writer.write_all(&frame(&init, &[])).await.map_err(spawn_err)?;
        let ready = tokio::time::timeout(Duration::from_secs(60), read_frame(&mut reader)).await;
        match ready {
            Ok(Ok((h, _))) if h.get("type").and_then(Value::as_str) == Some("ready") => {}
            Ok(Ok((h, _))) => return Err(InvokeError::Spawn(format!("unexpected first message {h}"))),
            Ok(Err(e)) => {
                let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                return Err(InvokeError::Spawn(format!("the worker exited before it was ready ({status}; {e})")));
            }
            Err(_) => return Err(InvokeError::Spawn("the worker did not start within 60 s".to_string())),
        }

        let worker = Arc::new(Self {
            spec,
            writer: tokio::sync::Mutex::new(writer),
            pending: Arc::new(Mutex::new(HashMap::new())),
            next_id: AtomicU64::new(0),
            child: Mutex::new(Some(child)),
            exited: Arc::new(Mutex::new(None)),
            killed: std::sync::atomic::AtomicBool::new(false),
            pid,
        });
        let w = Arc::downgrade(&worker);
        let pending = Arc::clone(&worker.pending);
        let exited = Arc::clone(&worker.exited);
        let trigger = worker.spec.trigger.clone();
        tokio::spawn(async move {
            let reason = loop {
                let (header, body) = match read_frame(&mut reader).await {
                    Ok(f) => f,
                    Err(e) => break e.to_string(),
                };
                let kind = header.get("type").and_then(Value::as_str).unwrap_or_default();
                match kind {
                    "done" => {
                        let id = header.get("id").and_then(Value::as_u64).unwrap_or_default();
                        let done = Done {
                            ok: header.get("ok").and_then(Value::as_bool).unwrap_or(false),
                            error: header.get("error").and_then(Value::as_str).map(str::to_string),
                            traceback: header.get("traceback").and_then(Value::as_str).map(str::to_string),
                            writes: serde_json::from_value(header.get("writes").cloned().unwrap_or(Value::Null))
                                .unwrap_or_default(),
                            duration: Duration::ZERO,
                            response: header.get("response").map(|r| HttpResponse {
                                status: r
                                    .get("status")
                                    .and_then(Value::as_u64)
                                    .and_then(|s| u16::try_from(s).ok())
                                    .unwrap_or(500),
                                headers: serde_json::from_value(r.get("headers").cloned().unwrap_or(Value::Null))
                                    .unwrap_or_default(),
                                body,
                            }),
                            unstaged: header.get("unstaged").and_then(Value::as_bool).unwrap_or(false),
                            ..Done::default()
                        };
                        if let Some(tx) = pending.lock().remove(&id) {
                            let _ = tx.send(Ok(done));
                        }
                    }
                    "log" => {
                        upstream.log(&trigger, Level::parse(&str_field(&header, "level")), str_field(&header, "text"))
                    }
                    "query" | "write" | "cache" => {
                        let Some(worker) = w.upgrade() else { break "worker dropped".to_string() };
                        let upstream = Arc::clone(&upstream);
                        let cache = Arc::clone(&cache);
                        tokio::spawn(async move { worker.serve_request(header, body, upstream, cache).await });
                    }
                    _ => tracing::warn!(%kind, "unknown message from worker"),
                }
            };
            // The channel closed: the process is gone or going. Fail what it was running:
            // one call is charged with the crash; the others (and every call of a process
            // the host killed for a timeout) were lost with it.
            let (status, killed) = match w.upgrade() {
                Some(worker) => {
                    let killed = worker.killed.load(Ordering::Relaxed);
                    (worker.reap().await, killed)
                }
                None => (reason, true),
            };
            *exited.lock() = Some(status.clone());
            let mut charged = killed;
            let mut waiting: Vec<_> = pending.lock().drain().collect();
            waiting.sort_by_key(|(id, _)| *id);
            for (_, tx) in waiting {
                let error =
                    if charged { InvokeError::Lost(status.clone()) } else { InvokeError::Crashed(status.clone()) };
                charged = true;
                let _ = tx.send(Err(error));
            }
        });
        Ok(worker)
    }

    /// Wait briefly for the process to exit and describe how it ended.
    async fn reap(&self) -> String {
        let child = self.child.lock().take();
        match child {
            Some(mut c) => match tokio::time::timeout(Duration::from_secs(5), c.wait()).await {
                Ok(Ok(status)) => status.to_string(),
                Ok(Err(e)) => e.to_string(),
                Err(_) => {
                    let _ = c.start_kill();
                    "channel closed; killed".to_string()
                }
            },
            None => "killed".to_string(),
        }
    }

    /// Whether the process is gone.
    pub fn is_dead(&self) -> bool {
        self.killed.load(Ordering::Relaxed) || self.exited.lock().is_some()
    }

    /// Process id.
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Kill the process now.
    pub fn kill(&self) {
        self.killed.store(true, Ordering::Relaxed);
        if let Some(c) = self.child.lock().as_mut() {
            let _ = c.start_kill();
        }
    }

    async fn send(&self, header: &Value, body: &[u8]) -> std::io::Result<()> {
        self.writer.lock().await.write_all(&frame(header, body)).await
    }

    async fn serve_request(&self, header: Value, body: Vec<u8>, upstream: Arc<dyn Upstream>, cache: Arc<GlobalCache>) {
        let id = header.get("id").cloned().unwrap_or(Value::Null);
        let kind = str_field(&header, "type");
        let database = str_field(&header, "database");
        let (reply, reply_body) = match kind.as_str() {
            "query" => {
                let params: BTreeMap<String, String> =
                    serde_json::from_value(header.get("params").cloned().unwrap_or(Value::Null)).unwrap_or_default();
                match upstream.query(&self.spec.trigger, &database, &str_field(&header, "sql"), params).await {
                    Ok(rows) => (json!({"type": "query_result", "id": id}), rows),
                    Err(e) => (json!({"type": "query_result", "id": id, "error": e}), Vec::new()),
                }
            }
            "write" => {
                let lines: Vec<String> =
                    serde_json::from_value(header.get("lines").cloned().unwrap_or(Value::Null)).unwrap_or_default();
                let no_sync = header.get("no_sync").and_then(Value::as_bool).unwrap_or(false);
                match upstream.write(&self.spec.trigger, &database, lines, no_sync).await {
                    Ok(()) => (json!({"type": "write_result", "id": id}), Vec::new()),
                    Err(e) => (json!({"type": "write_result", "id": id, "error": e}), Vec::new()),
                }
            }
            _ => {
                let key = str_field(&header, "key");
                let ttl = header.get("ttl").and_then(Value::as_f64).and_then(|t| Duration::try_from_secs_f64(t).ok());
                match str_field(&header, "op").as_str() {
                    "put" => {
                        cache.put(key, body, ttl);
                        (json!({"type": "cache_result", "id": id}), Vec::new())
                    }
                    "get" => match cache.get(&key) {
                        Some(v) => (json!({"type": "cache_result", "id": id, "found": true}), v),
                        None => (json!({"type": "cache_result", "id": id, "found": false}), Vec::new()),
                    },
                    _ => {
                        let found = cache.delete(&key);
                        (json!({"type": "cache_result", "id": id, "found": found}), Vec::new())
                    }
                }
            }
        };
        if let Err(e) = self.send(&reply, &reply_body).await {
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
        let sent = match staged {
            None => self.send(&json!({"type": "invoke", "id": id, "entry": entry}), args).await,
            Some(stage) => self.send(&json!({"type": "invoke", "id": id, "entry": entry, "staged": stage}), &[]).await,
        };
        if let Err(e) = sent {
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
            self.send(&json!({"type": "stage", "id": stage}), body).await.ok().map(|()| stage)
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

impl Drop for Worker {
    fn drop(&mut self) {
        self.kill();
    }
}
