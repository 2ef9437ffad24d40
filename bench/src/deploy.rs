//! Two containers against embedded: the same request-trigger and WAL-delivery figures
//! through a server whose plugin host runs in another container (`--compose-host`, e.g.
//! the deployment `scripts/bench-compose` brings up) and through an embedded server this
//! benchmark starts, in one run. Plugins reach both through the API (uploaded), as they
//! must reach a plugin host that shares no filesystem with the database.

use serde_json::{Value, json};

use crate::{
    client::{Api, Plugins},
    engine::{self, Throughput},
    requests::{self, RequestOutcome},
    stats::thousands,
};

/// Client count of the request figures.
pub(crate) const CLIENTS: usize = 8;
/// The two-container figures should reach this share of the embedded ones.
pub(crate) const TARGET_RATIO: f64 = 0.8;

/// One deployment's figures.
#[derive(Debug, Clone)]
pub(crate) struct Side {
    pub(crate) requests: RequestOutcome,
    pub(crate) throughput: Throughput,
}

impl Side {
    fn sync_cell(&self) -> Option<&requests::Cell> {
        self.requests.cells.iter().find(|c| c.kind == "sync")
    }

    fn to_json(&self) -> Value {
        json!({"requests": self.requests.to_json(), "wal_delivery_rows_per_s": self.throughput.end_to_end_rows_per_s().round()})
    }
}

/// Both sides.
#[derive(Debug, Clone)]
pub(crate) struct DeployOutcome {
    pub(crate) embedded: Side,
    pub(crate) compose: Side,
}

impl DeployOutcome {
    /// (figure, embedded, two containers, ratio) with "higher is better" ratios.
    pub(crate) fn ratios(&self) -> Vec<(String, f64, f64, f64)> {
        let mut out = Vec::new();
        for kind in ["sync", "async", "async_2_workers"] {
            let (Some(e), Some(c)) = (
                self.embedded.requests.cells.iter().find(|x| x.kind == kind),
                self.compose.requests.cells.iter().find(|x| x.kind == kind),
            ) else {
                continue;
            };
            out.push((
                format!("{kind} request trigger, {CLIENTS} clients: req/s"),
                e.per_s,
                c.per_s,
                c.per_s / e.per_s,
            ));
            out.push((
                format!("{kind} request trigger, {CLIENTS} clients: p50 ms (ratio embedded/compose)"),
                e.latency.p50,
                c.latency.p50,
                e.latency.p50 / c.latency.p50,
            ));
        }
        let (e, c) =
            (self.embedded.throughput.end_to_end_rows_per_s(), self.compose.throughput.end_to_end_rows_per_s());
        out.push(("WAL delivery into a counting plugin: rows/s".to_string(), e, c, c / e));
        out
    }

    pub(crate) fn to_json(&self) -> Value {
        json!({
            "embedded": self.embedded.to_json(),
            "compose": self.compose.to_json(),
            "ratios": self.ratios().into_iter().map(|(name, e, c, r)| json!({
                "figure": name, "embedded": e, "compose": c, "ratio": r,
            })).collect::<Vec<_>>(),
            "target_ratio": TARGET_RATIO,
        })
    }

    pub(crate) fn problems(&self) -> Vec<String> {
        let mut p: Vec<String> = self.embedded.requests.problems();
        p.extend(self.compose.requests.problems());
        for (name, _, _, ratio) in self.ratios() {
            if ratio < TARGET_RATIO {
                p.push(format!("two containers vs embedded: {name} at {ratio:.2} of embedded (target {TARGET_RATIO})"));
            }
        }
        p
    }

    pub(crate) fn render(&self) -> String {
        let mut s = String::from(
            "\nTwo containers vs embedded (plugins uploaded through the API on both; ratio: higher is better):\n",
        );
        for (name, e, c, r) in self.ratios() {
            let fmt = |v: f64| if v >= 100.0 { thousands(v as u64) } else { format!("{v:.2}") };
            s.push_str(&format!("  {name:<72} embedded {:>9}  compose {:>9}  ratio {r:.2}\n", fmt(e), fmt(c)));
        }
        if let (Some(e), Some(c)) = (self.embedded.sync_cell(), self.compose.sync_cell()) {
            s.push_str(&format!(
                "  (sync at {CLIENTS} clients, p99: embedded {:.2} ms, compose {:.2} ms)\n",
                e.latency.p99, c.latency.p99
            ));
        }
        s
    }
}

/// Measure one side: the request triggers at [`CLIENTS`] clients, then WAL delivery.
pub(crate) async fn side(
    api: &Api,
    label: &str,
    seconds: f64,
    rows: u64,
    hosts: u32,
    suffix: &str,
) -> anyhow::Result<Side> {
    println!("   -- {label}: request triggers, {CLIENTS} clients, {seconds} s per trigger");
    let requests =
        requests::run_with(api, &Plugins::Upload, seconds, &[CLIENTS], &format!("bench_deploy_requests{suffix}"))
            .await?;
    println!("   -- {label}: {} rows into a counting plugin", thousands(rows));
    let throughput =
        engine::throughput_with(api, &Plugins::Upload, rows, hosts, &format!("bench_deploy_tp{suffix}")).await?;
    println!(
        "      all rows seen by the plugin after {:.2} s = {} rows/s end to end",
        throughput.delivered_time.as_secs_f64(),
        thousands(throughput.end_to_end_rows_per_s() as u64)
    );
    Ok(Side { requests, throughput })
}
