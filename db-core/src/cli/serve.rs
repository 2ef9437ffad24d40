//! `weir serve`: configuration and startup.
//!
//! Startup order: object store → catalog → write buffer (Parquet manifest, WAL replay) →
//! auth bootstrap → query executor → processing engine (plugin host, session; WAL triggers
//! resume from their checkpoints) → listener. Shutdown order: stop accepting, drain
//! connections, stop the engine (its in-flight writes finish), flush the WAL.

use std::{io::Write as _, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use object_store::ObjectStore;

use crate::{
    auth::{ADMIN_TOKEN_NAME, Authenticator},
    catalog::Catalog,
    engine::{Engine, EngineArgs, EngineConfig, GrpcConnector},
    query::{SqlExecutor, SqlExecutorArgs, runtime::QueryRuntime},
    server::{self, ServerState},
    storage::Storage,
    telemetry::Metrics,
    time::SystemTime,
    wal::WalConfig,
    write_buffer::{WriteBuffer, WriteBufferArgs, WriteBufferConfig},
};

/// Where data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ObjectStoreKind {
    /// Files under `--data-dir` (default).
    File,
    /// In memory: everything is lost at exit (tests, demos).
    Memory,
    /// An S3-compatible bucket (`--bucket`, `--aws-*`).
    S3,
}

/// Object store settings.
#[derive(Debug, Clone, Args)]
pub struct ObjectStoreConfig {
    /// Object store kind.
    #[arg(long, env = "WEIR_OBJECT_STORE", value_enum, default_value = "file")]
    pub object_store: ObjectStoreKind,

    /// Directory of the file object store.
    #[arg(long, env = "WEIR_DATA_DIR", default_value = ".weir/data")]
    pub data_dir: PathBuf,

    /// Bucket of the S3 object store.
    #[arg(long, env = "WEIR_BUCKET")]
    pub bucket: Option<String>,

    /// S3 endpoint URL (for S3-compatible servers such as MinIO); AWS when absent.
    #[arg(long, env = "WEIR_AWS_ENDPOINT")]
    pub aws_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, visible_alias = "aws-default-region", env = "WEIR_AWS_REGION", default_value = "us-east-1")]
    pub aws_region: String,

    /// S3 access key id (also read from AWS_ACCESS_KEY_ID).
    #[arg(long, env = "WEIR_AWS_ACCESS_KEY_ID")]
    pub aws_access_key_id: Option<String>,

    /// S3 secret access key (also read from AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "WEIR_AWS_SECRET_ACCESS_KEY", hide_env_values = true)]
    pub aws_secret_access_key: Option<String>,

    /// Allow plain-HTTP S3 endpoints.
    #[arg(long, env = "WEIR_AWS_ALLOW_HTTP")]
    pub aws_allow_http: bool,
}

/// `weir serve` flags.
#[derive(Debug, Clone, Args)]
pub struct ServeConfig {
    /// Address for HTTP, gRPC and Flight (port 0 picks a free port; the bound address is
    /// printed as `Weir listening on http://ADDR`).
    #[arg(long, env = "WEIR_HTTP_BIND", default_value = "127.0.0.1:8181")]
    pub http_bind: SocketAddr,

    /// Object store settings.
    #[command(flatten)]
    pub store: ObjectStoreConfig,

    /// Node id: the prefix of everything this server writes to the object store.
    #[arg(long, env = "WEIR_NODE_ID", default_value = "weir-node")]
    pub node_id: String,

    /// Longest a write waits before its WAL flush starts. Flushes start as soon as writes
    /// are waiting and the previous flush finished; this caps `--wal-min-spacing`.
    #[arg(long, env = "WEIR_WAL_FLUSH_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub wal_flush_interval: Duration,

    /// Minimum time between WAL flushes, to bound the PUT rate on S3 (0 = flush
    /// immediately, best latency).
    #[arg(long, env = "WEIR_WAL_MIN_SPACING", default_value = "0s", value_parser = humantime::parse_duration)]
    pub wal_min_spacing: Duration,

