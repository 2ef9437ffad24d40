//! The processing engine: WAL-trigger throughput into `process_writes`, write → plugin
//! latency at a steady rate, and ingest with a slow plugin against ingest without one.
//!
//! Plugins are written into the server's plugin directory (beside its data directory), so
//! these scenarios need a server the benchmark started.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    client::{Api, Plugins},
    datagen,
    stats::{Latency, round3, thousands},
};

/// A counting plugin: keeps a running total in its trigger cache and logs it (a log line
/// is not a write, so the figure is delivery into `process_writes`, not write-back cost).
const COUNT_PLUGIN: &str = r#"
import time
def process_writes(influxdb3_local, table_batches, args):
    started = time.perf_counter()
    c = influxdb3_local.cache
    n = c.get("n", 0)
    for t in table_batches:
        for row in t["rows"]:
            n += 1
    busy = c.get("busy", 0.0) + (time.perf_counter() - started)
    c.put("n", n)
    c.put("busy", busy)
    influxdb3_local.info("count", n, busy)
"#;

/// The counting plugin behind a gate: its first call waits until the file named by the
/// `gate` argument exists, so the rows written meanwhile queue up; once the total reaches
/// `rows` it logs the wall-clock time. The rows delivered after the gate opens, over the
/// time from opening to that log line, is the engine's delivery rate into
/// `process_writes` with nothing else running.
const GATED_PLUGIN: &str = r#"
import os, time
def process_writes(influxdb3_local, table_batches, args):
    c = influxdb3_local.cache
    first = c.get("first")
    if first is None:
        first = sum(len(t["rows"]) for t in table_batches)
        c.put("first", first)
        while not os.path.exists(args["gate"]):
            time.sleep(0.002)
    n = c.get("n", 0)
    for t in table_batches:
        for row in t["rows"]:
            n += 1
    c.put("n", n)
    if n >= int(args["rows"]):
        influxdb3_local.info("gated", n, first, time.time_ns())
"#;

/// What the interpreter alone can do on this machine with 1M cpu rows like the benchmark's
/// (interned names, shared tag values): build them into a list of dicts and free it, best
/// of 3, rows/s. First with `marshal.loads` (the pure-Python floor), then, when the venv's
/// runtime has its speedups, with their row builder from columns (what workers use), with
/// the arena cache on as in a worker. Prints "marshal native" ("-" for a missing one).
const CALIBRATE: &str = r#"
import marshal, struct, sys, time
N = 1_000_000
hosts = [sys.intern("host-%d" % i) for i in range(100)]
regions = [sys.intern("region-%d" % i) for i in range(7)]
rows = [{"host": hosts[i % 100], "region": regions[i % 7], "usage_user": i * 0.5, "usage_system": i * 0.25,
         "usage_idle": i * 0.125, "time": 1_700_000_000_000_000_000 + i * 1000} for i in range(N)]
data = marshal.dumps(rows)
del rows
def best(build):
    b = None
    for _ in range(3):
        t = time.perf_counter()
        x = build()
        del x
        d = time.perf_counter() - t
        b = d if b is None else min(b, d)
    return N / b
out = [best(lambda: marshal.loads(data))]
try:
    from weir_plugin import native
    c = native.load()
except ImportError:
    c = None
if c is None:
    out.append("-")
else:
    c.keep_arenas(native.arena_budget())
    cols = [["host", 4, None, struct.pack("<%dI" % N, *(i % 100 for i in range(N))), hosts],
            ["region", 4, None, struct.pack("<%dI" % N, *(i % 7 for i in range(N))), regions],
            ["usage_user", 0, None, struct.pack("<%dd" % N, *(i * 0.5 for i in range(N))), None],
            ["usage_system", 0, None, struct.pack("<%dd" % N, *(i * 0.25 for i in range(N))), None],
            ["usage_idle", 0, None, struct.pack("<%dd" % N, *(i * 0.125 for i in range(N))), None],
            ["time", 1, None, struct.pack("<%dq" % N, *(1_700_000_000_000_000_000 + i * 1000 for i in range(N))), None]]
    for col in cols:
        col[0] = sys.intern(col[0])
    segments = [[N, cols]]
    assert c.wal_rows(segments) == marshal.loads(data)
    out.append(best(lambda: c.wal_rows(segments)))
print(*out)
"#;

/// Records when each row reached the plugin.
const LATENCY_PLUGIN: &str = r#"
import time
def process_writes(influxdb3_local, table_batches, args):
    now = time.time_ns()
    for t in table_batches:
        for row in t["rows"]:
            influxdb3_local.write(LineBuilder("lat").tag("id", row["id"]).int64_field("recv", now).time_ns(row["time"]))
"#;

