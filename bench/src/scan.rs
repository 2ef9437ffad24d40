//! Query-result throughput: a full `SELECT * FROM cpu` streamed over Flight (the InfluxDB
//! JSON ticket influxdb3-python sends) and over HTTP as JSON and CSV, with time to first
//! batch / first byte and the server's memory growth while it streams.
//!
//! The data set is `rows` cpu points (100 hosts × 7 regions, 3 float fields) written by a
//! server that snapshots halfway (`--snapshot-rows rows/2`), then the oldest 1% written
//! again with new values. Those rewrites sit in the buffer while the originals are in
//! Parquet, so the scan has to deduplicate at query time (the plan is checked for
//! `DedupExec`), and every run checks that exactly `rows` rows came back.

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use arrow_flight::{FlightClient, Ticket};
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};

use crate::{
    client::Api,
    datagen,
    stats::{round3, thousands},
};

/// How the answer travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Transport {
    Flight,
    HttpJson,
    HttpCsv,
}

impl Transport {
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Flight => "Flight (JSON ticket)",
            Self::HttpJson => "HTTP JSON",
            Self::HttpCsv => "HTTP CSV",
        }
    }

    fn id(self) -> &'static str {
        match self {
            Self::Flight => "flight",
            Self::HttpJson => "http_json",
            Self::HttpCsv => "http_csv",
        }
    }

    /// The target this transport must reach, in rows/s.
    pub(crate) fn target_rows_per_s(self) -> f64 {
        match self {
            Self::Flight => 5_000_000.0,
            Self::HttpJson | Self::HttpCsv => 2_000_000.0,
        }
    }
}

/// One timed read of the whole answer. `first` is the time to the first decoded Flight batch
/// or to the first HTTP body chunk holding a row.
#[derive(Debug, Clone)]
pub(crate) struct Run {
    pub(crate) rows: u64,
    /// HTTP body bytes (not counted for Flight, whose batches are decoded instead).
    pub(crate) bytes: Option<u64>,
    pub(crate) total: Duration,
    pub(crate) first: Duration,
    /// Largest server RSS seen while streaming, minus the RSS just before.
    pub(crate) rss_growth: Option<u64>,
}

impl Run {
    pub(crate) fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.total.as_secs_f64()
    }
}

/// All runs of one transport at one size.
#[derive(Debug, Clone)]
pub(crate) struct TransportFigures {
    pub(crate) transport: Transport,
    pub(crate) runs: Vec<Run>,
}

impl TransportFigures {
    /// The median run by throughput.
    pub(crate) fn median(&self) -> &Run {
        let mut idx: Vec<usize> = (0..self.runs.len()).collect();
        idx.sort_by(|&a, &b| self.runs[a].rows_per_s().total_cmp(&self.runs[b].rows_per_s()));
        &self.runs[idx[idx.len() / 2]]
    }

    pub(crate) fn max_rss_growth(&self) -> Option<u64> {
        self.runs.iter().filter_map(|r| r.rss_growth).max()
    }
}

/// The scan scenario at one data size.
#[derive(Debug, Clone)]
pub(crate) struct ScanOutcome {
    pub(crate) db: String,
    pub(crate) rows: u64,
    pub(crate) duplicates_written: u64,
    pub(crate) load_time: Duration,
    pub(crate) rss_before: Option<u64>,
    /// Whether the scan's plan deduplicates (it must: rewrites overlap Parquet files).
    pub(crate) dedup_in_plan: bool,
    pub(crate) transports: Vec<TransportFigures>,
    pub(crate) python: Vec<PythonClient>,
}