    /// Persist buffered data to Parquet at least this often.
    #[arg(long, env = "WEIR_SNAPSHOT_INTERVAL", default_value = "10m", value_parser = humantime::parse_duration)]
    pub snapshot_interval: Duration,

    /// Persist to Parquet as soon as this many rows are buffered.
    #[arg(long, env = "WEIR_SNAPSHOT_ROWS", default_value_t = 5_000_000)]
    pub snapshot_rows: usize,

    /// Turn authentication off (development only: every request is allowed).
    #[arg(long, env = "WEIR_WITHOUT_AUTH")]
    pub without_auth: bool,

    /// Use this value as the first admin token instead of generating one (for automated
    /// deployments). Ignored once an admin token exists.
    #[arg(long, env = "WEIR_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,

    /// Read the first admin token from this file instead (the token alone, or influxdb3's
    /// offline token file: JSON with a "token" field). Ignored once an admin token exists.
    #[arg(long, env = "WEIR_ADMIN_TOKEN_FILE", conflicts_with = "admin_token")]
    pub admin_token_file: Option<PathBuf>,

    /// Where to write the admin recovery secret (new at every start, readable by this
    /// user only): `weir create token --admin --regenerate --recovery-file FILE` on a
    /// machine that can read it renews a lost admin token [default:
    /// `admin-token-recovery` beside --data-dir].
    #[arg(long, env = "WEIR_ADMIN_TOKEN_RECOVERY_FILE")]
    pub admin_token_recovery_file: Option<PathBuf>,

    /// Largest request body accepted, after decompression (bytes; suffixes KiB, MiB).
    #[arg(long, env = "WEIR_MAX_HTTP_REQUEST_SIZE", default_value = "10MiB", value_parser = parse_bytes)]
    pub max_http_request_size: usize,

    /// Processing-engine plugin directory (plugins and their venv, `<dir>/.venv`), used by
    /// the plugin host this server starts [default: `plugins` beside --data-dir].
    #[arg(long, env = "WEIR_PLUGIN_DIR")]
    pub plugin_dir: Option<PathBuf>,

    /// Use a plugin host started elsewhere (e.g. http://plugin-host:8282) instead of
    /// starting `weir-plugin-host` as a child process. Reconnects with backoff.
    #[arg(long, env = "WEIR_PLUGIN_HOST_URL")]
    pub plugin_host_url: Option<String>,

    /// The plugins' virtualenv for the started plugin host, created if missing (as
    /// influxdb3's flag) [default: `.venv` in --plugin-dir].
    #[arg(long, env = "WEIR_VIRTUAL_ENV", value_name = "DIR")]
    pub virtual_env_location: Option<PathBuf>,

    /// Python interpreter the plugin venv is made from (for the started plugin host).
    #[arg(long, env = "WEIR_PYTHON", default_value = "python3")]
    pub python: String,

    /// Session token for a plugin host started elsewhere (its `--session-token`); one is
    /// generated for a host this server starts.
    #[arg(long, env = "WEIR_PLUGIN_HOST_TOKEN", hide_env_values = true)]
    pub plugin_host_token: Option<String>,

    /// Longest a single plugin call may run; its worker process is killed past it.
    #[arg(long, env = "WEIR_PLUGIN_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub plugin_timeout: Duration,

