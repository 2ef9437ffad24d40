//! HTTP client for the Weir API: writes, SQL queries and `/metrics`.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use bytes::Bytes;
use reqwest::header;
use serde_json::Value;

/// A pooled HTTP/1.1 client bound to one server.
#[derive(Debug, Clone)]
pub(crate) struct Api {
    client: reqwest::Client,
    base: String,
    token: Option<String>,
}

/// The outcome of one write request.
#[derive(Debug)]
pub(crate) struct WriteResponse {
    /// HTTP status, or `None` when the request failed below HTTP (connection error).
    pub(crate) status: Option<u16>,
    /// Response body or transport error text (empty on 204).
    pub(crate) detail: String,
    /// From just before sending to the end of the response body.
    pub(crate) latency: Duration,
}

impl WriteResponse {
    pub(crate) fn ok(&self) -> bool {
        self.status == Some(204)
    }

    /// `status 400: <body>` or `no response: <error>`.
    pub(crate) fn describe(&self) -> String {
        match self.status {
            Some(s) => format!("status {s}: {}", self.detail),
            None => format!("no response: {}", self.detail),
        }
    }
}

/// Where a write goes and how.
#[derive(Debug, Clone)]
pub(crate) struct WriteTarget {
    url: String,
    gzip: bool,
}