impl ScanOutcome {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.dedup_in_plan {
            out.push(format!(
                "scan {} rows: the plan has no DedupExec, so query-time deduplication was not exercised",
                self.rows
            ));
        }
        for c in &self.python {
            for (rows, _) in &c.runs {
                if *rows != self.rows {
                    out.push(format!("scan {} rows with {}: got {rows} rows", self.rows, c.name));
                }
            }
        }
        for t in &self.transports {
            for r in &t.runs {
                if r.rows != self.rows {
                    out.push(format!(
                        "scan {} rows over {}: got {} rows (duplicates not resolved?)",
                        self.rows,
                        t.transport.label(),
                        r.rows
                    ));
                }
            }
        }
        out
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "database": self.db,
            "rows": self.rows,
            "duplicates_written": self.duplicates_written,
            "load_s": round3(self.load_time.as_secs_f64()),
            "server_rss_before_bytes": self.rss_before,
            "dedup_in_plan": self.dedup_in_plan,
            "transports": self.transports.iter().map(|t| {
                let m = t.median();
                json!({
                    "transport": t.transport.id(),
                    "median_rows_per_s": m.rows_per_s().round(),
                    "median_total_s": round3(m.total.as_secs_f64()),
                    "median_first_batch_ms": round3(m.first.as_secs_f64() * 1e3),
                    "median_bytes": m.bytes,
                    "max_server_rss_growth_bytes": t.max_rss_growth(),
                    "target_rows_per_s": t.transport.target_rows_per_s(),
                    "runs": t.runs.iter().map(|r| json!({
                        "rows": r.rows,
                        "bytes": r.bytes,
                        "total_s": round3(r.total.as_secs_f64()),
                        "first_batch_ms": round3(r.first.as_secs_f64() * 1e3),
                        "rows_per_s": r.rows_per_s().round(),
                        "server_rss_growth_bytes": r.rss_growth,
                    })).collect::<Vec<_>>(),
                })
            }).collect::<Vec<_>>(),
            "python_clients": self.python.iter().map(|c| json!({
                "client": c.name,
                "median_rows_per_s": c.median_rows_per_s().round(),
                "runs": c.runs.iter().map(|(rows, s)| json!({"rows": rows, "seconds": round3(*s)})).collect::<Vec<_>>(),
            })).collect::<Vec<_>>(),
        })
    }
}

/// Arguments of [`run`].
#[derive(Debug, Clone)]
pub(crate) struct ScanArgs {
    pub(crate) rows: u64,
    pub(crate) hosts: u32,
    pub(crate) batch_lines: u64,
    pub(crate) runs: usize,
    /// Server process to watch for memory (a server this benchmark started).
    pub(crate) pid: Option<u32>,
    /// Python with influxdb3-python and requests: also read the answer back with them.
    pub(crate) python: Option<std::path::PathBuf>,
}

/// Runs of one Python client (`bench/clients/read_back.py`).
#[derive(Debug, Clone)]
pub(crate) struct PythonClient {
    pub(crate) name: String,
    /// (rows, seconds) per run.
    pub(crate) runs: Vec<(u64, f64)>,
}

impl PythonClient {
    /// Median rows/s.
    pub(crate) fn median_rows_per_s(&self) -> f64 {
        let mut v: Vec<f64> = self.runs.iter().map(|(r, s)| *r as f64 / s).collect();
        v.sort_by(f64::total_cmp);
        v.get(v.len() / 2).copied().unwrap_or(0.0)
    }
}

