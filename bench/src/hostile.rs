//! Hostile input: the abuse classes the server must shrug off, sent one after another
//! while `/health` is probed every 20 ms on its own connection. Each attack must end in a
//! clear answer (the expected status) within a bound; `/health` must answer every probe
//! within 100 ms throughout; a data set written before must be intact after.
//!
//! Classes: wide lines (8,000 and 200,000 new fields), a 9 MB rejected line (its echo must
//! be cut), 3,000 new tables in one write, a gzip bomb, nine abandoned endless queries (the
//! server's CPU must fall back to idle), a query past `--query-timeout`, a large grouping
//! under a small `--query-memory-limit`, a `pretty` answer over its row cap, 50 slowloris
//! connections and 3,000 idle connections (closed by `--http-header-read-timeout`, the
//! excess over `--max-connections` refused at once), a gRPC-Web content type. Attacks by
//! plugins (secrets, files, a second plugin-host session) are integration tests
//! (`integration-tests/tests/limits.rs`, `engine.rs`), not load.

use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::Context as _;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::{
    client::Api,
    stats::{Latency, thousands},
};

/// `/health` must answer every probe within this.
pub(crate) const HEALTH_BOUND: Duration = Duration::from_millis(100);

/// Server flags for this scenario: small bounds, so the slow attacks end in seconds.
pub(crate) fn server_args() -> Vec<String> {
    ["--query-timeout=5s", "--query-memory-limit=256MiB", "--http-header-read-timeout=5s", "--max-connections=1000"]
        .iter()
        .map(|s| s.to_string())
        .collect()
}

/// One attack and how the server answered.
#[derive(Debug, Clone)]
pub(crate) struct Attack {
    pub(crate) name: String,
    /// What came back (statuses, counts).
    pub(crate) answer: String,
    /// What was expected, when `ok` is false.
    pub(crate) expected: String,
    pub(crate) ok: bool,
    pub(crate) elapsed: Duration,
}

/// Figures of the scenario.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostileOutcome {
    pub(crate) attacks: Vec<Attack>,
    /// `/health` probe latencies over the whole run.
    pub(crate) health: Latency,
    /// Probes that failed or took longer than [`HEALTH_BOUND`].
    pub(crate) health_slow: usize,
    pub(crate) health_failed: usize,
    /// The known data set after the attacks.
    pub(crate) data_intact: bool,
    pub(crate) data_detail: String,
}

impl HostileOutcome {
    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self
            .attacks
            .iter()
            .filter(|a| !a.ok)
            .map(|a| format!("hostile: {}: got {}, expected {}", a.name, a.answer, a.expected))
            .collect();
        if self.health_slow > 0 || self.health_failed > 0 {
            p.push(format!(
                "hostile: /health answered {} of {} probes late (over {} ms; max {:.1} ms) and failed {}",
                self.health_slow,
                self.health.count + self.health_failed,
                HEALTH_BOUND.as_millis(),
                self.health.max,
                self.health_failed
            ));
        }
        if !self.data_intact {
            p.push(format!("hostile: the data written before changed: {}", self.data_detail));
        }
        p
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "attacks": self.attacks.iter().map(|a| json!({
                "name": a.name,
                "answer": a.answer,
                "ok": a.ok,
                "expected": a.expected,
                "elapsed_ms": (a.elapsed.as_secs_f64() * 1e3).round(),
            })).collect::<Vec<_>>(),
            "health": self.health.to_json(),
            "health_bound_ms": HEALTH_BOUND.as_millis() as u64,
            "health_slow": self.health_slow,
            "health_failed": self.health_failed,
            "data_intact": self.data_intact,
            "data_detail": self.data_detail,
        })
    }
}

/// Probe `/health` every 20 ms on a dedicated keep-alive connection until `stop`.
async fn probe_health(base: String, stop: Arc<AtomicBool>) -> (Vec<Duration>, usize) {
    let client = match reqwest::Client::builder().http1_only().pool_max_idle_per_host(1).build() {
        Ok(c) => c,
        Err(_) => return (Vec::new(), 1),
    };
    let (mut samples, mut failed) = (Vec::new(), 0);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while !stop.load(Ordering::Relaxed) {
        tick.tick().await;
        let t = Instant::now();
        let r = client.get(format!("{base}/health")).timeout(Duration::from_secs(5)).send().await;
        let ok = match r {
            Ok(resp) => resp.status().is_success() && resp.bytes().await.is_ok(),
            Err(_) => false,
        };
        if ok {
            samples.push(t.elapsed());
        } else {
            failed += 1;
        }
    }
    (samples, failed)
}

