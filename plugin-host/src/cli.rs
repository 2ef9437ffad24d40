//! Command line and server start-up of `weir-plugin-host`.

use std::{net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use clap::Parser;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status, Streaming};
use weir_proto::plugin::v1::{
    self as pb,
    plugin_host_server::{PluginHost, PluginHostServer},
};

use crate::host::{Host, HostConfig};

/// Runs Weir's processing-engine plugins in isolated Python worker processes.
///
/// `weir serve` starts this process itself unless it is given `--plugin-host-url`; run it
/// by hand (or in its own container) to keep plugins on another machine. It owns the
/// plugin directory and its virtualenv (`<plugin-dir>/.venv`, created at start) and serves
/// one gRPC session from `weir serve` at a time.
#[derive(Debug, Parser)]
#[command(name = "weir-plugin-host", version)]
pub struct Args {
    /// Address to serve the core's session on (port 0 picks a free port; the address is
    /// printed as `Weir plugin host listening on http://ADDR`).
    #[arg(long, env = "WEIR_PLUGIN_HOST_BIND", default_value = "127.0.0.1:8282")]
    pub bind: SocketAddr,

    /// Directory holding the plugins (`.py` files, or package directories with
    /// `__init__.py`) and the venv.
    #[arg(long, env = "WEIR_PLUGIN_DIR", default_value = "plugins")]
    pub plugin_dir: PathBuf,

    /// The plugins' virtualenv, created here if missing (influxdb3's
    /// `--virtual-env-location`) [default: `<plugin-dir>/.venv`]. Outside the plugin
    /// directory, workers may read it but not write it.
    #[arg(long, env = "WEIR_VIRTUAL_ENV", visible_alias = "virtual-env-location", value_name = "DIR")]
    pub virtual_env: Option<PathBuf>,

    /// Python interpreter the venv is made from.
    #[arg(long, env = "WEIR_PYTHON", default_value = "python3")]
    pub python: String,

    /// Longest a single plugin call may run; its worker process is killed past it.
    #[arg(long, env = "WEIR_PLUGIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub plugin_timeout: Duration,

    /// Address-space limit of each worker process, in MiB (0: no limit).
    #[arg(long, env = "WEIR_WORKER_MEMORY_MB", default_value_t = 4096)]
    pub worker_memory_mb: u64,

    /// How `weir install package` and the install endpoints install into the venv: pip
    /// (bootstrapped offline on first use), uv, or disabled (installs are refused).
    #[arg(long, env = "WEIR_PACKAGE_MANAGER", value_enum, default_value = "pip")]
    pub package_manager: crate::packages::PackageManager,

    /// Where `gh:<path>` plugins are fetched from (raw files; `<repo>/<path>`). Fetched
    /// files are cached in <plugin-dir>/.gh with their sha256, so restarts need no network.
    #[arg(long, env = "WEIR_PLUGIN_REPO", default_value = crate::gh::DEFAULT_REPO)]
    pub plugin_repo: String,

    /// Shared secret `weir serve` must present (`authorization: Bearer <token>`) to open
    /// the session. `weir serve` generates one for a host it starts itself; set the same
    /// value on both sides (`WEIR_PLUGIN_HOST_TOKEN`) for a host started elsewhere. Without
    /// it any client that reaches --bind can take the session: keep it on loopback.
    #[arg(long, env = "WEIR_PLUGIN_HOST_TOKEN", hide_env_values = true)]
    pub session_token: Option<String>,

    /// Build the worker runtime's C speedups into the venv (needs the C compiler Python was
    /// built with; without one the host warns and carries on). Workers then build WAL rows
    /// from columns about twice as fast and keep freed memory for the next batch. `false`
    /// removes them: plugins see the same values either way.
    #[arg(long, env = "WEIR_WORKER_SPEEDUPS", default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub worker_speedups: bool,

