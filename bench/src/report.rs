//! Machine facts, the printed tables and the JSON report.

use std::{fmt::Write as _, path::Path};

use serde_json::{Value, json};

use crate::{
    ingest,
    query::{self, LoneOutcome, QueryOutcome},
    scan,
    server::{self, ProcStats},
    stats::{ms, thousands},
};

/// Facts about the machine and the server under test.
#[derive(Debug, Clone, Default)]
pub(crate) struct Machine {
    pub(crate) date_utc: String,
    pub(crate) nproc: usize,
    pub(crate) cpu_model: String,
    pub(crate) mem_total_gib: Option<f64>,
    pub(crate) os: String,
    pub(crate) kernel: String,
    pub(crate) weir_version: String,
    pub(crate) bench_version: String,
    pub(crate) server: String,
}

fn read(path: &str) -> Option<String> {
    std::fs::read_to_string(path).ok()
}

impl Machine {
    pub(crate) fn collect(weir_bin: &Path) -> Self {
        let cpu_model = read("/proc/cpuinfo")
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("model name"))
                    .and_then(|l| l.split_once(':'))
                    .map(|(_, v)| v.trim().to_string())
            })
            .unwrap_or_else(|| "unknown".to_string());
        let mem_total_gib = read("/proc/meminfo").and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
                .map(|kb| kb / (1024.0 * 1024.0))
        });
        let os = read("/etc/os-release")
            .and_then(|s| {
                s.lines().find_map(|l| l.strip_prefix("PRETTY_NAME=")).map(|v| v.trim_matches('"').to_string())
            })
            .unwrap_or_else(|| std::env::consts::OS.to_string());
        let kernel = read("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
        Self {
            date_utc: utc_now(),
            nproc: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_gib,
            os,
            kernel,
            weir_version: server::weir_version(weir_bin),
            bench_version: env!("CARGO_PKG_VERSION").to_string(),
            server: String::new(),
        }
    }

    pub(crate) fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "weir-bench {}  ({})", self.bench_version, self.date_utc);
        let _ = writeln!(s, "  machine : {} CPUs (nproc), {}", self.nproc, self.cpu_model);
        let _ = writeln!(
            s,
            "            {} RAM, {}, kernel {}",
            self.mem_total_gib.map_or_else(|| "? GiB".to_string(), |g| format!("{g:.1} GiB")),
            self.os,
            self.kernel
        );
        let _ = writeln!(s, "  weir    : {}", self.weir_version);
        let _ = writeln!(s, "  server  : {}", self.server);
        s
    }

    fn to_json(&self) -> Value {
        json!({
            "date_utc": self.date_utc,
            "nproc": self.nproc,
            "cpu_model": self.cpu_model,
            "mem_total_gib": self.mem_total_gib.map(|g| (g * 10.0).round() / 10.0),
            "os": self.os,
            "kernel": self.kernel,
            "weir_version": self.weir_version,
            "weir_bench_version": self.bench_version,
            "server": self.server,
        })
    }
}

/// Every figure of a run.
#[derive(Debug, Default)]
pub(crate) struct Report {
    pub(crate) machine: Machine,
    pub(crate) ingest: Vec<ingest::Outcome>,
    pub(crate) query: Option<QueryOutcome>,
    pub(crate) lone: Vec<LoneOutcome>,
    pub(crate) scan: Vec<scan::ScanOutcome>,
    pub(crate) engine: Option<crate::engine::EngineOutcome>,
    pub(crate) requests: Option<crate::requests::RequestOutcome>,
    pub(crate) hostile: Option<crate::hostile::HostileOutcome>,
    pub(crate) workers: Option<crate::workers::WorkersOutcome>,
    pub(crate) deploy: Option<crate::deploy::DeployOutcome>,
    pub(crate) soak: Option<crate::soak::SoakOutcome>,
    /// Server processes started by the benchmark.
    pub(crate) servers: Vec<ProcStats>,
}

