//! Starting and stopping the `weir serve` under test.

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
};

const READY_PREFIX: &str = "Weir listening on ";

/// A `weir serve` child process with its own data directory.
#[derive(Debug)]
pub(crate) struct Server {
    child: Child,
    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub(crate) url: String,
    /// Where the server keeps its data.
    pub(crate) data_dir: PathBuf,
    /// The server's stderr (its log).
    pub(crate) log_path: PathBuf,
    /// Scratch directory (log, and data unless `--data-dir` was given); removed on drop
    /// unless kept.
    scratch: Option<tempfile::TempDir>,
    scratch_path: PathBuf,
}

/// How to start the server.
#[derive(Debug)]
pub(crate) struct SpawnArgs<'a> {
    pub(crate) bin: &'a Path,
    pub(crate) data_dir: Option<&'a Path>,
    pub(crate) extra_args: &'a [String],
    pub(crate) startup_timeout: Duration,
}

impl Server {
    /// Start `weir serve` on a free port with a fresh data directory and wait until it
    /// says it is listening.
    pub(crate) async fn spawn(args: SpawnArgs<'_>) -> anyhow::Result<Self> {
        let scratch = tempfile::Builder::new()
            .prefix("weir-bench-")
            .tempdir()
            .context("cannot create a temporary directory")?;
        let scratch_path = scratch.path().to_path_buf();
        let data_dir = match args.data_dir {
            Some(d) => {
                if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                    bail!(
                        "--data-dir {} is not empty; the benchmark needs a fresh directory",
                        d.display()
                    );
                }
                std::fs::create_dir_all(d)
                    .with_context(|| format!("cannot create {}", d.display()))?;
                d.to_path_buf()
            }
            None => scratch_path.join("data"),
        };
        let log_path = scratch_path.join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;

        let mut cmd = Command::new(args.bin);
        cmd.arg("serve")
            .arg("--http-bind")
            .arg("127.0.0.1:0")
            .arg("--object-store")
            .arg("file")
            .arg("--data-dir")
            .arg(&data_dir)
            .arg("--without-auth")
            .args(args.extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| {
            format!(
                "cannot start {} (build it with scripts/bench, or pass --weir-bin)",
                args.bin.display()
            )
        })?;
        let stdout = child.stdout.take().context("no stdout pipe")?;
        let mut lines = BufReader::new(stdout).lines();

        let wait_ready = async {
            while let Some(line) = lines.next_line().await? {
                if let Some(url) = line.trim().strip_prefix(READY_PREFIX) {
                    return Ok(Some(url.to_string()));
                }
            }
            Ok::<_, std::io::Error>(None)
        };
        let ready = tokio::time::timeout(args.startup_timeout, wait_ready).await;
        let url = match ready {
            Ok(Ok(Some(url))) => url,
            other => {
                let why = match other {
                    Err(_) => format!("did not report readiness within {:?}", args.startup_timeout),
                    Ok(Err(e)) => format!("stdout read failed: {e}"),
                    _ => format!(
                        "exited before listening ({:?})",
                        child.try_wait().ok().flatten()
                    ),
                };
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!(
                    "weir serve {why}\n--- server log ---\n{}",
                    log_tail(&log_path, 40)
                );
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        Ok(Self {
            child,
            url,
            data_dir,
            log_path,
            scratch: Some(scratch),
            scratch_path,
        })
    }

    /// Process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Keep the scratch directory (log, data) after exit.
    pub(crate) fn keep_files(&mut self) -> PathBuf {
        if let Some(s) = self.scratch.take() {
            let _ = s.keep();
        }
        self.scratch_path.clone()
    }

    /// Whether the process is still running.
    pub(crate) fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "weir serve exited unexpectedly ({status})\n--- server log ---\n{}",
                log_tail(&self.log_path, 40)
            );
        }
        Ok(())
    }

    /// Ask the server to stop (SIGTERM, so it flushes its WAL), and kill it if it has not
    /// exited within `grace`. Returns how long shutdown took and how it ended.
    pub(crate) async fn stop(&mut self, grace: Duration) -> (Duration, String) {
        let started = Instant::now();
        if let Ok(Some(status)) = self.child.try_wait() {
            return (Duration::ZERO, format!("had already exited ({status})"));
        }
        let termed = match self.child.id() {
            Some(pid) => std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success()),
            None => false,
        };
        if termed && let Ok(Ok(status)) = tokio::time::timeout(grace, self.child.wait()).await {
            return (
                started.elapsed(),
                format!("exited after SIGTERM ({status})"),
            );
        }
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        (
            started.elapsed(),
            format!("killed (SIGKILL) after not exiting on SIGTERM: {status:?}"),
        )
    }
}

/// The last `n` lines of a file.
pub(crate) fn log_tail(path: &Path, n: usize) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => {
            let lines: Vec<&str> = s.lines().collect();
            lines[lines.len().saturating_sub(n)..].join("\n")
        }
        Err(e) => format!("(cannot read {}: {e})", path.display()),
    }
}

/// Total size of the files under `dir`.
pub(crate) fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// `weir --version`, or why it is unknown.
pub(crate) fn weir_version(bin: &Path) -> String {
    match std::process::Command::new(bin).arg("--version").output() {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        Ok(o) => format!("unknown ({} --version failed: {})", bin.display(), o.status),
        Err(e) => format!("unknown ({}: {e})", bin.display()),
    }
}