    /// Workers with the speedups keep freed allocator arenas mapped (MADV_FREE) for the next
    /// batch, up to 1/8 of --worker-memory-mb (at most 512 MiB). `false` gives memory back
    /// at once, at some cost in speed.
    #[arg(long, env = "WEIR_WORKER_ARENA_CACHE", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub worker_arena_cache: bool,

    /// Confine plugin workers with Landlock (Linux 5.13+): they may read and write only the
    /// plugin directory (its venv included) and /dev/shm, and read the interpreter and
    /// system files; the database's files, other processes' /proc entries, the home
    /// directory and /tmp are refused. Without Landlock support the host warns and runs
    /// workers unconfined.
    #[arg(long, env = "WEIR_CONFINE_WORKERS", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub confine_workers: bool,

    /// Start workers by forking a pre-started Python process that has already imported the
    /// worker runtime (and --worker-preload): a worker starts in milliseconds and shares
    /// those pages with the others. `false` starts each worker with exec.
    #[arg(long, env = "WEIR_WORKER_FORK_SERVER", default_value_t = true, action = clap::ArgAction::Set,
          value_name = "BOOL", value_parser = clap::builder::BoolishValueParser::new())]
    pub worker_fork_server: bool,

    /// Modules the fork server imports once for every worker (comma-separated), e.g.
    /// `numpy,pandas`: plugins that import them start faster and share their memory. A
    /// module that fails to import is logged and skipped.
    #[arg(long, env = "WEIR_WORKER_PRELOAD", value_delimiter = ',', value_name = "MODULE")]
    pub worker_preload: Vec<String>,

    /// Most trigger worker processes alive at once (0: no cap). Past it, a call that needs
    /// a new worker stops the least recently used idle one (whose module globals and
    /// trigger cache start over), or waits for one: calls are queued, never failed.
    #[arg(long, env = "WEIR_MAX_WORKERS", default_value_t = 512)]
    pub max_workers: usize,

    /// Stop a worker after it has been idle this long (`0s`: never); the next call starts it
    /// again (its module globals and trigger cache start over).
    #[arg(long, env = "WEIR_WORKER_IDLE_TIMEOUT", default_value = "0s", value_parser = humantime::parse_duration)]
    pub worker_idle_timeout: Duration,

    /// Environment variables passed from this process to plugin workers, beyond the fixed
    /// set (PATH, HOME, LANG, TZ, VIRTUAL_ENV, PLUGIN_DIR, INFLUXDB3_*): a name, or a prefix
    /// ending in `*`. Repeatable, or comma-separated. WEIR_* names are refused: no Weir
    /// secret reaches a plugin.
    #[arg(long = "plugin-env", env = "WEIR_PLUGIN_ENV", value_delimiter = ',', value_name = "NAME")]
    pub plugin_env: Vec<String>,

    /// Log filter (tracing `EnvFilter` syntax); the same variable as `weir serve`'s, so an
    /// embedded host follows the server's setting.
    #[arg(long, env = "WEIR_LOG_FILTER", default_value = "info")]
    pub log_filter: String,
}

#[derive(Debug)]
struct Service {
    host: Arc<Host>,
    token: Option<String>,
}

#[tonic::async_trait]
impl PluginHost for Service {
    type SessionStream = ReceiverStream<Result<pb::HostMessage, Status>>;

