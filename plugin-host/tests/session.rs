//! The plugin host end to end, with this test playing `weir serve`: a real venv, real
//! Python workers, the real gRPC session.

use std::{sync::Arc, time::Duration};

use arrow::{
    array::{DictionaryArray, Float64Array, Int64Array, RecordBatch, TimestampNanosecondArray},
    datatypes::Int32Type,
    ipc::writer::StreamWriter,
};
use plugin_host::host::{Host, HostConfig};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_proto::plugin::v1::{self as pb, core_message, host_message, plugin_host_client::PluginHostClient};

struct Core {
    tx: mpsc::Sender<pb::CoreMessage>,
    rx: tonic::Streaming<pb::HostMessage>,
    logs: Vec<String>,
    _dir: tempfile::TempDir,
    plugin_dir: std::path::PathBuf,
}

/// One venv for the whole test binary (creating one takes seconds).
fn shared_venv_dir() -> std::path::PathBuf {
    static DIR: std::sync::OnceLock<tempfile::TempDir> = std::sync::OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().unwrap()).path().to_path_buf()
}

async fn start(timeout: Duration) -> Core {
    start_with(timeout, true).await
}

/// A host whose venv has the worker speedups built (`speedups`) or not.
async fn start_with(timeout: Duration, speedups: bool) -> Core {
    start_opts(timeout, speedups, |_| {}).await
}

/// A host with its configuration adjusted by `tweak`.
async fn start_opts(timeout: Duration, speedups: bool, tweak: impl FnOnce(&mut HostConfig)) -> Core {
    let dir = tempfile::tempdir().unwrap();
    let plugin_dir = dir.path().join("plugins");
    std::fs::create_dir_all(&plugin_dir).unwrap();
    // Reuse one venv (with the speedups): link it into this plugin dir.
    let venv_root = if speedups { shared_venv_dir() } else { dir.path().join("plain") };
    let venv = plugin_host::venv::ensure(&venv_root, None, "python3", speedups).await.unwrap();
    assert_eq!(venv.native, speedups, "this machine has a C compiler: the speedups build");
    std::os::unix::fs::symlink(&venv.dir, plugin_dir.join(".venv")).unwrap();
    let mut config = HostConfig {
        plugin_dir: plugin_dir.canonicalize().unwrap(),
        plugin_timeout: timeout,
        worker_memory: Some(4 << 30),
        package_manager: plugin_host::packages::PackageManager::Pip,
        plugin_repo: plugin_host::gh::DEFAULT_REPO.to_string(),
        plugin_env: Vec::new(),
        arena_cache: true,
        confinement: None,
        fork_server: true,
        preload: Vec::new(),
        max_workers: 0,
        idle_timeout: None,
    };
    tweak(&mut config);
    let host = Host::new(config, venv);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(plugin_host::cli::serve(listener, host, Some("s3cret".to_string()), std::future::pending()));
    let mut client = PluginHostClient::connect(format!("http://{addr}")).await.unwrap();
    // Without the session token the host refuses.
    let (_tx, rx) = mpsc::channel::<pb::CoreMessage>(1);
    let refused = client.session(ReceiverStream::new(rx)).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unauthenticated);
    let (tx, rx) = mpsc::channel(64);
    let mut request = tonic::Request::new(ReceiverStream::new(rx));
    request.metadata_mut().insert("authorization", "Bearer s3cret".parse().unwrap());
    let rx = client.session(request).await.unwrap().into_inner();
    let mut core = Core { tx, rx, logs: Vec::new(), _dir: dir, plugin_dir };
    core.send(1, core_message::Body::Hello(pb::Hello { core_version: "test".into(), node_id: "n".into() })).await;
    match core.next().await {
        (1, host_message::Body::Hello(h)) => assert!(h.python_version.starts_with("3.")),
        other => panic!("expected hello, got {other:?}"),
    }
    core
}

impl Core {
    async fn send(&self, id: u64, body: core_message::Body) {
        self.tx.send(pb::CoreMessage { id, body: Some(body) }).await.unwrap();
    }

