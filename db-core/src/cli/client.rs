//! Client commands: they talk to a running server over the admin gRPC service.

use std::{
    io::{IsTerminal, Read, Write},
    path::PathBuf,
    time::Duration,
};

use anyhow::{Context as _, bail};
use arrow::{ipc::reader::StreamReader, record_batch::RecordBatch};
use clap::{Args, Subcommand};
use datafusion::physical_plan::memory::MemoryStream;
use tonic::{
    Request, Status,
    metadata::MetadataValue,
    service::{Interceptor, interceptor::InterceptedService},
    transport::{Channel, Endpoint},
};
use weir_proto::admin::v1::{self as pb, admin_client::AdminClient};

use crate::{
    lp,
    query::format::{self, Format},
};

/// Flags every client command takes.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// Server URL.
    #[arg(long, env = "WEIR_HOST", default_value = "http://127.0.0.1:8181")]
    pub host: String,
    /// API token (`apiv3_...`).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

/// `weir write`
#[derive(Debug, Args)]
pub struct WriteArgs {
    #[command(flatten)]
    common: Common,
    /// Database to write to (created on first write).
    #[arg(short = 'd', long, env = "WEIR_DATABASE")]
    database: String,
    /// Read line protocol from this file instead of the arguments or standard input.
    #[arg(short = 'f', long)]
    file: Option<PathBuf>,
    /// Timestamp precision: auto, s, ms, us, ns.
    #[arg(long, default_value = "auto")]
    precision: String,
    /// Lines per request when sending large inputs.
    #[arg(long, default_value_t = 10_000)]
    batch_lines: usize,
    /// Retries of a batch after a server error or timeout (with exponential backoff).
    #[arg(long, default_value_t = 5)]
    retries: u32,
    /// Acknowledge before the WAL is durable (faster, may lose the newest writes on a crash).
    #[arg(long)]
    no_sync: bool,
    /// Write the good lines of a batch that has bad ones (the default, as in influxdb3);
    /// `--accept-partial=false` writes nothing of a batch with a bad line.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1,
          require_equals = true, default_missing_value = "true", value_name = "BOOL")]
    accept_partial: bool,
    /// Line protocol lines (when neither --file nor standard input is used).
    lines: Vec<String>,
}

/// `weir query`
#[derive(Debug, Args)]
pub struct QueryArgs {
    #[command(flatten)]
    common: Common,
    /// Database to query.
    #[arg(short = 'd', long, env = "WEIR_DATABASE")]
    database: String,
    /// Output format: pretty, json, jsonl, csv, parquet (parquet needs --output).
    #[arg(long, default_value = "pretty")]
    format: String,
    /// Write the answer to this file instead of standard output.
    #[arg(short = 'o', long)]
    output: Option<PathBuf>,
    /// Bind a `$name` placeholder: `--param name=value` (repeatable).
    #[arg(long = "param", value_name = "NAME=VALUE")]
    params: Vec<String>,
    /// Read the SQL from this file (`-` for standard input).
    #[arg(short = 'f', long = "file", value_name = "FILE", conflicts_with = "sql")]
    file: Option<PathBuf>,
    /// The SQL query. Without it and without --file, it is read from standard input.
    sql: Option<String>,
}

/// `weir create ...`
#[derive(Debug, Subcommand)]
pub enum CreateCommand {
    /// Create a database.
    Database {
        #[command(flatten)]
        common: Common,
        /// Database name (letters, digits, `_`, `-`; at most 64 characters).
        name: String,
        /// Keep data this long (`30d`, `12h`, `1w`): older rows stop being queryable and
        /// their Parquet files are removed. Default: kept until the database is deleted.
        #[arg(long, value_name = "DURATION")]
        retention_period: Option<String>,
    },
    /// Create a token: an admin token (--admin) or a resource token (--permission).
    ///
    /// The token text is printed once; the server keeps only a salted hash.
    #[command(after_help = "Examples:
  weir create token --admin                  the first admin token (needs no --token)
  weir create token --admin --name ci        another admin token
  weir create token --admin --regenerate     a new secret for _admin: with the current --token,
                                             or beside the server, with its recovery file
  weir create token --name dash --permission db:sensors:read --expiry 30d
  weir create token --name ingest --permission db:sensors,fleet:write --permission system:metrics:read")]
    Token(CreateTokenArgs),
    /// Create a processing-engine trigger.
    Trigger(CreateTriggerArgs),
}

/// `weir create token`
#[derive(Debug, Args)]
pub struct CreateTokenArgs {
    #[command(flatten)]
    common: Common,
    /// An admin token: may do everything (databases, triggers, plugins, tokens).
    #[arg(long, conflicts_with = "permissions", required_unless_present = "permissions")]
    admin: bool,
    /// With --admin: give the admin token `_admin` a new secret; the old one is refused at
    /// once. Needs the current admin token (--token) or, when that is lost, the server's
    /// recovery file (--recovery-file).
    #[arg(long, requires = "admin", conflicts_with = "name")]
    regenerate: bool,
    /// With --regenerate: the server's recovery file (`weir serve --admin-token-recovery-file`,
    /// default `.weir/admin-token-recovery` beside the data directory). Only someone who can
    /// read the server's files can regenerate without the current token.
    #[arg(long, requires = "regenerate", env = "WEIR_ADMIN_TOKEN_RECOVERY_FILE")]
    recovery_file: Option<PathBuf>,
    /// What the token may do, `RESOURCE_TYPE:RESOURCE_NAMES:ACTIONS` (repeatable):
    /// `db:sensors,fleet:read,write`, `db:*:read`, `system:metrics:read`.
    #[arg(long = "permission", value_name = "PERMISSION")]
    permissions: Vec<String>,
    /// Token name: required for a resource token; an admin token defaults to `_admin`.
    #[arg(long, required_unless_present_any = ["admin"])]
    name: Option<String>,
    /// Lifetime, e.g. `1h`, `7d`, `1y`; the token is refused once it passes (default: never).
    #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "regenerate")]
    expiry: Option<Duration>,
    /// Output: text, or json (`{"name", "token", "expiry", ...}`).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    format: String,
}

/// Where `weir serve` keeps the admin recovery secret unless told otherwise.
pub const DEFAULT_RECOVERY_FILE: &str = ".weir/admin-token-recovery";