/// A plain text table with right-aligned columns (except the first).
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cells: &[String]| {
        let mut s = String::from("  ");
        for (i, (c, w)) in cells.iter().zip(&widths).enumerate() {
            if i == 0 {
                let _ = write!(s, "{c:<w$}");
            } else {
                let _ = write!(s, "  {c:>w$}");
            }
        }
        s.trim_end().to_string() + "\n"
    };
    let mut out = line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
    out.push_str(&format!("  {}\n", "-".repeat(total)));
    for r in rows {
        out.push_str(&line(r));
    }
    out
}

fn opt(v: Option<f64>, f: impl Fn(f64) -> String) -> String {
    v.map_or_else(|| "-".to_string(), f)
}

impl Report {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.ingest.iter().flat_map(ingest::Outcome::problems).collect();
        if let Some(q) = &self.query {
            p.extend(q.problems());
        }
        p.extend(self.scan.iter().flat_map(scan::ScanOutcome::problems));
        if let Some(e) = &self.engine {
            p.extend(e.problems());
        }
        if let Some(r) = &self.requests {
            p.extend(r.problems());
        }
        if let Some(h) = &self.hostile {
            p.extend(h.problems());
        }
        if let Some(w) = &self.workers {
            p.extend(w.problems());
        }
        if let Some(d) = &self.deploy {
            p.extend(d.problems());
        }
        if let Some(x) = &self.soak {
            p.extend(x.problems());
        }
        p
    }

    pub(crate) fn render(&self) -> String {
        let mut s = String::from("\n================ RESULTS ================\n");
        if !self.ingest.is_empty() {
            s.push_str("\nIngest (10^6 bytes = 1 MB; latency = one write request, send to response):\n");
            let rows: Vec<Vec<String>> = self
                .ingest
                .iter()
                .map(|o| {
                    vec![
                        o.spec.name.clone(),
                        thousands(o.lines),
                        format!("{:.2}", o.wall.as_secs_f64()),
                        thousands(o.lines_per_s().round() as u64),
                        format!("{:.1}", o.mb_per_s()),
                        o.requests.to_string(),
                        ms(o.latency.p50),
                        ms(o.latency.p90),
                        ms(o.latency.p99),
                        ms(o.latency.max),
                        o.failures.to_string(),
                    ]
                })
                .collect();
            s.push_str(&table(
                &[
                    "scenario", "lines", "wall s", "lines/s", "MB/s", "reqs", "p50 ms", "p90 ms", "p99 ms", "max ms",
                    "non-204",
                ],
                &rows,
            ));
            s.push_str("\n  Server side during the timed run (from /metrics):\n");
            let rows: Vec<Vec<String>> = self
                .ingest
                .iter()
                .map(|o| {
                    let d = o.server;
                    vec![
                        o.spec.name.clone(),
                        opt(d.wal_flushes, |v| format!("{v:.0}")),
                        opt(d.mean_flush_ms(), ms),
                        opt(d.wal_flushes, |f| {
                            if f > 0.0 { format!("{:.1}", o.requests as f64 / f) } else { "-".to_string() }
                        }),
                        opt(d.wal_bytes, |b| format!("{:.1}", b / 1e6)),
                        opt(d.snapshots, |v| format!("{v:.0}")),
                        o.verify.map_or_else(|| "-".to_string(), |v| thousands(v.first_count)),
                        o.verify.map_or_else(
                            || "-".to_string(),
                            |v| match v.all_visible_after {
                                Some(_) if v.first_count == v.final_count => "0".to_string(),
                                Some(d) => format!("{:.0}", d.as_secs_f64() * 1e3),
                                None => "timeout".to_string(),
                            },
                        ),
                    ]
                })
                .collect();
            s.push_str(&table(
                &[
                    "scenario",
                    "WAL flushes",
                    "mean flush ms",
                    "reqs/flush",
                    "WAL MB",
                    "snapshots",
                    "SQL count at end",
                    "all rows after ms",
                ],
                &rows,
            ));
        }
        if let Some(q) = &self.query {
            let _ = writeln!(
                s,
                "\nQuery latency ({} cpu rows, {} of them in the last 2 h; sequential, send to end of body):",
                thousands(q.rows_written),
                thousands(q.recent_rows)
            );
            let rows: Vec<Vec<String>> = q
                .queries
                .iter()
                .map(|f| {
                    vec![
                        f.name.to_string(),
                        f.latency.count.to_string(),
                        ms(f.latency.p50),
                        ms(f.latency.p90),
                        ms(f.latency.p99),
                        ms(f.latency.mean),
                        ms(f.latency.max),
                        f.rows.to_string(),
                    ]
                })
                .collect();
            s.push_str(&table(&["query", "runs", "p50 ms", "p90 ms", "p99 ms", "mean ms", "max ms", "rows"], &rows));
            for f in &q.queries {
                let _ = writeln!(s, "    {}: {}", f.name, f.sql);
            }
        }
        if !self.scan.is_empty() {
            s.push_str(
                "\nFull-scan result throughput (SELECT * FROM cpu; median of the runs; rows/s \
                 vs target; first = time to the first Flight batch or first HTTP chunk with a row; the \
                 first run reads a freshly loaded buffer):\n",
            );
            let rows: Vec<Vec<String>> = self
                .scan
                .iter()
                .flat_map(|o| {
                    o.transports.iter().map(move |t| {
                        let m = t.median();
                        vec![
                            thousands(o.rows),
                            t.transport.label().to_string(),
                            thousands(m.rows_per_s() as u64),
                            format!("{:.1}x", m.rows_per_s() / t.transport.target_rows_per_s()),
                            format!("{:.2}", m.total.as_secs_f64()),
                            ms(m.first.as_secs_f64() * 1e3),
                            ms(t.runs[0].first.as_secs_f64() * 1e3),
                            t.max_rss_growth().map_or_else(|| "-".to_string(), |g| format!("{:.0}", g as f64 / 1e6)),
                        ]
                    })
                })
                .collect();
            s.push_str(&table(
                &[
                    "rows",
                    "transport",
                    "rows/s",
                    "of target",
                    "total s",
                    "first ms",
                    "1st run first ms",
                    "server RSS growth MB",
                ],
                &rows,
            ));
            let py: Vec<Vec<String>> = self
                .scan
                .iter()
                .flat_map(|o| {
                    o.python
                        .iter()
                        .map(move |c| vec![thousands(o.rows), c.name.clone(), thousands(c.median_rows_per_s() as u64)])
                })
                .collect();
            if !py.is_empty() {
                s.push_str("\nThe same answers read with the Python clients (median rows/s):\n");
                s.push_str(&table(&["rows", "client", "rows/s"], &py));
            }
        }
        if let Some(e) = &self.engine {
            s.push_str("\nProcessing engine:\n");
            if let Some(t) = &e.throughput {
                let _ = writeln!(
                    s,
                    "  WAL trigger throughput: {} rows into process_writes as dicts, {} rows/s end to end \
                     (first write → plugin saw the last row; target >= 1,000,000), plugin busy {:.2} s",
                    thousands(t.rows),
                    thousands(t.end_to_end_rows_per_s() as u64),
                    t.plugin_busy.as_secs_f64()
                );
            }
            if let Some(b) = &e.backlog {
                let _ = writeln!(
                    s,
                    "  WAL trigger delivery of a backlog: {} rows into process_writes as dicts at {} rows/s \
                     (rows already written, no ingest competing; target >= 1,000,000)",
                    thousands(b.rows),
                    thousands(b.rows_per_s() as u64)
                );
            }
            if let Some(r) = e.marshal_rows_per_s {
                let _ = writeln!(
                    s,
                    "  for scale: marshal.loads alone, in the plugin venv's Python: {} dict rows/s",
                    thousands(r as u64)
                );
            }
            if let Some(r) = e.native_rows_per_s {
                let _ = writeln!(
                    s,
                    "  for scale: the worker runtime's C row builder alone (what workers use): {} dict rows/s",
                    thousands(r as u64)
                );
            }
            if let Some(l) = &e.latency {
                let _ = writeln!(
                    s,
                    "  write → plugin latency: p50 {} ms, p90 {} ms, p99 {} ms (target p50 <= 50 ms)",
                    ms(l.p50),
                    ms(l.p90),
                    ms(l.p99)
                );
            }
            if let Some((base, slow)) = e.slow {
                let _ = writeln!(
                    s,
                    "  durable ingest, 16 senders, best of 2 interleaved runs each: {} lines/s without a trigger, {} lines/s with a plugin sleeping 2 s per batch ({:.1}%; must be >= 95%)",
                    thousands(base as u64),
                    thousands(slow as u64),
                    100.0 * slow / base
                );
            }
        }
        if let Some(r) = &self.requests {
            s.push_str("\nRequest triggers (plugin returns {\"status\": \"ok\"}; targets: p50 <= 1 ms at 1 client, >= 5,000 req/s async):\n");
            let rows: Vec<Vec<String>> = r
                .cells
                .iter()
                .map(|c| {
                    vec![
                        c.kind.to_string(),
                        c.clients.to_string(),
                        thousands(c.per_s as u64),
                        ms(c.latency.p50),
                        ms(c.latency.p99),
                    ]
                })
                .collect();
            s.push_str(&table(&["trigger", "clients", "req/s", "p50 ms", "p99 ms"], &rows));
            if let Some(j) = &r.jitter {
                let _ = writeln!(
                    s,
                    "  schedule every:1s during that load: {} calls late by p50 {} ms, p99 {} ms, max {} ms (target p99 <= 20 ms)",
                    j.count,
                    ms(j.p50),
                    ms(j.p99),
                    ms(j.max)
                );
            }
        }
        if let Some(w) = &self.workers {
            let _ = writeln!(
                s,
                "\nMany triggers on one plugin host:\n  request trigger, first call (its worker starts): p50 {} ms, p90 {} ms, max {} ms over {} triggers (target p50 <= 20 ms)\n  the same triggers, second call: p50 {} ms\n  {} WAL triggers: {} recorded their row after {:.1} s; {} plugin processes (workers and fork server): PSS {:.0} MB, RSS {:.0} MB (target for 1,000: PSS <= 2,000 MB)",
                ms(w.cold.p50),
                ms(w.cold.p90),
                ms(w.cold.max),
                w.cold.count,
                ms(w.warm.p50),
                thousands(w.triggers as u64),
                thousands(w.delivered as u64),
                w.delivered_after.as_secs_f64(),
                w.processes,
                w.pss_bytes as f64 / 1e6,
                w.rss_bytes as f64 / 1e6
            );
        }
        if let Some(d) = &self.deploy {
            s.push_str(&d.render());
        }
        if let Some(x) = &self.soak {
            s.push_str(&x.render());
        }
        if let Some(h) = &self.hostile {
            s.push_str("\nHostile input (each must end in its expected answer; /health probed every 20 ms):\n");
            let rows: Vec<Vec<String>> = h
                .attacks
                .iter()
                .map(|a| {
                    vec![
                        a.name.clone(),
                        format!("{:.0}", a.elapsed.as_secs_f64() * 1e3),
                        if a.ok { "ok".to_string() } else { "FAILED".to_string() },
                        a.answer.clone(),
                    ]
                })
                .collect();
            s.push_str(&table(&["attack", "ms", "check", "answer"], &rows));
            let _ = writeln!(
                s,
                "  /health throughout: {} probes, p50 {} ms, p99 {} ms, max {} ms (bound {} ms: {} over, {} failed)",
                h.health.count,
                ms(h.health.p50),
                ms(h.health.p99),
                ms(h.health.max),
                crate::hostile::HEALTH_BOUND.as_millis(),
                h.health_slow,
                h.health_failed
            );
            let _ = writeln!(
                s,
                "  data written before: {} ({})",
                if h.data_intact { "intact" } else { "CHANGED" },
                h.data_detail
            );
        }
        if !self.lone.is_empty() {
            s.push_str("\nLone writes (one line per request, sequential):\n");
            let rows: Vec<Vec<String>> = self
                .lone
                .iter()
                .map(|o| {
                    vec![
                        o.name.to_string(),
                        o.latency.count.to_string(),
                        ms(o.latency.p50),
                        ms(o.latency.p90),
                        ms(o.latency.p99),
                        ms(o.latency.mean),
                        ms(o.latency.max),
                        opt(o.server.wal_flushes, |v| format!("{v:.0}")),
                        opt(o.server.mean_flush_ms(), ms),
                    ]
                })
                .collect();
            s.push_str(&table(
                &[
                    "scenario",
                    "writes",
                    "p50 ms",
                    "p90 ms",
                    "p99 ms",
                    "mean ms",
                    "max ms",
                    "WAL flushes",
                    "mean flush ms",
                ],
                &rows,
            ));
        }
        if !self.servers.is_empty() {
            s.push_str("\nServer processes (started by weir-bench; RSS = resident memory):\n");
            let rows: Vec<Vec<String>> = self
                .servers
                .iter()
                .map(|p| {
                    vec![
                        p.served.clone(),
                        p.pid.map_or_else(|| "?".to_string(), |v| v.to_string()),
                        opt(p.peak_rss_bytes.map(|b| b as f64), |b| format!("{:.0}", b / 1e6)),
                        format!("{:.1}", p.data_dir_bytes as f64 / 1e6),
                        format!("{:.2}", p.shutdown.as_secs_f64()),
                        p.how.clone(),
                    ]
                })
                .collect();
            s.push_str(&table(&["scenarios", "pid", "peak RSS MB", "data dir MB", "stop s", "stopped"], &rows));
            for p in &self.servers {
                if let Some(k) = &p.kept {
                    let _ = writeln!(s, "  kept {} (server.log, data)", k.display());
                }
            }
        }
        s.push('\n');
        s
    }

    pub(crate) fn to_json(&self, config: Value) -> Value {
        json!({
            "machine": self.machine.to_json(),
            "config": config,
            "ingest": self.ingest.iter().map(ingest::Outcome::to_json).collect::<Vec<_>>(),
            "query": self.query.as_ref().map(QueryOutcome::to_json),
            "lone_writes": self.lone.iter().map(LoneOutcome::to_json).collect::<Vec<_>>(),
            "scan": self.scan.iter().map(scan::ScanOutcome::to_json).collect::<Vec<_>>(),
            "engine": self.engine.as_ref().map(crate::engine::EngineOutcome::to_json),
            "requests": self.requests.as_ref().map(crate::requests::RequestOutcome::to_json),
            "hostile": self.hostile.as_ref().map(crate::hostile::HostileOutcome::to_json),
            "workers": self.workers.as_ref().map(crate::workers::WorkersOutcome::to_json),
            "deploy": self.deploy.as_ref().map(crate::deploy::DeployOutcome::to_json),
            "soak": self.soak.as_ref().map(crate::soak::SoakOutcome::to_json),
            "servers": self.servers.iter().map(ProcStats::to_json).collect::<Vec<_>>(),
            "problems": self.problems(),
            "generated_at_unix_ns": query::now_ns(),
        })
    }
}

/// The current UTC time as `YYYY-MM-DD HH:MM:SS UTC`.
fn utc_now() -> String {
    let secs = query::now_ns().div_euclid(1_000_000_000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC", rem / 3600, rem % 3600 / 60, rem % 60)
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
    }

    #[test]
    fn table_aligns() {
        let t = table(&["a", "bb"], &[vec!["xyz".into(), "1".into()]]);
        assert_eq!(t, "  a    bb\n  -------\n  xyz   1\n");
    }
}