    /// The next non-log message (logs are collected).
    async fn next(&mut self) -> (u64, host_message::Body) {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(60), self.rx.message())
                .await
                .expect("host answered in time")
                .unwrap()
                .expect("stream open");
            match msg.body.unwrap() {
                host_message::Body::Log(l) => self.logs.push(format!("{}: {}", l.level, l.text)),
                body => return (msg.id, body),
            }
        }
    }

    async fn trigger(&self, name: &str, file: &str, source: &str, args: Option<&[(&str, &str)]>) {
        if !source.is_empty() {
            std::fs::write(self.plugin_dir.join(file), source).unwrap();
        }
        let trigger = pb::Trigger {
            database: "db".into(),
            name: name.into(),
            plugin_filename: file.into(),
            specification: "all_tables".into(),
            arguments: args
                .map(|a| pb::Arguments { values: a.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect() }),
            run_async: false,
            workers: 1,
        };
        self.send(0, core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(trigger) })).await;
    }

    async fn wal(&self, id: u64, trigger: &str, batch: &RecordBatch) {
        let mut w = StreamWriter::try_new(Vec::new(), batch.schema_ref()).unwrap();
        w.write(batch).unwrap();
        w.finish().unwrap();
        let tables = vec![pb::TableRows { table_name: "cpu".into(), arrow_ipc: w.into_inner().unwrap() }];
        let body = pb::WalBatch { database: "db".into(), trigger: trigger.into(), wal_seq: id, tables };
        self.send(id, core_message::Body::WalBatch(body)).await;
    }
}

fn cpu() -> RecordBatch {
    let host: DictionaryArray<Int32Type> = vec!["a", "b"].into_iter().collect();
    RecordBatch::try_from_iter([
        ("host", Arc::new(host) as _),
        ("usage", Arc::new(Float64Array::from(vec![10.0, 95.5])) as _),
        ("time", Arc::new(TimestampNanosecondArray::from(vec![1_000, 2_000])) as _),
    ])
    .unwrap()
}