/// Sleeps 2 s per batch.
const SLOW_PLUGIN: &str = r#"
import time
def process_writes(influxdb3_local, table_batches, args):
    time.sleep(2)
"#;

/// Figures of the throughput run.
#[derive(Debug, Clone)]
pub(crate) struct Throughput {
    pub(crate) rows: u64,
    /// First write sent → last write acknowledged.
    pub(crate) write_time: Duration,
    /// First write sent → the plugin has counted every row.
    pub(crate) delivered_time: Duration,
    /// Time spent inside `process_writes` (iterating the dict rows), as the plugin measured.
    pub(crate) plugin_busy: Duration,
}

impl Throughput {
    pub(crate) fn end_to_end_rows_per_s(&self) -> f64 {
        self.rows as f64 / self.delivered_time.as_secs_f64()
    }
}

/// Figures of the backlog run (delivery with no writes competing for the CPU).
#[derive(Debug, Clone)]
pub(crate) struct Backlog {
    /// Rows delivered after the gate opened (all but the first call's).
    pub(crate) rows: u64,
    /// Gate opened → the plugin had counted the last row.
    pub(crate) delivered_time: Duration,
}

impl Backlog {
    pub(crate) fn rows_per_s(&self) -> f64 {
        self.rows as f64 / self.delivered_time.as_secs_f64()
    }
}

/// Figures of the engine scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct EngineOutcome {
    pub(crate) throughput: Option<Throughput>,
    pub(crate) backlog: Option<Backlog>,
    /// `marshal.loads` alone, rows/s (see [`CALIBRATE`]).
    pub(crate) marshal_rows_per_s: Option<f64>,
    /// The runtime's C row builder alone, rows/s (see [`CALIBRATE`]).
    pub(crate) native_rows_per_s: Option<f64>,
    pub(crate) latency: Option<Latency>,
    /// (lines/s without a trigger, lines/s with the slow trigger).
    pub(crate) slow: Option<(f64, f64)>,
}

impl EngineOutcome {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "throughput": self.throughput.as_ref().map(|t| json!({
                "rows": t.rows,
                "write_s": round3(t.write_time.as_secs_f64()),
                "delivered_s": round3(t.delivered_time.as_secs_f64()),
                "end_to_end_rows_per_s": t.end_to_end_rows_per_s().round(),
                "plugin_busy_s": round3(t.plugin_busy.as_secs_f64()),
                "target_rows_per_s": 1_000_000,
            })),
            "backlog_delivery": self.backlog.as_ref().map(|b| json!({
                "rows": b.rows,
                "delivered_s": round3(b.delivered_time.as_secs_f64()),
                "rows_per_s": b.rows_per_s().round(),
                "target_rows_per_s": 1_000_000,
            })),
            "marshal_loads_rows_per_s": self.marshal_rows_per_s.map(f64::round),
            "native_row_builder_rows_per_s": self.native_rows_per_s.map(f64::round),
            "write_to_plugin_latency": self.latency.map(|l| l.to_json()),
            "ingest_with_slow_plugin": self.slow.map(|(base, slow)| json!({
                "without_trigger_lines_per_s": base.round(),
                "with_slow_trigger_lines_per_s": slow.round(),
                "ratio": round3(slow / base),
            })),
        })
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if let Some((base, slow)) = self.slow
            && slow < base * 0.95
        {
            p.push(format!(
                "ingest with a slow plugin: {slow:.0} lines/s is more than 5% below {base:.0} lines/s without"
            ));
        }
        p
    }
}

pub(crate) async fn setup_trigger(
    api: &Api,
    plugin_dir: &Path,
    db: &str,
    file: &str,
    source: &str,
    spec: &str,
) -> anyhow::Result<()> {
    setup_trigger_with(api, plugin_dir, db, file, source, spec, None).await
}

/// [`setup_trigger`] with `trigger_arguments`.
async fn setup_trigger_with(
    api: &Api,
    plugin_dir: &Path,
    db: &str,
    file: &str,
    source: &str,
    spec: &str,
    arguments: Option<Value>,
) -> anyhow::Result<()> {
    Plugins::Dir(plugin_dir.to_path_buf()).put(api, file, source).await?;
    api.post_json("/api/v3/configure/database", &json!({"db": db})).await?;
    let mut trigger = json!({"db": db, "plugin_filename": file, "trigger_name": file.trim_end_matches(".py"), "trigger_specification": spec});
    if let Some(arguments) = arguments {
        trigger["trigger_arguments"] = arguments;
    }
    api.post_json("/api/v3/configure/processing_engine_trigger", &trigger).await?;
    Ok(())
}

