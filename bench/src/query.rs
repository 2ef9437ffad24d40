//! Query latency over recent data, and the latency of lone durable writes.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    client::{Api, Metrics, ServerDelta},
    datagen::{self, QueryShape},
    stats::{Latency, round3, thousands},
};

const NS_PER_S: i64 = 1_000_000_000;

pub(crate) fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

/// Figures of one repeated query.
#[derive(Debug, Clone)]
pub(crate) struct QueryFigures {
    pub(crate) name: &'static str,
    pub(crate) sql: String,
    pub(crate) latency: Latency,
    /// Rows returned by the last run.
    pub(crate) rows: usize,
    /// Rows expected (`None`: just not zero).
    pub(crate) expected_rows: Option<usize>,
}

impl QueryFigures {
    pub(crate) fn problem(&self) -> Option<String> {
        match self.expected_rows {
            Some(e) if e != self.rows => Some(format!("{}: returned {} rows, expected {e}", self.name, self.rows)),
            None if self.rows == 0 => Some(format!("{}: returned no rows", self.name)),
            _ => None,
        }
    }

    fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "sql": self.sql,
            "latency": self.latency.to_json(),
            "rows": self.rows,
            "expected_rows": self.expected_rows,
        })
    }
}

/// Figures of the query scenario.
#[derive(Debug, Clone)]
pub(crate) struct QueryOutcome {
    pub(crate) db: String,
    pub(crate) rows_written: u64,
    pub(crate) recent_rows: u64,
    pub(crate) write_time: Duration,
    pub(crate) queries: Vec<QueryFigures>,
}

impl QueryOutcome {
    pub(crate) fn problems(&self) -> Vec<String> {
        self.queries.iter().filter_map(QueryFigures::problem).collect()
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "database": self.db,
            "rows_written": self.rows_written,
            "rows_in_last_2h": self.recent_rows,
            "write_s": round3(self.write_time.as_secs_f64()),
            "queries": self.queries.iter().map(QueryFigures::to_json).collect::<Vec<_>>(),
        })
    }
}

/// Sizing of the query scenario.
#[derive(Debug, Clone, Copy)]
pub(crate) struct QueryArgs {
    pub(crate) hosts: u32,
    pub(crate) runs: usize,
    pub(crate) old_hours: i64,
    pub(crate) batch_lines: u64,
    pub(crate) senders: usize,
}

/// Write `cpu` for every host (10 s interval over the last 2 h, 60 s interval for
/// `old_hours` before that), then time the last-hour queries.
pub(crate) async fn run(api: &Api, db: &str, args: QueryArgs) -> anyhow::Result<QueryOutcome> {
    let recent_interval_s = 10;
    let recent_span_s = 2 * 3600;
    let now = now_ns();
    let newest_ns = now - now.rem_euclid(recent_interval_s * NS_PER_S);
    let shape = QueryShape {
        hosts: args.hosts,
        newest_ns,
        recent_interval_s,
        recent_span_s,
        old_interval_s: 60,
        old_span_s: args.old_hours * 3600,
        batch_lines: args.batch_lines,
    };
    let payloads = tokio::task::spawn_blocking(move || datagen::query_data(shape)).await?;
    let recent_rows = u64::from(args.hosts) * (recent_span_s / recent_interval_s) as u64;

    // Write it durably with a few senders.
    let target = api.write_target(db, false, false);
    let started = Instant::now();
    let mut pending = payloads.batches.into_iter();
    loop {
        let wave: Vec<Bytes> = pending.by_ref().take(args.senders.max(1)).collect();
        if wave.is_empty() {
            break;
        }
        let writes = wave.into_iter().map(|b| {
            let api = api.clone();
            let target = target.clone();
            tokio::spawn(async move { api.write_ok(&target, b).await })
        });
        for w in writes.collect::<Vec<_>>() {
            w.await.context("writer task panicked")??;
        }
    }
    let write_time = started.elapsed();
    println!(
        "   wrote {} cpu rows ({} in the last 2 h at 10 s, the rest older at 60 s) in {:.2} s",
        thousands(payloads.lines),
        thousands(recent_rows),
        write_time.as_secs_f64()
    );

    let host = format!("host-{:03}", args.hosts / 2);
    let mut queries = Vec::new();
    let aggregate = "SELECT host, avg(usage_user), max(usage_system) FROM cpu \
         WHERE time >= now() - INTERVAL '1 hour' GROUP BY host"
        .to_string();
    queries.push(
        repeat(api, db, "last-hour aggregate, all hosts", aggregate, args.runs, Some(args.hosts as usize)).await?,
    );
    let single = format!(
        "SELECT time, usage_user, usage_system FROM cpu \
         WHERE host = '{host}' AND time >= now() - INTERVAL '1 hour' ORDER BY time"
    );
    queries.push(repeat(api, db, "last-hour rows, one host", single, args.runs, None).await?);
    let single_agg = format!(
        "SELECT avg(usage_user), max(usage_system) FROM cpu \
         WHERE host = '{host}' AND time >= now() - INTERVAL '1 hour'"
    );
    queries.push(repeat(api, db, "last-hour aggregate, one host", single_agg, args.runs, Some(1)).await?);

    let outcome = QueryOutcome { db: db.to_string(), rows_written: payloads.lines, recent_rows, write_time, queries };
    for p in outcome.problems() {
        eprintln!("!! FAILED: {p}");
    }
    Ok(outcome)
}