fn done(body: host_message::Body) -> pb::Done {
    match body {
        host_message::Body::Done(d) => d,
        other => panic!("expected done, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_batches_reach_process_writes_and_writes_come_back() {
    let mut core = start(Duration::from_secs(30)).await;
    core.trigger("alerts", "alerts.py", r#"
def process_writes(influxdb3_local, table_batches, args):
    limit = float(args["limit"])
    rows = influxdb3_local.query("SELECT count(*) AS n FROM cpu WHERE host = $h", {"h": "a"})
    for t in table_batches:
        for r in t["rows"]:
            if r["usage"] > limit:
                influxdb3_local.write(LineBuilder("alerts").tag("host", r["host"]).float64_field("usage", r["usage"]).int64_field("seen", rows[0]["n"]).time_ns(r["time"]))
    print("checked", sum(len(t["rows"]) for t in table_batches), "rows")
"#, Some(&[("limit", "50")])).await;
    core.wal(7, "alerts", &cpu()).await;

    // The plugin's query comes up first; answer it with Arrow.
    let (qid, body) = core.next().await;
    let host_message::Body::Query(q) = body else { panic!("expected a query, got {body:?}") };
    assert_eq!((q.database.as_str(), q.sql.as_str()), ("db", "SELECT count(*) AS n FROM cpu WHERE host = $h"));
    assert_eq!(q.params.get("h").map(String::as_str), Some("a"));
    let answer = RecordBatch::try_from_iter([("n", Arc::new(Int64Array::from(vec![41])) as _)]).unwrap();
    let mut w = StreamWriter::try_new(Vec::new(), answer.schema_ref()).unwrap();
    w.write(&answer).unwrap();
    w.finish().unwrap();
    core.send(
        qid,
        core_message::Body::QueryResult(pb::QueryResult { error: String::new(), arrow_ipc: w.into_inner().unwrap() }),
    )
    .await;

    let (id, body) = core.next().await;
    assert_eq!(id, 7);
    let d = done(body);
    assert!(d.ok, "{d:?}");
    assert_eq!(d.writes.len(), 1);
    assert_eq!(d.writes[0].database, "db");
    assert_eq!(d.writes[0].lines, ["alerts,host=b usage=95.5,seen=41i 2000"]);
    assert!(core.logs.iter().any(|l| l.ends_with("checked 2 rows")), "{:?}", core.logs);
    assert!(core.logs.iter().any(|l| l.contains("starting execution with 2 rows")), "{:?}", core.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_and_timeouts_fail_the_call_and_the_next_call_gets_a_new_worker() {
    let mut core = start(Duration::from_secs(2)).await;
    core.trigger(
        "flaky",
        "flaky.py",
        r#"
import os, time
def process_writes(influxdb3_local, table_batches, args):
    mode = open(os.path.join(os.environ["PLUGIN_DIR"], "mode.txt")).read().strip()
    if mode == "crash":
        os._exit(9)
    if mode == "hang":
        while True:
            time.sleep(0.01)
    if mode == "exit":
        raise SystemExit(2)
    if mode == "oom":
        hog = bytearray(8 * 1024 ** 3)  # past the 4 GiB address-space cap
        influxdb3_local.info("allocated", len(hog))
    influxdb3_local.info("pid", os.getpid())
"#,
        None,
    )
    .await;
    let mode = core.plugin_dir.join("mode.txt");
    let mut pids = Vec::new();
    for (i, m) in ["ok", "crash", "ok", "hang", "exit", "oom", "ok"].into_iter().enumerate() {
        std::fs::write(&mode, m).unwrap();
        let id = 100 + i as u64;
        core.wal(id, "flaky", &cpu()).await;
        let (got, body) = core.next().await;
        assert_eq!(got, id);
        let d = done(body);
        match m {
            "ok" => {
                assert!(d.ok, "{d:?}");
                let pid = core.logs.iter().rev().find_map(|l| l.strip_prefix("1: pid ")).unwrap().to_string();
                pids.push(pid);
            }
            "crash" => assert!(!d.ok && d.error.contains("exited") && d.error.contains("9"), "{d:?}"),
            "hang" => assert!(!d.ok && d.error.contains("did not finish within 2s"), "{d:?}"),
            // The memory cap turns the allocation into a MemoryError inside the plugin.
            "oom" => assert_eq!((d.ok, d.error.as_str()), (false, "MemoryError: "), "{d:?}"),
            _ => assert_eq!((d.ok, d.error.as_str()), (false, "SystemExit: 2")),
        }
    }
    // Each failure that killed the process gave the next call a fresh worker; SystemExit
    // and MemoryError did not.
    assert_eq!(pids.len(), 3);
    assert_ne!(pids[0], pids[1]);
    assert_ne!(pids[1], pids[2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_batches_run_in_order_with_their_own_rows_across_a_crash() {
    let mut core = start(Duration::from_secs(30)).await;
    // Slow enough that the later batches are queued (and sent ahead to the worker) while
    // one runs; the third crashes the worker once, after its successor was sent ahead.
    core.trigger(
        "seq",
        "seq.py",
        r#"
import os, time
def process_writes(influxdb3_local, table_batches, args):
    first = table_batches[0]["rows"][0]["time"]
    influxdb3_local.info("saw", first, len(table_batches[0]["rows"]))
    time.sleep(0.2)
    marker = os.path.join(os.environ["PLUGIN_DIR"], "crashed")
    if first == 3000 and not os.path.exists(marker):
        open(marker, "w").close()
        os._exit(3)
"#,
        None,
    )
    .await;
    for i in 1..=5u64 {
        let t = i as i64 * 1000;
        let batch = RecordBatch::try_from_iter([
            ("usage", Arc::new(Float64Array::from(vec![1.0; i as usize])) as _),
            ("time", Arc::new(TimestampNanosecondArray::from(vec![t; i as usize])) as _),
        ])
        .unwrap();
        core.wal(i, "seq", &batch).await;
    }
    for i in 1..=5u64 {
        let (id, body) = core.next().await;
        assert_eq!(id, i, "answers come in order");
        let d = done(body);
        assert_eq!(d.ok, i != 3, "{i}: {d:?}");
    }
    let saw: Vec<&str> = core.logs.iter().filter_map(|l| l.strip_prefix("1: saw ")).collect();
    assert_eq!(saw, ["1000 1", "2000 2", "3000 3", "4000 4", "5000 5"], "{:?}", core.logs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_triggers_and_missing_functions_are_clear_errors() {
    let mut core = start(Duration::from_secs(30)).await;
    core.wal(1, "nobody", &cpu()).await;
    let d = done(core.next().await.1);
    assert!(!d.ok && d.error.contains("not running in the plugin host"), "{d:?}");

    core.trigger("empty", "empty.py", "x = 1\n", None).await;
    core.wal(2, "empty", &cpu()).await;
    let d = done(core.next().await.1);
    assert_eq!(
        d.error,
        "the process_writes function is not present in the plugin. Should be defined as: process_writes(influxdb3_local, table_batches, args=None)"
    );

    core.trigger("escape", "../../etc/passwd", "", None).await;
    core.wal(3, "escape", &cpu()).await;
    let d = done(core.next().await.1);
    assert!(d.error.contains("Path traversal detected: ../../etc/passwd"), "{d:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_are_the_same_with_and_without_the_worker_speedups() {
    let plugin = r#"
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info(repr(table_batches))
"#;
    let host: DictionaryArray<Int32Type> = vec![Some("a"), None, Some("a")].into_iter().collect();
    let batch = RecordBatch::try_from_iter([
        ("host", Arc::new(host) as _),
        ("usage", Arc::new(Float64Array::from(vec![Some(1.5), None, Some(-0.0)])) as _),
        ("n", Arc::new(Int64Array::from(vec![None, Some(i64::MIN), Some(7)])) as _),
        ("time", Arc::new(TimestampNanosecondArray::from(vec![1, 2, 1_700_000_000_000_000_000])) as _),
    ])
    .unwrap();
    let expected = "[{'table_name': 'cpu', 'rows': [{'host': 'a', 'usage': 1.5, 'time': 1}, \
                    {'n': -9223372036854775808, 'time': 2}, \
                    {'host': 'a', 'usage': -0.0, 'n': 7, 'time': 1700000000000000000}]}]";
    for speedups in [true, false] {
        let mut core = start_with(Duration::from_secs(30), speedups).await;
        core.trigger("show", "show.py", plugin, None).await;
        core.wal(1, "show", &batch).await;
        let (id, body) = core.next().await;
        assert_eq!(id, 1);
        assert!(done(body).ok);
        assert!(core.logs.iter().any(|l| l.ends_with(expected)), "speedups {speedups}: {:?}", core.logs);
    }
}

/// Whether a process is alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A plugin that forks a child and exits: the exit is seen at once (not at the timeout,
/// and reported as an exit), and the child dies with its worker's process group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_exits_is_seen_at_once_and_takes_its_children_along() {
    let mut core = start(Duration::from_secs(30)).await;
    core.trigger(
        "forker",
        "forker.py",
        r#"
import os, time
def process_writes(influxdb3_local, table_batches, args):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    with open(os.path.join(os.environ["PLUGIN_DIR"], "child.pid"), "w") as f:
        f.write(str(pid))
    os._exit(4)
"#,
        None,
    )
    .await;
    let started = std::time::Instant::now();
    core.wal(1, "forker", &cpu()).await;
    let d = done(core.next().await.1);
    assert!(!d.ok && d.error.contains("exited") && d.error.contains('4'), "{d:?}");
    assert!(started.elapsed() < Duration::from_secs(20), "seen after {:?}", started.elapsed());
    let child: i32 = std::fs::read_to_string(core.plugin_dir.join("child.pid")).unwrap().trim().parse().unwrap();
    let gone = (0..100).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !alive(child)
    });
    assert!(gone, "the forked child {child} outlived its worker");
}

/// Workers see an explicit environment: none of the host's WEIR_* settings or secrets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_get_no_weir_secrets_in_their_environment() {
    // SAFETY: this test binary's tests do not read these variables concurrently.
    unsafe {
        std::env::set_var("WEIR_ADMIN_TOKEN", "apiv3_must_not_leak");
        std::env::set_var("INFLUXDB3_AUTH_TOKEN", "apiv3_for_plugins");
    }
    let mut core = start(Duration::from_secs(30)).await;
    core.trigger(
        "env",
        "env.py",
        r#"
import os
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("weir", sorted(k for k in os.environ if k.startswith("WEIR") and k != "WEIR_IPC_FD"))
    influxdb3_local.info("influx", os.environ.get("INFLUXDB3_AUTH_TOKEN"))
    influxdb3_local.info("tz", os.environ.get("TZ"), "venv", "VIRTUAL_ENV" in os.environ, "dir", "PLUGIN_DIR" in os.environ)
"#,
        None,
    )
    .await;
    core.wal(1, "env", &cpu()).await;
    let d = done(core.next().await.1);
    assert!(d.ok, "{d:?}");
    assert!(core.logs.contains(&"1: weir []".to_string()), "{:?}", core.logs);
    assert!(core.logs.contains(&"1: influx apiv3_for_plugins".to_string()), "{:?}", core.logs);
    assert!(core.logs.contains(&"1: tz UTC venv True dir True".to_string()), "{:?}", core.logs);
}

/// A request plugin's answer over the message limit fails that call with the size and the
/// limit; the worker is not counted as crashed and serves the next call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_over_the_message_limit_is_a_clear_error_not_a_crash() {
    let mut core = start(Duration::from_secs(60)).await;
    let trigger = pb::Trigger {
        database: "db".into(),
        name: "big".into(),
        plugin_filename: "big.py".into(),
        specification: "request:big".into(),
        arguments: None,
        run_async: false,
        workers: 1,
    };
    std::fs::write(
        core.plugin_dir.join("big.py"),
        r#"
import os
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):
    if query_parameters.get("size") == "huge":
        return b"x" * (257 * 1024 * 1024)
    return {"pid": os.getpid()}
"#,
    )
    .unwrap();
    core.send(0, core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(trigger) })).await;
    let request = |size: &str| pb::HttpRequest {
        database: "db".into(),
        trigger: "big".into(),
        method: "GET".into(),
        path: "big".into(),
        query: [("size".to_string(), size.to_string())].into_iter().collect(),
        ..Default::default()
    };
    core.send(1, core_message::Body::HttpRequest(request("small"))).await;
    let first = done(core.next().await.1);
    assert!(first.ok, "{first:?}");
    core.send(2, core_message::Body::HttpRequest(request("huge"))).await;
    let d = done(core.next().await.1);
    assert!(!d.ok && d.error.contains("over the 268435456-byte") && !d.stopped, "{d:?}");
    core.send(3, core_message::Body::HttpRequest(request("small"))).await;
    let again = done(core.next().await.1);
    assert!(again.ok, "{again:?}");
    let body = |d: &pb::Done| String::from_utf8(d.response.clone().unwrap().body).unwrap();
    assert_eq!(body(&first), body(&again), "the same worker served both");
}

/// The pid and parent pid of the worker that ran the call, from its log lines.
fn worker_pids(logs: &[String], tag: &str) -> Vec<(i32, i32)> {
    logs.iter()
        .filter_map(|l| l.split_once(&format!("{tag} ")))
        .map(|(_, rest)| {
            let mut it = rest.split_whitespace().map(|n| n.parse::<i32>().unwrap());
            (it.next().unwrap(), it.next().unwrap())
        })
        .collect()
}

const PIDS_PLUGIN: &str = r#"
import os
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("pids", os.getpid(), os.getppid())
"#;

/// Workers come from the fork server (their parent is not the host), start again after a
/// crash, and the exec fallback still works when the fork server is off.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_are_forked_from_the_fork_server_or_started_with_exec() {
    for fork in [true, false] {
        let mut core = start_opts(Duration::from_secs(30), true, |c| c.fork_server = fork).await;
        core.trigger("p", "p.py", PIDS_PLUGIN, None).await;
        core.wal(1, "p", &cpu()).await;
        assert!(done(core.next().await.1).ok);
        let pids = worker_pids(&core.logs, "pids");
        let (pid, parent) = pids[0];
        let host = std::process::id() as i32;
        if fork {
            assert_ne!(parent, host, "a forked worker's parent is the fork server");
            let stat = std::fs::read_to_string(format!("/proc/{parent}/cmdline")).unwrap();
            assert!(stat.contains("weir_plugin.forkserver"), "{stat:?}");
        } else {
            assert_eq!(parent, host, "an exec'd worker is the host's child");
        }
        // Each worker is its own process group.
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap().split_whitespace().collect();
        assert_eq!(fields[2], pid.to_string(), "pgid of {pid}: {stat}");
    }
}

/// With `--max-workers 2`, four triggers called in turn all get their calls run (queued,
/// never failed) while at most two worker processes are alive at any time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_cap_queues_calls_and_stops_idle_workers_for_others() {
    let mut core = start_opts(Duration::from_secs(30), true, |c| c.max_workers = 2).await;
    for t in ["a", "b", "c", "d"] {
        core.trigger(t, &format!("{t}.py"), PIDS_PLUGIN, None).await;
    }
    let mut id = 0;
    for round in 0..3 {
        for t in ["a", "b", "c", "d"] {
            id += 1;
            core.wal(id, t, &cpu()).await;
            let d = done(core.next().await.1);
            assert!(d.ok, "round {round} trigger {t}: {d:?}");
            let live = worker_pids(&core.logs, "pids").into_iter().filter(|(p, _)| alive(*p)).count();
            assert!(live <= 2, "round {round} trigger {t}: {live} workers alive");
        }
    }
    assert_eq!(worker_pids(&core.logs, "pids").len(), 12);
}

/// A worker idle past `--worker-idle-timeout` is stopped; the next call starts a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_workers_are_stopped_and_started_again_on_the_next_call() {
    let mut core =
        start_opts(Duration::from_secs(30), true, |c| c.idle_timeout = Some(Duration::from_millis(300))).await;
    core.trigger("p", "p.py", PIDS_PLUGIN, None).await;
    core.wal(1, "p", &cpu()).await;
    assert!(done(core.next().await.1).ok);
    let (first, _) = worker_pids(&core.logs, "pids")[0];
    let gone = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(50));
        !alive(first)
    });
    assert!(gone, "the idle worker {first} was not stopped");
    core.wal(2, "p", &cpu()).await;
    assert!(done(core.next().await.1).ok);
    let (second, _) = worker_pids(&core.logs, "pids")[1];
    assert_ne!(first, second);
}
