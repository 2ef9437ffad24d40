//! Ingest throughput: concurrent senders pushing pre-generated batches.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    client::{Api, Metrics, ServerDelta},
    datagen::{self, IngestShape, MEASUREMENTS},
    stats::{Latency, round3, thousands},
};

/// One ingest scenario.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    /// Human-readable name.
    pub(crate) name: String,
    /// Short id (JSON key, database name suffix).
    pub(crate) id: &'static str,
    pub(crate) senders: usize,
    pub(crate) no_sync: bool,
    pub(crate) db: String,
    pub(crate) shape: IngestShape,
    pub(crate) gzip: bool,
    /// Offered load in lines/s across all senders (`None`: as fast as the server takes
    /// them, i.e. a closed loop). With a rate, batch `i` is not sent before
    /// `start + i * batch_lines / rate`, so latency measures service time at that load
    /// rather than queueing behind other senders of a saturated server.
    pub(crate) rate: Option<f64>,
}

/// Figures of one ingest scenario.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) spec: Spec,
    pub(crate) lines: u64,
    pub(crate) raw_bytes: u64,
    pub(crate) wire_bytes: u64,
    pub(crate) requests: usize,
    pub(crate) generate: Duration,
    pub(crate) wall: Duration,
    pub(crate) latency: Latency,
    pub(crate) failures: usize,
    pub(crate) first_failure: Option<String>,
    pub(crate) server: ServerDelta,
    /// Row counts by SQL afterwards (excluding the warm-up lines), if verification ran.
    pub(crate) verify: Option<Visibility>,
}

/// What SQL saw after the last write returned.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Visibility {
    /// Rows counted right after the last response.
    pub(crate) first_count: u64,
    /// Rows counted last (equal to the lines written unless it timed out).
    pub(crate) final_count: u64,
    /// From the last response until every row was counted (`None`: timed out).
    pub(crate) all_visible_after: Option<Duration>,
}

impl Outcome {
    pub(crate) fn lines_per_s(&self) -> f64 {
        self.lines as f64 / self.wall.as_secs_f64()
    }

    pub(crate) fn mb_per_s(&self) -> f64 {
        self.raw_bytes as f64 / 1e6 / self.wall.as_secs_f64()
    }

    /// Problems that make this run invalid.
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.failures > 0 {
            p.push(format!(
                "{}: {} of {} write requests did not return 204; first: {}",
                self.spec.name,
                self.failures,
                self.requests,
                self.first_failure.as_deref().unwrap_or("?")
            ));
        }
        if let Some(v) = self.verify {
            if v.final_count != self.lines && self.failures == 0 {
                p.push(format!(
                    "{}: wrote {} lines but SQL counts {} rows (waited {} s)",
                    self.spec.name,
                    thousands(self.lines),
                    thousands(v.final_count),
                    VISIBILITY_TIMEOUT.as_secs()
                ));
            } else if v.final_count != self.lines {
                p.push(format!(
                    "{}: SQL counts {} of {} rows sent",
                    self.spec.name,
                    thousands(v.final_count),
                    thousands(self.lines)
                ));
            } else if !self.spec.no_sync && v.first_count != self.lines {
                p.push(format!(
                    "{}: durable writes were acknowledged but right after the last 204 SQL counted only {} of {} rows",
                    self.spec.name,
                    thousands(v.first_count),
                    thousands(self.lines)
                ));
            }
        }
        p
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "id": self.spec.id,
            "name": self.spec.name,
            "database": self.spec.db,
            "senders": self.spec.senders,
            "no_sync": self.spec.no_sync,
            "gzip": self.spec.gzip,
            "offered_lines_per_s": self.spec.rate,
            "batch_lines": self.spec.shape.batch_lines,
            "lines": self.lines,
            "bytes": self.raw_bytes,
            "wire_bytes": self.wire_bytes,
            "requests": self.requests,
            "generate_s": round3(self.generate.as_secs_f64()),
            "wall_s": round3(self.wall.as_secs_f64()),
            "lines_per_s": self.lines_per_s().round(),
            "mb_per_s": round3(self.mb_per_s()),
            "latency": self.latency.to_json(),
            "non_204": self.failures,
            "first_failure": self.first_failure,
            "rows_counted_immediately": self.verify.map(|v| v.first_count),
            "rows_counted": self.verify.map(|v| v.final_count),
            "all_rows_visible_after_ms": self.verify.and_then(|v| v.all_visible_after).map(|d| round3(d.as_secs_f64() * 1e3)),
            "server": self.server.to_json(),
        })
    }
}

#[derive(Debug, Default)]
struct SenderLog {
    latencies: Vec<Duration>,
    failures: usize,
    first_failure: Option<String>,
}