/// CPU seconds (user + system) used by process `pid` so far.
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split(' ').collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// One request; (status or transport error, body prefix, elapsed).
async fn send(rb: reqwest::RequestBuilder) -> (Result<u16, String>, String, usize, Duration) {
    let t = Instant::now();
    match rb.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let body = resp.bytes().await.unwrap_or_default();
            let prefix = String::from_utf8_lossy(&body[..body.len().min(16 * 1024)]).into_owned();
            (Ok(status), prefix, body.len(), t.elapsed())
        }
        Err(e) => (Err(e.to_string()), String::new(), 0, t.elapsed()),
    }
}

fn attack(name: &str, answer: String, expected: &str, ok: bool, elapsed: Duration) -> Attack {
    let a = Attack { name: name.to_string(), answer, expected: expected.to_string(), ok, elapsed };
    println!(
        "   {:<48} {:>8.0} ms  {}{}",
        a.name,
        a.elapsed.as_secs_f64() * 1e3,
        a.answer,
        if a.ok { String::new() } else { format!("  (expected {})", a.expected) }
    );
    a
}

fn host_port(base: &str) -> String {
    base.trim_start_matches("http://").trim_end_matches('/').to_string()
}

/// Open `n` connections that send nothing (or, with `drip`, one header byte a second) and
/// report how the server ended them: (answered 503 at once, closed later, still open at
/// `deadline`, connect failures).
async fn idle_connections(base: &str, n: usize, drip: bool, deadline: Duration) -> (usize, usize, usize, usize) {
    let addr = host_port(base);
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // In waves of 250 a few milliseconds apart, as a flood from many clients arrives.
        if i % 250 == 249 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let addr = addr.clone();
        tasks.push(tokio::spawn(async move {
            let Ok(mut s) = tokio::net::TcpStream::connect(&addr).await else { return 3u8 };
            let started = Instant::now();
            let request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ";
            let mut sent = 0;
            let mut buf = [0u8; 512];
            loop {
                if drip && sent < request.len() && s.write_all(&request[sent..=sent]).await.is_ok() {
                    sent += 1;
                }
                let left = deadline.saturating_sub(started.elapsed());
                if left.is_zero() {
                    return 2;
                }
                match tokio::time::timeout(Duration::from_secs(1).min(left), s.read(&mut buf)).await {
                    Ok(Ok(0)) | Ok(Err(_)) => return 1,
                    Ok(Ok(k)) if buf[..k].starts_with(b"HTTP/1.1 503") => return 0,
                    Ok(Ok(_)) => return 1,
                    Err(_) => {}
                }
            }
        }));
    }
    let mut counts = (0, 0, 0, 0);
    for t in tasks {
        match t.await.unwrap_or(3) {
            0 => counts.0 += 1,
            1 => counts.1 += 1,
            2 => counts.2 += 1,
            _ => counts.3 += 1,
        }
    }
    counts
}

const KNOWN_DB: &str = "hostile_known";
const KNOWN_ROWS: u64 = 50_000;

/// Write the known data set and return its (count, sum).
async fn write_known(api: &Api) -> anyhow::Result<()> {
    let target = api.write_target(KNOWN_DB, false, false);
    let mut body = String::new();
    for i in 0..KNOWN_ROWS {
        body.push_str(&format!("known,host=h{} v={i}i {}\n", i % 10, 1_700_000_000_000_000_000i64 + i as i64));
        if (i + 1) % 10_000 == 0 {
            api.write_ok(&target, std::mem::take(&mut body).into()).await?;
        }
    }
    Ok(())
}

async fn check_known(api: &Api) -> (bool, String) {
    let want_sum = KNOWN_ROWS * (KNOWN_ROWS - 1) / 2;
    match api.query(KNOWN_DB, "SELECT count(*) AS n, sum(v) AS s, count(DISTINCT host) AS h FROM known").await {
        Ok((rows, _)) => {
            let r = rows.first().cloned().unwrap_or(Value::Null);
            let (n, s, h) = (r["n"].as_u64(), r["s"].as_u64(), r["h"].as_u64());
            let ok = n == Some(KNOWN_ROWS) && s == Some(want_sum) && h == Some(10);
            (ok, format!("count {n:?} sum {s:?} hosts {h:?} (want {KNOWN_ROWS}, {want_sum}, 10)"))
        }
        Err(e) => (false, format!("{e:#}")),
    }
}

