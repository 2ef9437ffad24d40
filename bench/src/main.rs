//! `weir-bench`: ingest throughput, query latency and lone-write latency of a Weir
//! server, measured over its HTTP API.
//!
//! By default it starts its own `weir serve` (file object store in a fresh temporary
//! directory, fsync'd WAL) and stops it at the end; `--host` targets a running server
//! instead. See `bench/README.md`.

mod client;
mod datagen;
mod deploy;
mod engine;
mod hostile;
mod ingest;
mod query;
mod report;
mod requests;
mod scan;
mod server;
mod soak;
mod stats;
mod workers;

use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, ValueEnum};
use serde_json::json;

use crate::{
    datagen::IngestShape,
    report::{Machine, Report},
    server::Fleet,
};

/// Which scenarios to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Everything: ingest, query, lone writes, scans.
    All,
    /// The three ingest scenarios.
    Ingest,
    /// Query latency (writes its own data set first).
    Query,
    /// Sequential single-line writes.
    Lone,
    /// Query-result throughput: full scans over Flight and HTTP JSON/CSV.
    Scan,
    /// Processing engine: WAL-trigger throughput, write → plugin latency, ingest with a
    /// slow plugin.
    Engine,
    /// Request triggers (sync, async, async with 2 workers × 1/8/32 clients) and
    /// `every:1s` schedule jitter under that load.
    Requests,
    /// Many triggers on one plugin host: cold request-trigger latency, and the memory of
    /// a thousand live WAL-trigger workers.
    Workers,
    /// Hostile input (wide lines, huge lines, table floods, gzip bombs, abandoned and
    /// endless queries, slowloris and idle connections) with `/health` probed throughout
    /// (must answer within 100 ms) and a data set checked after.
    Hostile,
    /// Two containers vs embedded: request triggers at 8 clients and WAL delivery through
    /// the deployment at --compose-host and through an embedded server started here, in
    /// one run (`scripts/bench-compose` brings the deployment up and runs this).
    Deploy,
    /// Memory soak (not part of `all`): writes and a query loop for --soak-minutes; RSS
    /// and threads sampled every 10 s must level off.
    Soak,
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

    /// Data directory of the started servers (must be empty or absent; with a fresh server
    /// per scenario each uses DIR/<scenario>) [default: fresh temporary directories].
    #[arg(long)]
    data_dir: Option<PathBuf>,

    /// Keep the temporary directories (server log and data) after the run.
    #[arg(long)]
    keep_data: bool,

    /// Start one server for all scenarios instead of a fresh one for each scenario (later
    /// scenarios then run on a server that holds the earlier scenarios' data).
    #[arg(long)]
    shared_server: bool,

    /// Extra argument for `weir serve` (repeat it), e.g. --server-arg=--snapshot-rows=1000000
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    server_args: Vec<String>,

    /// Lines written by each ingest scenario.
    #[arg(long, default_value_t = 3_000_000)]
    lines: u64,

    /// Lines per write request.
    #[arg(long, default_value_t = 10_000)]
    batch_lines: u64,

    /// Offered load (lines/s, all senders together) of the paced 16-sender scenario.
    #[arg(long, default_value_t = 450_000.0)]
    offered_rate: f64,

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

    /// Data sizes (rows) of the scan scenario, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2000000,10000000")]
    scan_rows: Vec<u64>,

    /// Timed reads per transport and size in the scan scenario.
    #[arg(long, default_value_t = 3)]
    scan_runs: usize,

    /// The two-container deployment to compare with embedded (deploy scenario), e.g.
    /// http://127.0.0.1:8181.
    #[arg(long, env = "WEIR_BENCH_COMPOSE_HOST")]
    compose_host: Option<String>,

    /// Admin token of the --compose-host deployment.
    #[arg(long, env = "WEIR_BENCH_COMPOSE_TOKEN", hide_env_values = true)]
    compose_token: Option<String>,

    /// Length of the soak scenario, minutes.
    #[arg(long, default_value_t = 30.0)]
    soak_minutes: f64,

    /// Rows written into the counting plugin (engine scenario).
    #[arg(long, default_value_t = 1_000_000)]
    engine_rows: u64,

    /// Seconds of load per request-trigger cell.
    #[arg(long, default_value_t = 5.0)]
    request_seconds: f64,

    /// Request triggers called cold (first call starts the worker) in the workers scenario.
    #[arg(long, default_value_t = 50)]
    workers_cold: usize,

    /// WAL triggers (one table each) in the workers scenario.
    #[arg(long, default_value_t = 1000)]
    workers_triggers: usize,

    /// The plugin host's --max-workers in the workers scenario (0: no cap, so every
    /// trigger's worker stays alive and the memory figure is per live worker).
    #[arg(long, default_value_t = 0)]
    workers_max_workers: usize,

    /// Single-line writes timed from write to plugin (engine scenario).
    #[arg(long, default_value_t = 200)]
    engine_latency_writes: usize,

    /// Rate of those writes, per second.
    #[arg(long, default_value_t = 20.0)]
    engine_latency_rate: f64,

    /// Lines of each ingest run with and without the slow plugin (engine scenario; runs of
    /// 1M lines last under 2 s here, too short to average out a noisy neighbour).
    #[arg(long, default_value_t = 3_000_000)]
    engine_ingest_lines: u64,

    /// Python with influxdb3-python and requests installed (e.g. the test venv's): the scan
    /// scenario then also reads each answer back with them (bench/clients/read_back.py).
    #[arg(long)]
    python: Option<PathBuf>,

    /// Skip counting rows with SQL after each ingest scenario.
    #[arg(long)]
    no_verify: bool,

    /// Also write every figure as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

