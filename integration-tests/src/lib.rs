//! Harness for end-to-end tests: starts the real `weir` binary on port 0, reads the bound
//! address from its stdout, captures its logs, and kills it on drop.
//!
//! Binaries are found in `$WEIR_BIN_DIR`, else in the profile directory the test
//! executable was built in (`<target>/release` for scripts/test). `scripts/test` builds
//! them first.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

/// Directory holding the built binaries.
pub fn bin_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("WEIR_BIN_DIR") {
        return PathBuf::from(d);
    }
    // <target>/<profile>/deps/<test-exe> → <target>/<profile>
    let exe = std::env::current_exe().expect("current exe");
    exe.parent().and_then(Path::parent).map(Path::to_path_buf).expect("test executable lives in target/<profile>/deps")
}

/// Path of a built binary; panics with instructions when it is missing.
pub fn bin(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.exists(),
        "{} not found: build the binaries first (`cargo build --release --workspace --bins`, or run scripts/test)",
        p.display()
    );
    p
}

/// How to start a server.
#[derive(Debug, Clone, Default)]
pub struct ServerConfig {
    /// Data directory (file object store); a temp dir when `None`.
    pub data_dir: Option<PathBuf>,
    /// Authentication token to bootstrap (auth on), or `None` for `--without-auth`.
    pub admin_token: Option<String>,
    /// Extra `weir serve` arguments.
    pub args: Vec<String>,
    /// Extra environment.
    pub env: Vec<(String, String)>,
    /// Address to bind (default `127.0.0.1:0`, a free port).
    pub bind: Option<String>,
}

/// A running `weir serve`.
#[derive(Debug)]
pub struct Server {
    child: Option<Child>,
    /// Base URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
    /// Data directory.
    pub data_dir: PathBuf,
    _tmp: Option<Arc<tempfile::TempDir>>,
    config: ServerConfig,
    stdout: Arc<Mutex<Vec<String>>>,
    log_path: PathBuf,
}

impl Server {
    /// Start a server and wait until it listens.
    pub fn start(config: ServerConfig) -> Self {
        let (tmp, data_dir) = match &config.data_dir {
            Some(d) => (None, d.clone()),
            None => {
                let t = tempfile::tempdir().expect("tempdir");
                let d = t.path().to_path_buf();
                (Some(Arc::new(t)), d)
            }
        };
        Self::spawn(config, data_dir, tmp)
    }

