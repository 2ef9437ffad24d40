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
    /// Extra environment of the server (and so of the plugin host it starts).
    pub(crate) env: &'a [(String, String)],
    pub(crate) startup_timeout: Duration,
}

impl Server {
    /// Start `weir serve` on a free port with a fresh data directory and wait until it
    /// says it is listening.
    pub(crate) async fn spawn(args: SpawnArgs<'_>) -> anyhow::Result<Self> {
        let scratch =
            tempfile::Builder::new().prefix("weir-bench-").tempdir().context("cannot create a temporary directory")?;
        let scratch_path = scratch.path().to_path_buf();
        let data_dir = match args.data_dir {
            Some(d) => {
                if d.exists() && std::fs::read_dir(d)?.next().is_some() {
                    bail!("--data-dir {} is not empty; the benchmark needs a fresh directory", d.display());
                }
                std::fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
                d.to_path_buf()
            }
            None => scratch_path.join("data"),
        };
        let log_path = scratch_path.join("server.log");
        let log = std::fs::File::create(&log_path).with_context(|| format!("cannot create {}", log_path.display()))?;

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
            .envs(args.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log))
            .kill_on_drop(true);
        let mut child = cmd.spawn().with_context(|| {
            format!("cannot start {} (build it with scripts/bench, or pass --weir-bin)", args.bin.display())
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
                    _ => format!("exited before listening ({:?})", child.try_wait().ok().flatten()),
                };
                let _ = child.start_kill();
                let _ = child.wait().await;
                bail!("weir serve {why}\n--- server log ---\n{}", log_tail(&log_path, 40));
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

        Ok(Self { child, url, data_dir, log_path, scratch: Some(scratch), scratch_path })
    }

    /// Process id.
    pub(crate) fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Resident memory of the server process now and at its peak (VmRSS, VmHWM), in bytes.
    pub(crate) fn memory(&self) -> Option<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        Some((proc_field(&status, "VmRSS:")? * 1024, proc_field(&status, "VmHWM:")? * 1024))
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
            bail!("weir serve exited unexpectedly ({status})\n--- server log ---\n{}", log_tail(&self.log_path, 40));
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
            return (started.elapsed(), format!("exited after SIGTERM ({status})"));
        }
        let _ = self.child.start_kill();
        let status = self.child.wait().await;
        (started.elapsed(), format!("killed (SIGKILL) after not exiting on SIGTERM: {status:?}"))
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

/// CPU time (user + system, in clock ticks) used so far by process `pid`.
fn cpu_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may contain spaces) start at field 3 (state);
    // utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// Figures about one server process, taken when it was stopped.
#[derive(Debug, Clone)]
pub(crate) struct ProcStats {
    /// Scenarios it served.
    pub(crate) served: String,
    pub(crate) pid: Option<u32>,
    pub(crate) peak_rss_bytes: Option<u64>,
    pub(crate) data_dir_bytes: u64,
    pub(crate) shutdown: Duration,
    pub(crate) how: String,
    pub(crate) kept: Option<PathBuf>,
}

impl ProcStats {
    pub(crate) fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "served": self.served,
            "pid": self.pid,
            "peak_rss_bytes": self.peak_rss_bytes,
            "data_dir_bytes": self.data_dir_bytes,
            "shutdown_s": crate::stats::round3(self.shutdown.as_secs_f64()),
            "shutdown": self.how,
            "kept": self.kept.as_ref().map(|p| p.display().to_string()),
        })
    }
}

/// The server(s) under test: an external one, one started for the whole run, or a fresh
/// one started for each scenario.
#[derive(Debug)]
pub(crate) struct Fleet {
    pub(crate) bin: PathBuf,
    pub(crate) data_root: Option<PathBuf>,
    pub(crate) extra_args: Vec<String>,
    pub(crate) keep: bool,
    /// A new server for every scenario (otherwise one for the whole run).
    pub(crate) fresh: bool,
    /// URL of an external server.
    pub(crate) external: Option<String>,
    pub(crate) token: Option<String>,
    current: Option<(Server, crate::client::Api)>,
    external_api: Option<crate::client::Api>,
    served: Vec<String>,
}

impl Fleet {
    pub(crate) fn new(
        bin: PathBuf,
        data_root: Option<PathBuf>,
        extra_args: Vec<String>,
        keep: bool,
        fresh: bool,
        external: Option<String>,
        token: Option<String>,
    ) -> Self {
        Self {
            bin,
            data_root,
            extra_args,
            keep,
            fresh,
            external,
            token,
            current: None,
            external_api: None,
            served: Vec::new(),
        }
    }

    /// A client for the server that runs scenario `id`, starting one if needed. On a
    /// shared server this first waits until the server is idle (e.g. a snapshot or WAL
    /// flushes triggered by the previous scenario have finished).
    pub(crate) async fn acquire(&mut self, id: &str) -> anyhow::Result<crate::client::Api> {
        self.acquire_with(id, &[]).await
    }

