//! The fork server: one pre-started Python process (`weir_plugin/forkserver.py`) that has
//! imported the worker runtime, and the modules named by `--worker-preload`, forks every
//! new worker. Workers then start in milliseconds and share those pages copy-on-write;
//! each is still its own process (own process group, address-space limit, channel, pipes),
//! so isolation, timeouts and crash handling are as for a worker started with exec.
//!
//! The fork server is started with what a worker would get (explicit environment, the
//! Landlock confinement, SIGKILL when the host dies), which its forks inherit; a fork then
//! takes its own process group, SIGKILL when the fork server dies, and its memory limit.
//! Control messages go over a SOCK_SEQPACKET socket pair, one JSON message a packet; a
//! spawn request carries the worker's channel, stdout and stderr as descriptors
//! (SCM_RIGHTS). Workers are the fork server's children, so it reports their exit status;
//! the host kills them by process group as before.
//!
//! The fork server starts on the first worker and again after it dies or after packages
//! were installed (a preloaded module may have changed). If it cannot start, workers are
//! started with exec, with one warning.

use std::{
    collections::HashMap,
    os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
    path::PathBuf,
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;
use serde::Deserialize;
use tokio::{io::unix::AsyncFd, process::Command, sync::oneshot};

/// What the fork server is started with.
#[derive(Debug, Clone)]
pub struct ForkServerConfig {
    /// The venv's interpreter.
    pub python: PathBuf,
    /// `--plugin-dir` (its working directory).
    pub plugin_dir: PathBuf,
    /// The workers' environment ([`crate::env::worker_environment`]).
    pub env: Arc<Vec<(String, String)>>,
    /// Filesystem confinement (inherited by every fork).
    pub confinement: Option<Arc<crate::confine::Confinement>>,
    /// Modules imported before forking (`--worker-preload`).
    pub preload: Vec<String>,
}

/// A forked worker process, as [`ForkServer::spawn`] gives it.
#[derive(Debug)]
pub struct Forked {
    /// Process id (and process group id).
    pub pid: u32,
    /// Resolves with its exit status (`exit status: 1`, `signal: 9 (SIGKILL)`).
    pub exit: oneshot::Receiver<String>,
    /// Read ends of its stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// What a spawn request resolves to: the child's pid and a receiver of its exit status,
/// or the fork server's error.
type SpawnReply = Result<(u32, oneshot::Receiver<String>), String>;

/// A running fork server process.
#[derive(Debug)]
struct Zygote {
    ctl: AsyncFd<OwnedFd>,
    child: Mutex<Option<tokio::process::Child>>,
    python: PathBuf,
    spawns: Mutex<HashMap<u64, oneshot::Sender<SpawnReply>>>,
    exits: Mutex<HashMap<u32, oneshot::Sender<String>>>,
    next: AtomicU64,
    dead: AtomicBool,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum Report {
    Ready {
        #[allow(dead_code)]
        ready: bool,
        #[serde(default)]
        preloaded: Vec<String>,
        #[serde(default)]
        failed: HashMap<String, String>,
    },
    Spawned {
        spawned: u64,
        #[serde(default)]
        pid: Option<u32>,
        #[serde(default)]
        error: Option<String>,
    },
    Exited {
        exited: u32,
        status: String,
    },
}

/// The fork server of one plugin host (started lazily, restarted when needed).
#[derive(Debug)]
pub struct ForkServer {
    config: Mutex<ForkServerConfig>,
    current: tokio::sync::Mutex<Option<Arc<Zygote>>>,
    /// Set after the fork server failed to start: workers use exec from then on.
    broken: AtomicBool,
}

fn seqpacket_pair() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: socketpair writes two descriptors into `fds` on success.
    let rc = unsafe { libc::socketpair(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0, fds.as_mut_ptr()) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// A pipe: (read end, write end), both close-on-exec.
pub fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two descriptors into `fds` on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn set_nonblocking(fd: RawFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Send one packet with descriptors attached.
fn send_with_fds(sock: RawFd, data: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let fd_bytes = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure size computation.
    let space = unsafe { libc::CMSG_SPACE(fd_bytes as u32) } as usize;
    let mut control = vec![0u8; space];
    let mut iov = libc::iovec { iov_base: data.as_ptr() as *mut libc::c_void, iov_len: data.len() };
    // SAFETY: msghdr is plain data; every pointer set below outlives the sendmsg call.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        msg.msg_control = control.as_mut_ptr() as *mut libc::c_void;
        msg.msg_controllen = space as _;
        // SAFETY: the control buffer is CMSG_SPACE(fd_bytes) long, so the first header and
        // its data fit; CMSG_FIRSTHDR/CMSG_DATA point inside it.
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(fd_bytes as u32) as _;
            std::ptr::copy_nonoverlapping(fds.as_ptr() as *const u8, libc::CMSG_DATA(cmsg), fd_bytes);
        }
    }
    // SAFETY: msg is fully initialised above.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != data.len() {
        return Err(std::io::Error::other("short send to the fork server"));
    }
    Ok(())
}

impl Zygote {
    async fn start(config: &ForkServerConfig) -> std::io::Result<Arc<Self>> {
        let (ours, theirs) = seqpacket_pair()?;
        let mut cmd = Command::new(&config.python);
        cmd.args(["-m", "weir_plugin.forkserver"])
            .env_clear()
            .envs(config.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("WEIR_FORK_FD", theirs.as_raw_fd().to_string())
            .env("WEIR_WORKER_PRELOAD", config.preload.join(","))
            .current_dir(&config.plugin_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0)
            .kill_on_drop(true);
        // No memory cap on the fork server itself: each worker it forks sets its own.
        crate::worker::child_setup(
            &mut cmd,
            theirs.as_raw_fd(),
            None,
            config.confinement.clone(),
            "the plugin host exited while starting the fork server",
        );
        let mut child = cmd.spawn()?;
        drop(theirs);
        for (pipe, warn) in [
            (child.stdout.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), false),
            (child.stderr.take().map(|p| Box::new(p) as Box<dyn tokio::io::AsyncRead + Unpin + Send>), true),
        ] {
            if let Some(pipe) = pipe {
                tokio::spawn(async move {
                    use tokio::io::AsyncBufReadExt as _;
                    let mut lines = tokio::io::BufReader::new(pipe).lines();
                    while let Ok(Some(line)) = lines.next_line().await {
                        if warn {
                            tracing::warn!(target: "weir_plugin_host::forkserver", "{line}");
                        } else {
                            tracing::info!(target: "weir_plugin_host::forkserver", "{line}");
                        }
                    }
                });
            }
        }
        set_nonblocking(ours.as_raw_fd())?;
        // SAFETY: an OwnedFd keeps its descriptor open and unchanged for as long as it is
        // owned, here by the AsyncFd.
        let ctl = unsafe { AsyncFd::register(ours) }.map_err(|e| std::io::Error::other(e.to_string()))?;
        let zygote = Arc::new(Self {
            ctl,
            child: Mutex::new(Some(child)),
            python: config.python.clone(),
            spawns: Mutex::new(HashMap::new()),
            exits: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            dead: AtomicBool::new(false),
        });
        // The first report says it is ready (or it died trying).
        let first = tokio::time::timeout(Duration::from_secs(60), zygote.recv()).await;
        match first {
            Ok(Ok(bytes)) => match serde_json::from_slice::<Report>(&bytes) {
                Ok(Report::Ready { preloaded, failed, .. }) => {
                    for (module, error) in &failed {
                        tracing::warn!(%module, %error, "--worker-preload: module not imported");
                    }
                    tracing::info!(?preloaded, "worker fork server ready");
                }
                other => return Err(std::io::Error::other(format!("unexpected first report {other:?}"))),
            },
            Ok(Err(e)) => {
                return Err(std::io::Error::other(format!("the fork server exited before it was ready ({e})")));
            }
            Err(_) => return Err(std::io::Error::other("the fork server did not start within 60 s")),
        }
        tokio::spawn(Arc::clone(&zygote).read_loop());
        Ok(zygote)
    }

    /// One packet from the fork server (EOF is an error).
    async fn recv(&self) -> std::io::Result<Vec<u8>> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let mut guard = self.ctl.readable().await?;
            // SAFETY: recv into a buffer of the given length on a descriptor we own.
            let n = guard.try_io(|fd| {
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr() as *mut libc::c_void, buf.len(), 0) };
                if n < 0 { Err(std::io::Error::last_os_error()) } else { Ok(n as usize) }
            });
            match n {
                Ok(Ok(0)) => return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof)),
                Ok(Ok(n)) => {
                    buf.truncate(n);
                    return Ok(buf);
                }
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
    }

    async fn read_loop(self: Arc<Self>) {
        let why = loop {
            let bytes = match self.recv().await {
                Ok(b) => b,
                Err(e) => break e.to_string(),
            };
            match serde_json::from_slice::<Report>(&bytes) {
                Ok(Report::Spawned { spawned, pid, error }) => {
                    let Some(tx) = self.spawns.lock().remove(&spawned) else { continue };
                    let reply = match (pid, error) {
                        (Some(pid), None) => {
                            // Registered before the next report is read: its exit comes later.
                            let (exit_tx, exit_rx) = oneshot::channel();
                            self.exits.lock().insert(pid, exit_tx);
                            Ok((pid, exit_rx))
                        }
                        (_, error) => Err(error.unwrap_or_else(|| "no pid".to_string())),
                    };
                    let _ = tx.send(reply);
                }
                Ok(Report::Exited { exited, status }) => {
                    if let Some(tx) = self.exits.lock().remove(&exited) {
                        let _ = tx.send(status);
                    }
                }
                Ok(Report::Ready { .. }) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable report from the fork server"),
            }
        };
        self.dead.store(true, Ordering::Release);
        let status = match self.child.lock().as_mut().and_then(|c| c.try_wait().ok().flatten()) {
            Some(s) => format!("the fork server exited ({s})"),
            None => format!("the fork server's channel closed ({why})"),
        };
        tracing::warn!(%status, "worker fork server gone; its workers were killed with it");
        for (_, tx) in self.spawns.lock().drain() {
            let _ = tx.send(Err(status.clone()));
        }
        // Its workers die with it (SIGKILL on parent death).
        for (_, tx) in self.exits.lock().drain() {
            let _ = tx.send(format!("signal: 9 (SIGKILL) with the fork server: {status}"));
        }
    }

    async fn spawn(&self, channel: &OwnedFd, memory_limit: Option<u64>) -> Result<Forked, String> {
        if self.dead.load(Ordering::Acquire) {
            return Err("the fork server is gone".to_string());
        }
        let (out_r, out_w) = pipe().map_err(|e| e.to_string())?;
        let (err_r, err_w) = pipe().map_err(|e| e.to_string())?;
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.spawns.lock().insert(id, tx);
        let request = serde_json::json!({"spawn": id, "memory_limit": memory_limit}).to_string();
        let fds = [channel.as_raw_fd(), out_w.as_raw_fd(), err_w.as_raw_fd()];
        let sent = loop {
            let mut guard = match self.ctl.writable().await {
                Ok(g) => g,
                Err(e) => break Err(e),
            };
            match guard.try_io(|fd| send_with_fds(fd.as_raw_fd(), request.as_bytes(), &fds)) {
                Ok(r) => break r,
                Err(_would_block) => continue,
            }
        };
        // The fork server has its own copies now (or never will).
        drop((out_w, err_w));
        if let Err(e) = sent {
            self.spawns.lock().remove(&id);
            return Err(format!("cannot reach the fork server: {e}"));
        }
        let (pid, exit) = match tokio::time::timeout(Duration::from_secs(30), rx).await {
            Ok(Ok(r)) => r?,
            Ok(Err(_)) => return Err("the fork server went away".to_string()),
            Err(_) => {
                self.spawns.lock().remove(&id);
                return Err("the fork server did not answer within 30 s".to_string());
            }
        };
        Ok(Forked { pid, exit, stdout: out_r, stderr: err_r })
    }
}

