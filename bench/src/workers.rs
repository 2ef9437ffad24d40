//! Many triggers on one plugin host: how fast a cold worker answers, and what a thousand
//! live workers cost in memory.
//!
//! - Cold request triggers: `--workers-cold` request triggers (one plugin file), each called
//!   once (its worker starts for that call) and then again (warm); latency percentiles of
//!   both. Target: cold p50 ≤ 20 ms.
//! - WAL triggers: `--workers-triggers` `table:t<i>` triggers with a trivial plugin; one line
//!   written to each table; every trigger must record its row (the plugin writes it back to
//!   `seen`). Then the proportional set size (PSS, shared pages split between the processes
//!   sharing them) of every worker process and the fork server is summed from
//!   `/proc/<pid>/smaps_rollup`. Target for 1,000 triggers: ≤ 2 GB.
//!
//! The plugin host is `weir serve`'s own (embedded), so its workers are found as the
//! server's descendants running `weir_plugin`.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    client::Api,
    stats::{Latency, thousands},
};

const REQUEST_PLUGIN: &str = r#"
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    return {"status": "ok"}
"#;

const WAL_PLUGIN: &str = r#"
def process_writes(influxdb3_local, table_batches, args):
    for batch in table_batches:
        influxdb3_local.write(LineBuilder("seen").tag("table", batch["table_name"]).int64_field("rows", len(batch["rows"])))
"#;

/// Figures of the scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct WorkersOutcome {
    pub(crate) cold: Latency,
    pub(crate) warm: Latency,
    pub(crate) triggers: usize,
    /// Triggers whose row came back, and how long after the write the last one did.
    pub(crate) delivered: usize,
    pub(crate) delivered_after: Duration,
    /// Worker processes (and fork servers) alive after delivery, and their PSS.
    pub(crate) processes: usize,
    pub(crate) pss_bytes: u64,
    pub(crate) rss_bytes: u64,
}

impl WorkersOutcome {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.delivered < self.triggers {
            p.push(format!("workers: only {} of {} WAL triggers recorded their row", self.delivered, self.triggers));
        }
        p
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "cold_request": self.cold.to_json(),
            "warm_request": self.warm.to_json(),
            "wal_triggers": self.triggers,
            "wal_triggers_delivered": self.delivered,
            "delivered_after_s": self.delivered_after.as_secs_f64(),
            "worker_processes": self.processes,
            "worker_pss_bytes": self.pss_bytes,
            "worker_rss_bytes": self.rss_bytes,
            "targets": {"cold_request_p50_ms": 20.0, "pss_bytes_for_1000_triggers": 2_000_000_000u64},
        })
    }
}

/// Descendants of `root` whose command line mentions `weir_plugin` (workers, fork servers).
fn plugin_processes(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else { continue };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else { continue };
            let ppid = rest.split(' ').nth(1).and_then(|s| s.parse::<u32>().ok()).unwrap_or(0);
            parent_of.push((pid, ppid));
        }
    }
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid) in &parent_of {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    tree.into_iter()
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains("weir_plugin"))
        })
        .collect()
}

/// (PSS, RSS) of a process in bytes, from `smaps_rollup`.
fn memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    Some((crate::server::proc_field(&text, "Pss:")? * 1024, crate::server::proc_field(&text, "Rss:")? * 1024))
}

async fn create(api: &Api, db: &str, name: &str, file: &str, spec: &str) -> anyhow::Result<()> {
    api.post_json(
        "/api/v3/configure/processing_engine_trigger",
        &json!({"db": db, "plugin_filename": file, "trigger_name": name, "trigger_specification": spec}),
    )
    .await
    .with_context(|| format!("creating trigger {name}"))
}

/// Run the scenario on a server this benchmark started (`pid`), whose plugin directory is
/// `plugin_dir`.
pub(crate) async fn run(
    api: &Api,
    plugin_dir: &Path,
    pid: Option<u32>,
    cold_triggers: usize,
    wal_triggers: usize,
) -> anyhow::Result<WorkersOutcome> {
    let mut out = WorkersOutcome { triggers: wal_triggers, ..WorkersOutcome::default() };
    std::fs::create_dir_all(plugin_dir)?;
    std::fs::write(plugin_dir.join("ok_request.py"), REQUEST_PLUGIN)?;
    std::fs::write(plugin_dir.join("seen.py"), WAL_PLUGIN)?;
    let db = "bench_workers";
    api.post_json("/api/v3/configure/database", &json!({"db": db})).await?;

    // Wait until the plugin host is connected: a request trigger of its own answers.
    create(api, db, "warmup", "ok_request.py", "request:warmup").await?;
    let ready_by = Instant::now() + Duration::from_secs(120);
    loop {
        match api.get("/api/v3/engine/warmup").await {
            Ok((200, _)) => break,
            _ if Instant::now() > ready_by => bail!("the plugin host did not answer within 120 s"),
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }

    // Cold and warm request triggers.
    for i in 0..cold_triggers {
        create(api, db, &format!("req{i}"), "ok_request.py", &format!("request:cold/{i}")).await?;
    }
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for i in 0..cold_triggers {
        for samples in [&mut cold, &mut warm] {
            let t = Instant::now();
            let (status, body) = api.get(&format!("/api/v3/engine/cold/{i}")).await?;
            if status != 200 {
                bail!("request trigger cold/{i} answered {status}: {}", String::from_utf8_lossy(&body));
            }
            samples.push(t.elapsed());
        }
    }
    out.cold = Latency::from_samples(&cold);
    out.warm = Latency::from_samples(&warm);
    println!(
        "   {cold_triggers} request triggers: first call (worker starts) p50 {:.1} ms, p90 {:.1} ms; second call p50 {:.2} ms",
        out.cold.p50, out.cold.p90, out.warm.p50
    );

    // Many WAL triggers, each on its own table.
    let t = Instant::now();
    for i in 0..wal_triggers {
        create(api, db, &format!("wal{i}"), "seen.py", &format!("table:t{i}")).await?;
    }
    println!("   {} WAL triggers created in {:.1} s", thousands(wal_triggers as u64), t.elapsed().as_secs_f64());
    let mut lines = String::new();
    for i in 0..wal_triggers {
        lines.push_str(&format!("t{i},k=a v=1i 1\n"));
    }
    let target = api.write_target(db, false, false);
    let written = Instant::now();
    api.write_ok(&target, lines.into()).await?;
    let deadline = written + Duration::from_secs(600);
    loop {
        let n = match api.query(db, "SELECT count(DISTINCT \"table\") AS n FROM seen").await {
            Ok((rows, _)) => rows.first().and_then(|r| r["n"].as_u64()).unwrap_or(0) as usize,
            Err(_) => 0,
        };
        out.delivered = n;
        if n >= wal_triggers || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    out.delivered_after = written.elapsed();
    if let Some(pid) = pid {
        let procs = plugin_processes(pid);
        out.processes = procs.len();
        for p in procs {
            if let Some((pss, rss)) = memory(p) {
                out.pss_bytes += pss;
                out.rss_bytes += rss;
            }
        }
    }
    println!(
        "   {} of {} WAL triggers recorded their row after {:.1} s; {} plugin processes: PSS {:.0} MB, RSS {:.0} MB",
        thousands(out.delivered as u64),
        thousands(wal_triggers as u64),
        out.delivered_after.as_secs_f64(),
        out.processes,
        out.pss_bytes as f64 / 1e6,
        out.rss_bytes as f64 / 1e6
    );
    Ok(out)
}