/// `weir create trigger`
#[derive(Debug, Args)]
pub struct CreateTriggerArgs {
    #[command(flatten)]
    common: Common,
    /// Trigger name (unique in the database).
    name: String,
    /// Database.
    #[arg(short = 'd', long, env = "WEIR_DATABASE")]
    database: String,
    /// Plugin file or package directory, relative to the plugin directory.
    #[arg(short = 'p', long = "path", alias = "plugin-filename")]
    path: String,
    /// When it runs: `table:<name>` or `all_tables` (WAL flushes), `every:<duration>`
    /// (e.g. `every:10s`, aligned to the epoch), `cron:<expr>` (6 fields with seconds
    /// first, or 5; UTC), or `request:<path>` (served at /api/v3/engine/<path>).
    #[arg(long = "trigger-spec")]
    trigger_spec: String,
    /// Arguments for the plugin, `key=value[,key=value...]` (the plugin gets None without).
    #[arg(long = "trigger-arguments", value_delimiter = ',')]
    trigger_arguments: Vec<String>,
    /// Create it disabled.
    #[arg(long)]
    disabled: bool,
    /// Run invocations concurrently.
    #[arg(long = "run-asynchronous")]
    run_asynchronous: bool,
    /// What to do when the plugin fails: log (record and move on), retry (the same input
    /// again with exponential backoff, at most --max-retries times) or disable.
    #[arg(long = "error-behavior", default_value = "log")]
    error_behavior: String,
    /// With `--error-behavior retry`: retries of one input before giving up (default 5).
    #[arg(long = "max-retries")]
    max_retries: Option<u32>,
    /// Worker processes for an asynchronous trigger (CPU-bound plugins); each has its own
    /// trigger cache.
    #[arg(long, default_value_t = 1, requires = "run_asynchronous")]
    workers: u32,
    /// Upload --path (a local `.py` file or package directory) to the plugin directory
    /// first, under its file name, and use that.
    #[arg(long)]
    upload: bool,
}

/// `weir update ...`
#[derive(Debug, Subcommand)]
pub enum UpdateCommand {
    /// Change a trigger in place: its plugin (a local `.py` file or package directory,
    /// written aside and swapped in; the trigger picks it up on its next call), its
    /// arguments, its error behaviour, or whether it is enabled. A WAL trigger keeps its
    /// place in the WAL.
    #[command(after_help = "Examples:
  weir update trigger -d sensors -t hot_rooms --trigger-arguments limit=25
  weir update trigger -d sensors -t hot_rooms --error-behavior retry --disabled
  weir update trigger -d sensors -t status -p ./status.py")]
    Trigger {
        #[command(flatten)]
        common: Common,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
        /// Trigger name.
        #[arg(short = 't', long = "trigger-name")]
        name: String,
        /// Local file or directory with the new plugin. It replaces the trigger's plugin
        /// file, so other triggers using the same file would change too: that needs --force.
        #[arg(short = 'p', long = "path")]
        path: Option<PathBuf>,
        /// With --path: replace the file even though other triggers use it.
        #[arg(long, requires = "path")]
        force: bool,
        /// New arguments for the plugin, `key=value[,key=value...]` (they replace the old
        /// ones); `--trigger-arguments ''` removes them (the plugin gets None).
        #[arg(long = "trigger-arguments", value_delimiter = ',', num_args = 0..)]
        trigger_arguments: Option<Vec<String>>,
        /// New error behaviour: log, retry or disable.
        #[arg(long = "error-behavior")]
        error_behavior: Option<String>,
        /// Enable the trigger.
        #[arg(long, conflicts_with = "disabled")]
        enabled: bool,
        /// Disable the trigger.
        #[arg(long)]
        disabled: bool,
    },
}

/// A local plugin as upload content: one file, or every file of a directory (hidden
/// names and `__pycache__` skipped).
fn local_plugin(path: &std::path::Path) -> anyhow::Result<(bool, Vec<pb::PluginFileContent>)> {
    if path.is_file() {
        let content = std::fs::read(path).with_context(|| format!("cannot read {}", path.display()))?;
        return Ok((false, vec![pb::PluginFileContent { relative_path: String::new(), content }]));
    }
    let mut files = Vec::new();
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| format!("cannot read {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || name == "__pycache__" {
                continue;
            }
            let p = entry.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(path)?.to_string_lossy().into_owned();
                let content = std::fs::read(&p).with_context(|| format!("cannot read {}", p.display()))?;
                files.push(pb::PluginFileContent { relative_path: rel, content });
            }
        }
    }
    Ok((true, files))
}

/// Upload a local plugin as `name`.
async fn upload(common: &Common, path: &std::path::Path, name: &str, mode: &str) -> anyhow::Result<()> {
    let (directory, files) = local_plugin(path)?;
    connect(common)
        .await?
        .put_plugin(pb::PutPluginRequest { plugin_name: name.to_string(), files, directory, mode: mode.to_string() })
        .await
        .map_err(status_error)?;
    Ok(())
}