impl ForkServer {
    /// A fork server that starts on first use.
    pub fn new(config: ForkServerConfig) -> Self {
        Self { config: Mutex::new(config), current: tokio::sync::Mutex::new(None), broken: AtomicBool::new(false) }
    }

    /// Fork a worker whose channel is `channel` (the fork server gets a copy; the caller
    /// closes its own); `None` when the fork server is not available (the caller starts
    /// the worker with exec).
    pub async fn spawn(
        &self,
        python: &std::path::Path,
        channel: &OwnedFd,
        memory_limit: Option<u64>,
    ) -> Option<Forked> {
        if self.broken.load(Ordering::Acquire) {
            return None;
        }
        let zygote = {
            let mut current = self.current.lock().await;
            let usable = current.as_ref().filter(|z| !z.dead.load(Ordering::Acquire) && z.python == python).cloned();
            match usable {
                Some(z) => z,
                None => {
                    let mut config = self.config.lock().clone();
                    config.python = python.to_path_buf();
                    match Zygote::start(&config).await {
                        Ok(z) => {
                            *current = Some(Arc::clone(&z));
                            z
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot start the worker fork server; starting workers with exec");
                            self.broken.store(true, Ordering::Release);
                            return None;
                        }
                    }
                }
            }
        };
        match zygote.spawn(channel, memory_limit).await {
            Ok(f) => Some(f),
            Err(e) => {
                tracing::warn!(error = %e, "the fork server could not start a worker; starting it with exec");
                None
            }
        }
    }

    /// Retire the current fork server (it forks no more and exits once its last worker
    /// has; those run on undisturbed); the next worker starts a new one. Used after
    /// package installs, which may have changed preloaded modules.
    pub async fn restart(&self) {
        if let Some(z) = self.current.lock().await.take() {
            let retire = br#"{"retire": true}"#;
            let _ = send_with_fds(z.ctl.get_ref().as_raw_fd(), retire, &[]);
        }
        self.broken.store(false, Ordering::Release);
    }
}