    /// Like [`Fleet::acquire`], with extra `weir serve` arguments for a server started for
    /// this scenario (ignored when the server is shared or external).
    pub(crate) async fn acquire_with(
        &mut self,
        id: &str,
        scenario_args: &[String],
    ) -> anyhow::Result<crate::client::Api> {
        self.acquire_with_env(id, scenario_args, &[]).await
    }

    /// Like [`Fleet::acquire_with`], with extra environment for a server started for this
    /// scenario.
    pub(crate) async fn acquire_with_env(
        &mut self,
        id: &str,
        scenario_args: &[String],
        scenario_env: &[(String, String)],
    ) -> anyhow::Result<crate::client::Api> {
        const POOL: usize = 64;
        if let Some(url) = &self.external {
            if self.external_api.is_none() {
                let api = crate::client::Api::new(url, self.token.clone(), POOL)?;
                api.wait_healthy(Duration::from_secs(30)).await?;
                self.external_api = Some(api);
            }
            return Ok(self.external_api.clone().expect("set above"));
        }
        if let Some((server, api)) = &mut self.current {
            server.check_alive()?;
            let waited = server.wait_idle(Duration::from_secs(120)).await;
            if waited > Duration::from_secs(1) {
                println!("   (waited {:.1} s for the server to become idle)", waited.as_secs_f64());
            }
            self.served.push(id.to_string());
            return Ok(api.clone());
        }
        let data_dir = self.data_root.as_ref().map(|r| if self.fresh { r.join(id) } else { r.clone() });
        let mut extra_args = self.extra_args.clone();
        if self.fresh {
            extra_args.extend_from_slice(scenario_args);
        }
        let server = Server::spawn(SpawnArgs {
            bin: &self.bin,
            data_dir: data_dir.as_deref(),
            extra_args: &extra_args,
            env: if self.fresh { scenario_env } else { &[] },
            startup_timeout: Duration::from_secs(120),
        })
        .await?;
        println!(
            "   server: pid {} at {}, data dir {}",
            server.pid().map_or_else(|| "?".to_string(), |p| p.to_string()),
            server.url,
            server.data_dir.display()
        );
        let api = crate::client::Api::new(&server.url, None, POOL)?;
        api.wait_healthy(Duration::from_secs(30)).await?;
        self.served = vec![id.to_string()];
        self.current = Some((server, api.clone()));
        Ok(api)
    }

    /// The plugin directory of the server this benchmark started (`plugins` beside its
    /// data directory, `weir serve`'s default); none for an external server.
    pub(crate) fn plugin_dir(&self) -> Option<PathBuf> {
        let (server, _) = self.current.as_ref()?;
        Some(server.data_dir.parent()?.join("plugins"))
    }

    /// Process id of the server this benchmark started (none for an external server).
    pub(crate) fn pid(&self) -> Option<u32> {
        self.current.as_ref().and_then(|(s, _)| s.pid())
    }

    /// After a scenario: fail if the server died; stop it when every scenario gets a fresh
    /// one.
    pub(crate) async fn release(&mut self) -> anyhow::Result<Option<ProcStats>> {
        let Some((server, _)) = &mut self.current else {
            return Ok(None);
        };
        server.check_alive()?;
        if self.fresh { Ok(self.stop().await) } else { Ok(None) }
    }

    /// Stop the current server, if any (end of run, error, interruption).
    pub(crate) async fn stop(&mut self) -> Option<ProcStats> {
        let (mut server, _) = self.current.take()?;
        let data_dir_bytes = dir_size(&server.data_dir);
        let peak_rss_bytes = server.memory().map(|m| m.1);
        let pid = server.pid();
        let (shutdown, how) = server.stop(Duration::from_secs(60)).await;
        let kept = self.keep.then(|| server.keep_files());
        Some(ProcStats {
            served: std::mem::take(&mut self.served).join(", "),
            pid,
            peak_rss_bytes,
            data_dir_bytes,
            shutdown,
            how,
            kept,
        })
    }

    /// The current server's log tail (for error reports).
    pub(crate) fn log_tail(&self, n: usize) -> Option<String> {
        self.current.as_ref().map(|(s, _)| log_tail(&s.log_path, n))
    }
}

impl Server {
    /// Wait until the server uses (almost) no CPU for 250 ms, at most `max`. Returns how
    /// long it waited.
    pub(crate) async fn wait_idle(&self, max: Duration) -> Duration {
        let started = Instant::now();
        let Some(pid) = self.child.id() else {
            return Duration::ZERO;
        };
        let Some(mut last) = cpu_ticks(pid) else {
            return Duration::ZERO;
        };
        while started.elapsed() < max {
            tokio::time::sleep(Duration::from_millis(250)).await;
            let Some(now) = cpu_ticks(pid) else {
                break;
            };
            // Clock ticks are usually 10 ms: at most 20 ms of CPU in 250 ms counts as idle.
            if now.saturating_sub(last) <= 2 {
                break;
            }
            last = now;
        }
        started.elapsed()
    }
}

/// The number after `key` in a `/proc/<pid>/status` or `smaps_rollup` text (`VmRSS:`,
/// `Threads:`, `Pss:`; sizes there are in kB).
pub(crate) fn proc_field(text: &str, key: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}