/// `weir update trigger`
pub async fn update(c: UpdateCommand) -> anyhow::Result<()> {
    let UpdateCommand::Trigger {
        common,
        database,
        name,
        path,
        force,
        trigger_arguments,
        error_behavior,
        enabled,
        disabled,
    } = c;
    let settings = trigger_arguments.is_some() || error_behavior.is_some() || enabled || disabled;
    if path.is_none() && !settings {
        bail!(
            "nothing to update: give --path, --trigger-arguments, --error-behavior, --enabled or --disabled \
             (weir update trigger --help)"
        );
    }
    let mut client = connect(&common).await?;
    let triggers = client
        .list_triggers(pb::ListTriggersRequest { database: database.clone() })
        .await
        .map_err(status_error)?
        .into_inner()
        .triggers;
    let Some(t) = triggers.into_iter().find(|t| t.name == name) else {
        bail!("trigger {name:?} not found in database {database:?}");
    };
    if let Some(path) = &path {
        // The file belongs to every trigger that names it: replacing it for one changes them all.
        let mut sharing = Vec::new();
        let dbs = client.list_databases(pb::ListDatabasesRequest::default()).await.map_err(status_error)?;
        for db in dbs.into_inner().databases.into_iter().map(|d| d.name) {
            let others = client
                .list_triggers(pb::ListTriggersRequest { database: db.clone() })
                .await
                .map_err(status_error)?
                .into_inner()
                .triggers;
            sharing.extend(
                others
                    .into_iter()
                    .filter(|o| o.plugin_filename == t.plugin_filename && !(db == database && o.name == name))
                    .map(|o| format!("{db}/{}", o.name)),
            );
        }
        if !sharing.is_empty() && !force {
            bail!(
                "plugin file {} is also used by {}; replacing it would change them too. Pass --force to \
                 replace it for all of them, or give this trigger its own file (weir create trigger ... --upload)",
                t.plugin_filename,
                sharing.join(", ")
            );
        }
        upload(&common, path, &t.plugin_filename, "replace").await?;
        println!("Trigger {name} updated: {} replaced with {}", t.plugin_filename, path.display());
        if !sharing.is_empty() {
            println!("Also changed for: {}", sharing.join(", "));
        }
    }
    if settings {
        let (arguments, clear_arguments) = match &trigger_arguments {
            None => (None, false),
            Some(kv) if kv.iter().all(|s| s.is_empty()) => (None, true),
            Some(kv) => {
                let kv: Vec<String> = kv.iter().filter(|s| !s.is_empty()).cloned().collect();
                (key_values(&kv)?, false)
            }
        };
        let state = match (enabled, disabled) {
            (true, _) => "enabled",
            (_, true) => "disabled",
            _ => "",
        };
        let updated = client
            .update_trigger(pb::UpdateTriggerRequest {
                database: database.clone(),
                name: name.clone(),
                arguments,
                clear_arguments,
                error_behavior: error_behavior.unwrap_or_default(),
                state: state.to_string(),
            })
            .await
            .map_err(status_error)?
            .into_inner()
            .trigger
            .context("the server sent no trigger")?;
        let args = updated.arguments.map(|a| {
            let mut kv: Vec<String> = a.values.into_iter().map(|(k, v)| format!("{k}={v}")).collect();
            kv.sort();
            kv.join(",")
        });
        println!(
            "Trigger {name} updated: arguments {}, error behavior {}, {}",
            args.as_deref().unwrap_or("none"),
            updated.error_behavior,
            if updated.disabled { "disabled" } else { "enabled" }
        );
    }
    Ok(())
}

/// `weir install ...`
#[derive(Debug, Subcommand)]
pub enum InstallCommand {
    /// Install Python packages into the plugin venv (pip, or uv if the host uses it).
    Package {
        #[command(flatten)]
        common: Common,
        /// Package specifiers, e.g. `requests==2.32.3` (or give -r FILE).
        packages: Vec<String>,
        /// A requirements file on this machine: its package lines are read here and sent
        /// (comments and blank lines skipped; options such as `-r` or `--index-url` are
        /// refused). `--remote-requirements` names a file in the plugin host's plugin
        /// directory instead.
        #[arg(short = 'r', long = "requirements", conflicts_with = "packages")]
        requirements: Option<std::path::PathBuf>,
        /// A requirements file in the plugin host's plugin directory.
        #[arg(long, conflicts_with_all = ["packages", "requirements"])]
        remote_requirements: Option<String>,
    },
}

/// The package lines of a requirements file (comments and blank lines skipped); options
/// are refused with the line that holds them.
fn requirement_lines(path: &std::path::Path, text: &str) -> anyhow::Result<Vec<String>> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split(" #").next().unwrap_or("").trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('-') {
            anyhow::bail!(
                "{}:{}: {line:?}: options in requirements files are not accepted (list packages only)",
                path.display(),
                i + 1
            );
        }
        out.push(line.to_string());
    }
    if out.is_empty() {
        anyhow::bail!("{}: no packages listed", path.display());
    }
    Ok(out)
}

/// What every dry run names: the server, the plugin, its database and its arguments.
#[derive(Debug, Args)]
pub struct DryRun {
    #[command(flatten)]
    common: Common,
    /// Plugin file or package directory, relative to the plugin directory.
    filename: String,
    /// Database the plugin runs against (queries, default write target).
    #[arg(short = 'd', long, env = "WEIR_DATABASE")]
    database: String,
    /// Arguments for the plugin, `key=value[,key=value...]`.
    #[arg(long = "input-arguments", value_delimiter = ',')]
    input_arguments: Vec<String>,
}

/// `weir test ...`
#[derive(Debug, Subcommand)]
pub enum TestCommand {
    /// Run a WAL plugin once on line protocol, in a fresh worker on the plugin host; its
    /// writes are captured and printed, not applied.
    #[command(name = "wal_plugin", alias = "wal-plugin")]
    WalPlugin {
        #[command(flatten)]
        run: DryRun,
        /// Line protocol to feed the plugin.
        #[arg(long, conflicts_with = "file", required_unless_present = "file")]
        lp: Option<String>,
        /// Read the line protocol from this file.
        #[arg(long)]
        file: Option<PathBuf>,
        /// Accepted for compatibility with influxdb3; every dry run gets a fresh cache.
        #[arg(long = "cache-name")]
        cache_name: Option<String>,
    },
    /// Run a schedule plugin once (`process_scheduled_call`) in a fresh worker; prints
    /// `trigger_time` with the usual dry-run answer.
    #[command(name = "schedule_plugin", alias = "schedule-plugin")]
    SchedulePlugin {
        #[command(flatten)]
        run: DryRun,
        /// A schedule (`every:10s`, `cron:0 * * * * *`, or a bare cron expression such as
        /// `0 0 * * *`, as influxdb3 takes it): the call time is its next fire time. Without
        /// it, now.
        #[arg(long)]
        schedule: Option<String>,
        /// Accepted for compatibility with influxdb3; every dry run gets a fresh cache.
        #[arg(long = "cache-name")]
        cache_name: Option<String>,
    },
    /// Run a request plugin once (`process_request`) in a fresh worker; prints the HTTP
    /// answer it would give with the usual dry-run answer.
    #[command(name = "request_plugin", alias = "request-plugin")]
    RequestPlugin {
        #[command(flatten)]
        run: DryRun,
        /// Request body (`@FILE` reads a file).
        #[arg(long)]
        body: Option<String>,
        /// Query parameters, `key=value[,key=value...]`.
        #[arg(long, value_delimiter = ',')]
        query: Vec<String>,
        /// Request headers, `Name: value` (repeatable).
        #[arg(long = "header")]
        headers: Vec<String>,
        /// HTTP method the plugin sees.
        #[arg(long, default_value = "POST")]
        method: String,
    },
}