impl Cli {
    fn validate(&self) -> anyhow::Result<()> {
        if self.scan_runs == 0 || self.scan_rows.iter().any(|&r| r < 100) {
            bail!("--scan-runs must be positive and every --scan-rows at least 100");
        }
        if self.lines == 0 || self.batch_lines == 0 || self.hosts == 0 {
            bail!("--lines, --batch-lines and --hosts must be positive");
        }
        if self.hosts > 999 {
            bail!("--hosts must be at most 999 (host names are host-NNN)");
        }
        if let Some(d) = &self.data_dir
            && d.exists()
            && std::fs::read_dir(d)?.next().is_some()
        {
            bail!("--data-dir {} is not empty; the benchmark needs a fresh directory", d.display());
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
            "scan_rows": self.scan_rows,
            "engine_rows": self.engine_rows,
            "request_seconds": self.request_seconds,
            "engine_latency_writes": self.engine_latency_writes,
            "engine_latency_rate": self.engine_latency_rate,
            "engine_ingest_lines": self.engine_ingest_lines,
            "workers_cold": self.workers_cold,
            "workers_triggers": self.workers_triggers,
            "workers_max_workers": self.workers_max_workers,
            "scan_runs": self.scan_runs,
            "server_args": self.server_args,
            "fresh_server_per_scenario": self.host.is_none() && !self.shared_server,
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
    let fresh = cli.host.is_none() && !cli.shared_server;
    machine.server = match &cli.host {
        Some(h) => format!("external: {h}"),
        None => format!(
            "{} (weir serve --object-store file --without-auth, fresh temp data dir, fsync'd WAL{})",
            if fresh {
                "a fresh server started by weir-bench for each scenario"
            } else {
                "one server started by weir-bench for all scenarios"
            },
            if cli.server_args.is_empty() {
                String::new()
            } else {
                format!(", extra args: {}", cli.server_args.join(" "))
            }
        ),
    };
    if cli.host.is_some() {
        machine.weir_version.push_str(" (local binary; the external server may differ)");
    }
    print!("{}", machine.render());

    let mut fleet = Fleet::new(
        weir_bin,
        cli.data_dir.clone(),
        cli.server_args.clone(),
        cli.keep_data,
        fresh,
        cli.host.clone(),
        cli.token.clone(),
    );
    let mut report = Report { machine, ..Report::default() };

    // Run the scenarios, stopping the server whatever happens (error, Ctrl-C).
    let result = tokio::select! {
        r = scenarios(&cli, &mut fleet, &mut report) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    if let Err(e) = result {
        let tail = fleet.log_tail(20);
        if let Some(stats) = fleet.stop().await {
            eprintln!("weir serve (pid {:?}) {}", stats.pid, stats.how);
            if let Some(k) = &stats.kept {
                eprintln!("kept {}", k.display());
            }
        }
        if let Some(t) = tail {
            eprintln!("last server log lines:\n{t}");
        }
        return Err(e);
    }
    if let Some(stats) = fleet.stop().await {
        report.servers.push(stats);
    }

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

fn write_json(path: &Path, v: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(v)?;
    std::fs::write(path, text + "\n").with_context(|| format!("cannot write {}", path.display()))
}

/// After a scenario: check the server and, with fresh servers, stop it and keep its stats.
async fn release(fleet: &mut Fleet, report: &mut Report) -> anyhow::Result<()> {
    if let Some(stats) = fleet.release().await? {
        report.servers.push(stats);
    }
    Ok(())
}

async fn scenarios(cli: &Cli, fleet: &mut Fleet, report: &mut Report) -> anyhow::Result<()> {
    // Unique database names on an external server; plain ones on our own.
    let suffix = if cli.host.is_some() { format!("_{}", query::now_ns() / 1_000_000_000) } else { String::new() };

    if cli.runs(Scenario::Ingest) {
        const HOUR_NS: i64 = 3_600 * 1_000_000_000;
        let now = query::now_ns();
        // Line i at start + i ms: strictly increasing, 6 h ago on an hour boundary.
        let start_ns = now - now.rem_euclid(HOUR_NS) - 6 * HOUR_NS;
        let specs = [
            ("ingest_c16_sync", "durable ingest, 16 senders", 16, false, None),
            (
                "ingest_c16_sync_rate",
                "durable ingest, 16 senders, offered 450k lines/s",
                16,
                false,
                Some(cli.offered_rate),
            ),
            ("ingest_c4_sync", "durable ingest, 4 senders", 4, false, None),
            ("ingest_c4_nosync", "no_sync ingest, 4 senders", 4, true, None),
        ];
        for (n, (id, name, senders, no_sync, rate)) in specs.into_iter().enumerate() {
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
                rate,
            };
            println!("\n== {name} ({senders} senders, no_sync={no_sync}, db {}) ==", spec.db);
            let api = fleet.acquire(id).await?;
            report.ingest.push(ingest::run(&api, spec, !cli.no_verify).await?);
            release(fleet, report).await?;
        }
    }

    if cli.runs(Scenario::Query) {
        let db = format!("bench_query{suffix}");
        println!("\n== query latency (db {db}) ==");
        let api = fleet.acquire("query").await?;
        let args = query::QueryArgs {
            hosts: cli.hosts,
            runs: cli.query_runs,
            old_hours: cli.query_old_hours,
            batch_lines: cli.batch_lines,
            senders: 4,
        };
        report.query = Some(query::run(&api, &db, args).await?);
        release(fleet, report).await?;
    }

    if cli.runs(Scenario::Lone) {
        println!("\n== lone writes (one line per request, one request at a time) ==");
        let api = fleet.acquire("lone").await?;
        let durable =
            query::lone_writes(&api, &format!("bench_lone_sync{suffix}"), "lone durable write", cli.lone_writes, false)
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
        release(fleet, report).await?;
    }

    if cli.runs(Scenario::Scan) {
        for &rows in &cli.scan_rows {
            let db = format!("bench_scan_{rows}{suffix}");
            println!("\n== full-scan result throughput, {} rows (db {db}) ==", stats::thousands(rows));
            // A snapshot halfway, so the rewrite of the oldest points (in the buffer)
            // overlaps Parquet files and the scan must deduplicate at query time.
            let snapshot = vec![format!("--snapshot-rows={}", rows / 2)];
            let api = fleet.acquire_with(&format!("scan_{rows}"), &snapshot).await?;
            let args = scan::ScanArgs {
                rows,
                hosts: cli.hosts,
                batch_lines: cli.batch_lines,
                runs: cli.scan_runs,
                pid: fleet.pid(),
                python: cli.python.clone(),
            };
            report.scan.push(scan::run(&api, &db, args).await?);
            release(fleet, report).await?;
        }
    }

    if cli.runs(Scenario::Engine) {
        if cli.host.is_some() {
            println!("\n== processing engine: skipped (needs a server this benchmark starts, to place plugins) ==");
        } else {
            report.engine = Some(engine_scenarios(cli, fleet, report).await?);
        }
    }

    if cli.runs(Scenario::Requests) {
        if cli.host.is_some() {
            println!("\n== request triggers: skipped (needs a server this benchmark starts, to place plugins) ==");
        } else {
            println!("\n== request triggers: {{\"status\": \"ok\"}} plugin, {} s per cell ==", cli.request_seconds);
            let api = fleet.acquire("requests").await?;
            let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
            report.requests = Some(requests::run(&api, &dir, cli.request_seconds).await?);
            release(fleet, report).await?;
        }
    }
    if cli.runs(Scenario::Workers) {
        if cli.host.is_some() {
            println!("\n== many triggers: skipped (needs a server this benchmark starts, to place plugins) ==");
        } else {
            println!(
                "\n== many triggers on one plugin host: {} cold request triggers, {} WAL triggers ==",
                cli.workers_cold, cli.workers_triggers
            );
            let env = [("WEIR_MAX_WORKERS".to_string(), cli.workers_max_workers.to_string())];
            let api = fleet.acquire_with_env("workers", &[], &env).await?;
            let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
            report.workers = Some(workers::run(&api, &dir, fleet.pid(), cli.workers_cold, cli.workers_triggers).await?);
            release(fleet, report).await?;
        }
    }

    if cli.runs(Scenario::Deploy) {
        match &cli.compose_host {
            None => println!(
                "\n== two containers vs embedded: skipped (no --compose-host; scripts/bench-compose runs it) =="
            ),
            Some(url) => {
                println!("\n== two containers ({url}) vs embedded, in one run ==");
                let api = fleet.acquire("deploy").await?;
                let embedded =
                    deploy::side(&api, "embedded", cli.request_seconds, cli.engine_rows, cli.hosts, &suffix).await?;
                release(fleet, report).await?;
                let compose_api = client::Api::new(url, cli.compose_token.clone(), 64)?;
                compose_api.wait_healthy(std::time::Duration::from_secs(120)).await?;
                let compose_suffix = format!("_{}", query::now_ns() / 1_000_000_000);
                let compose = deploy::side(
                    &compose_api,
                    "two containers",
                    cli.request_seconds,
                    cli.engine_rows,
                    cli.hosts,
                    &compose_suffix,
                )
                .await?;
                report.deploy = Some(deploy::DeployOutcome { embedded, compose });
            }
        }
    }

    // Not part of `all`: it takes half an hour.
    if cli.scenario == Scenario::Soak {
        if cli.host.is_some() {
            println!("\n== memory soak: skipped (needs a server this benchmark starts, to read its memory) ==");
        } else {
            println!("\n== memory soak: {} min of writes and queries, RSS sampled every 10 s ==", cli.soak_minutes);
            let api = fleet.acquire_with("soak", &["--snapshot-rows=1000000".to_string()]).await?;
            let pid = fleet.pid().context("pid of the started server")?;
            report.soak = Some(soak::run(&api, pid, cli.soak_minutes).await?);
            release(fleet, report).await?;
        }
    }

    if cli.runs(Scenario::Hostile) {
        if cli.host.is_some() {
            println!("\n== hostile input: skipped (needs a server this benchmark starts, with small limits) ==");
        } else {
            println!("\n== hostile input, /health probed every 20 ms ==");
            let api = fleet.acquire_with("hostile", &hostile::server_args()).await?;
            report.hostile = Some(hostile::run(&api, fleet.pid()).await?);
            release(fleet, report).await?;
        }
    }
    Ok(())
}

async fn engine_scenarios(cli: &Cli, fleet: &mut Fleet, report: &mut Report) -> anyhow::Result<engine::EngineOutcome> {
    let mut out = engine::EngineOutcome::default();
    println!(
        "\n== processing engine: {} rows into a counting plugin (4 senders, no_sync) ==",
        stats::thousands(cli.engine_rows)
    );
    let api = fleet.acquire("engine_throughput").await?;
    let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
    let t = engine::throughput(&api, &dir, cli.engine_rows, cli.hosts).await?;
    println!(
        "   written in {:.2} s; all rows seen by the plugin after {:.2} s = {} rows/s end to end (plugin busy {:.2} s)",
        t.write_time.as_secs_f64(),
        t.delivered_time.as_secs_f64(),
        stats::thousands(t.end_to_end_rows_per_s() as u64),
        t.plugin_busy.as_secs_f64()
    );
    out.throughput = Some(t);
    release(fleet, report).await?;

    println!(
        "\n== processing engine: {} rows queued behind a gated plugin, then delivered ==",
        stats::thousands(cli.engine_rows)
    );
    let api = fleet.acquire("engine_backlog").await?;
    let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
    let b = engine::backlog(&api, &dir, cli.engine_rows, cli.hosts).await?;
    println!(
        "   {} rows delivered in {:.2} s after the gate opened = {} rows/s into process_writes",
        stats::thousands(b.rows),
        b.delivered_time.as_secs_f64(),
        stats::thousands(b.rows_per_s() as u64)
    );
    out.backlog = Some(b);
    // The interpreter's own floor, measured now: the venv's Python building the same dicts
    // alone, no engine around it (marshal.loads, and the runtime's C row builder).
    let python = dir.join(".venv/bin/python");
    match engine::calibrate(&python) {
        Ok((marshal, native)) => {
            println!(
                "   for scale: marshal.loads alone builds {} such dict rows/s in {}",
                stats::thousands(marshal as u64),
                python.display()
            );
            match native {
                Some(r) => {
                    println!("   the worker runtime's C row builder alone: {} dict rows/s", stats::thousands(r as u64))
                }
                None => println!("   (the worker runtime's C row builder is not built in this venv)"),
            }
            out.marshal_rows_per_s = Some(marshal);
            out.native_rows_per_s = native;
        }
        Err(e) => println!("   (no calibration: {e:#})"),
    }
    release(fleet, report).await?;

    println!(
        "\n== processing engine: write → plugin latency ({} durable single-line writes at {}/s) ==",
        cli.engine_latency_writes, cli.engine_latency_rate
    );
    let api = fleet.acquire("engine_latency").await?;
    let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
    let l = engine::latency(&api, &dir, cli.engine_latency_writes, cli.engine_latency_rate).await?;
    println!("   p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms", l.p50, l.p90, l.p99, l.max);
    out.latency = Some(l);
    release(fleet, report).await?;

    // Two rounds, interleaved (without, with, without, with), best of each: one run of each
    // swings by ±20% on a shared 2-core machine, far more than the effect measured.
    let mut rates = [0.0f64; 2];
    let runs = [
        ("engine_ingest_base", false),
        ("engine_ingest_slow", true),
        ("engine_ingest_base_2", false),
        ("engine_ingest_slow_2", true),
    ];
    for (id, slow) in runs {
        let now = query::now_ns();
        let spec = ingest::Spec {
            name: if slow {
                "durable ingest, 16 senders, slow trigger on cpu".to_string()
            } else {
                "durable ingest, 16 senders, no trigger".to_string()
            },
            id,
            senders: 16,
            no_sync: false,
            db: format!("bench_{id}"),
            shape: IngestShape {
                lines: cli.engine_ingest_lines,
                batch_lines: cli.batch_lines,
                hosts: cli.hosts,
                start_ns: now - now.rem_euclid(3_600_000_000_000) - 6 * 3_600_000_000_000,
                step_ns: 1_000_000,
                seed: 0x5eed_e000,
            },
            gzip: false,
            rate: None,
        };
        println!("\n== {} ==", spec.name);
        let api = fleet.acquire(id).await?;
        if slow {
            let dir = fleet.plugin_dir().context("plugin directory of the started server")?;
            engine::setup_trigger(&api, &dir, &spec.db, "slow.py", engine::slow_plugin(), "table:cpu").await?;
        }
        let o = ingest::run(&api, spec, !cli.no_verify).await?;
        let best = &mut rates[usize::from(slow)];
        *best = best.max(o.lines_per_s());
        report.ingest.push(o);
        release(fleet, report).await?;
    }
    out.slow = Some((rates[0], rates[1]));
    println!("   with the slow trigger: {:.1}% of the rate without", 100.0 * rates[1] / rates[0]);
    Ok(out)
}
