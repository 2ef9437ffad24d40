//! A plugin host this process owns: without `--plugin-host-url`, `weir serve` starts
//! `weir-plugin-host` (next to its own executable) on a loopback port, reads the URL it
//! prints, and restarts it when it exits (backoff 200 ms → 30 s). The child gets a fresh
//! session token by environment and SIGTERM when `weir serve` dies (Linux).

use std::{path::PathBuf, process::Stdio, time::Duration};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    sync::watch,
};

use super::EngineConfig;

/// Set up the child between fork and exec: on Linux, SIGTERM when this process dies (and
/// give up if it died already, the race `PR_SET_PDEATHSIG` alone leaves open).
fn die_with_parent(cmd: &mut tokio::process::Command) {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: getpid/prctl/getppid are async-signal-safe; nothing else runs between
        // fork and exec.
        let parent = unsafe { libc::getpid() };
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    return Err(std::io::Error::other("weir serve exited while starting the plugin host"));
                }
                Ok(())
            });
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = cmd;
}

/// How long a host this process started has to stop (its workers with it) on SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(8);

/// Start the host as a child and keep it running; publishes its URL (`None` while down).
/// When `stop` turns true the host gets SIGTERM (it kills its workers and exits), then
/// SIGKILL past [`STOP_GRACE`].
pub(super) async fn supervise(
    config: EngineConfig,
    url: watch::Sender<Option<String>>,
    mut stop: watch::Receiver<bool>,
) {
    let bin = config.host_bin.clone().unwrap_or_else(|| {
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
            .arg(&config.plugin_dir)
            .arg("--python")
            .arg(&config.python)
            .arg("--plugin-timeout")
            .arg(humantime::format_duration(config.plugin_timeout).to_string())
            .arg("--package-manager")
            .arg(&config.package_manager)
            .args(config.plugin_repo.iter().flat_map(|r| ["--plugin-repo", r.as_str()]))
            .args(config.virtual_env.iter().flat_map(|v| [std::ffi::OsStr::new("--virtual-env"), v.as_os_str()]))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true);
        // The session token goes by environment, not argv, so `ps` does not show it.
        match &config.host_token {
            Some(t) => cmd.env(weir_proto::HOST_TOKEN_ENV, t),
            None => cmd.env_remove(weir_proto::HOST_TOKEN_ENV),
        };
        die_with_parent(&mut cmd);
        let mut child = match cmd.spawn() {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(bin = %bin.display(), error = %e, "cannot start the plugin host; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(30));
                continue;
            }
        };
        let started = std::time::Instant::now();
        if let Some(stdout) = child.stdout.take() {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix(weir_proto::HOST_READY_PREFIX) {
                    tracing::info!(url = addr, pid = ?child.id(), "plugin host started");
                    let _ = url.send(Some(addr.trim().to_string()));
                    break;
                }
            }
            // Keep draining its stdout so it never blocks.
            tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        }
        let status = tokio::select! {
            status = child.wait() => status,
            _ = async { let _ = stop.wait_for(|s| *s).await; } => {
                let _ = url.send(None);
                if let Some(pid) = child.id().and_then(|p| i32::try_from(p).ok()) {
                    // SAFETY: a signal to our own child.
                    unsafe {
                        libc::kill(pid, libc::SIGTERM);
                    }
                }
                if tokio::time::timeout(STOP_GRACE, child.wait()).await.is_err() {
                    tracing::warn!("the plugin host did not stop within {STOP_GRACE:?}; killing it");
                }
                return;
            }
        };
        let _ = url.send(None);
        tracing::warn!(?status, "the plugin host exited; restarting it");
        if started.elapsed() > Duration::from_secs(60) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(30));
    }
}