fn writes_json(writes: Vec<pb::PluginWrites>) -> serde_json::Map<String, serde_json::Value> {
    writes.into_iter().map(|w| (w.database, serde_json::json!(w.lines))).collect()
}

fn key_values(pairs: &[String]) -> anyhow::Result<Option<pb::TriggerArguments>> {
    if pairs.is_empty() {
        return Ok(None);
    }
    let mut values = std::collections::HashMap::new();
    for kv in pairs {
        let (k, v) = kv.split_once('=').with_context(|| format!("argument {kv:?} is not key=value"))?;
        values.insert(k.to_string(), v.to_string());
    }
    Ok(Some(pb::TriggerArguments { values }))
}

/// `weir test wal_plugin|schedule_plugin|request_plugin`: prints the dry-run answer as JSON.
pub async fn test(c: TestCommand) -> anyhow::Result<()> {
    let out = match c {
        TestCommand::WalPlugin {
            run: DryRun { common, filename, database, input_arguments },
            lp,
            file,
            cache_name: _,
        } => {
            let input_lp = match (lp, file) {
                (Some(lp), _) => lp,
                (None, Some(f)) => {
                    std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?
                }
                (None, None) => bail!("give --lp or --file"),
            };
            let r = connect(&common)
                .await?
                .test_wal_plugin(pb::TestWalPluginRequest {
                    database,
                    plugin_filename: filename,
                    input_lp,
                    arguments: key_values(&input_arguments)?,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            serde_json::json!({"log_lines": r.log_lines, "database_writes": writes_json(r.database_writes), "errors": r.errors})
        }
        TestCommand::SchedulePlugin {
            run: DryRun { common, filename, database, input_arguments },
            schedule,
            cache_name: _,
        } => {
            let r = connect(&common)
                .await?
                .test_schedule_plugin(pb::TestSchedulePluginRequest {
                    database,
                    plugin_filename: filename,
                    arguments: key_values(&input_arguments)?,
                    schedule: schedule.unwrap_or_default(),
                })
                .await
                .map_err(status_error)?
                .into_inner();
            serde_json::json!({
                "trigger_time": r.trigger_time,
                "log_lines": r.log_lines,
                "database_writes": writes_json(r.database_writes),
                "errors": r.errors,
            })
        }
        TestCommand::RequestPlugin {
            run: DryRun { common, filename, database, input_arguments },
            body,
            query,
            headers,
            method,
        } => {
            let body = match body.as_deref() {
                Some(b) if b.starts_with('@') => {
                    std::fs::read(&b[1..]).with_context(|| format!("cannot read {}", &b[1..]))?
                }
                Some(b) => b.as_bytes().to_vec(),
                None => Vec::new(),
            };
            let query = key_values(&query)?.map(|a| a.values).unwrap_or_default();
            let headers = headers
                .iter()
                .map(|h| {
                    let (k, v) = h.split_once(':').with_context(|| format!("header {h:?} is not `Name: value`"))?;
                    Ok((k.trim().to_ascii_lowercase(), v.trim().to_string()))
                })
                .collect::<anyhow::Result<_>>()?;
            let r = connect(&common)
                .await?
                .test_request_plugin(pb::TestRequestPluginRequest {
                    database,
                    plugin_filename: filename,
                    arguments: key_values(&input_arguments)?,
                    method,
                    query,
                    headers,
                    body,
                })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut out = serde_json::json!({
                "log_lines": r.log_lines,
                "database_writes": writes_json(r.database_writes),
                "errors": r.errors,
            });
            if r.status != 0 {
                out["response"] = serde_json::json!({
                    "status": r.status,
                    "headers": r.headers,
                    "body": String::from_utf8_lossy(&r.body),
                });
            }
            out
        }
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    // A plugin that raised fails the command, so a dry run can gate a CI job.
    let errors = out["errors"].as_array().map_or(0, Vec::len);
    if errors > 0 {
        bail!("the plugin reported {errors} error(s) (printed above under \"errors\")");
    }
    Ok(())
}

/// `weir install package`
pub async fn install(c: InstallCommand) -> anyhow::Result<()> {
    let InstallCommand::Package { common, mut packages, requirements, remote_requirements } = c;
    if packages.is_empty() && requirements.is_none() && remote_requirements.is_none() {
        bail!(
            "no packages given: name them (`weir install package requests==2.32.3 pandas`) or give a \
             requirements file (`weir install package -r requirements.txt`)"
        );
    }
    if let Some(path) = &requirements {
        let text = std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        packages = requirement_lines(path, &text)?;
    }
    let r = connect(&common)
        .await?
        .install_packages(pb::InstallPackagesRequest {
            packages,
            requirements_location: remote_requirements.unwrap_or_default(),
        })
        .await
        .map_err(status_error)?
        .into_inner();
    print!("{}", r.output);
    println!("Packages installed");
    Ok(())
}

/// `weir enable trigger NAME -d DB [--skip-to-now]`
#[derive(Debug, Subcommand)]
pub enum EnableCommand {
    /// Enable a trigger: WAL triggers run again from the next flush (or where the
    /// retention policy stopped them), schedules from their next fire time, request paths
    /// are served at once.
    #[command(after_help = "Examples:
  weir enable trigger hot_rooms -d sensors
  weir enable trigger hot_rooms -d sensors --skip-to-now   # a trigger the retention policy stopped")]
    Trigger {
        #[command(flatten)]
        common: Common,
        /// Trigger name.
        name: String,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
        /// For a WAL trigger stopped by the retention policy (--trigger-max-wal-lag): start
        /// it again from the newest data. The WAL files it had not processed are not
        /// delivered to it (the engine log says which).
        #[arg(long)]
        skip_to_now: bool,
    },
}

/// `weir disable trigger NAME -d DB`
#[derive(Debug, Subcommand)]
pub enum ToggleCommand {
    /// Disable a trigger: it stays in the catalog with its settings but does not run (a
    /// request path answers 404) and holds no WAL back; `weir enable trigger` starts it
    /// again.
    #[command(after_help = "Example:
  weir disable trigger hot_rooms -d sensors")]
    Trigger {
        #[command(flatten)]
        common: Common,
        /// Trigger name.
        name: String,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
    },
}

/// `weir show ...`
#[derive(Debug, Subcommand)]
pub enum ShowCommand {
    /// List the triggers of a database.
    Triggers {
        #[command(flatten)]
        common: Common,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
        /// Output format: pretty, json, jsonl, csv.
        #[arg(long, default_value = "pretty")]
        format: String,
    },
    /// List the files of the plugin directory (as `system.plugin_files`).
    Plugins {
        #[command(flatten)]
        common: Common,
        /// Output format: pretty, json, jsonl, csv.
        #[arg(long, default_value = "pretty")]
        format: String,
    },
    /// The triggers of a database with their state (running, stopped, disabled), runs,
    /// failures, last error and WAL lag.
    Summary {
        #[command(flatten)]
        common: Common,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
        /// Output format: pretty, json, jsonl, csv.
        #[arg(long, default_value = "pretty")]
        format: String,
    },
    /// List databases.
    Databases {
        #[command(flatten)]
        common: Common,
        /// Output format: pretty, json, jsonl, csv.
        #[arg(long, default_value = "pretty")]
        format: String,
        /// Also list deleted databases (with a `deleted` column).
        #[arg(long)]
        show_deleted: bool,
    },
    /// List tokens (name, kind, permissions, creation, expiry; never the secret). Admin only.
    Tokens {
        #[command(flatten)]
        common: Common,
        /// Output format: pretty, json, jsonl, csv.
        #[arg(long, default_value = "pretty")]
        format: String,
    },
}

/// `weir delete ...`
#[derive(Debug, Subcommand)]
pub enum DeleteCommand {
    /// Delete a database and all its data (its Parquet files go with the next snapshot;
    /// --hard-delete removes them now).
    Database {
        #[command(flatten)]
        common: Common,
        /// Database name.
        name: String,
        /// When the Parquet files are removed: `--hard-delete=now`, or `=default` (with the
        /// next snapshot). A bare `--hard-delete` means now.
        #[arg(long, value_name = "WHEN", num_args = 0..=1, require_equals = true, default_missing_value = "now",
              value_parser = ["now", "default"])]
        hard_delete: Option<String>,
    },
    /// Delete a table and its data (buffered rows and Parquet files); its name is free
    /// for a new table.
    Table {
        #[command(flatten)]
        common: Common,
        /// Table name.
        name: String,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
    },
    /// Delete a token; requests with it are refused from then on. (The admin token
    /// `_admin` cannot be deleted: regenerate it with `weir create token --admin --regenerate`.)
    Token {
        #[command(flatten)]
        common: Common,
        /// Token name.
        #[arg(required_unless_present = "token_name")]
        name: Option<String>,
        /// Token name (InfluxDB 3 spelling).
        #[arg(long = "token-name", conflicts_with = "name")]
        token_name: Option<String>,
    },
    /// Delete a processing-engine trigger.
    Trigger {
        #[command(flatten)]
        common: Common,
        /// Trigger name.
        name: String,
        /// Database.
        #[arg(short = 'd', long, env = "WEIR_DATABASE")]
        database: String,
        /// Delete it even if it is enabled.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Clone)]
struct Auth(Option<MetadataValue<tonic::metadata::Ascii>>);

impl Interceptor for Auth {
    fn call(&mut self, mut req: Request<()>) -> Result<Request<()>, Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

type Client = AdminClient<InterceptedService<Channel, Auth>>;

async fn connect(c: &Common) -> anyhow::Result<Client> {
    connect_with(c, false).await
}

/// Connect now (`lazy = false`: a down server is an immediate error), or on first use
/// (`lazy = true`: a down server surfaces as a retryable `Unavailable` per request).
async fn connect_with(c: &Common, lazy: bool) -> anyhow::Result<Client> {
    let endpoint = Endpoint::from_shared(c.host.clone())
        .with_context(|| format!("invalid --host {:?}", c.host))?
        .connect_timeout(Duration::from_secs(10))
        .timeout(Duration::from_secs(300));
    let channel = if lazy {
        endpoint.connect_lazy()
    } else {
        endpoint.connect().await.with_context(|| format!("cannot connect to {}", c.host))?
    };
    let auth = match &c.token {
        Some(t) => {
            Some(format!("Bearer {t}").parse().context("the token contains characters not allowed in a header")?)
        }
        None => None,
    };
    Ok(AdminClient::with_interceptor(channel, Auth(auth))
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024))
}

fn status_error(s: Status) -> anyhow::Error {
    anyhow::anyhow!("{} ({:?})", s.message(), s.code())
}

fn retryable(s: &Status) -> bool {
    matches!(
        s.code(),
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Internal | tonic::Code::Unknown
    )
}

/// One batch of logical lines: the body sent, and for each logical line the physical line
/// it starts on within the body and its line number in the input.
struct Batch {
    body: String,
    starts: Vec<(usize, usize)>,
}

impl Batch {
    fn input_line(&self, body_line: usize) -> usize {
        match self.starts.binary_search_by_key(&body_line, |(b, _)| *b) {
            Ok(i) => self.starts[i].1,
            Err(i) => self.starts[i.saturating_sub(1)].1,
        }
    }
}

fn batches(input: &str, per_batch: usize) -> Vec<Batch> {
    let per_batch = per_batch.max(1);
    let mut out = Vec::new();
    let mut cur = Batch { body: String::new(), starts: Vec::new() };
    let mut body_line = 1;
    for item in lp::parse_lines(input) {
        let (n, text): (usize, std::borrow::Cow<'_, str>) = match item {
            Ok((n, raw, _)) => (n, raw.into()),
            Err(e) => (e.line_number, e.original_line.into()),
        };
        if !cur.body.is_empty() {
            cur.body.push('\n');
        }
        cur.starts.push((body_line, n));
        body_line += 1 + text.matches('\n').count();
        cur.body.push_str(&text);
        if cur.starts.len() >= per_batch {
            out.push(std::mem::replace(&mut cur, Batch { body: String::new(), starts: Vec::new() }));
            body_line = 1;
        }
    }
    if !cur.starts.is_empty() {
        out.push(cur);
    }
    out
}

fn precision_code(p: &str) -> anyhow::Result<i32> {
    let p: lp::Precision = p.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    Ok(match p {
        lp::Precision::Auto => pb::Precision::Auto,
        lp::Precision::Second => pb::Precision::Second,
        lp::Precision::Millisecond => pb::Precision::Millisecond,
        lp::Precision::Microsecond => pb::Precision::Microsecond,
        lp::Precision::Nanosecond => pb::Precision::Nanosecond,
    } as i32)
}

/// `weir write`: send in batches, retry server errors with backoff, report every line.
pub async fn write(a: WriteArgs) -> anyhow::Result<()> {
    let precision = precision_code(&a.precision)?;
    let input = match (&a.file, a.lines.is_empty()) {
        (Some(f), _) => std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))?,
        (None, false) => a.lines.join("\n"),
        (None, true) => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read standard input")?;
            s
        }
    };
    let batches = batches(&input, a.batch_lines);
    let total: usize = batches.iter().map(|b| b.starts.len()).sum();
    // Lazy: a server that is restarting or not up yet is retried like any 5xx.
    let mut client = connect_with(&a.common, true).await?;
    let bar = if std::io::stderr().is_terminal() && batches.len() > 1 {
        indicatif::ProgressBar::new(total as u64)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut accepted = 0u64;
    let mut rejected: Vec<(usize, String, String)> = Vec::new();
    let mut failed: Vec<(usize, usize, String)> = Vec::new();
    for batch in &batches {
        let req = pb::WriteRequest {
            database: a.database.clone(),
            lines: batch.body.clone(),
            precision,
            reject_partial: !a.accept_partial,
            no_sync: a.no_sync,
        };
        let mut attempt = 0;
        let result = loop {
            match client.write(req.clone()).await {
                Ok(r) => break Ok(r.into_inner()),
                Err(s) if retryable(&s) && attempt < a.retries => {
                    attempt += 1;
                    let backoff = Duration::from_millis(100 * (1 << attempt.min(6)));
                    // suspend() prints even when the bar is hidden (no terminal); println() would not.
                    bar.suspend(|| {
                        eprintln!("server error ({}); retry {attempt}/{} in {backoff:?}", s.message(), a.retries)
                    });
                    tokio::time::sleep(backoff).await;
                }
                Err(s) => break Err(s),
            }
        };
        match result {
            Ok(r) => {
                accepted += r.accepted_lines;
                for e in r.rejected {
                    rejected.push((batch.input_line(e.line_number as usize), e.original_line, e.error_message));
                }
            }
            Err(s) => {
                let first = batch.starts.first().map(|x| x.1).unwrap_or(0);
                let last = batch.starts.last().map(|x| x.1).unwrap_or(0);
                failed.push((first, last, s.message().to_string()));
                if !retryable(&s) {
                    bar.finish_and_clear();
                    report(accepted, &rejected, &failed, total);
                    return Err(status_error(s));
                }
            }
        }
        bar.inc(batch.starts.len() as u64);
    }
    bar.finish_and_clear();
    report(accepted, &rejected, &failed, total);
    if !rejected.is_empty() || !failed.is_empty() {
        bail!("{} line(s) rejected, {} batch(es) failed", rejected.len(), failed.len());
    }
    Ok(())
}

fn report(accepted: u64, rejected: &[(usize, String, String)], failed: &[(usize, usize, String)], total: usize) {
    eprintln!("accepted {accepted} of {total} line(s)");
    for (n, line, msg) in rejected.iter().take(50) {
        eprintln!("  rejected line {n}: {msg}: {line}");
    }
    if rejected.len() > 50 {
        eprintln!("  ... and {} more rejected line(s)", rejected.len() - 50);
    }
    for (first, last, msg) in failed {
        eprintln!("  NOT WRITTEN: lines {first}-{last}: {msg}");
    }
}

fn write_output(out: Option<&PathBuf>, bytes: &[u8]) -> anyhow::Result<()> {
    match out {
        Some(p) => std::fs::write(p, bytes).with_context(|| format!("cannot write {}", p.display())),
        None => {
            let mut so = std::io::stdout().lock();
            so.write_all(bytes)?;
            so.flush()?;
            Ok(())
        }
    }
}

async fn encode_batches(
    fmt: Format,
    batches: Vec<RecordBatch>,
    schema: arrow::datatypes::SchemaRef,
) -> anyhow::Result<Vec<u8>> {
    let stream = MemoryStream::try_new(batches, schema, None)?;
    Ok(format::encode_all(fmt, Box::pin(stream)).await?)
}

/// `weir query`
pub async fn query(a: QueryArgs) -> anyhow::Result<()> {
    let fmt: Format = a.format.parse().map_err(|e: String| anyhow::anyhow!(e))?;
    if fmt == Format::Parquet && a.output.is_none() {
        bail!("--format parquet writes a binary file: give --output FILE");
    }
    let mut params = Vec::new();
    for p in &a.params {
        let (k, v) = p.split_once('=').with_context(|| format!("--param {p:?} must be NAME=VALUE"))?;
        params.push(pb::QueryParam { name: k.to_string(), value: v.to_string() });
    }
    let sql = match (a.sql, a.file) {
        (Some(sql), _) => sql,
        (None, Some(f)) if f.as_os_str() != "-" => {
            std::fs::read_to_string(&f).with_context(|| format!("cannot read the query file {}", f.display()))?
        }
        (None, _) => {
            if std::io::stdin().is_terminal() {
                bail!("give the SQL as an argument, with --file FILE, or on standard input");
            }
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s).context("cannot read the query from standard input")?;
            s
        }
    };
    if sql.trim().is_empty() {
        bail!("the query is empty");
    }
    let (schema, batches) = run_sql(&a.common, &a.database, &sql, params).await?;
    let bytes = encode_batches(fmt, batches, schema).await?;
    write_output(a.output.as_ref(), &bytes)
}

