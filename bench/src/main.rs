//! `weir-bench`: ingest throughput, query latency and lone-write latency of a Weir
//! server, measured over its HTTP API.
//!
//! By default it starts its own `weir serve` (file object store in a fresh temporary
//! directory, fsync'd WAL) and stops it at the end; `--host` targets a running server
//! instead. See `bench/README.md`.

mod client;
mod datagen;
mod ingest;
mod query;
mod report;
mod server;
mod stats;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::{
    client::Api,
    datagen::IngestShape,
    report::{Machine, Report},
    server::{Server, SpawnArgs},
};

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Everything: ingest, query, lone writes.
    All,
    /// The three ingest scenarios.
    Ingest,
    /// Query latency (writes its own data set first).
    Query,
    /// Sequential single-line writes.
    Lone,
}

/// Benchmark a Weir server: ingest throughput, query latency, lone-write latency.
#[derive(Debug, Parser)]
#[command(name = "weir-bench", version)]
struct Cli {
    /// Scenarios to run.
    #[arg(long, value_enum, default_value = "all")]
    scenario: Scenario,

    /// Benchmark a running server at this URL instead of starting one (e.g.
    /// http://127.0.0.1:8181). Database names then get a unique suffix.
    #[arg(long, env = "WEIR_BENCH_HOST")]
    host: Option<String>,

    /// Bearer token for a server with authentication (with --host).
    #[arg(long, env = "WEIR_TOKEN", hide_env_values = true)]
    token: Option<String>,

    /// The `weir` binary to start [default: `weir` next to this binary].
    #[arg(long)]
    weir_bin: Option<PathBuf>,

    /// Data directory of the started server (must be empty or absent) [default: a fresh
    /// temporary directory].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Keep the temporary directory (server log and data) after the run.
    #[arg(long)]
    keep_data: bool,

    /// Extra argument for `weir serve` (repeat it), e.g. --server-arg=--snapshot-rows=1000000
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Lines written by each ingest scenario.
    #[arg(long, default_value_t = 2_000_000)]
    lines: u64,

    /// Lines per write request.
    #[arg(long, default_value_t = 10_000)]
    batch_lines: u64,

    /// Number of hosts (series per measurement).
    #[arg(long, default_value_t = 100)]
    hosts: u32,

    /// Gzip the ingest request bodies (compressed before timing).
    #[arg(long)]
    gzip: bool,

    /// Timed runs of each query.
    #[arg(long, default_value_t = 50)]
    query_runs: usize,

    /// Hours of older (60 s interval) data written before the query scenario's last 2 h.
    #[arg(long, default_value_t = 22)]
    query_old_hours: i64,

    /// Sequential single-line writes in the lone-write scenario.
    #[arg(long, default_value_t = 200)]
    lone_writes: usize,