/// Run `sql` once to warm up, then `runs` times sequentially.
async fn repeat(
    api: &Api,
    db: &str,
    name: &'static str,
    sql: String,
    runs: usize,
    expected_rows: Option<usize>,
) -> anyhow::Result<QueryFigures> {
    api.query(db, &sql).await.context("warm-up query")?;
    let mut samples = Vec::with_capacity(runs);
    let mut rows = 0;
    for _ in 0..runs.max(1) {
        let (r, latency) = api.query(db, &sql).await?;
        samples.push(latency);
        rows = r.len();
    }
    let latency = Latency::from_samples(&samples);
    println!(
        "   {name}: {} runs, ms p50 {:.2} p99 {:.2} mean {:.2}; {rows} rows",
        latency.count, latency.p50, latency.p99, latency.mean
    );
    Ok(QueryFigures { name, sql, latency, rows, expected_rows })
}

/// Figures of sequential single-line writes.
#[derive(Debug, Clone)]
pub(crate) struct LoneOutcome {
    pub(crate) name: &'static str,
    pub(crate) db: String,
    pub(crate) no_sync: bool,
    pub(crate) latency: Latency,
    pub(crate) server: ServerDelta,
}

impl LoneOutcome {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "name": self.name,
            "database": self.db,
            "no_sync": self.no_sync,
            "latency": self.latency.to_json(),
            "server": self.server.to_json(),
        })
    }
}

/// `count` sequential one-line writes, each sent only after the previous one returned.
pub(crate) async fn lone_writes(
    api: &Api,
    db: &str,
    name: &'static str,
    count: usize,
    no_sync: bool,
) -> anyhow::Result<LoneOutcome> {
    let target = api.write_target(db, no_sync, false);
    let base = now_ns() - 600 * NS_PER_S;
    let line = |i: usize| {
        let mut out = Vec::with_capacity(128);
        datagen::cpu_line(&mut out, (i % 100) as u32, base + i as i64 * 1_000, i as u64);
        Bytes::from(out)
    };
    // Warm-up (creates the database and table), not counted.
    api.write_ok(&target, line(0)).await.context("warm-up write")?;
    let before = api.metrics().await;
    let mut samples = Vec::with_capacity(count);
    for i in 1..=count {
        let r = api.write(&target, line(i)).await;
        if !r.ok() {
            bail!("{name}: write {i} failed: {}", r.describe());
        }
        samples.push(r.latency);
    }
    let after = api.metrics().await;
    let server = match (&before, &after) {
        (Some(b), Some(a)) => Metrics::delta(b, a),
        _ => ServerDelta::default(),
    };
    let latency = Latency::from_samples(&samples);
    println!(
        "   {name}: {} writes, ms p50 {:.2} p90 {:.2} p99 {:.2} max {:.2}{}",
        latency.count,
        latency.p50,
        latency.p90,
        latency.p99,
        latency.max,
        server.wal_flushes.map(|f| format!("; {f:.0} WAL flushes")).unwrap_or_default()
    );
    Ok(LoneOutcome { name, db: db.to_string(), no_sync, latency, server })
}