/// Run SQL over the admin service: the answer's schema and batches.
async fn run_sql(
    common: &Common,
    database: &str,
    sql: &str,
    params: Vec<pb::QueryParam>,
) -> anyhow::Result<(arrow::datatypes::SchemaRef, Vec<RecordBatch>)> {
    let mut stream = connect(common)
        .await?
        .query(pb::QueryRequest { database: database.to_string(), sql: sql.to_string(), params })
        .await
        .map_err(status_error)?
        .into_inner();
    let mut ipc = Vec::new();
    while let Some(msg) = stream.message().await.map_err(status_error)? {
        ipc.extend_from_slice(&msg.arrow_ipc);
    }
    let reader = StreamReader::try_new(std::io::Cursor::new(ipc), None)?;
    let schema = reader.schema();
    let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>()?;
    Ok((schema, batches))
}

/// `weir create ...`
pub async fn create(c: CreateCommand) -> anyhow::Result<()> {
    match c {
        CreateCommand::Database { common, name, retention_period } => {
            connect(&common)
                .await?
                .create_database(pb::CreateDatabaseRequest {
                    name: name.clone(),
                    retention_period: retention_period.clone().unwrap_or_default(),
                })
                .await
                .map_err(status_error)?;
            println!("Database {name:?} created");
        }
        CreateCommand::Token(a) => create_token(a).await?,
        CreateCommand::Trigger(a) => {
            let arguments = key_values(&a.trigger_arguments)?;
            let plugin_filename = if a.upload {
                let local = std::path::Path::new(&a.path);
                let name = local
                    .file_name()
                    .and_then(|n| n.to_str())
                    .with_context(|| format!("--path {} has no file name", a.path))?
                    .to_string();
                upload(&a.common, local, &name, "").await?;
                name
            } else {
                a.path
            };
            let trigger = pb::TriggerInfo {
                name: a.name.clone(),
                plugin_filename,
                specification: a.trigger_spec,
                arguments,
                run_async: a.run_asynchronous,
                error_behavior: a.error_behavior,
                disabled: a.disabled,
                max_retries: a.max_retries.unwrap_or(0),
                workers: a.workers,
            };
            connect(&a.common)
                .await?
                .create_trigger(pb::CreateTriggerRequest { database: a.database, trigger: Some(trigger) })
                .await
                .map_err(status_error)?;
            println!("Trigger {} created successfully", a.name);
        }
    }
    Ok(())
}