    /// Skip counting rows with SQL after each ingest scenario.
    #[arg(long)]
    no_verify: bool,

    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Cli {
    fn validate(&self) -> anyhow::Result<()> {
        if self.lines == 0 || self.batch_lines == 0 || self.hosts == 0 {
            bail!("--lines, --batch-lines and --hosts must be positive");
        }
        if self.hosts > 999 {
            bail!("--hosts must be at most 999 (host names are host-NNN)");
        }
        Ok(())
    }

    fn runs(&self, s: Scenario) -> bool {
        self.scenario == Scenario::All || self.scenario == s
    }

    fn config_json(&self) -> serde_json::Value {
        json!({
            "scenario": format!("{:?}", self.scenario).to_lowercase(),
            "lines_per_ingest_scenario": self.lines,
            "batch_lines": self.batch_lines,
            "hosts": self.hosts,
            "gzip": self.gzip,
            "query_runs": self.query_runs,
            "query_old_hours": self.query_old_hours,
            "lone_writes": self.lone_writes,
            "server_args": self.server_args,
        })
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("weir-bench: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn default_weir_bin() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.parent().map(|d| d.join("weir")))
        .unwrap_or_else(|| PathBuf::from("weir"))
}

/// Run everything; `Ok(false)` when figures were produced but a check failed.
async fn run(cli: Cli) -> anyhow::Result<bool> {
    cli.validate()?;
    let weir_bin = cli.weir_bin.clone().unwrap_or_else(default_weir_bin);
    let mut machine = Machine::collect(&weir_bin);

    let mut server = None;
    let base = match &cli.host {
        Some(h) => {
            machine.server = format!("external: {h}");
            h.clone()
        }
        None => {
            let s = Server::spawn(SpawnArgs {
                bin: &weir_bin,
                data_dir: cli.data_dir.as_deref(),
                extra_args: &cli.server_args,
                startup_timeout: Duration::from_secs(120),
            })
            .await?;
            machine.server = format!(
                "started by weir-bench: pid {}, {}, data dir {} (file object store, fsync'd WAL{})",
                s.pid().map_or_else(|| "?".to_string(), |p| p.to_string()),
                s.url,
                s.data_dir.display(),
                if cli.server_args.is_empty() {
                    String::new()
                } else {
                    format!("; extra args: {}", cli.server_args.join(" "))
                }
            );
            let url = s.url.clone();
            server = Some(s);
            url
        }
    };
    print!("{}", machine.render());

    // Run the scenarios, stopping the server whatever happens (error, Ctrl-C).
    let result = tokio::select! {
        r = scenarios(&cli, &base, server.as_mut()) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    let mut report = match result {
        Ok(r) => r,
        Err(e) => {
            if let Some(mut s) = server {
                let log = s.log_path.clone();
                let (_, how) = s.stop(Duration::from_secs(10)).await;
                eprintln!(
                    "weir serve {how}; last server log lines:\n{}",
                    server::log_tail(&log, 20)
                );
                if cli.keep_data {
                    eprintln!("kept {}", s.keep_files().display());
                }
            }
            return Err(e);
        }
    };

    if let Some(mut s) = server {
        let data_bytes = server::dir_size(&s.data_dir);
        let (took, how) = s.stop(Duration::from_secs(60)).await;
        println!(
            "\nweir serve {how} in {:.2} s; data dir held {:.1} MB",
            took.as_secs_f64(),
            data_bytes as f64 / 1e6
        );
        report.shutdown = Some(json!({
            "how": how,
            "seconds": stats::round3(took.as_secs_f64()),
            "data_dir_bytes": data_bytes,
        }));
        if cli.keep_data {
            println!("kept {} (server.log, data)", s.keep_files().display());
        }
    }

    report.machine = machine;
    print!("{}", report.render());
    if let Some(path) = &cli.json {
        write_json(path, &report.to_json(cli.config_json()))?;
        println!("JSON written to {}", path.display());
    }
    let problems = report.problems();
    if problems.is_empty() {
        Ok(true)
    } else {
        eprintln!("\n!! BENCHMARK FAILED CHECKS:");
        for p in &problems {
            eprintln!("!!   {p}");
        }
        Ok(false)
    }
}

fn check_alive(server: &mut Option<&mut Server>) -> anyhow::Result<()> {
    match server {
        Some(s) => s.check_alive(),
        None => Ok(()),
    }
}

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

async fn scenarios(
    cli: &Cli,
    base: &str,
    mut server: Option<&mut Server>,
) -> anyhow::Result<Report> {
    let api = Api::new(base, cli.token.clone(), 64)?;
    api.wait_healthy(Duration::from_secs(30)).await?;
    // Unique database names on a shared server; plain ones on our own fresh server.
    let suffix = if cli.host.is_some() {
        format!("_{}", query::now_ns() / 1_000_000_000)
    } else {
        String::new()
    };
    let mut report = Report::default();

    if cli.runs(Scenario::Ingest) {
        const HOUR_NS: i64 = 3_600 * 1_000_000_000;
        let now = query::now_ns();
        // Line i at start + i ms: strictly increasing, inside one or two hour partitions.
        let start_ns = now - now.rem_euclid(HOUR_NS) - 6 * HOUR_NS;
        let specs = [
            ("ingest_c16_sync", "durable ingest, 16 senders", 16, false),
            ("ingest_c4_sync", "durable ingest, 4 senders", 4, false),
            ("ingest_c4_nosync", "no_sync ingest, 4 senders", 4, true),
        ];
        for (n, (id, name, senders, no_sync)) in specs.into_iter().enumerate() {
            let spec = ingest::Spec {
                name: name.to_string(),
                id,
                senders,
                no_sync,
                db: format!("bench_{id}{suffix}"),
                shape: IngestShape {
                    lines: cli.lines,
                    batch_lines: cli.batch_lines,
                    hosts: cli.hosts,
                    start_ns,
                    step_ns: 1_000_000,
                    seed: 0x5eed_0000 + n as u64,
                },
                gzip: cli.gzip,
            };
            report
                .ingest
                .push(ingest::run(&api, spec, !cli.no_verify).await?);
            check_alive(&mut server)?;
        }
    }

    if cli.runs(Scenario::Query) {
        let args = query::QueryArgs {
            hosts: cli.hosts,
            runs: cli.query_runs,
            old_hours: cli.query_old_hours,
            batch_lines: cli.batch_lines,
            senders: 4,
        };
        report.query = Some(query::run(&api, &format!("bench_query{suffix}"), args).await?);
        check_alive(&mut server)?;
    }

    if cli.runs(Scenario::Lone) {
        println!("\n== lone writes (one line per request, one request at a time) ==");
        let durable = query::lone_writes(
            &api,
            &format!("bench_lone_sync{suffix}"),
            "lone durable write",
            cli.lone_writes,
            false,
        )
        .await?;
        let nosync = query::lone_writes(
            &api,
            &format!("bench_lone_nosync{suffix}"),
            "lone no_sync write",
            cli.lone_writes,
            true,
        )
        .await?;
        report.lone = vec![durable, nosync];
        check_alive(&mut server)?;
    }
    Ok(report)
}