/// Run every attack against `api` (a server started with [`server_args`]); `pid` is the
/// server's, for its CPU time.
pub(crate) async fn run(api: &Api, pid: Option<u32>) -> anyhow::Result<HostileOutcome> {
    write_known(api).await.context("writing the known data set")?;
    let (ok, detail) = check_known(api).await;
    anyhow::ensure!(ok, "the known data set did not read back before the attacks: {detail}");

    // Payloads are built before probing starts, so the benchmark's own CPU work does not
    // show up as server latency.
    let wide = |fields: usize| {
        let mut l = String::from("wide,host=a ");
        for i in 0..fields {
            if i > 0 {
                l.push(',');
            }
            l.push_str(&format!("f{i}={i}i"));
        }
        l.push_str(" 1\n");
        l
    };
    let wide_8k = wide(8_000);
    let wide_200k = wide(200_000);
    let huge_bad = format!("bad,host=a v={}\n", "x".repeat(9_000_000));
    let mut tables = String::new();
    for i in 0..3_000 {
        tables.push_str(&format!("t{i},host=a v=1i 1\n"));
    }
    let bomb = {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..256 {
            gz.write_all(&zeros)?;
        }
        gz.finish()?
    };

    let http = reqwest::Client::builder().http1_only().build()?;
    let base = api.base().to_string();
    let write_url = |db: &str| format!("{base}/api/v3/write_lp?db={db}&precision=nanosecond");
    let auth = |rb: reqwest::RequestBuilder| match api.token() {
        Some(t) => rb.bearer_auth(t),
        None => rb,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let prober = tokio::spawn(probe_health(base.clone(), Arc::clone(&stop)));
    let mut attacks = Vec::new();

    // Wide lines: rejected as lines over the column limit, in time linear in their size.
    for (fields, body) in [(8_000, &wide_8k), (200_000, &wide_200k)] {
        let name = format!("one line adding {} fields ({:.1} MB)", thousands(fields), body.len() as f64 / 1e6);
        let (status, text, _, t) = send(auth(http.post(write_url("hostile")).body(body.clone()))).await;
        let ok = status == Ok(400) && text.contains("columns per table");
        attacks.push(attack(&name, format!("{status:?}"), "400 naming the column limit", ok, t));
    }
    let (status, _, len, t) = send(auth(http.post(write_url("hostile")).body(huge_bad.clone()))).await;
    let ok = status == Ok(400) && len < 16 * 1024;
    attacks.push(attack(
        "a 9 MB line rejected (its echo is cut)",
        format!("{status:?}, {len} byte body"),
        "400 with a body under 16 KiB",
        ok,
        t,
    ));
    let (status, text, _, t) = send(auth(http.post(write_url("hostile_tables")).body(tables.clone()))).await;
    let ok = status == Ok(400) && text.contains("tables limit");
    attacks.push(attack(
        "3,000 new tables in one write",
        format!("{status:?}"),
        "400 naming the table limit (the first 2,000 written)",
        ok,
        t,
    ));
    let (status, _, _, t) =
        send(auth(http.post(write_url("hostile")).header("content-encoding", "gzip").body(bomb.clone()))).await;
    attacks.push(attack("gzip bomb (256 MiB of zeros)", format!("{status:?}"), "413", status == Ok(413), t));
    let (status, _, _, t) = send(auth(
        http.post(format!("{base}/weir.admin.v1.Admin/ListDatabases")).header("content-type", "application/grpc-web"),
    ))
    .await;
    attacks.push(attack("a gRPC-Web call", format!("{status:?}"), "415", status == Ok(415), t));

    // Nine endless queries, abandoned after a second: the server must stop working on them.
    let endless = "SELECT count(*) FROM range(100000000000)";
    let t = Instant::now();
    let mut abandoned = Vec::new();
    for _ in 0..9 {
        let rb = auth(http.get(format!("{base}/api/v3/query_sql")).query(&[("db", KNOWN_DB), ("q", endless)]));
        abandoned.push(tokio::spawn(async move { rb.timeout(Duration::from_secs(1)).send().await.is_err() }));
    }
    let mut dropped = 0;
    for a in abandoned {
        dropped += usize::from(a.await.unwrap_or(false));
    }
    // Give cancellation a moment, then measure the server's CPU over two seconds.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let cpu = match pid.and_then(cpu_seconds) {
        Some(before) => {
            tokio::time::sleep(Duration::from_secs(2)).await;
            pid.and_then(cpu_seconds).map(|after| (after - before) / 2.0)
        }
        None => None,
    };
    let (answer, ok) = match cpu {
        Some(c) => (format!("{dropped} dropped; server CPU afterwards {:.2} cores", c), c < 0.5 && dropped == 9),
        None => (format!("{dropped} dropped; server CPU not measurable"), dropped == 9),
    };
    attacks.push(attack(
        "9 endless queries abandoned by their clients",
        answer,
        "CPU under 0.5 cores",
        ok,
        t.elapsed(),
    ));

    // Past --query-timeout (5 s here): a 504 naming the flag.
    let (status, text, _, t) =
        send(auth(http.get(format!("{base}/api/v3/query_sql")).query(&[("db", KNOWN_DB), ("q", endless)]))).await;
    let ok = status == Ok(504) && text.contains("--query-timeout");
    attacks.push(attack("an endless query (--query-timeout 5s)", format!("{status:?}"), "504 naming the flag", ok, t));
    // A grouping far over --query-memory-limit (256 MiB): 30M groups spill to disk or fail
    // cleanly naming the limit, within the timeout; an answer must be right.
    let grouping =
        "SELECT count(*) AS groups FROM (SELECT value % 30000000 AS k, count(*) AS c FROM range(60000000) GROUP BY k)";
    let (status, text, _, t) = send(auth(http.get(format!("{base}/api/v3/query_sql")).query(&[
        ("db", KNOWN_DB),
        ("q", grouping),
        ("format", "csv"),
    ])))
    .await;
    let (detail, ok) = match status {
        Ok(200) => (format!("200: {}", text.trim().replace('\n', " ")), text.trim() == "groups\n30000000"),
        Ok(500) => {
            (format!("500: {}", text.chars().take(100).collect::<String>()), text.contains("--query-memory-limit"))
        }
        Ok(504) => ("504 (--query-timeout)".to_string(), true),
        other => (format!("{other:?}"), false),
    };
    attacks.push(attack(
        "30M groups (--query-memory-limit 256MiB)",
        detail,
        "the right count, or an error naming a limit",
        ok,
        t,
    ));
    let (status, text, _, t) = send(auth(http.get(format!("{base}/api/v3/query_sql")).query(&[
        ("db", KNOWN_DB),
        ("q", "SELECT * FROM range(20000000)"),
        ("format", "pretty"),
    ])))
    .await;
    let ok = status == Ok(400) && text.contains("rows");
    attacks.push(attack("pretty answer of 20M rows", format!("{status:?}"), "400 naming the row cap", ok, t));

    // Slowloris and idle connections: closed after --http-header-read-timeout (5 s), and
    // connections over --max-connections (1000) refused with 503 at once.
    let t = Instant::now();
    let (refused, closed, open, failed) = idle_connections(&base, 50, true, Duration::from_secs(15)).await;
    attacks.push(attack(
        "50 slowloris connections (a byte a second)",
        format!("{closed} closed by the server, {open} still open, {refused} refused, {failed} failed"),
        "all 50 closed by the server",
        closed == 50,
        t.elapsed(),
    ));
    let t = Instant::now();
    let (refused, closed, open, failed) = idle_connections(&base, 3_000, false, Duration::from_secs(20)).await;
    attacks.push(attack(
        "3,000 idle connections",
        format!("{refused} refused with 503, {closed} closed after the timeout, {open} still open, {failed} failed"),
        "none left open, at least 2,000 refused",
        open == 0 && refused >= 2_000 && refused + closed + failed == 3_000,
        t.elapsed(),
    ));

    stop.store(true, Ordering::Relaxed);
    let (samples, health_failed) = prober.await.unwrap_or_default();
    let health = Latency::from_samples(&samples);
    let health_slow = samples.iter().filter(|d| **d > HEALTH_BOUND).count();
    println!(
        "   /health: {} probes, p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; {} over {} ms, {} failed",
        thousands(samples.len() as u64),
        health.p50,
        health.p99,
        health.max,
        health_slow,
        HEALTH_BOUND.as_millis(),
        health_failed
    );
    let (data_intact, data_detail) = check_known(api).await;
    println!("   known data set: {} ({data_detail})", if data_intact { "intact" } else { "CHANGED" });
    Ok(HostileOutcome { attacks, health, health_slow, health_failed, data_intact, data_detail })
}
