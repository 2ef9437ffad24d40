//! The `weir` command line: `serve` runs the database; every other command is a client
//! of a running server's admin gRPC service.

pub mod client;
pub mod serve;

use clap::{Parser, Subcommand};

/// Weir: a time-series database that speaks InfluxDB 3 and runs its Python plugins out of
/// process.
#[derive(Debug, Parser)]
#[command(name = "weir", version, about, long_about = None)]
pub struct Cli {
    /// Log filter in EnvFilter syntax, e.g. `info` or `info,db_core::wal=debug`.
    #[arg(long, global = true, env = "WEIR_LOG_FILTER", default_value = "info")]
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
    Write(client::WriteArgs),
    /// Run a SQL query and print or save the answer.
    Query(client::QueryArgs),
    /// Create a database, a token or a trigger.
    #[command(subcommand)]
    Create(client::CreateCommand),
    /// Show databases, triggers, a trigger summary, or the plugin files.
    #[command(subcommand)]
    Show(client::ShowCommand),
    /// Delete a database or a trigger (an enabled trigger needs --force).
    #[command(subcommand)]
    Delete(client::DeleteCommand),
    /// Replace a trigger's plugin file or directory with a local one (atomically).
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

/// Entry point of the `weir` binary.
pub fn startup() -> anyhow::Result<()> {
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
