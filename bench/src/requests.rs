//! Request triggers and schedule jitter.
//!
//! A trivial request plugin (`{"status": "ok"}`) behind three triggers — synchronous,
//! asynchronous, asynchronous with 2 worker processes — is called by 1, 8 and 32
//! concurrent keep-alive clients for a fixed time each; requests/s and latency
//! percentiles per cell. Meanwhile an `every:1s` trigger records how late each call
//! started (worker clock minus the ideal fire time), so jitter is measured under that load.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use serde_json::{Value, json};

use crate::{
    client::{Api, Plugins},
    stats::{Latency, thousands},
};

const OK_PLUGIN: &str = r#"
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    return {"status": "ok"}
"#;

/// Writes how late (ns) each scheduled call started against its ideal fire time.
const JITTER_PLUGIN: &str = r#"
import datetime, time
def process_scheduled_call(influxdb3_local, call_time, args):
    late = time.time_ns() - int(call_time.replace(tzinfo=datetime.timezone.utc).timestamp()) * 1_000_000_000
    influxdb3_local.write(LineBuilder("jitter").int64_field("late_ns", late))
"#;

/// The trigger kinds measured: (name, run_async, workers).
const KINDS: [(&str, bool, u32); 3] = [("sync", false, 1), ("async", true, 1), ("async_2_workers", true, 2)];
/// Concurrent clients per cell.
pub(crate) const CLIENTS: [usize; 3] = [1, 8, 32];

/// One cell: a trigger kind at a client count.
#[derive(Debug, Clone)]
pub(crate) struct Cell {
    pub(crate) kind: &'static str,
    pub(crate) clients: usize,
    pub(crate) requests: u64,
    pub(crate) errors: u64,
    pub(crate) per_s: f64,
    pub(crate) latency: Latency,
}

/// Figures of the scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct RequestOutcome {
    pub(crate) cells: Vec<Cell>,
    /// Lateness of `every:1s` calls, ms.
    pub(crate) jitter: Option<Latency>,
}

impl RequestOutcome {
    pub(crate) fn to_json(&self) -> Value {
        json!({
            "cells": self.cells.iter().map(|c| json!({
                "trigger": c.kind,
                "clients": c.clients,
                "requests": c.requests,
                "errors": c.errors,
                "requests_per_s": c.per_s.round(),
                "latency": c.latency.to_json(),
            })).collect::<Vec<_>>(),
            "schedule_jitter": self.jitter.map(|j| j.to_json()),
            "targets": {"p50_ms_at_1_client": 1.0, "async_requests_per_s": 5000, "jitter_p99_ms": 20.0},
        })
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        for c in &self.cells {
            if c.errors > 0 {
                p.push(format!("{} trigger, {} clients: {} failed requests", c.kind, c.clients, c.errors));
            }
        }
        p
    }
}

async fn setup(api: &Api, plugins: &Plugins, db: &str) -> anyhow::Result<()> {
    plugins.put(api, "ok.py", OK_PLUGIN).await?;
    plugins.put(api, "jitter.py", JITTER_PLUGIN).await?;
    api.post_json("/api/v3/configure/database", &json!({"db": db})).await?;
    for (kind, run_async, workers) in KINDS {
        api.post_json(
            "/api/v3/configure/processing_engine_trigger",
            &json!({"db": db, "plugin_filename": "ok.py", "trigger_name": kind, "trigger_specification": format!("request:{db}/{kind}"),
                    "trigger_settings": {"run_async": run_async, "workers": workers}}),
        )
        .await?;
    }
    Ok(())
}

/// Call `url` from `clients` tasks for `duration`; every answer must be 200.
pub(crate) async fn load(api: &Api, url: &str, clients: usize, duration: Duration) -> (Vec<Duration>, u64, Duration) {
    let started = Instant::now();
    let deadline = started + duration;
    let tasks: Vec<_> = (0..clients)
        .map(|_| {
            let api = api.clone();
            let url = url.to_string();
            tokio::spawn(async move {
                let (mut samples, mut errors) = (Vec::with_capacity(8192), 0u64);
                while Instant::now() < deadline {
                    let t = Instant::now();
                    match api.get(&url).await {
                        Ok((200, _)) => samples.push(t.elapsed()),
                        _ => errors += 1,
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let (mut all, mut errors) = (Vec::new(), 0);
    for t in tasks {
        if let Ok((s, e)) = t.await {
            all.extend(s);
            errors += e;
        }
    }
    (all, errors, started.elapsed())
}

/// Run the scenario: `seconds` per cell after a short warm-up.
pub(crate) async fn run(api: &Api, plugin_dir: &Path, seconds: f64) -> anyhow::Result<RequestOutcome> {
    run_with(api, &Plugins::Dir(plugin_dir.to_path_buf()), seconds, &CLIENTS, "bench_requests").await
}

/// [`run`] with the plugins placed by `plugins`, at the given client counts, in `db`.
pub(crate) async fn run_with(
    api: &Api,
    plugins: &Plugins,
    seconds: f64,
    client_counts: &[usize],
    db: &str,
) -> anyhow::Result<RequestOutcome> {
    setup(api, plugins, db).await?;
    // Wait for the plugin host and the first worker of each trigger.
    for (kind, _, _) in KINDS {
        let path = format!("/api/v3/engine/{db}/{kind}");
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            match api.get(&path).await {
                Ok((200, _)) => break,
                other if Instant::now() > deadline => bail!("{path} never answered 200: {other:?}"),
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
    api.post_json(
        "/api/v3/configure/processing_engine_trigger",
        &json!({"db": db, "plugin_filename": "jitter.py", "trigger_name": "jitter", "trigger_specification": "every:1s"}),
    )
    .await?;
    let mut out = RequestOutcome::default();
    let duration = Duration::from_secs_f64(seconds);
    for (kind, _, _) in KINDS {
        let path = format!("/api/v3/engine/{db}/{kind}");
        for &clients in client_counts {
            // Warm-up: connections open, every worker process started.
            load(api, &path, clients, Duration::from_millis(500)).await;
            let (samples, errors, elapsed) = load(api, &path, clients, duration).await;
            let cell = Cell {
                kind,
                clients,
                requests: samples.len() as u64,
                errors,
                per_s: samples.len() as f64 / elapsed.as_secs_f64(),
                latency: Latency::from_samples(&samples),
            };
            println!(
                "   {:<16} {:>2} clients: {:>7} req/s  p50 {:.2} ms  p99 {:.2} ms{}",
                kind,
                clients,
                thousands(cell.per_s as u64),
                cell.latency.p50,
                cell.latency.p99,
                if errors > 0 { format!("  ({errors} errors)") } else { String::new() }
            );
            out.cells.push(cell);
        }
    }
    let (rows, _) =
        api.query(db, "SELECT late_ns FROM jitter ORDER BY time").await.context("reading jitter samples")?;
    // The first call may start mid-second with the trigger's creation: skip it.
    let samples: Vec<Duration> = rows
        .iter()
        .skip(1)
        .filter_map(|r| r["late_ns"].as_i64())
        .map(|ns| Duration::from_nanos(ns.max(0) as u64))
        .collect();
    if !samples.is_empty() {
        let j = Latency::from_samples(&samples);
        println!(
            "   schedule every:1s under that load: {} calls, late by p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
            j.count, j.p50, j.p99, j.max
        );
        out.jitter = Some(j);
    }
    Ok(out)
}