    /// How `weir install package` installs into the plugin venv (for the started plugin
    /// host): pip, uv, discover (uv when it is on the PATH, else pip, as influxdb3 does), or
    /// disabled (installs are refused and nothing is run).
    #[arg(long, env = "WEIR_PACKAGE_MANAGER", default_value = "pip",
          value_parser = ["pip", "uv", "discover", "disabled"])]
    pub package_manager: String,

    /// Where `gh:<path>` plugins are fetched from (for the started plugin host; default
    /// the public influxdb3_plugins repository). A `gh:` plugin is fetched when its
    /// trigger is created and cached in <plugin-dir>/.gh with its sha256.
    #[arg(long, env = "WEIR_PLUGIN_REPO")]
    pub plugin_repo: Option<String>,

    /// Most WAL a WAL trigger may fall behind (bytes; suffixes KiB, MiB, GiB). WAL files are
    /// kept until every trigger has processed them; a trigger further behind than this is
    /// stopped (STOPPED, with the reason in system.processing_engine_triggers) and stops
    /// holding WAL files, until `weir enable trigger NAME --skip-to-now`. 0: no limit.
    #[arg(long, env = "WEIR_TRIGGER_MAX_WAL_LAG", default_value = "2GiB", value_parser = parse_bytes)]
    pub trigger_max_wal_lag: usize,

    /// Most databases this server holds (0: no limit). A write or create that would pass it
    /// is refused with InfluxDB 3's message.
    #[arg(long, env = "WEIR_NUM_DATABASE_LIMIT", default_value_t = 0)]
    pub num_database_limit: usize,

    /// Most tables across all databases (0: no limit). A line that would create one more
    /// is rejected on its own; the rest of the write goes through.
    #[arg(long, env = "WEIR_NUM_TABLE_LIMIT", default_value_t = crate::catalog::DEFAULT_TABLE_LIMIT)]
    pub num_table_limit: usize,

    /// Most columns per table, `time` included. A line that would add columns past it is
    /// rejected on its own; the rest of the write goes through.
    #[arg(long, env = "WEIR_NUM_TOTAL_COLUMNS_PER_TABLE_LIMIT", default_value_t = crate::catalog::DEFAULT_COLUMN_LIMIT,
          value_parser = parse_column_limit)]
    pub num_total_columns_per_table_limit: usize,

    /// An HTTP/1.1 client must send a request's headers within this; an idle keep-alive
    /// connection is closed after it (slow or idle clients cannot hold connections forever).
    #[arg(long, env = "WEIR_HTTP_HEADER_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub http_header_read_timeout: Duration,

    /// Most open connections (HTTP and gRPC together). Past it a new connection gets a 503
    /// and is closed at once. Lowered, with a warning, to fit the open-file limit.
    #[arg(long, env = "WEIR_MAX_CONNECTIONS", default_value_t = 2048)]
    pub max_connections: usize,

    /// Longest a query may run (planning and execution); past it the query is cancelled and
    /// answers with an error naming this limit. 0s: no limit.
    #[arg(long, env = "WEIR_QUERY_TIMEOUT", default_value = "5m", value_parser = humantime::parse_duration)]
    pub query_timeout: Duration,

    /// Most memory one query's operators may hold: bytes (suffixes KiB, MiB, GiB) or a share
    /// of the machine's memory (`25%`). Sorts, joins and aggregations spill to a temporary
    /// directory past it; other work fails with an error naming this limit instead of
    /// taking the server down. 0: no limit.
    #[arg(long, env = "WEIR_QUERY_MEMORY_LIMIT", default_value = "25%", value_parser = parse_memory_limit)]
    pub query_memory_limit: usize,
}

impl ServeConfig {
    /// `--plugin-dir`, or `plugins` beside the data directory.
    pub fn plugin_dir(&self) -> PathBuf {
        match &self.plugin_dir {
            Some(d) => d.clone(),
            None => self.beside_data("plugins"),
        }
    }

    /// `--admin-token-recovery-file`, or `admin-token-recovery` beside the data directory.
    pub fn recovery_file(&self) -> PathBuf {
        match &self.admin_token_recovery_file {
            Some(f) => f.clone(),
            None => self.beside_data("admin-token-recovery"),
        }
    }

    /// `name` in the directory holding the data directory (`.weir` for object stores).
    fn beside_data(&self, name: &str) -> PathBuf {
        match self.store.object_store {
            ObjectStoreKind::File => match self.store.data_dir.parent() {
                Some(p) if !p.as_os_str().is_empty() => p.join(name),
                _ => PathBuf::from(name),
            },
            _ => PathBuf::from(".weir").join(name),
        }
    }
}