async fn progress(api: &Api, db: &str) -> Option<(u64, f64)> {
    let sql = "SELECT log_text FROM system.processing_engine_logs WHERE log_text LIKE 'count %' ORDER BY event_time DESC LIMIT 1";
    let (rows, _) = api.query(db, sql).await.ok()?;
    let text = rows.first()?["log_text"].as_str()?.to_string();
    let mut parts = text.split_whitespace().skip(1);
    Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
}

async fn engine_log(api: &Api, db: &str) -> String {
    match api
        .query(db, "SELECT log_level, log_text FROM system.processing_engine_logs ORDER BY event_time DESC LIMIT 10")
        .await
    {
        Ok((rows, _)) => serde_json::to_string(&rows).unwrap_or_default(),
        Err(e) => e.to_string(),
    }
}

/// `rows` cpu lines in 10,000-line request bodies.
fn cpu_bodies(rows: u64, hosts: u32) -> Vec<Bytes> {
    let batch = 10_000u64;
    let now = crate::query::now_ns();
    let start_ns = now - now.rem_euclid(3_600_000_000_000) - 3 * 3_600_000_000_000;
    (0..rows.div_ceil(batch))
        .map(|b| {
            let mut out = Vec::with_capacity(batch as usize * 100);
            for i in b * batch..((b + 1) * batch).min(rows) {
                datagen::cpu_line(&mut out, (i % u64::from(hosts)) as u32, start_ns + i as i64 * 1_000, i);
            }
            Bytes::from(out)
        })
        .collect()
}

/// Write `bodies` into `db` from 4 senders, `no_sync`.
async fn write_cpu(api: &Api, db: &str, bodies: Vec<Bytes>) -> anyhow::Result<()> {
    let target = api.write_target(db, true, false);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let bodies = std::sync::Arc::new(bodies);
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let (api, target, next, bodies) = (api.clone(), target.clone(), next.clone(), bodies.clone());
            tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(i) else { return Ok::<_, anyhow::Error>(()) };
                    api.write_ok(&target, body.clone()).await?;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await??;
    }
    Ok(())
}

/// Write `rows` cpu lines (4 senders, `no_sync`, 10,000-line batches) into a counting
/// plugin and time until it has seen them all.
pub(crate) async fn throughput(api: &Api, plugin_dir: &Path, rows: u64, hosts: u32) -> anyhow::Result<Throughput> {
    throughput_with(api, &Plugins::Dir(plugin_dir.to_path_buf()), rows, hosts, "bench_engine_tp").await
}

