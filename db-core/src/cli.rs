//! The `weir` command line: `serve` runs the database; every other command is a client
//! of a running server's admin gRPC service.

pub mod client;
pub mod serve;

use clap::{Parser, Subcommand};

/// Weir: a time-series database that speaks InfluxDB 3 and runs its Python plugins out of
/// process.
#[derive(Debug, Parser)]
#[command(
    name = "weir",
    version,
    about,
    long_about = None,
    arg_required_else_help = true,
    after_help = "Start a server with `weir serve` (see `weir serve --help`); the other commands talk to a \
running one (--host, default http://127.0.0.1:8181; --token or WEIR_TOKEN).

Every command takes --log-filter FILTER (env WEIR_LOG_FILTER, default `info`; EnvFilter syntax, \
e.g. `info,db_core::wal=debug`).

influxdb3's environment variables work too, where WEIR_* is not set: INFLUXDB3_HOST_URL, \
INFLUXDB3_AUTH_TOKEN, INFLUXDB3_DATABASE_NAME, INFLUXDB3_HTTP_BIND_ADDR, INFLUXDB3_NODE_IDENTIFIER_PREFIX, \
INFLUXDB3_OBJECT_STORE, INFLUXDB3_DB_DIR, INFLUXDB3_PLUGIN_DIR, INFLUXDB3_BUCKET, \
INFLUXDB3_PACKAGE_MANAGER, INFLUXDB3_PLUGIN_REPO, LOG_FILTER and the AWS_* object-store variables."
)]
pub struct Cli {
    /// Log filter in EnvFilter syntax, e.g. `info` or `info,db_core::wal=debug` (explained
    /// once, in `weir --help`).
    #[arg(long, global = true, env = "WEIR_LOG_FILTER", default_value = "info", hide = true)]
    pub log_filter: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the database server (HTTP, gRPC and Flight on one port).
    Serve(Box<serve::ServeConfig>),
    /// Write line protocol from arguments, a file or standard input.
    #[command(visible_alias = "w")]
    Write(client::WriteArgs),
    /// Run a SQL query (argument, --file or standard input) and print or save the answer.
    #[command(visible_alias = "q")]
    Query(client::QueryArgs),
    /// Create a database, a token or a trigger.
    #[command(subcommand)]
    Create(client::CreateCommand),
    /// Show databases, triggers, a trigger summary, or the plugin files.
    #[command(subcommand)]
    Show(client::ShowCommand),
    /// Delete a database, a table, a token or a trigger (an enabled trigger needs --force).
    #[command(subcommand)]
    Delete(client::DeleteCommand),
    /// Change a trigger in place: its plugin file, arguments, error behaviour or state.
    #[command(subcommand)]
    Update(client::UpdateCommand),
    /// Dry-run a plugin (`weir test wal_plugin|schedule_plugin|request_plugin`).
    #[command(subcommand)]
    Test(client::TestCommand),
    /// Install Python packages into the plugin venv.
    #[command(subcommand)]
    Install(client::InstallCommand),
    /// Enable a trigger (it runs again: WAL triggers from the next flush, schedules from
    /// their next fire time, request paths at once).
    #[command(subcommand)]
    Enable(client::EnableCommand),
    /// Disable a trigger (kept in the catalog, not run).
    #[command(subcommand)]
    Disable(client::ToggleCommand),
    /// Run the plugin host (`weir-plugin-host`, next to this executable) with the given
    /// arguments; `weir plugin-host --help` lists them.
    #[command(name = "plugin-host", disable_help_flag = true)]
    PluginHost {
        /// Arguments for `weir-plugin-host`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// Replace this process with `weir-plugin-host` from the same directory.
fn exec_plugin_host(args: Vec<std::ffi::OsString>) -> anyhow::Result<()> {
    use std::os::unix::process::CommandExt as _;
    let exe = std::env::current_exe()?;
    let host = exe.with_file_name("weir-plugin-host");
    let err = std::process::Command::new(&host).args(args).exec();
    anyhow::bail!("cannot run {}: {err}", host.display())
}

/// influxdb3's environment variables and the `WEIR_*` variable each one stands for. A
/// `WEIR_*` variable that is set wins.
pub const ENV_ALIASES: &[(&str, &str)] = &[
    ("INFLUXDB3_HOST_URL", "WEIR_HOST"),
    ("INFLUXDB3_AUTH_TOKEN", "WEIR_TOKEN"),
    ("INFLUXDB3_DATABASE_NAME", "WEIR_DATABASE"),
    ("INFLUXDB3_HTTP_BIND_ADDR", "WEIR_HTTP_BIND"),
    ("INFLUXDB3_NODE_IDENTIFIER_PREFIX", "WEIR_NODE_ID"),
    ("INFLUXDB3_OBJECT_STORE", "WEIR_OBJECT_STORE"),
    ("INFLUXDB3_DB_DIR", "WEIR_DATA_DIR"),
    ("INFLUXDB3_PLUGIN_DIR", "WEIR_PLUGIN_DIR"),
    ("INFLUXDB3_BUCKET", "WEIR_BUCKET"),
    ("INFLUXDB3_PACKAGE_MANAGER", "WEIR_PACKAGE_MANAGER"),
    ("INFLUXDB3_PLUGIN_REPO", "WEIR_PLUGIN_REPO"),
    ("LOG_FILTER", "WEIR_LOG_FILTER"),
    ("AWS_ENDPOINT", "WEIR_AWS_ENDPOINT"),
    ("AWS_DEFAULT_REGION", "WEIR_AWS_REGION"),
    ("AWS_ACCESS_KEY_ID", "WEIR_AWS_ACCESS_KEY_ID"),
    ("AWS_SECRET_ACCESS_KEY", "WEIR_AWS_SECRET_ACCESS_KEY"),
    ("AWS_ALLOW_HTTP", "WEIR_AWS_ALLOW_HTTP"),
];

/// Copy each set influxdb3 variable to its `WEIR_*` name unless that is set already.
fn apply_env_aliases() {
    for (theirs, ours) in ENV_ALIASES {
        if std::env::var_os(ours).is_some() {
            continue;
        }
        if let Some(v) = std::env::var_os(theirs) {
            // SAFETY: called first thing in main, before any thread exists.
            unsafe { std::env::set_var(ours, v) };
        }
    }
}

/// Entry point of the `weir` binary.
pub fn startup() -> anyhow::Result<()> {
    apply_env_aliases();
    let cli = Cli::parse();
    if let Command::PluginHost { args } = cli.command {
        return exec_plugin_host(args);
    }
    crate::telemetry::init_logging(&cli.log_filter);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().thread_name("weir").build()?;
    runtime.block_on(async move {
        match cli.command {
            Command::Serve(cfg) => serve::run(*cfg).await,
            Command::Write(a) => client::write(a).await,
            Command::Query(a) => client::query(a).await,
            Command::Create(c) => client::create(c).await,
            Command::Show(c) => client::show(c).await,
            Command::Delete(c) => client::delete(c).await,
            Command::Update(c) => client::update(c).await,
            Command::Install(c) => client::install(c).await,
            Command::Test(c) => client::test(c).await,
            Command::Enable(c) => client::enable(c).await,
            Command::Disable(c) => client::disable(c).await,
            Command::PluginHost { .. } => unreachable!("handled before the runtime starts"),
        }
    })
}
