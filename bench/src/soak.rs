//! Memory soak: does `weir serve`'s memory level off under a long mixed load?
//!
//! For `--soak-minutes` (default 30), two writers send 1,000-line batches (100 hosts,
//! current timestamps, about 10,000 lines/s together, snapshots every 1M rows) while a
//! query loop runs a last-5-minutes aggregate, a count and a per-host `GROUP BY` back to
//! back. Every 10 s the server's RSS (VmRSS) and thread count are sampled from
//! `/proc/<pid>/status`. Memory has levelled off when the least-squares slope of RSS over
//! the second half is under [`MAX_SLOPE_MB_PER_MIN`].

use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{client::Api, datagen, query::now_ns, stats::thousands};

/// Second-half RSS growth above this (MB per minute) is reported as not levelling off.
pub(crate) const MAX_SLOPE_MB_PER_MIN: f64 = 0.5;
const SAMPLE_EVERY: Duration = Duration::from_secs(10);
const QUERIES: [&str; 3] = [
    "SELECT host, avg(usage_user) FROM cpu WHERE time > now() - INTERVAL '5 minutes' GROUP BY host",
    "SELECT count(*) FROM cpu",
    "SELECT host, max(usage_system) FROM cpu GROUP BY host ORDER BY host LIMIT 10",
];

/// One sample.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Sample {
    pub(crate) at_s: f64,
    pub(crate) rss_mb: f64,
    pub(crate) threads: u64,
}

/// Figures of the soak.
#[derive(Debug, Clone)]
pub(crate) struct SoakOutcome {
    pub(crate) minutes: f64,
    pub(crate) lines: u64,
    pub(crate) queries: u64,
    pub(crate) errors: u64,
    pub(crate) samples: Vec<Sample>,
}

impl SoakOutcome {
    /// Least-squares slope of RSS (MB/min) over the samples from `from_s` on.
    fn slope_from(&self, from_s: f64) -> Option<f64> {
        let pts: Vec<(f64, f64)> =
            self.samples.iter().filter(|s| s.at_s >= from_s).map(|s| (s.at_s / 60.0, s.rss_mb)).collect();
        if pts.len() < 3 {
            return None;
        }
        let n = pts.len() as f64;
        let (mx, my) = (pts.iter().map(|p| p.0).sum::<f64>() / n, pts.iter().map(|p| p.1).sum::<f64>() / n);
        let num: f64 = pts.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        let den: f64 = pts.iter().map(|p| (p.0 - mx).powi(2)).sum();
        (den > 0.0).then(|| num / den)
    }

    fn second_half_slope(&self) -> Option<f64> {
        self.slope_from(self.minutes * 60.0 / 2.0)
    }

    fn at_minute(&self, m: f64) -> Option<Sample> {
        self.samples.iter().copied().find(|s| s.at_s >= m * 60.0)
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "minutes": self.minutes,
            "lines_written": self.lines,
            "queries": self.queries,
            "errors": self.errors,
            "second_half_rss_slope_mb_per_min": self.second_half_slope(),
            "max_slope_mb_per_min": MAX_SLOPE_MB_PER_MIN,
            "samples": self.samples.iter().map(|s| json!({"at_s": s.at_s, "rss_mb": s.rss_mb, "threads": s.threads})).collect::<Vec<_>>(),
        })
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.errors > 0 {
            p.push(format!("soak: {} failed writes or queries", self.errors));
        }
        match self.second_half_slope() {
            Some(s) if s > MAX_SLOPE_MB_PER_MIN => p.push(format!(
                "soak: RSS still grows {s:.2} MB/min over the second half (limit {MAX_SLOPE_MB_PER_MIN})"
            )),
            None => p.push("soak: too few memory samples".to_string()),
            _ => {}
        }
        p
    }

    pub(crate) fn render(&self) -> String {
        let mut s = format!(
            "\nMemory soak ({:.0} min: {} lines written, {} queries, {} errors):\n",
            self.minutes,
            thousands(self.lines),
            thousands(self.queries),
            self.errors
        );
        for m in [1.0, 5.0, self.minutes / 2.0, self.minutes * 0.75] {
            if let Some(x) = self.at_minute(m) {
                s.push_str(&format!(
                    "  at {:>5.1} min: RSS {:>6.0} MB, {} threads\n",
                    x.at_s / 60.0,
                    x.rss_mb,
                    x.threads
                ));
            }
        }
        if let Some(x) = self.samples.last() {
            s.push_str(&format!(
                "  at {:>5.1} min: RSS {:>6.0} MB, {} threads (end)\n",
                x.at_s / 60.0,
                x.rss_mb,
                x.threads
            ));
        }
        let max_threads = self.samples.iter().map(|x| x.threads).max().unwrap_or(0);
        s.push_str(&format!(
            "  RSS slope over the second half: {} MB/min (levelled off below {MAX_SLOPE_MB_PER_MIN}); max threads {max_threads}\n",
            self.second_half_slope().map_or("-".to_string(), |v| format!("{v:.3}"))
        ));
        s
    }
}

fn sample(pid: u32) -> Option<(f64, u64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |key| crate::server::proc_field(&status, key);
    Some((field("VmRSS:")? as f64 / 1024.0, field("Threads:")?))
}

/// Run the soak against the server `pid` behind `api`.
pub(crate) async fn run(api: &Api, pid: u32, minutes: f64) -> anyhow::Result<SoakOutcome> {
    let db = "bench_soak";
    let stop = Arc::new(AtomicBool::new(false));
    let (lines, queries, errors) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut tasks = Vec::new();
    for w in 0..2u64 {
        let (api, stop, lines, errors) = (api.clone(), stop.clone(), lines.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            let target = api.write_target(db, false, false);
            let mut seq = w << 40;
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let now = now_ns();
                let mut body = Vec::with_capacity(100_000);
                for i in 0..1_000u64 {
                    seq += 1;
                    datagen::cpu_line(&mut body, (i % 100) as u32, now + (w * 1_000 + i) as i64, seq);
                }
                match api.write_ok(&target, Bytes::from(body)).await {
                    Ok(_) => lines.fetch_add(1_000, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    {
        let (api, stop, queries, errors) = (api.clone(), stop.clone(), queries.clone(), errors.clone());
        tasks.push(tokio::spawn(async move {
            // Let the table exist first.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                match api.query(db, QUERIES[i % QUERIES.len()]).await {
                    Ok(_) => queries.fetch_add(1, Ordering::Relaxed),
                    Err(_) => errors.fetch_add(1, Ordering::Relaxed),
                };
                i += 1;
            }
        }));
    }
    let started = Instant::now();
    let total = Duration::from_secs_f64(minutes * 60.0);
    let mut samples = Vec::new();
    while started.elapsed() < total {
        tokio::time::sleep(SAMPLE_EVERY).await;
        if let Some((rss_mb, threads)) = sample(pid) {
            let at_s = started.elapsed().as_secs_f64();
            if samples.len() % 6 == 0 {
                println!(
                    "   {:>5.1} min: RSS {rss_mb:.0} MB, {threads} threads, {} lines, {} queries",
                    at_s / 60.0,
                    thousands(lines.load(Ordering::Relaxed)),
                    thousands(queries.load(Ordering::Relaxed))
                );
            }
            samples.push(Sample { at_s, rss_mb, threads });
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    Ok(SoakOutcome {
        minutes,
        lines: lines.load(Ordering::Relaxed),
        queries: queries.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        samples,
    })
}