/// Listen on `addr` with a deep accept queue (the kernel caps it at `somaxconn`): a burst of
/// connections waits to be accepted (and, over `--max-connections`, refused with a 503)
/// instead of having its handshakes dropped and retried for seconds.
fn listen(addr: std::net::SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(4096)
}

/// Write the admin recovery secret to `path`, readable by this user only.
fn write_recovery_file(path: &std::path::Path, secret: &str) -> anyhow::Result<()> {
    use std::{io::Write as _, os::unix::fs::OpenOptionsExt as _};
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    // A fresh file each time: an old one (maybe with looser permissions) is replaced.
    let _ = std::fs::remove_file(path);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot write the admin recovery file {}", path.display()))?;
    f.write_all(format!("{secret}\n").as_bytes())
        .with_context(|| format!("cannot write the admin recovery file {}", path.display()))?;
    Ok(())
}

/// Parse a byte size: `1024`, `64KiB`, `10MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of
/// 1000).
pub fn parse_bytes(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().map_err(|_| format!("invalid size {s:?}: expected a number with an optional unit"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "K" => 1 << 10,
        "MiB" | "M" => 1 << 20,
        "GiB" | "G" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown size unit {other:?}: use B, KiB, MiB, GiB, KB, MB or GB")),
    };
    n.checked_mul(mult).ok_or_else(|| format!("size {s:?} is too large"))
}

/// Bytes, or a share of the machine's memory (`25%`).
fn parse_memory_limit(s: &str) -> Result<usize, String> {
    match s.trim().strip_suffix('%') {
        Some(pct) => {
            let pct: f64 = pct.trim().parse().map_err(|e| format!("{s:?}: {e}"))?;
            if !(0.0..=100.0).contains(&pct) {
                return Err(format!("{s:?}: a share of memory is between 0% and 100%"));
            }
            let total = std::fs::read_to_string("/proc/meminfo")
                .ok()
                .and_then(|m| {
                    m.lines()
                        .find_map(|l| l.strip_prefix("MemTotal:"))
                        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                })
                .map(|kb| kb * 1024)
                .ok_or_else(|| format!("{s:?}: cannot read the machine's memory (/proc/meminfo); give bytes"))?;
            Ok((total as f64 * pct / 100.0) as usize)
        }
        None => parse_bytes(s),
    }
}

/// A column limit: at least 2 (`time` and one field).
fn parse_column_limit(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(n) if n >= 2 => Ok(n),
        Ok(_) => Err("a table needs at least 2 columns (time and a field)".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// Build the object store and its durable-write wrapper.
pub fn build_storage(cfg: &ObjectStoreConfig, node_id: &str) -> anyhow::Result<Storage> {
    Ok(match cfg.object_store {
        ObjectStoreKind::File => {
            std::fs::create_dir_all(&cfg.data_dir)
                .with_context(|| format!("cannot create data dir {}", cfg.data_dir.display()))?;
            let root = cfg
                .data_dir
                .canonicalize()
                .with_context(|| format!("cannot resolve data dir {}", cfg.data_dir.display()))?;
            let store = object_store::local::LocalFileSystem::new_with_prefix(&root)?;
            Storage::new(Arc::new(store), Some(root), node_id)
        }
        ObjectStoreKind::Memory => Storage::new(Arc::new(object_store::memory::InMemory::new()), None, node_id),
        ObjectStoreKind::S3 => {
            let bucket = cfg.bucket.as_deref().context("--object-store s3 needs --bucket (or WEIR_BUCKET)")?;
            let mut b = object_store::aws::AmazonS3Builder::from_env()
                .with_bucket_name(bucket)
                .with_region(&cfg.aws_region)
                .with_allow_http(cfg.aws_allow_http);
            if let Some(e) = &cfg.aws_endpoint {
                b = b.with_endpoint(e);
            }
            if let Some(k) = &cfg.aws_access_key_id {
                b = b.with_access_key_id(k);
            }
            if let Some(s) = &cfg.aws_secret_access_key {
                b = b.with_secret_access_key(s);
            }
            let store: Arc<dyn ObjectStore> = Arc::new(b.build().context("invalid S3 configuration")?);
            Storage::new(store, None, node_id)
        }
    })
}

/// Run the server until Ctrl-C / SIGTERM.
pub async fn run(cfg: ServeConfig) -> anyhow::Result<()> {
    let storage = build_storage(&cfg.store, &cfg.node_id)?;
    match storage.remove_stale_temp_files() {
        Ok(0) => {}
        Ok(n) => tracing::info!(files = n, "removed temporary files of interrupted writes"),
        Err(e) => tracing::warn!(error = %e, "cannot clean temporary files of interrupted writes"),
    }
    let catalog = Arc::new(Catalog::load(storage.clone()).await.context("loading the catalog")?);
    catalog.set_limits(crate::catalog::Limits {
        databases: (cfg.num_database_limit > 0).then_some(cfg.num_database_limit),
        tables: (cfg.num_table_limit > 0).then_some(cfg.num_table_limit),
        columns_per_table: cfg.num_total_columns_per_table_limit,
    });
    let metrics = Arc::new(Metrics::new());
    let buffer = WriteBuffer::open(WriteBufferArgs {
        catalog: Arc::clone(&catalog),
        storage: storage.clone(),
        config: WriteBufferConfig {
            wal: WalConfig {
                flush_interval: cfg.wal_flush_interval,
                min_spacing: cfg.wal_min_spacing,
                no_sync_backlog: crate::wal::NO_SYNC_BACKLOG_LIMIT,
            },
            snapshot_interval: cfg.snapshot_interval,
            snapshot_rows: cfg.snapshot_rows,
            hold_wal_for_listener: true,
        },
        time: Arc::new(SystemTime),
        metrics: Arc::clone(&metrics),
    })
    .await
    .context("restoring data (catalog, Parquet files, WAL replay)")?;

    let auth = Authenticator::new(Arc::clone(&catalog), !cfg.without_auth);
    if auth.enabled() && !auth.has_admin_token() {
        match (&cfg.admin_token, &cfg.admin_token_file) {
            (Some(t), _) => {
                auth.register_admin_token(ADMIN_TOKEN_NAME, t).await?;
                tracing::info!("admin token registered from --admin-token");
            }
            (None, Some(file)) => {
                let t = read_admin_token_file(file)?;
                auth.register_admin_token(ADMIN_TOKEN_NAME, &t).await?;
                tracing::info!(file = %file.display(), "admin token registered from --admin-token-file");
            }
            (None, None) => {
                let token = auth.create_admin_token(ADMIN_TOKEN_NAME).await?;
                println!("Admin token (shown once; store it safely, the server keeps only its hash):");
                println!("  {token}");
                println!("Use it as: Authorization: Bearer <token>   or   weir --token <token> / WEIR_TOKEN");
            }
        }
    }
    if auth.enabled() {
        let path = cfg.recovery_file();
        write_recovery_file(&path, &auth.new_recovery_secret())?;
        tracing::info!(file = %path.display(), "admin recovery secret written (lost admin token: weir create token --admin --regenerate)");
    }

    let executor = SqlExecutor::new(SqlExecutorArgs {
        catalog: Arc::clone(&catalog),
        buffer: Arc::clone(&buffer),
        metrics: Arc::clone(&metrics),
        object_store: storage.object_store(),
        runtime: QueryRuntime::start(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2))?,
        limits: crate::query::QueryLimits {
            timeout: (!cfg.query_timeout.is_zero()).then_some(cfg.query_timeout),
            memory: (cfg.query_memory_limit > 0).then_some(cfg.query_memory_limit),
        },
    })?;
    let engine_slot = Arc::clone(executor.engine_slot());
    let query: Arc<dyn crate::query::QueryExecutor> = Arc::new(executor);
    let plugin_dir = cfg.plugin_dir();
    std::fs::create_dir_all(&plugin_dir)
        .with_context(|| format!("cannot create the plugin directory {}", plugin_dir.display()))?;
    let engine = Engine::start(EngineArgs {
        config: EngineConfig {
            plugin_dir: plugin_dir.canonicalize()?,
            host_url: cfg.plugin_host_url.clone(),
            python: cfg.python.clone(),
            plugin_timeout: cfg.plugin_timeout,
            host_bin: None,
            package_manager: resolve_package_manager(&cfg.package_manager),
            plugin_repo: cfg.plugin_repo.clone(),
            virtual_env: cfg.virtual_env_location.as_ref().map(std::path::absolute).transpose()?,
            host_token: match &cfg.plugin_host_url {
                Some(_) => cfg.plugin_host_token.clone(),
                None => Some(crate::auth::generate_token()),
            },
            max_wal_lag_bytes: (cfg.trigger_max_wal_lag > 0).then_some(cfg.trigger_max_wal_lag as u64),
        },
        catalog: Arc::clone(&catalog),
        writes: Arc::clone(&buffer) as Arc<dyn crate::engine::WritePath>,
        query: Arc::clone(&query),
        storage: storage.clone(),
        time: Arc::new(SystemTime),
        connector: Arc::new(GrpcConnector),
        metrics: Arc::clone(&metrics),
    });
    buffer.set_flush_listener(Arc::clone(&engine) as Arc<dyn crate::write_buffer::FlushListener>);
    engine_slot.set(Arc::downgrade(&engine) as std::sync::Weak<dyn crate::query::system::EngineView>);
    // WAL triggers catch up on what they had not finished before the last stop, from the
    // WAL files kept for them. A failure to read the checkpoints must not keep the database
    // down: triggers then start from new writes, and the error is logged.
    if let Err(e) = engine.resume().await {
        tracing::error!(error = %e, "WAL triggers cannot resume from their checkpoints; they start from new writes");
    }
    let state = Arc::new(ServerState {
        catalog,
        buffer: Arc::clone(&buffer),
        query,
        auth,
        metrics,
        max_request_bytes: cfg.max_http_request_size,
        engine: Some(Arc::clone(&engine)),
    });

    let listener = listen(cfg.http_bind).with_context(|| format!("cannot listen on {}", cfg.http_bind))?;
    let addr = listener.local_addr()?;
    println!("Weir listening on http://{addr}");
    let _ = std::io::stdout().flush();
    tracing::info!(%addr, auth = !cfg.without_auth, "server started");

    let limits = server::ConnectionLimits {
        header_read_timeout: cfg.http_header_read_timeout,
        max_connections: server::fit_connection_limit(cfg.max_connections),
    };
    server::serve(listener, state, limits, shutdown_signal()).await?;
    tracing::info!("shutting down: stopping the processing engine");
    engine.shutdown(Duration::from_secs(10)).await;
    tracing::info!("shutting down: flushing the WAL");
    buffer.shutdown().await;
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}

/// `--admin-token-file`: the token alone on a line, or JSON with a `token` field
/// (influxdb3's `create token --admin --offline` file).
fn read_admin_token_file(path: &std::path::Path) -> anyhow::Result<String> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    let text = text.trim();
    let token = if text.starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(text)
            .with_context(|| format!("the admin token file {} is not valid JSON", path.display()))?;
        v.get("token")
            .and_then(|t| t.as_str())
            .with_context(|| format!("the admin token file {} has no \"token\" string", path.display()))?
            .to_string()
    } else {
        text.to_string()
    };
    if token.is_empty() || token.contains(char::is_whitespace) {
        anyhow::bail!("the admin token file {} holds no token (empty, or more than one word)", path.display());
    }
    Ok(token)
}

/// `--package-manager discover`: uv when it is on the PATH, else pip.
fn resolve_package_manager(choice: &str) -> String {
    if choice != "discover" {
        return choice.to_string();
    }
    let uv =
        std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join("uv").is_file()));
    let chosen = if uv { "uv" } else { "pip" };
    tracing::info!(package_manager = chosen, "--package-manager discover");
    chosen.to_string()
}