/// [`throughput`] with the plugin placed by `plugins`, in `db`.
pub(crate) async fn throughput_with(
    api: &Api,
    plugins: &Plugins,
    rows: u64,
    hosts: u32,
    db: &str,
) -> anyhow::Result<Throughput> {
    plugins.put(api, "count.py", COUNT_PLUGIN).await?;
    api.post_json("/api/v3/configure/database", &json!({"db": db})).await?;
    api.post_json(
        "/api/v3/configure/processing_engine_trigger",
        &json!({"db": db, "plugin_filename": "count.py", "trigger_name": "count", "trigger_specification": "table:cpu"}),
    )
    .await?;
    // One row first, so the worker is running (and the plugin host's venv ready) before
    // timing starts: the figure is a running trigger's, not a cold start's.
    let target = api.write_target(db, true, false);
    let warm_ns = crate::query::now_ns() - 4 * 3_600_000_000_000;
    api.write_ok(&target, Bytes::from(format!("cpu,host=warm-up usage_user=0 {warm_ns}"))).await?;
    let warm = Instant::now() + Duration::from_secs(60);
    while progress(api, db).await.map(|(n, _)| n) != Some(1) {
        if Instant::now() > warm {
            bail!(
                "the counting plugin did not see the warm-up row within 60 s; engine log: {}",
                engine_log(api, db).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let bodies = cpu_bodies(rows, hosts);
    let started = Instant::now();
    write_cpu(api, db, bodies).await?;
    let write_time = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Some((n, busy)) = progress(api, db).await
            && n > rows
        {
            let delivered_time = started.elapsed();
            return Ok(Throughput {
                rows: n - 1,
                write_time,
                delivered_time,
                plugin_busy: Duration::from_secs_f64(busy),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the counting plugin saw {:?} of {rows} rows after 2 minutes; engine log: {}",
                progress(api, db).await,
                engine_log(api, db).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Write `rows` cpu lines while the gated counting plugin holds its first call, then open
/// the gate and time until the plugin has counted them all.
pub(crate) async fn backlog(api: &Api, plugin_dir: &Path, rows: u64, hosts: u32) -> anyhow::Result<Backlog> {
    let db = "bench_engine_backlog";
    let gate = plugin_dir.join("gate.open");
    let _ = std::fs::remove_file(&gate);
    let arguments = json!({"gate": gate.display().to_string(), "rows": rows.to_string()});
    setup_trigger_with(api, plugin_dir, db, "gated.py", GATED_PLUGIN, "table:cpu", Some(arguments)).await?;
    write_cpu(api, db, cpu_bodies(rows, hosts)).await?;
    // no_sync acks come before the WAL flush: wait until every row is flushed (rows become
    // queryable when their WAL file is written), so all of them are queued behind the gate.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let (found, _) = api.query(db, "SELECT count(*) AS n FROM cpu").await?;
        if found.first().and_then(|r| r["n"].as_u64()) == Some(rows) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the {rows} rows written were not all queryable after 60 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let opened_ns = crate::query::now_ns();
    std::fs::write(&gate, b"go").context("opening the gate")?;
    let sql = "SELECT log_text FROM system.processing_engine_logs WHERE log_text LIKE 'gated %' LIMIT 1";
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if let Ok((found, _)) = api.query(db, sql).await
            && let Some(text) = found.first().and_then(|r| r["log_text"].as_str())
        {
            let f: Vec<i64> = text.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
            let [n, first, done_ns] = f[..] else { bail!("unexpected log line {text:?}") };
            let _ = std::fs::remove_file(&gate);
            return Ok(Backlog {
                rows: (n - first) as u64,
                delivered_time: Duration::from_nanos((done_ns - opened_ns).max(1) as u64),
            });
        }
        if Instant::now() > deadline {
            bail!(
                "the gated plugin did not count {rows} rows within 2 minutes; engine log: {}",
                engine_log(api, db).await
            );
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Rows/s of [`CALIBRATE`] with `python`: marshal.loads, and the C row builder if built.
pub(crate) fn calibrate(python: &Path) -> anyhow::Result<(f64, Option<f64>)> {
    let out = std::process::Command::new(python)
        .args(["-c", CALIBRATE])
        .output()
        .with_context(|| format!("running {}", python.display()))?;
    if !out.status.success() {
        bail!("calibration failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let mut figures = text.split_whitespace();
    let marshal = figures.next().context("no marshal figure")?.parse()?;
    let native = match figures.next() {
        Some("-") | None => None,
        Some(r) => Some(r.parse()?),
    };
    Ok((marshal, native))
}

/// Single-line durable writes at `rate` per second; latency from the client's send time
/// (the row's timestamp) to the plugin's clock when it got the row (same machine).
pub(crate) async fn latency(api: &Api, plugin_dir: &Path, writes: usize, rate: f64) -> anyhow::Result<Latency> {
    let db = "bench_engine_lat";
    setup_trigger(api, plugin_dir, db, "lat.py", LATENCY_PLUGIN, "table:lat_src").await?;
    let target = api.write_target(db, false, false);
    // One write first so the worker process is running before timing starts.
    api.write_ok(&target, Bytes::from(format!("lat_src,id=warm v=1 {}", crate::query::now_ns()))).await?;
    let warm = Instant::now() + Duration::from_secs(30);
    let warmed = || async {
        api.query(db, "SELECT count(*) AS n FROM lat")
            .await
            .is_ok_and(|(r, _)| r.first().and_then(|r| r["n"].as_u64()) == Some(1))
    };
    while !warmed().await {
        if Instant::now() > warm {
            bail!("the latency plugin did not start within 30 s; engine log: {}", engine_log(api, db).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let gap = Duration::from_secs_f64(1.0 / rate);
    let start = Instant::now();
    for i in 0..writes {
        let due = start + gap * i as u32;
        tokio::time::sleep_until(due.into()).await;
        api.write_ok(&target, Bytes::from(format!("lat_src,id=w{i} v=1 {}", crate::query::now_ns()))).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    let rows = loop {
        let (rows, _) =
            api.query(db, "SELECT id, recv, CAST(time AS BIGINT) AS sent FROM lat WHERE id <> 'warm'").await?;
        if rows.len() >= writes {
            break rows;
        }
        if Instant::now() > deadline {
            bail!("only {} of {writes} rows reached the plugin; engine log: {}", rows.len(), engine_log(api, db).await);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let samples: Vec<Duration> = rows
        .iter()
        .filter_map(|r| {
            let d = r["recv"].as_i64()? - r["sent"].as_i64()?;
            Some(Duration::from_nanos(d.max(0) as u64))
        })
        .collect();
    println!("   {} writes at {rate}/s reached the plugin", thousands(samples.len() as u64));
    Ok(Latency::from_samples(&samples))
}

/// The plugin that sleeps 2 s per batch, for the ingest comparison.
pub(crate) fn slow_plugin() -> &'static str {
    SLOW_PLUGIN
}