impl Api {
    pub(crate) fn new(base: &str, token: Option<String>, pool_size: usize) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(pool_size)
            .pool_idle_timeout(Duration::from_secs(300))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(300))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Self { client, base: base.trim_end_matches('/').to_string(), token })
    }

    /// Base URL (`http://host:port`).
    pub(crate) fn base(&self) -> &str {
        &self.base
    }

    /// POST a JSON body to `path` and insist on a 2xx answer.
    pub(crate) async fn post_json(&self, path: &str, body: &Value) -> anyhow::Result<()> {
        let rb = self.client.post(format!("{}{path}", self.base)).json(body);
        let resp = self.auth(rb).send().await.with_context(|| format!("POST {path}"))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("POST {path} returned {status}: {}", resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// Put a plugin file on the server through the API (`POST /api/v3/plugins/files`, or
    /// `PUT` when it exists): how plugins reach a plugin host in another container.
    pub(crate) async fn upload_plugin(&self, name: &str, source: &str) -> anyhow::Result<()> {
        let body = serde_json::json!({"plugin_name": name, "content": source});
        let url = format!("{}/api/v3/plugins/files", self.base);
        let resp = self.auth(self.client.post(&url).json(&body)).send().await.context("POST /api/v3/plugins/files")?;
        let resp = if resp.status() == reqwest::StatusCode::CONFLICT {
            self.auth(self.client.put(&url).json(&body)).send().await.context("PUT /api/v3/plugins/files")?
        } else {
            resp
        };
        if !resp.status().is_success() {
            bail!("uploading {name} returned {}: {}", resp.status(), resp.text().await.unwrap_or_default());
        }
        Ok(())
    }

    /// `GET path` (with the token): status and body.
    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<(u16, Bytes)> {
        let resp = self.auth(self.client.get(format!("{}{path}", self.base))).send().await?;
        let status = resp.status().as_u16();
        Ok((status, resp.bytes().await?))
    }

    /// Bearer token, if any.
    pub(crate) fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// Start `GET /api/v3/query_sql` in `format` and return the response with its body
    /// unread, for streaming measurements.
    pub(crate) async fn query_raw(&self, db: &str, sql: &str, format: &str) -> anyhow::Result<reqwest::Response> {
        let rb = self.client.get(format!("{}/api/v3/query_sql", self.base)).query(&[
            ("db", db),
            ("q", sql),
            ("format", format),
        ]);
        self.auth(rb).send().await.with_context(|| format!("query failed: {sql}"))
    }

    fn auth(&self, rb: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => rb.bearer_auth(t),
            None => rb,
        }
    }

    /// A `/api/v3/write_lp` target (nanosecond precision).
    pub(crate) fn write_target(&self, db: &str, no_sync: bool, gzip: bool) -> WriteTarget {
        WriteTarget {
            url: format!("{}/api/v3/write_lp?db={db}&precision=nanosecond&no_sync={no_sync}", self.base),
            gzip,
        }
    }

    /// Send one write and read the whole response.
    pub(crate) async fn write(&self, target: &WriteTarget, body: Bytes) -> WriteResponse {
        let mut rb = self.client.post(&target.url).header(header::CONTENT_TYPE, "text/plain; charset=utf-8");
        if target.gzip {
            rb = rb.header(header::CONTENT_ENCODING, "gzip");
        }
        let rb = self.auth(rb).body(body);
        let started = Instant::now();
        let result = async {
            let resp = rb.send().await?;
            let status = resp.status().as_u16();
            let text = resp.text().await?;
            Ok::<_, reqwest::Error>((status, text))
        }
        .await;
        let latency = started.elapsed();
        match result {
            Ok((status, detail)) => WriteResponse { status: Some(status), detail, latency },
            Err(e) => WriteResponse { status: None, detail: error_chain(&e), latency },
        }
    }

    /// Write and insist on 204.
    pub(crate) async fn write_ok(&self, target: &WriteTarget, body: Bytes) -> anyhow::Result<Duration> {
        let r = self.write(target, body).await;
        if !r.ok() {
            bail!("write to {} failed: {}", target.url, r.describe());
        }
        Ok(r.latency)
    }

    /// Run SQL, returning the rows (`format=json`) and the latency from sending to the
    /// end of the body (JSON decoding is not counted).
    pub(crate) async fn query(&self, db: &str, sql: &str) -> anyhow::Result<(Vec<Value>, Duration)> {
        let rb = self.client.get(format!("{}/api/v3/query_sql", self.base)).query(&[
            ("db", db),
            ("q", sql),
            ("format", "json"),
        ]);
        let rb = self.auth(rb);
        let started = Instant::now();
        let resp = rb.send().await.with_context(|| format!("query failed: {sql}"))?;
        let status = resp.status();
        let body = resp.bytes().await.with_context(|| format!("reading query result: {sql}"))?;
        let latency = started.elapsed();
        if !status.is_success() {
            bail!("query returned {status}: {}\nSQL: {sql}", String::from_utf8_lossy(&body));
        }
        let rows: Vec<Value> = serde_json::from_slice(&body)
            .with_context(|| format!("query result is not a JSON array: {}", String::from_utf8_lossy(&body)))?;
        Ok((rows, latency))
    }

    /// `GET /health` until it answers 200 or `timeout` passes.
    pub(crate) async fn wait_healthy(&self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let r = self.auth(self.client.get(format!("{}/health", self.base))).send().await;
            match r {
                Ok(resp) if resp.status().is_success() => return Ok(()),
                Ok(resp) if Instant::now() >= deadline => {
                    bail!("{}/health answered {}", self.base, resp.status())
                }
                Err(e) if Instant::now() >= deadline => {
                    bail!("{} is not reachable: {e}", self.base)
                }
                _ => tokio::time::sleep(Duration::from_millis(200)).await,
            }
        }
    }

    /// Scrape `/metrics`. `None` when the endpoint is unavailable (figures that need it
    /// are then left out).
    pub(crate) async fn metrics(&self) -> Option<Metrics> {
        let resp = self.auth(self.client.get(format!("{}/metrics", self.base))).send().await.ok()?;
        if !resp.status().is_success() {
            return None;
        }
        Some(Metrics::parse(&resp.text().await.ok()?))
    }
}

/// An error and its causes, `a: b: c`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Unlabelled samples of a Prometheus text exposition (`name value`).
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics(HashMap<String, f64>);

/// WAL flush histogram name.
const WAL_FLUSH: &str = "weir_wal_flush_duration_seconds";

impl Metrics {
    pub(crate) fn parse(text: &str) -> Self {
        let mut m = HashMap::new();
        for line in text.lines() {
            if line.starts_with('#') || line.contains('{') {
                continue;
            }
            let mut parts = line.split_whitespace();
            if let (Some(name), Some(value)) = (parts.next(), parts.next())
                && let Ok(v) = value.parse::<f64>()
            {
                m.insert(name.to_string(), v);
            }
        }
        Self(m)
    }