/// Run one scenario: generate, warm up (create the database and tables), send everything,
/// then count the rows.
pub(crate) async fn run(api: &Api, spec: Spec, verify: bool) -> anyhow::Result<Outcome> {
    let g0 = Instant::now();
    let shape = spec.shape;
    let gzip = spec.gzip;
    let payloads = tokio::task::spawn_blocking(move || datagen::ingest(shape, gzip)).await?;
    let generate = g0.elapsed();
    println!(
        "   generated {} lines, {} batches, {:.1} MB{} in {:.2} s (before timing)",
        thousands(payloads.lines),
        payloads.batches.len(),
        payloads.raw_bytes as f64 / 1e6,
        if payloads.gzip { format!(" ({:.1} MB gzipped)", payloads.wire_bytes as f64 / 1e6) } else { String::new() },
        generate.as_secs_f64()
    );

    // Warm-up: create the database and its tables outside the timed run.
    let warm = api.write_target(&spec.db, false, false);
    api.write_ok(&warm, Bytes::from(datagen::warmup_lines(shape.start_ns - 1))).await.context("warm-up write")?;

    let before = api.metrics().await;
    let target = api.write_target(&spec.db, spec.no_sync, payloads.gzip);
    let batches = Arc::new(payloads.batches);
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let pace = spec.rate.map(|r| Duration::from_secs_f64(shape.batch_lines as f64 / r));
    let tasks: Vec<_> = (0..spec.senders)
        .map(|_| {
            let api = api.clone();
            let target = target.clone();
            let batches = Arc::clone(&batches);
            let next = Arc::clone(&next);
            tokio::spawn(async move {
                let mut log = SenderLog::default();
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(body) = batches.get(i) else { break };
                    if let Some(p) = pace {
                        tokio::time::sleep_until((started + p * i as u32).into()).await;
                    }
                    let r = api.write(&target, body.clone()).await;
                    log.latencies.push(r.latency);
                    if !r.ok() {
                        log.failures += 1;
                        if log.first_failure.is_none() {
                            let mut d = r.describe();
                            d.truncate(500);
                            log.first_failure = Some(format!("batch {i}: {d}"));
                        }
                    }
                }
                log
            })
        })
        .collect();
    let mut latencies = Vec::with_capacity(batches.len());
    let mut failures = 0;
    let mut first_failure = None;
    for t in tasks {
        let log = t.await.context("sender task panicked")?;
        latencies.extend(log.latencies);
        failures += log.failures;
        if first_failure.is_none() {
            first_failure = log.first_failure;
        }
    }
    let wall = started.elapsed();
    drop(batches);

    let verify = if verify {
        // Wait for stragglers only when every write was accepted.
        let patience = if failures == 0 { VISIBILITY_TIMEOUT } else { Duration::ZERO };
        Some(wait_visible(api, &spec.db, payloads.lines, patience).await?)
    } else {
        None
    };
    // After the rows are visible, so that no_sync's trailing WAL flushes are counted.
    let after = api.metrics().await;
    let server = match (&before, &after) {
        (Some(b), Some(a)) => Metrics::delta(b, a),
        _ => ServerDelta::default(),
    };

    let outcome = Outcome {
        lines: payloads.lines,
        raw_bytes: payloads.raw_bytes,
        wire_bytes: payloads.wire_bytes,
        requests: latencies.len(),
        generate,
        wall,
        latency: Latency::from_samples(&latencies),
        failures,
        first_failure,
        server,
        verify,
        spec,
    };
    let l = &outcome.latency;
    println!(
        "   {} lines/s, {:.1} MB/s, {} requests in {:.2} s; latency ms p50 {:.1} p90 {:.1} p99 {:.1} max {:.1}; non-204: {}",
        thousands(outcome.lines_per_s().round() as u64),
        outcome.mb_per_s(),
        outcome.requests,
        wall.as_secs_f64(),
        l.p50,
        l.p90,
        l.p99,
        l.max,
        outcome.failures
    );
    if let Some(v) = outcome.verify {
        println!(
            "   verified: SQL count(*) over cpu, mem, disk = {} right after the last response{}",
            thousands(v.first_count),
            match v.all_visible_after {
                Some(d) if v.first_count != v.final_count => {
                    format!("; all {} after {:.0} ms", thousands(v.final_count), d.as_secs_f64() * 1e3)
                }
                _ => String::new(),
            }
        );
    }
    for p in outcome.problems() {
        eprintln!("!! FAILED: {p}");
    }
    Ok(outcome)
}

/// How long to wait for rows written with `no_sync` to become visible.
const VISIBILITY_TIMEOUT: Duration = Duration::from_secs(60);

/// Count the rows written (excluding the warm-up lines) until all `lines` are there.
async fn wait_visible(api: &Api, db: &str, lines: u64, patience: Duration) -> anyhow::Result<Visibility> {
    let started = Instant::now();
    let warmup = MEASUREMENTS.len() as u64;
    let first_count = count_rows(api, db).await?.saturating_sub(warmup);
    let mut count = first_count;
    while count < lines && started.elapsed() < patience {
        tokio::time::sleep(Duration::from_millis(20)).await;
        count = count_rows(api, db).await?.saturating_sub(warmup);
    }
    Ok(Visibility { first_count, final_count: count, all_visible_after: (count == lines).then(|| started.elapsed()) })
}

/// Rows in all ingest tables of `db`.
async fn count_rows(api: &Api, db: &str) -> anyhow::Result<u64> {
    let mut total = 0;
    for m in MEASUREMENTS {
        let (rows, _) = api.query(db, &format!("SELECT count(*) AS n FROM {m}")).await?;
        let n = rows
            .first()
            .and_then(|r| r.get("n"))
            .and_then(Value::as_u64)
            .with_context(|| format!("unexpected count(*) result for {m}: {rows:?}"))?;
        total += n;
    }
    if total == 0 {
        bail!("no rows found in {db}");
    }
    Ok(total)
}
