//! Durability under `kill -9`: several clients write continuously (with snapshots to
//! Parquet happening underneath), the server is killed mid-load, restarted, and every
//! acknowledged line must be there exactly once, and no rejected line at all. Repeated
//! several rounds on the same data directory.

use std::{
    collections::HashSet,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use integration_tests::{Server, ServerConfig};
use tokio::sync::Mutex;

const CLIENTS: usize = 4;
const ROUNDS: usize = 3;
const BATCH: usize = 50;

#[derive(Default)]
struct Ledger {
    /// (client, n) of acknowledged lines.
    acked: HashSet<(usize, u64)>,
    /// (client, n) of lines the server rejected.
    rejected: HashSet<(usize, u64)>,
}

/// One batch: BATCH good lines, and every 7th batch one line with a type conflict (`v` is
/// a float column; a string is refused).
fn batch(client: usize, round: usize, first: u64) -> (String, Vec<u64>, Option<u64>) {
    let mut lp = String::new();
    let mut good = Vec::new();
    let mut bad = None;
    for i in 0..BATCH as u64 {
        let n = first + i;
        // Unique timestamps per (client, n): distinct points.
        let ts = 1_700_000_000_000_000_000i64 + (client as i64) * 1_000_000_000_000 + n as i64 * 1_000;
        if i == 3 && (first / BATCH as u64).is_multiple_of(7) {
            lp.push_str(&format!("load,client=c{client} n={n}i,v=\"oops\",round={round}i {ts}\n"));
            bad = Some(n);
        } else {
            lp.push_str(&format!("load,client=c{client} n={n}i,v={n}.5,round={round}i {ts}\n"));
            good.push(n);
        }
    }
    (lp, good, bad)
}

async fn client_loop(
    url: String,
    client: usize,
    round: usize,
    start: u64,
    stop: Arc<AtomicBool>,
    ledger: Arc<Mutex<Ledger>>,
) -> u64 {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let mut next = start;
    while !stop.load(Ordering::SeqCst) {
        let (lp, good, bad) = batch(client, round, next);
        next += BATCH as u64;
        let resp = http.post(format!("{url}/api/v3/write_lp?db=crash")).body(lp).send().await;
        let Ok(resp) = resp else {
            // Connection died with the server: outcome unknown, neither acked nor rejected.
            break;
        };
        let status = resp.status().as_u16();
        let Ok(body) = resp.text().await else { break };
        let mut l = ledger.lock().await;
        match status {
            204 => {
                assert!(bad.is_none(), "a bad line was accepted");
                l.acked.extend(good.iter().map(|n| (client, *n)));
            }
            400 => {
                // Partial write: the listed lines were rejected, all others written.
                let v: serde_json::Value = serde_json::from_str(&body).unwrap();
                assert_eq!(v["error"], "partial write of line protocol occurred", "{body}");
                assert_eq!(v["data"].as_array().unwrap().len(), 1, "{body}");
                l.acked.extend(good.iter().map(|n| (client, *n)));
                l.rejected.insert((client, bad.expect("400 only for the bad batch")));
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    next
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kill9_under_load_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig {
        data_dir: Some(dir.path().to_path_buf()),
        // Small snapshots so Parquet persistence and WAL retirement happen mid-load.
        args: vec!["--snapshot-rows".into(), "3000".into()],
        ..Default::default()
    };
    let mut server = Server::start(config);
    let ledger = Arc::new(Mutex::new(Ledger::default()));
    let mut next = [0u64; CLIENTS];
    for round in 0..ROUNDS {
        let stop = Arc::new(AtomicBool::new(false));
        let handles: Vec<_> = (0..CLIENTS)
            .map(|c| {
                tokio::spawn(client_loop(server.url.clone(), c, round, next[c], Arc::clone(&stop), Arc::clone(&ledger)))
            })
            .collect();
        // Let load build up: wait until this round acknowledged a fair number of lines.
        let target = (round + 1) * 15_000;
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while ledger.lock().await.acked.len() < target {
            assert!(std::time::Instant::now() < deadline, "load did not progress");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        server.kill9();
        stop.store(true, Ordering::SeqCst);
        for (c, h) in handles.into_iter().enumerate() {
            next[c] = h.await.unwrap() + 10_000; // skip any in-flight range
        }
        server = server.restart();

        let l = ledger.lock().await;
        let rows = server.query("crash", "SELECT client, n FROM load", "csv").await;
        let mut present: HashSet<(usize, u64)> = HashSet::new();
        let mut total = 0usize;
        for line in rows.lines().skip(1) {
            let (c, n) = line.split_once(',').unwrap();
            let c: usize = c.trim_start_matches('c').parse().unwrap();
            let n: u64 = n.parse().unwrap();
            total += 1;
            assert!(present.insert((c, n)), "duplicate row for client {c} n {n}");
        }
        let missing: Vec<_> = l.acked.iter().filter(|k| !present.contains(k)).take(5).collect();
        assert!(
            missing.is_empty(),
            "round {round}: {} acknowledged line(s) lost after kill -9, e.g. {missing:?}",
            l.acked.iter().filter(|k| !present.contains(k)).count()
        );
        let resurrected: Vec<_> = l.rejected.iter().filter(|k| present.contains(k)).collect();
        assert!(resurrected.is_empty(), "rejected lines present: {resurrected:?}");
        assert!(!l.rejected.is_empty(), "the load must include rejected lines");
        let files = server.query("crash", "SELECT count(*) AS n FROM system.parquet_files", "csv").await;
        assert_ne!(files, "n\n0\n", "snapshots must have run during the load");
        eprintln!(
            "round {round}: {} acked, {} rejected, {total} rows after restart, parquet files: {}",
            l.acked.len(),
            l.rejected.len(),
            files.trim_start_matches("n\n").trim()
        );
    }
}