/// `weir enable trigger`
pub async fn enable(c: EnableCommand) -> anyhow::Result<()> {
    let EnableCommand::Trigger { common, name, database, skip_to_now } = c;
    connect(&common)
        .await?
        .set_trigger_disabled(pb::SetTriggerDisabledRequest {
            database,
            name: name.clone(),
            disabled: false,
            skip_to_now,
        })
        .await
        .map_err(status_error)?;
    println!("Trigger {name} enabled{}", if skip_to_now { " from the newest data" } else { "" });
    Ok(())
}

/// `weir disable trigger`
pub async fn disable(c: ToggleCommand) -> anyhow::Result<()> {
    let ToggleCommand::Trigger { common, name, database } = c;
    connect(&common)
        .await?
        .set_trigger_disabled(pb::SetTriggerDisabledRequest {
            database,
            name: name.clone(),
            disabled: true,
            skip_to_now: false,
        })
        .await
        .map_err(status_error)?;
    println!("Trigger {name} disabled");
    Ok(())
}

/// `weir show ...`
pub async fn show(c: ShowCommand) -> anyhow::Result<()> {
    match c {
        ShowCommand::Triggers { common, database, format: f } => {
            let fmt: Format = f.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let r = connect(&common)
                .await?
                .list_triggers(pb::ListTriggersRequest { database })
                .await
                .map_err(status_error)?
                .into_inner();
            use arrow::{
                array::{BooleanArray, StringArray},
                datatypes::{DataType, Field, Schema},
            };
            let schema = std::sync::Arc::new(Schema::new(vec![
                Field::new("trigger_name", DataType::Utf8, false),
                Field::new("plugin_filename", DataType::Utf8, false),
                Field::new("trigger_specification", DataType::Utf8, false),
                Field::new("disabled", DataType::Boolean, false),
                Field::new("error_behavior", DataType::Utf8, false),
            ]));
            let t = &r.triggers;
            let batch = RecordBatch::try_new(
                std::sync::Arc::clone(&schema),
                vec![
                    std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.name.as_str()))),
                    std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.plugin_filename.as_str()))),
                    std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.specification.as_str()))),
                    std::sync::Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.disabled)))),
                    std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.error_behavior.as_str()))),
                ],
            )?;
            let bytes = encode_batches(fmt, vec![batch], schema).await?;
            write_output(None, &bytes)?;
        }
        ShowCommand::Plugins { common, format: f } => {
            let fmt: Format = f.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let files = connect(&common)
                .await?
                .list_plugin_files(pb::ListPluginFilesRequest {})
                .await
                .map_err(status_error)?
                .into_inner()
                .files;
            use arrow::{
                array::{Int64Array, StringArray, TimestampMillisecondArray},
                datatypes::{DataType, Field, Schema, TimeUnit},
            };
            let schema = std::sync::Arc::new(Schema::new(vec![
                Field::new("plugin_name", DataType::Utf8, false),
                Field::new("file_name", DataType::Utf8, false),
                Field::new("file_path", DataType::Utf8, false),
                Field::new("size_bytes", DataType::Int64, false),
                Field::new("last_modified", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            ]));
            let batch = RecordBatch::try_new(
                std::sync::Arc::clone(&schema),
                vec![
                    std::sync::Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.plugin_name.as_str()))),
                    std::sync::Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.file_name.as_str()))),
                    std::sync::Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.file_path.as_str()))),
                    std::sync::Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.size_bytes as i64))),
                    std::sync::Arc::new(
                        TimestampMillisecondArray::from_iter_values(files.iter().map(|f| f.last_modified_ms))
                            .with_timezone("UTC"),
                    ),
                ],
            )?;
            let bytes = encode_batches(fmt, vec![batch], schema).await?;
            write_output(None, &bytes)?;
        }
        ShowCommand::Summary { common, database, format: f } => {
            let fmt: Format = f.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let sql = "SELECT trigger_name, trigger_specification, plugin_filename, state, runs, failures, \
                       missed_ticks, lag, last_error_at, last_error FROM system.processing_engine_triggers ORDER BY trigger_name";
            let (schema, batches) = run_sql(&common, &database, sql, Vec::new()).await?;
            let bytes = encode_batches(fmt, batches, schema).await?;
            write_output(None, &bytes)?;
        }
        ShowCommand::Databases { common, format: f, show_deleted } => {
            use arrow::{
                array::{ArrayRef, BooleanArray, StringArray},
                datatypes::{DataType, Field, Schema},
            };
            let fmt: Format = f.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let r = connect(&common)
                .await?
                .list_databases(pb::ListDatabasesRequest { include_deleted: show_deleted })
                .await
                .map_err(status_error)?
                .into_inner();
            let mut fields = vec![Field::new("iox::database", DataType::Utf8, false)];
            let mut columns: Vec<ArrayRef> =
                vec![std::sync::Arc::new(StringArray::from_iter_values(r.databases.iter().map(|d| d.name.as_str())))];
            if show_deleted {
                fields.push(Field::new("deleted", DataType::Boolean, false));
                columns.push(std::sync::Arc::new(BooleanArray::from_iter(r.databases.iter().map(|d| Some(d.deleted)))));
            }
            let schema = std::sync::Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(std::sync::Arc::clone(&schema), columns)?;
            let bytes = encode_batches(fmt, vec![batch], schema).await?;
            write_output(None, &bytes)?;
        }
        ShowCommand::Tokens { common, format: f } => {
            use arrow::{
                array::{ArrayRef, BooleanArray, StringArray, UInt32Array},
                datatypes::{DataType, Field, Schema},
            };
            let fmt: Format = f.parse().map_err(|e: String| anyhow::anyhow!(e))?;
            let r =
                connect(&common).await?.list_tokens(pb::ListTokensRequest {}).await.map_err(status_error)?.into_inner();
            let t = r.tokens;
            let schema = std::sync::Arc::new(Schema::new(vec![
                Field::new("name", DataType::Utf8, false),
                Field::new("id", DataType::UInt32, false),
                Field::new("admin", DataType::Boolean, false),
                Field::new("permissions", DataType::Utf8, false),
                Field::new("created_at", DataType::Utf8, false),
                Field::new("expiry", DataType::Utf8, true),
                Field::new("expired", DataType::Boolean, false),
            ]));
            let columns: Vec<ArrayRef> = vec![
                std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.name.as_str()))),
                std::sync::Arc::new(UInt32Array::from_iter_values(t.iter().map(|t| t.id))),
                std::sync::Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.admin)))),
                std::sync::Arc::new(StringArray::from_iter_values(
                    t.iter().map(|t| if t.admin { "*".to_string() } else { t.permissions.join(" ") }),
                )),
                std::sync::Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.created_at.as_str()))),
                std::sync::Arc::new(StringArray::from_iter(
                    t.iter().map(|t| (!t.expiry.is_empty()).then_some(t.expiry.as_str())),
                )),
                std::sync::Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.expired)))),
            ];
            let batch = RecordBatch::try_new(std::sync::Arc::clone(&schema), columns)?;
            let bytes = encode_batches(fmt, vec![batch], schema).await?;
            write_output(None, &bytes)?;
        }
    }
    Ok(())
}