async fn python_read_back(
    python: &std::path::Path,
    api: &Api,
    db: &str,
    sql: &str,
    runs: usize,
) -> anyhow::Result<Vec<PythonClient>> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/clients/read_back.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.args([script, "--url", api.base(), "--db", db, "--sql", sql, "--runs", &runs.to_string()]);
    if let Some(t) = api.token() {
        cmd.args(["--token", t]);
    }
    let out = cmd.output().await.with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("{script} failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("read_back.py output")?;
    let clients = v
        .as_object()
        .context("read_back.py output is not an object")?
        .iter()
        .map(|(name, runs)| PythonClient {
            name: name.clone(),
            runs: runs
                .as_array()
                .map(|a| {
                    a.iter()
                        .map(|r| (r["rows"].as_u64().unwrap_or(0), r["seconds"].as_f64().unwrap_or(f64::NAN)))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .collect();
    Ok(clients)
}

const STEP_NS: i64 = 10_000_000_000;

/// Line `i` of the data set: host `i % hosts`, one timestamp per round of hosts.
fn lines(out: &mut Vec<u8>, range: std::ops::Range<u64>, hosts: u32, start_ns: i64, salt: u64) {
    for i in range {
        let host = (i % u64::from(hosts)) as u32;
        let ts = start_ns + (i / u64::from(hosts)) as i64 * STEP_NS;
        datagen::cpu_line(out, host, ts, i ^ salt);
    }
}

async fn load(api: &Api, db: &str, args: &ScanArgs, start_ns: i64) -> anyhow::Result<u64> {
    // Durable writes: acknowledged means queryable (a no_sync write may still be on its
    // way into the buffer when the timed reads start).
    let target = api.write_target(db, false, false);
    let duplicates = args.rows / 100;
    // Phase 1: every point once; phase 2: the oldest 1% again, with different values.
    for (range, salt) in [(0..args.rows, 0), (0..duplicates, 0xdead_beef)] {
        let next = Arc::new(AtomicU64::new(range.start));
        let end = range.end;
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let api = api.clone();
                let target = target.clone();
                let next = Arc::clone(&next);
                let (hosts, batch) = (args.hosts, args.batch_lines);
                tokio::spawn(async move {
                    loop {
                        let from = next.fetch_add(batch, Ordering::Relaxed);
                        if from >= end {
                            return Ok::<_, anyhow::Error>(());
                        }
                        let to = (from + batch).min(end);
                        let body = tokio::task::spawn_blocking(move || {
                            let mut out = Vec::with_capacity(((to - from) * 100) as usize);
                            lines(&mut out, from..to, hosts, start_ns, salt);
                            out
                        })
                        .await?;
                        api.write_ok(&target, Bytes::from(body)).await?;
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await??;
        }
    }
    Ok(duplicates)
}

fn rss(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    Some(crate::server::proc_field(&status, "VmRSS:")? * 1024)
}

/// Samples a process's RSS every 20 ms until dropped; reports the peak.
struct RssWatch {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
    before: u64,
}

impl RssWatch {
    fn start(pid: Option<u32>) -> Option<Self> {
        let pid = pid?;
        let before = rss(pid)?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let task = tokio::spawn(async move {
            let mut peak = before;
            while !flag.load(Ordering::Relaxed) {
                peak = peak.max(rss(pid).unwrap_or(0));
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            peak
        });
        Some(Self { stop, task, before })
    }

    async fn growth(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.unwrap_or(self.before).saturating_sub(self.before)
    }
}

async fn flight_once(client: &mut FlightClient, db: &str, sql: &str) -> anyhow::Result<(u64, Option<u64>, Duration)> {
    let ticket = json!({"database": db, "sql_query": sql, "query_type": "sql"}).to_string();
    let started = Instant::now();
    let mut stream = client.do_get(Ticket::new(ticket)).await.context("Flight DoGet")?;
    let mut first = None;
    let mut rows = 0u64;
    while let Some(batch) = stream.next().await {
        let batch = batch.context("Flight stream")?;
        first.get_or_insert_with(|| started.elapsed());
        rows += batch.num_rows() as u64;
    }
    Ok((rows, None, first.unwrap_or_default()))
}

async fn http_once(api: &Api, db: &str, sql: &str, format: &str) -> anyhow::Result<(u64, Option<u64>, Duration)> {
    let started = Instant::now();
    let resp = api.query_raw(db, sql, format).await?;
    let status = resp.status();
    if !status.is_success() {
        bail!("query returned {status}: {}", resp.text().await.unwrap_or_default());
    }
    let mut body = resp.bytes_stream();
    let mut first = None;
    let (mut newlines, mut objects, mut bytes) = (0u64, 0u64, 0u64);
    while let Some(chunk) = body.next().await {
        let chunk = chunk.context("reading the body")?;
        bytes += chunk.len() as u64;
        // Rows: CSV lines (minus the header) or JSON objects (values hold no braces).
        newlines += chunk.iter().filter(|&&b| b == b'\n').count() as u64;
        objects += chunk.iter().filter(|&&b| b == b'{').count() as u64;
        // First row, not first byte: the JSON array's '[' goes out before any row exists.
        if newlines > 1 || objects > 0 {
            first.get_or_insert_with(|| started.elapsed());
        }
    }
    let rows = if format == "csv" { newlines.saturating_sub(1) } else { objects };
    Ok((rows, Some(bytes), first.unwrap_or_default()))
}

/// Load the data set into `db` and read it back over every transport `args.runs` times.
pub(crate) async fn run(api: &Api, db: &str, args: ScanArgs) -> anyhow::Result<ScanOutcome> {
    const HOUR_NS: i64 = 3_600 * 1_000_000_000;
    let now = crate::query::now_ns();
    let span = (args.rows / u64::from(args.hosts)) as i64 * STEP_NS;
    let start_ns = now - now.rem_euclid(HOUR_NS) - span - HOUR_NS;
    let t0 = Instant::now();
    let duplicates_written = load(api, db, &args, start_ns).await?;
    let load_time = t0.elapsed();
    println!(
        "   loaded {} rows (+{} rewritten) in {:.1} s",
        thousands(args.rows),
        thousands(duplicates_written),
        load_time.as_secs_f64()
    );
    let rss_before = args.pid.and_then(rss);
    let sql = "SELECT * FROM cpu";
    let (plan, _) = api.query(db, &format!("EXPLAIN {sql}")).await?;
    let dedup_in_plan = plan.iter().any(|row| row.to_string().contains("DedupExec"));
    println!("   plan deduplicates at query time: {dedup_in_plan}");

    let channel = tonic::transport::Channel::from_shared(api.base().to_string())?
        .connect()
        .await
        .context("connecting for Flight")?;
    let mut flight = FlightClient::new(channel);
    if let Some(t) = api.token() {
        flight.add_header("authorization", &format!("Bearer {t}"))?;
    }
    let mut transports = Vec::new();
    for transport in [Transport::Flight, Transport::HttpJson, Transport::HttpCsv] {
        let mut runs = Vec::new();
        for _ in 0..args.runs {
            let watch = RssWatch::start(args.pid);
            let started = Instant::now();
            let (rows, bytes, first) = match transport {
                Transport::Flight => flight_once(&mut flight, db, sql).await?,
                Transport::HttpJson => http_once(api, db, sql, "json").await?,
                Transport::HttpCsv => http_once(api, db, sql, "csv").await?,
            };
            let total = started.elapsed();
            let rss_growth = match watch {
                Some(w) => Some(w.growth().await),
                None => None,
            };
            let run = Run { rows, bytes, total, first, rss_growth };
            println!(
                "   {:<22} {:>12} rows in {:>6.2} s = {:>10} rows/s, first batch {:>7.1} ms{}{}",
                transport.label(),
                thousands(rows),
                total.as_secs_f64(),
                thousands(run.rows_per_s() as u64),
                first.as_secs_f64() * 1e3,
                bytes.map_or(String::new(), |b| format!(", {:.1} MB", b as f64 / 1e6)),
                rss_growth.map_or(String::new(), |g| format!(", server RSS +{:.0} MB", g as f64 / 1e6)),
            );
            runs.push(run);
        }
        transports.push(TransportFigures { transport, runs });
    }
    let mut python = Vec::new();
    if let Some(py) = &args.python {
        python = python_read_back(py, api, db, sql, args.runs).await?;
        for c in &python {
            println!(
                "   python {:<16} median {:>10} rows/s over {} runs",
                c.name,
                thousands(c.median_rows_per_s() as u64),
                c.runs.len()
            );
        }
    }
    Ok(ScanOutcome {
        db: db.to_string(),
        rows: args.rows,
        duplicates_written,
        load_time,
        rss_before,
        dedup_in_plan,
        transports,
        python,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_cycle_hosts_then_advance_time() {
        let mut out = Vec::new();
        lines(&mut out, 0..4, 2, 0, 0);
        let text = String::from_utf8(out).unwrap();
        let ts: Vec<&str> = text.lines().map(|l| l.rsplit(' ').next().unwrap()).collect();
        assert_eq!(ts, ["0", "0", "10000000000", "10000000000"]);
        assert!(text.lines().next().unwrap().starts_with("cpu,host=host-000,"));
        assert!(text.lines().nth(1).unwrap().starts_with("cpu,host=host-001,"));
    }
}