    fn get(&self, name: &str) -> Option<f64> {
        self.0.get(name).copied()
    }

    /// First sample among `names` that exists (counters may or may not carry `_total`).
    fn first(&self, names: &[&str]) -> Option<f64> {
        names.iter().find_map(|n| self.get(n))
    }

    /// Server-side figures that changed between `before` and `after`.
    pub(crate) fn delta(before: &Self, after: &Self) -> ServerDelta {
        let d = |names: &[&str]| match (after.first(names), before.first(names)) {
            (Some(a), Some(b)) => Some(a - b),
            _ => None,
        };
        ServerDelta {
            wal_flushes: d(&[&format!("{WAL_FLUSH}_count")]),
            wal_flush_seconds: d(&[&format!("{WAL_FLUSH}_sum")]),
            wal_bytes: d(&["weir_wal_flush_bytes_total", "weir_wal_flush_bytes"]),
            snapshots: d(&["weir_snapshots_total", "weir_snapshots"]),
            lines_accepted: d(&["weir_write_lines_total", "weir_write_lines"]),
        }
    }
}

/// What the server reports having done during a scenario.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct ServerDelta {
    pub(crate) wal_flushes: Option<f64>,
    pub(crate) wal_flush_seconds: Option<f64>,
    pub(crate) wal_bytes: Option<f64>,
    pub(crate) snapshots: Option<f64>,
    pub(crate) lines_accepted: Option<f64>,
}

impl ServerDelta {
    /// Mean WAL flush duration in ms.
    pub(crate) fn mean_flush_ms(&self) -> Option<f64> {
        match (self.wal_flushes, self.wal_flush_seconds) {
            (Some(n), Some(s)) if n > 0.0 => Some(s / n * 1e3),
            _ => None,
        }
    }

    pub(crate) fn to_json(self) -> Value {
        serde_json::json!({
            "wal_flushes": self.wal_flushes,
            "wal_flush_mean_ms": self.mean_flush_ms().map(crate::stats::round3),
            "wal_bytes": self.wal_bytes,
            "snapshots": self.snapshots,
            "lines_accepted": self.lines_accepted,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_diffs_prometheus_text() {
        let a = Metrics::parse(
            "# HELP x\n# TYPE weir_wal_flush_duration_seconds histogram\n\
             weir_wal_flush_duration_seconds_sum 1.5\nweir_wal_flush_duration_seconds_count 10\n\
             weir_wal_flush_duration_seconds_bucket{le=\"0.001\"} 3\nweir_snapshots_total 0\n# EOF\n",
        );
        let b = Metrics::parse(
            "weir_wal_flush_duration_seconds_sum 2.5\nweir_wal_flush_duration_seconds_count 30\nweir_snapshots_total 1\n",
        );
        let d = Metrics::delta(&a, &b);
        assert_eq!(d.wal_flushes, Some(20.0));
        assert_eq!(d.snapshots, Some(1.0));
        assert!((d.mean_flush_ms().unwrap() - 50.0).abs() < 1e-9);
        assert_eq!(d.wal_bytes, None);
    }
}

/// Where a scenario puts its plugins: into the plugin directory of a server this benchmark
/// started, or uploaded through the API (a server elsewhere, e.g. two containers).
#[derive(Debug, Clone)]
pub(crate) enum Plugins {
    /// Written into this directory.
    Dir(std::path::PathBuf),
    /// Uploaded with `POST`/`PUT /api/v3/plugins/files`.
    Upload,
}

impl Plugins {
    /// Make `name` hold `source`.
    pub(crate) async fn put(&self, api: &Api, name: &str, source: &str) -> anyhow::Result<()> {
        match self {
            Self::Dir(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(name), source).with_context(|| format!("writing {name}"))
            }
            Self::Upload => api.upload_plugin(name, source).await,
        }
    }
}