async fn create_token(a: CreateTokenArgs) -> anyhow::Result<()> {
    let mut client = connect(&a.common).await?;
    let r = if a.regenerate {
        let recovery_secret = if a.common.token.is_some() && a.recovery_file.is_none() {
            String::new()
        } else {
            let path = a.recovery_file.clone().unwrap_or_else(|| PathBuf::from(DEFAULT_RECOVERY_FILE));
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "cannot read the recovery file {}: regenerating needs the current admin token (--token) \
                         or the file `weir serve` wrote (--admin-token-recovery-file)",
                        path.display()
                    )
                })?
                .trim()
                .to_string()
        };
        client.regenerate_admin_token(pb::RegenerateAdminTokenRequest { recovery_secret }).await
    } else if a.admin {
        if a.expiry.is_some() {
            bail!("--expiry is for resource tokens (--permission); admin tokens do not expire");
        }
        client.create_admin_token(pb::CreateAdminTokenRequest { name: a.name.unwrap_or_default() }).await
    } else {
        client
            .create_token(pb::CreateTokenRequest {
                name: a.name.unwrap_or_default(),
                permissions: a.permissions,
                expiry_secs: a.expiry.map(|d| d.as_secs().max(1)).unwrap_or(0),
            })
            .await
    }
    .map_err(status_error)?
    .into_inner();
    let expiry = (r.expires_at != 0).then(|| crate::time::format_rfc3339(r.expires_at));
    if a.format == "json" {
        let json = serde_json::json!({
            "id": r.id,
            "name": r.name,
            "token": r.token,
            "admin": r.admin,
            "permissions": r.permissions,
            "expiry": expiry,
        });
        println!("{json}");
        return Ok(());
    }
    let verb = if a.regenerate { "regenerated" } else { "created" };
    println!("Token {:?} {verb} (shown once; the server keeps only a salted hash):", r.name);
    println!("{}", r.token);
    if !r.admin {
        println!("Permissions: {}", r.permissions.join(" "));
    }
    if let Some(e) = expiry {
        println!("Expires: {e}");
    }
    Ok(())
}