    fn spawn(config: ServerConfig, data_dir: PathBuf, tmp: Option<Arc<tempfile::TempDir>>) -> Self {
        std::fs::create_dir_all(&data_dir).expect("data dir");
        let log_path = data_dir.join(format!("server-{}.log", std::process::id()));
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&log_path).expect("log file");
        let mut cmd = Command::new(bin("weir"));
        cmd.arg("serve")
            .arg("--http-bind")
            .arg(config.bind.as_deref().unwrap_or("127.0.0.1:0"))
            .arg("--data-dir")
            .arg(data_dir.join("store"))
            // Explicit, so servers on the memory or S3 store do not use ./.weir/plugins.
            .arg("--plugin-dir")
            .arg(data_dir.join("plugins"))
            .args(&config.args)
            .env("WEIR_LOG_FILTER", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log));
        match &config.admin_token {
            Some(t) => {
                cmd.arg("--admin-token").arg(t);
            }
            // A test that gives the token another way (--admin-token-file) keeps auth on.
            None if config.args.iter().any(|a| a == "--admin-token-file") => {}
            None => {
                cmd.arg("--without-auth");
            }
        }
        for (k, v) in &config.env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn weir serve");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let lines = Arc::clone(&lines);
            std::thread::spawn(move || {
                for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("Weir listening on ") {
                        let _ = tx.send(addr.to_string());
                    }
                    lines.lock().expect("lock").push(line);
                }
            });
        }
        let deadline = Instant::now() + Duration::from_secs(120);
        let url = loop {
            if let Ok(u) = rx.recv_timeout(Duration::from_millis(100)) {
                break u;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "weir serve exited with {status} before listening; log:\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "weir serve did not start within 120s");
        };
        Self { child: Some(child), url, data_dir, _tmp: tmp, config, stdout: lines, log_path }
    }

    /// What the server printed on stdout so far.
    pub fn stdout(&self) -> Vec<String> {
        self.stdout.lock().expect("lock").clone()
    }

    /// The server log (stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Kill with SIGKILL (no shutdown work at all) and wait for the process to go.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Graceful stop (SIGTERM), waiting up to 60 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Start a new process on the same data directory (after [`Server::kill9`] or
    /// [`Server::stop`]).
    pub fn restart(mut self) -> Self {
        self.kill9();
        let tmp = self._tmp.clone();
        Self::spawn(self.config.clone(), self.data_dir.clone(), tmp)
    }

    /// The admin token this server was started with.
    pub fn token(&self) -> Option<&str> {
        self.config.admin_token.as_deref()
    }

    /// An HTTP client (with the admin token as a default header when auth is on).
    pub fn http(&self) -> reqwest::Client {
        let mut headers = reqwest::header::HeaderMap::new();
        if let Some(t) = self.token() {
            headers.insert(reqwest::header::AUTHORIZATION, format!("Bearer {t}").parse().expect("header"));
        }
        reqwest::Client::builder().default_headers(headers).timeout(Duration::from_secs(120)).build().expect("client")
    }

    /// The plugin directory `weir serve` uses by default (beside the store).
    pub fn plugin_dir(&self) -> PathBuf {
        self.data_dir.join("plugins")
    }

    /// Run a query and return the body text (panics on a non-200 answer).
    pub async fn query(&self, db: &str, sql: &str, format: &str) -> String {
        let r = self
            .http()
            .get(format!("{}/api/v3/query_sql", self.url))
            .query(&[("db", db), ("q", sql), ("format", format)])
            .send()
            .await
            .expect("query request");
        let status = r.status();
        let body = r.text().await.expect("body");
        assert_eq!(status, 200, "query {sql:?} failed: {body}");
        body
    }

    /// Write line protocol via `/api/v3/write_lp`; returns (status, body).
    pub async fn write(&self, db: &str, lp: &str) -> (u16, String) {
        let r = self
            .http()
            .post(format!("{}/api/v3/write_lp", self.url))
            .query(&[("db", db)])
            .body(lp.to_string())
            .send()
            .await
            .expect("write request");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Create a database (panics unless 200).
    pub async fn create_db(&self, db: &str) {
        let r = self
            .http()
            .post(format!("{}/api/v3/configure/database", self.url))
            .json(&serde_json::json!({"db": db}))
            .send()
            .await
            .expect("create database");
        assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
    }

    /// `POST /api/v3/configure/processing_engine_trigger`; returns (status, body).
    pub async fn create_trigger(&self, body: serde_json::Value) -> (u16, String) {
        let r = self
            .http()
            .post(format!("{}/api/v3/configure/processing_engine_trigger", self.url))
            .json(&body)
            .send()
            .await
            .expect("create trigger");
        (r.status().as_u16(), r.text().await.unwrap_or_default())
    }

    /// Put a plugin file into the plugin directory.
    pub fn plugin(&self, name: &str, source: &str) {
        let path = self.plugin_dir().join(name);
        std::fs::create_dir_all(path.parent().expect("a parent")).expect("plugin dir");
        std::fs::write(path, source).expect("plugin file");
    }

    /// The JSON rows of `sql` (panics on a non-200 answer).
    pub async fn rows(&self, db: &str, sql: &str) -> Vec<serde_json::Value> {
        serde_json::from_str(&self.query(db, sql, "json").await).expect("JSON rows")
    }

    /// The rows of `sql` once `check` accepts them (panics after 60 s, with the engine log).
    pub async fn rows_when(
        &self,
        db: &str,
        sql: &str,
        check: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let got = eventually(Duration::from_secs(60), || async {
            let r = self
                .http()
                .get(format!("{}/api/v3/query_sql", self.url))
                .query(&[("db", db), ("q", sql)])
                .send()
                .await
                .ok()?;
            if r.status() != 200 {
                return None;
            }
            let v: Vec<serde_json::Value> = r.json().await.ok()?;
            check(&v).then_some(v)
        })
        .await;
        match got {
            Some(v) => v,
            None => panic!(
                "{sql}: condition not met; last answer: {:?}\nlogs: {:?}",
                self.query(db, sql, "json").await,
                self.engine_logs(db).await
            ),
        }
    }

    /// `system.processing_engine_logs` of `db` as `LEVEL: text`, oldest first.
    pub async fn engine_logs(&self, db: &str) -> Vec<String> {
        self.rows(db, "SELECT log_level, log_text FROM system.processing_engine_logs ORDER BY event_time")
            .await
            .iter()
            .map(|r| format!("{}: {}", r["log_level"].as_str().unwrap_or(""), r["log_text"].as_str().unwrap_or("")))
            .collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- weir serve log ({}) ----\n{}", self.log_path.display(), self.log());
        }
        self.kill9();
    }
}

/// Run the `weir` CLI with arguments; returns (success, stdout, stderr).
pub fn weir_cli(args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
    weir_cli_env(args, stdin, &[])
}

/// [`weir_cli`] with extra environment variables (the client ones of the calling
/// environment, `WEIR_*` and `INFLUXDB3_*`, are removed first).
pub fn weir_cli_env(args: &[&str], stdin: Option<&str>, env: &[(&str, &str)]) -> (bool, String, String) {
    use std::io::Write;
    let mut cmd = Command::new(bin("weir"));
    cmd.args(args)
        .stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for k in [
        "WEIR_TOKEN",
        "WEIR_HOST",
        "WEIR_DATABASE",
        "INFLUXDB3_HOST_URL",
        "INFLUXDB3_AUTH_TOKEN",
        "INFLUXDB3_DATABASE_NAME",
    ] {
        cmd.env_remove(k);
    }
    cmd.envs(env.iter().copied());
    let mut child = cmd.spawn().expect("spawn weir");
    if let Some(input) = stdin
        && let Some(mut si) = child.stdin.take()
    {
        si.write_all(input.as_bytes()).expect("stdin");
    }
    let out = child.wait_with_output().expect("wait weir");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Poll `f` until it returns `Some`, up to `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, mut f: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A `weir-plugin-host` started on its own (as in the two-container deployment), killed on
/// drop.
#[derive(Debug)]
pub struct PluginHost {
    child: Child,
    /// Its URL, e.g. `http://127.0.0.1:40123`.
    pub url: String,
}

impl PluginHost {
    /// Start a host on a free port with `token`, its plugins in `plugin_dir`.
    pub fn start(plugin_dir: &Path, token: &str) -> Self {
        std::fs::create_dir_all(plugin_dir).expect("plugin dir");
        let mut child = Command::new(bin("weir-plugin-host"))
            .args(["--bind", "127.0.0.1:0", "--plugin-dir"])
            .arg(plugin_dir)
            .env("WEIR_PLUGIN_HOST_TOKEN", token)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn weir-plugin-host");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Some(url) = line.strip_prefix("Weir plugin host listening on ") {
                    let _ = tx.send(url.trim().to_string());
                }
            }
        });
        let url = rx.recv_timeout(Duration::from_secs(180)).expect("the plugin host started");
        Self { child, url }
    }
}

impl Drop for PluginHost {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