    async fn session(
        &self,
        request: Request<Streaming<pb::CoreMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        if let Some(want) = &self.token {
            let presented = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "));
            // Constant-time comparison: the token is a secret.
            let ok = presented.is_some_and(|p| {
                p.len() == want.len() && p.bytes().zip(want.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
            });
            if !ok {
                tracing::error!(
                    "refused a session with a missing or wrong token: set the same {} on weir serve and the plugin host",
                    weir_proto::HOST_TOKEN_ENV
                );
                return Err(Status::unauthenticated(format!(
                    "this plugin host needs the session token ({}); the one presented is missing or wrong",
                    weir_proto::HOST_TOKEN_ENV
                )));
            }
        }
        let rx = self.host.open_session(request.into_inner()).await?;
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Parse arguments, prepare the venv and serve until SIGINT/SIGTERM.
pub fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(&args.log_filter))
        .with_writer(std::io::stderr)
        // Colour only on a terminal, never with NO_COLOR set (no-color.org).
        .with_ansi({
            use std::io::IsTerminal as _;
            std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
        })
        .init();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("weir-plugin-host: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weir-plugin-host: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    crate::env::check_allowed(&args.plugin_env).map_err(anyhow::Error::msg)?;
    let venv =
        crate::venv::ensure(&args.plugin_dir, args.virtual_env.as_deref(), &args.python, args.worker_speedups).await?;
    tracing::info!(venv = %venv.dir.display(), python = %venv.version, "plugin venv ready");
    let plugin_dir = args.plugin_dir.canonicalize()?;
    let confinement = if args.confine_workers {
        let mut prefixes = crate::venv::base_prefixes(&venv.python).await;
        // A venv outside the plugin directory (--virtual-env) is read-only to workers.
        prefixes.push(venv.dir.canonicalize().unwrap_or_else(|_| venv.dir.clone()));
        crate::confine::Confinement::for_workers(&plugin_dir, &prefixes).map(Arc::new)
    } else {
        tracing::warn!("plugin workers run unconfined (--confine-workers false)");
        None
    };
    let host = Host::new(
        HostConfig {
            plugin_dir,
            plugin_timeout: args.plugin_timeout,
            worker_memory: (args.worker_memory_mb > 0).then(|| args.worker_memory_mb * 1024 * 1024),
            package_manager: args.package_manager,
            plugin_repo: args.plugin_repo.clone(),
            plugin_env: args.plugin_env.clone(),
            arena_cache: args.worker_arena_cache,
            confinement,
            fork_server: args.worker_fork_server,
            preload: args.worker_preload.iter().map(|m| m.trim().to_string()).filter(|m| !m.is_empty()).collect(),
            max_workers: args.max_workers,
            idle_timeout: (!args.worker_idle_timeout.is_zero()).then_some(args.worker_idle_timeout),
        },
        venv,
    );
    let listener = tokio::net::TcpListener::bind(args.bind).await?;
    let addr = listener.local_addr()?;
    println!("{}http://{addr}", weir_proto::HOST_READY_PREFIX);
    let (stop_tx, mut stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
        }
        let _ = stop_tx.send(true);
    });
    let mut stopped = stop_rx.clone();
    let shutdown = async move {
        let _ = stop_rx.wait_for(|s| *s).await;
    };
    // The core's session stream would hold a graceful stop open: after the stop signal it
    // gets a few seconds, then the host stops anyway.
    let result = tokio::select! {
        r = serve(listener, Arc::clone(&host), args.session_token, shutdown) => r,
        _ = async {
            let _ = stopped.wait_for(|s| *s).await;
            tokio::time::sleep(Duration::from_secs(5)).await;
        } => Ok(()),
    };
    tracing::info!("stopping: killing the plugin workers");
    host.shutdown();
    result
}

/// Accepted connections with Nagle's algorithm off: a small reply (a `Done`, a log record)
/// must not wait for the peer's delayed ACK (up to 40 ms) behind data still in flight.
fn incoming(
    listener: tokio::net::TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use tokio_stream::StreamExt as _;
    TcpListenerStream::new(listener).map(|conn| {
        if let Ok(stream) = &conn {
            let _ = stream.set_nodelay(true);
        }
        conn
    })
}

/// Serve `host`'s gRPC service on `listener` until `shutdown` resolves; with `token`, a
/// session must present it.
pub async fn serve(
    listener: tokio::net::TcpListener,
    host: Arc<Host>,
    token: Option<String>,
    shutdown: impl std::future::Future<Output = ()>,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .add_service(
            PluginHostServer::new(Service { host, token })
                .max_decoding_message_size(weir_proto::MAX_MESSAGE_BYTES)
                .max_encoding_message_size(weir_proto::MAX_MESSAGE_BYTES),
        )
        .serve_with_incoming_shutdown(incoming(listener), shutdown)
        .await?;
    Ok(())
}