/// `weir delete ...`
pub async fn delete(c: DeleteCommand) -> anyhow::Result<()> {
    match c {
        DeleteCommand::Database { common, name, hard_delete } => {
            let hard = hard_delete.as_deref() == Some("now");
            connect(&common)
                .await?
                .delete_database(pb::DeleteDatabaseRequest { name: name.clone(), hard_delete: hard })
                .await
                .map_err(status_error)?;
            if hard {
                println!("Database {name:?} deleted, its files removed");
            } else {
                println!("Database {name:?} deleted");
            }
        }
        DeleteCommand::Table { common, name, database } => {
            connect(&common)
                .await?
                .delete_table(pb::DeleteTableRequest { database: database.clone(), table: name.clone() })
                .await
                .map_err(status_error)?;
            println!("Table {database}.{name} deleted");
        }
        DeleteCommand::Token { common, name, token_name } => {
            let name = name.or(token_name).context("give the token name")?;
            connect(&common)
                .await?
                .delete_token(pb::DeleteTokenRequest { name: name.clone() })
                .await
                .map_err(status_error)?;
            println!("Token {name:?} deleted");
        }
        DeleteCommand::Trigger { common, name, database, force } => {
            connect(&common)
                .await?
                .delete_trigger(pb::DeleteTriggerRequest { database, name: name.clone(), force })
                .await
                .map_err(status_error)?;
            println!("Trigger {name} deleted");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_keep_input_line_numbers() {
        let input = "# comment\na v=1 1\n\nb s=\"x\ny\" 2\nbad line\nc v=3 3\n";
        let b = batches(input, 2);
        assert_eq!(b.len(), 2);
        assert_eq!(b[0].body, "a v=1 1\nb s=\"x\ny\" 2");
        // Body line 1 is input line 2; body line 2 (the multi-line string) is input line 4.
        assert_eq!(b[0].input_line(1), 2);
        assert_eq!(b[0].input_line(2), 4);
        assert_eq!(b[1].body, "bad line\nc v=3 3");
        assert_eq!(b[1].input_line(1), 6);
        assert_eq!(b[1].input_line(2), 7);
    }
}
