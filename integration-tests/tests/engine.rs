//! The processing engine end to end: `weir serve` starts the real `weir-plugin-host`,
//! which runs plugins in real Python workers.

use std::time::Duration;

use integration_tests::{Server, ServerConfig, eventually, weir_cli};
use serde_json::{Value, json};

/// A nanosecond timestamp that precision auto-detection cannot mistake for seconds.
const T0: i64 = 1_700_000_000_000_000_000;

fn start(extra: &[&str]) -> Server {
    Server::start(ServerConfig { args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() })
}

const DERIVE: &str = r#"
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("empty query", influxdb3_local.query("SELECT host FROM cpu WHERE host = 'nobody'"))
    for t in table_batches:
        influxdb3_local.info("batch", t["table_name"], len(t["rows"]))
        if t["table_name"] != "cpu":
            continue
        for r in t["rows"]:
            influxdb3_local.write(
                LineBuilder("cpu_" + args["suffix"]).tag("host", r["host"]).float64_field("usage2", r["usage"] * 2).time_ns(r["time"])
            )
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_trigger_writes_a_derived_table_and_sees_its_own_output() {
    let s = start(&[]);
    s.create_db("eng").await;
    s.plugin("derive.py", DERIVE);
    let (status, body) = s
        .create_trigger(json!({
            "db": "eng", "plugin_filename": "derive.py", "trigger_name": "derive",
            "trigger_specification": "all_tables", "trigger_arguments": {"suffix": "x2"},
            "trigger_settings": {"run_async": false, "error_behavior": "log"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    // Same name again: conflict.
    let (status, body) = s
        .create_trigger(json!({
            "db": "eng", "plugin_filename": "derive.py", "trigger_name": "derive", "trigger_specification": "all_tables"
        }))
        .await;
    assert_eq!(status, 409, "{body}");

    let (status, _) = s.write("eng", "cpu,host=a usage=1.5 1000000000\ncpu,host=b usage=4 2000000000").await;
    assert_eq!(status, 204);
    let derived = s.rows_when("eng", "SELECT host, usage2 FROM cpu_x2 ORDER BY host", |r| r.len() == 2).await;
    assert_eq!(derived[0]["usage2"], 3.0);
    assert_eq!(derived[1]["usage2"], 8.0);
    // all_tables: the plugin's own output table comes back to it in a later flush.
    let seen = eventually(Duration::from_secs(60), || async {
        s.engine_logs("eng").await.iter().any(|l| l == "INFO: batch cpu_x2 2").then_some(())
    })
    .await;
    assert!(seen.is_some(), "{:?}", s.engine_logs("eng").await);
    // Every accepted line is a row, even the same point twice in one write (InfluxDB does the same).
    s.write("eng", "dup,host=a v=1 1000000000\ndup,host=a v=2 1000000000").await;
    let dup = eventually(Duration::from_secs(60), || async {
        s.engine_logs("eng").await.iter().any(|l| l == "INFO: batch dup 2").then_some(())
    })
    .await;
    assert!(dup.is_some(), "{:?}", s.engine_logs("eng").await);
    // A query with no rows answers [] (not an error).
    assert!(s.engine_logs("eng").await.iter().any(|l| l == "INFO: empty query []"), "{:?}", s.engine_logs("eng").await);

    let t = s.rows("eng", "SELECT trigger_name, plugin_filename, trigger_specification, disabled, error_behavior FROM system.processing_engine_triggers").await;
    assert_eq!(
        t,
        vec![
            json!({"trigger_name": "derive", "plugin_filename": "derive.py", "trigger_specification": "all_tables", "disabled": false, "error_behavior": "log"})
        ]
    );
    let a = s.rows("eng", "SELECT * FROM system.processing_engine_trigger_arguments").await;
    assert_eq!(a, vec![json!({"trigger_name": "derive", "argument_key": "suffix", "argument_value": "x2"})]);

    // Disable: nothing more is delivered; deleting a disabled trigger needs no force.
    let r = s
        .http()
        .post(format!("{}/api/v3/configure/processing_engine_trigger/disable?db=eng&trigger_name=derive", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    s.write("eng", "cpu,host=c usage=1 3000000000").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.rows("eng", "SELECT count(*) AS n FROM cpu_x2").await[0]["n"], 2);
    let r = s
        .http()
        .delete(format!("{}/api/v3/configure/processing_engine_trigger?db=eng&trigger_name=derive", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert!(s.rows("eng", "SELECT * FROM system.processing_engine_triggers").await.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_survive_a_restart_and_enabled_ones_need_force_to_delete() {
    let s = start(&[]);
    s.create_db("r").await;
    s.plugin("derive.py", DERIVE);
    let (status, body) = s
        .create_trigger(json!({
            "db": "r", "plugin_filename": "derive.py", "trigger_name": "t1",
            "trigger_specification": "table:cpu", "trigger_arguments": {"suffix": "after"}
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let s = s.restart();
    s.write("r", "mem,host=a free=1i 1000000000\ncpu,host=a usage=2 1000000000").await;
    let derived = s.rows_when("r", "SELECT usage2 FROM cpu_after", |r| r.len() == 1).await;
    assert_eq!(derived[0]["usage2"], 4.0);
    // table:cpu never sees mem.
    assert!(!s.engine_logs("r").await.iter().any(|l| l.contains("batch mem")));

    let r = s
        .http()
        .delete(format!("{}/api/v3/configure/processing_engine_trigger?db=r&trigger_name=t1", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    let r = s
        .http()
        .delete(format!("{}/api/v3/configure/processing_engine_trigger?db=r&trigger_name=t1&force=true", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // Bad specs and unknown databases are clear errors.
    let (status, body) = s.create_trigger(json!({"db": "r", "plugin_filename": "derive.py", "trigger_name": "t2", "trigger_specification": "tables:cpu"})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("table:<name>"), "{body}");
    let (status, _) = s.create_trigger(json!({"db": "nope", "plugin_filename": "derive.py", "trigger_name": "t2", "trigger_specification": "all_tables"})).await;
    assert_eq!(status, 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crashes_hangs_and_errors_are_logged_while_writes_keep_being_acknowledged() {
    let s = start(&["--plugin-timeout", "2s"]);
    s.create_db("bad").await;
    s.plugin(
        "bad.py",
        r#"
import os, sys, time
def process_writes(influxdb3_local, table_batches, args):
    for t in table_batches:
        for r in t["rows"]:
            mode = r.get("mode")
            if mode == "crash":
                os._exit(3)
            if mode == "hang":
                while True:
                    time.sleep(0.01)
            if mode == "raise":
                raise ValueError("plugin said no")
            if mode == "exit":
                sys.exit(1)
            print("printed", mode)
            influxdb3_local.write(LineBuilder("ok").tag("mode", mode).int64_field("n", 1).time_ns(r["time"]))
"#,
    );
    let (status, body) = s
        .create_trigger(json!({
            "db": "bad", "plugin_filename": "bad.py", "trigger_name": "bad", "trigger_specification": "table:m"
        }))
        .await;
    assert_eq!(status, 200, "{body}");
    let modes = ["fine", "crash", "after_crash", "raise", "exit", "hang", "after_hang"];
    for (i, mode) in modes.iter().enumerate() {
        let started = std::time::Instant::now();
        let (status, body) = s.write("bad", &format!("m,mode={mode} v=1 {}", T0 + i as i64 * 1_000_000_000)).await;
        assert_eq!(status, 204, "{body}");
        // Acks never wait for the plugin (a hang takes 2 s to be killed).
        assert!(started.elapsed() < Duration::from_millis(1500), "write took {:?}", started.elapsed());
    }
    let ok = s.rows_when("bad", "SELECT mode FROM ok ORDER BY time", |r| r.len() == 3).await;
    let ok: Vec<&str> = ok.iter().map(|r| r["mode"].as_str().unwrap()).collect();
    assert_eq!(ok, ["fine", "after_crash", "after_hang"]);
    let l = s.engine_logs("bad").await;
    let has = |needle: &str| l.iter().any(|x| x.contains(needle));
    assert!(has("INFO: printed fine"), "{l:?}");
    assert!(has("exited (exit status: 3)"), "{l:?}");
    assert!(has("ERROR: error executing plugin: ValueError: plugin said no\nTraceback"), "{l:?}");
    assert!(has("SystemExit: 1"), "{l:?}");
    assert!(has("did not finish within 2s"), "{l:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_plugin_host_is_restarted_and_no_batch_is_lost() {
    let s = start(&[]);
    s.create_db("k").await;
    s.plugin(
        "copy.py",
        r#"
import os
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("host pid", os.getppid())
    for t in table_batches:
        for r in t["rows"]:
            influxdb3_local.write(LineBuilder("copy").tag("k", r["k"]).int64_field("n", r["n"]).time_ns(r["time"]))
"#,
    );
    let (status, body) = s.create_trigger(json!({"db": "k", "plugin_filename": "copy.py", "trigger_name": "copy", "trigger_specification": "table:src"})).await;
    assert_eq!(status, 200, "{body}");
    let write = |i: i64| {
        let s = &s;
        async move {
            let (status, body) = s.write("k", &format!("src,k=k{i} n={i}i {}", T0 + i * 1_000_000_000)).await;
            assert_eq!(status, 204, "{body}");
        }
    };
    write(0).await;
    s.rows_when("k", "SELECT n FROM copy", |r| r.len() == 1).await;
    let pid = s
        .engine_logs("k")
        .await
        .iter()
        .find_map(|l| l.strip_prefix("INFO: host pid ").map(|p| p.trim().to_string()))
        .expect("the plugin logged its host pid");
    // kill -9 the plugin host, then keep writing while it is down and coming back.
    let killed = std::process::Command::new("kill").args(["-9", &pid]).status().unwrap();
    assert!(killed.success());
    for i in 1..20 {
        write(i).await;
    }
    let copied = s.rows_when("k", "SELECT n FROM copy ORDER BY n", |r| r.len() == 20).await;
    let n: Vec<i64> = copied.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(n, (0..20).collect::<Vec<_>>());
    let new_pid = s
        .engine_logs("k")
        .await
        .iter()
        .rev()
        .find_map(|l| l.strip_prefix("INFO: host pid ").map(|p| p.trim().to_string()))
        .unwrap();
    assert_ne!(new_pid, pid, "a new plugin host runs the plugin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_creates_shows_toggles_and_deletes_triggers() {
    let s = start(&[]);
    s.create_db("cli").await;
    s.plugin("derive.py", DERIVE);
    let host = s.url.clone();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--host", host.as_str()]);
        weir_cli(&all, None)
    };
    let (ok, out, err) = cli(&[
        "create",
        "trigger",
        "viacli",
        "-d",
        "cli",
        "--path",
        "derive.py",
        "--trigger-spec",
        "table:cpu",
        "--trigger-arguments",
        "suffix=cli",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "Trigger viacli created successfully");
    s.write("cli", &format!("cpu,host=a usage=5 {T0}")).await;
    let derived = s.rows_when("cli", "SELECT usage2 FROM cpu_cli", |r| r.len() == 1).await;
    assert_eq!(derived[0]["usage2"], 10.0);

    let (ok, out, err) = cli(&["show", "triggers", "-d", "cli", "--format", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(
        out.trim(),
        "trigger_name,plugin_filename,trigger_specification,disabled,error_behavior\nviacli,derive.py,table:cpu,false,log"
    );

    let (ok, _, err) = cli(&["delete", "trigger", "viacli", "-d", "cli"]);
    assert!(!ok);
    assert!(err.contains("is enabled"), "{err}");
    let (ok, out, err) = cli(&["disable", "trigger", "viacli", "-d", "cli"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "Trigger viacli disabled");
    // Idempotent.
    assert!(cli(&["disable", "trigger", "viacli", "-d", "cli"]).0);
    let (ok, out, err) = cli(&["delete", "trigger", "viacli", "-d", "cli"]);
    assert!(ok, "{err}");
    assert_eq!(out.trim(), "Trigger viacli deleted");
    let (ok, _, err) = cli(&["enable", "trigger", "viacli", "-d", "cli"]);
    assert!(!ok && err.contains("not found"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn packages_install_from_pypi_into_the_plugin_venv() {
    let s = start(&[]);
    s.create_db("pkg").await;
    let install = |body: Value| {
        let s = &s;
        async move {
            let r = s
                .http()
                .post(format!("{}/api/v3/configure/plugin_environment/install_packages", s.url))
                .timeout(Duration::from_secs(600))
                .json(&body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    // The host may still be starting: retry while it answers 503.
    let mut outcome = (503, String::new());
    for _ in 0..60 {
        outcome = install(json!({"packages": ["tinydb==4.8.2"]})).await;
        if outcome.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(outcome.0, 200, "{}", outcome.1);
    s.plugin(
        "uses_pkg.py",
        r#"
import tinydb
def process_writes(influxdb3_local, table_batches, args):
    influxdb3_local.info("tinydb", tinydb.__version__)
"#,
    );
    let (status, body) = s.create_trigger(json!({"db": "pkg", "plugin_filename": "uses_pkg.py", "trigger_name": "p", "trigger_specification": "all_tables"})).await;
    assert_eq!(status, 200, "{body}");
    s.write("pkg", &format!("m v=1 {T0}")).await;
    let ok = eventually(Duration::from_secs(60), || async {
        s.engine_logs("pkg").await.iter().any(|l| l == "INFO: tinydb 4.8.2").then_some(())
    })
    .await;
    assert!(ok.is_some(), "{:?}", s.engine_logs("pkg").await);

    // A package that does not exist: the real pip error comes back.
    let (status, body) = install(json!({"packages": ["weir-no-such-package-xyz==0.0.1"]})).await;
    assert_eq!(status, 500, "{body}");
    assert!(body.contains("No matching distribution") || body.contains("Could not find"), "{body}");
    // Options are not package specifiers: a client error, and nothing is run.
    let (status, body) = install(json!({"packages": ["--index-url=http://evil"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a package specifier"), "{body}");
    let (status, body) = install(json!({"packages": ["-r", "/etc/passwd"]})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("not a package specifier"), "{body}");
    let (status, body) = install(json!({"packages": []})).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("no packages given"), "{body}");
    // `weir install package -r FILE` reads FILE here, not on the plugin host.
    let local = tempfile::tempdir().unwrap();
    let req = local.path().join("requirements.txt");
    std::fs::write(
        &req,
        "# what the plugin needs

tinydb==4.8.2  # pinned
",
    )
    .unwrap();
    let (ok, out, err) = weir_cli(&["install", "package", "-r", req.to_str().unwrap(), "--host", &s.url], None);
    assert!(ok, "{out}{err}");
    assert!(out.contains("Packages installed"), "{out}");
    std::fs::write(
        &req,
        "-r other.txt
",
    )
    .unwrap();
    let (ok, _, err) = weir_cli(&["install", "package", "-r", req.to_str().unwrap(), "--host", &s.url], None);
    assert!(!ok);
    assert!(err.contains("requirements.txt:1") && err.contains("options in requirements files"), "{err}");
    // A requirements file named on the host must be inside its plugin directory.
    let r = s
        .http()
        .post(format!("{}/api/v3/configure/plugin_environment/install_requirements", s.url))
        .json(&json!({"requirements_location": "/etc/hostname"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    assert!(r.text().await.unwrap().contains("Path traversal detected"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_package_manager_refuses_installs() {
    let s = start(&["--package-manager", "disabled"]);
    let mut last = (0, String::new());
    for _ in 0..60 {
        let r = s
            .http()
            .post(format!("{}/api/v3/configure/plugin_environment/install_packages", s.url))
            .json(&json!({"packages": ["tinydb"]}))
            .send()
            .await
            .unwrap();
        last = (r.status().as_u16(), r.text().await.unwrap());
        if last.0 != 503 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(last.0, 403, "{}", last.1);
    assert!(last.1.contains("--package-manager disabled"), "{}", last.1);
    // The CLI says the same.
    let (ok, _, err) = weir_cli(&["install", "package", "tinydb", "--host", &s.url], None);
    assert!(!ok);
    assert!(err.contains("--package-manager disabled"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dry_runs_capture_writes_for_files_and_packages() {
    let s = start(&[]);
    s.create_db("dry").await;
    s.write("dry", &format!("cpu,host=z usage=1 {T0}")).await;
    s.plugin("derive.py", DERIVE);
    let body = json!({
        "filename": "derive.py", "database": "dry",
        "input_lp": format!("cpu,host=a usage=2 {T0}\nnot a line\n"),
        "input_arguments": {"suffix": "t"},
    });
    let mut answer = Value::Null;
    for _ in 0..60 {
        let r = s.http().post(format!("{}/api/v3/plugin_test/wal", s.url)).json(&body).send().await.unwrap();
        let status = r.status().as_u16();
        answer = r.json().await.unwrap();
        if status != 503 {
            assert_eq!(status, 200, "{answer}");
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert_eq!(answer["database_writes"], json!({"dry": [format!("cpu_t,host=a usage2=4.0 {T0}")]}), "{answer}");
    assert!(answer["log_lines"].as_array().unwrap().contains(&json!("INFO: batch cpu 1")), "{answer}");
    let errors = answer["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{answer}");
    assert!(errors[0].as_str().unwrap().starts_with("line 2:"), "{answer}");
    // Captured, not applied: the table does not exist.
    let r = s
        .http()
        .get(format!("{}/api/v3/query_sql", s.url))
        .query(&[("db", "dry"), ("q", "SELECT * FROM cpu_t")])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    // Nothing reached the engine log either.
    assert!(s.engine_logs("dry").await.is_empty());

    // A multi-file plugin through the CLI; write_sync is captured too.
    let pkg = s.plugin_dir().join("pkgplug");
    std::fs::create_dir_all(&pkg).unwrap();
    std::fs::write(pkg.join("helpers.py"), "def tag():\n    return 'from-helper'\n").unwrap();
    std::fs::write(
        pkg.join("__init__.py"),
        r#"
from .helpers import tag
def process_writes(influxdb3_local, table_batches, args):
    n = sum(len(t["rows"]) for t in table_batches)
    influxdb3_local.write_sync(LineBuilder("seen").tag("by", tag()).int64_field("n", n).time_ns(5), True)
    influxdb3_local.warn("args", args)
"#,
    )
    .unwrap();
    let (ok, out, err) = weir_cli(
        &[
            "test",
            "wal_plugin",
            "pkgplug",
            "-d",
            "dry",
            "--lp",
            "m v=1 1\nm v=2 2",
            "--input-arguments",
            "a=1,b=2",
            "--host",
            &s.url,
        ],
        None,
    );
    assert!(ok, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["database_writes"], json!({"dry": ["seen,by=from-helper n=2i 5"]}), "{out}");
    assert_eq!(v["log_lines"], json!(["WARN: args {'a': '1', 'b': '2'}"]), "{out}");
    assert_eq!(v["errors"], json!([]), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_kill_9_of_weir_serve_triggers_resume_from_their_checkpoint() {
    // Snapshots every few rows, so WAL files are retired during the test unless a trigger
    // still needs them.
    let s = start(&["--snapshot-rows", "3"]);
    s.create_db("cp").await;
    s.plugin(
        "slowcopy.py",
        r#"
import time
def process_writes(influxdb3_local, table_batches, args):
    time.sleep(0.3)
    for t in table_batches:
        for r in t["rows"]:
            influxdb3_local.write(LineBuilder("copy").tag("k", r["k"]).int64_field("n", r["n"]).time_ns(r["time"]))
"#,
    );
    let (status, body) = s.create_trigger(json!({"db": "cp", "plugin_filename": "slowcopy.py", "trigger_name": "copy", "trigger_specification": "table:src"})).await;
    assert_eq!(status, 200, "{body}");
    // Let the first batch through, so the worker runs, then write 12 more quickly: the slow
    // plugin is far behind when the server dies.
    s.write("cp", &format!("src,k=k0 n=0i {T0}")).await;
    s.rows_when("cp", "SELECT n FROM copy", |r| r.len() == 1).await;
    for i in 1..13i64 {
        let (status, body) = s.write("cp", &format!("src,k=k{i} n={i}i {}", T0 + i * 1_000_000_000)).await;
        assert_eq!(status, 204, "{body}");
    }
    let mut s = s;
    s.kill9();
    let s = s.restart();
    let copied = s.rows_when("cp", "SELECT n FROM copy ORDER BY n", |r| r.len() == 13).await;
    let n: Vec<i64> = copied.iter().map(|r| r["n"].as_i64().unwrap()).collect();
    assert_eq!(n, (0..13).collect::<Vec<_>>());
}

/// Whether a process is alive (a zombie counts as gone).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().unwrap_or("").trim_start().starts_with('Z'),
        Err(_) => false,
    }
}

/// A plugin's worker and a process it forked stop with `weir serve` (SIGTERM): the host
/// is stopped gracefully and kills its workers' process groups; nothing is left behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_plugin_host_its_workers_and_their_children() {
    let mut s = start(&[]);
    s.create_db("fam").await;
    s.plugin(
        "forker.py",
        r#"
import os, time
def process_writes(influxdb3_local, table_batches, args):
    pid = os.fork()
    if pid == 0:
        time.sleep(600)
        os._exit(0)
    with open(os.path.join(os.environ["PLUGIN_DIR"], "pids.txt"), "w") as f:
        f.write(f"{os.getpid()} {pid}")
"#,
    );
    let (status, body) = s
        .create_trigger(json!({"db": "fam", "plugin_filename": "forker.py", "trigger_name": "f", "trigger_specification": "all_tables"}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.write("fam", &format!("m v=1 {T0}")).await;
    let pids_file = s.plugin_dir().join("pids.txt");
    let pids = eventually(Duration::from_secs(60), || async {
        let text = std::fs::read_to_string(&pids_file).ok()?;
        let pids: Vec<i32> = text.split_whitespace().filter_map(|p| p.parse().ok()).collect();
        (pids.len() == 2).then_some(pids)
    })
    .await
    .expect("the plugin ran");
    assert!(pids.iter().all(|p| alive(*p)), "{pids:?} running before the stop");
    s.stop();
    let gone = eventually(Duration::from_secs(30), || async { pids.iter().all(|p| !alive(*p)).then_some(()) }).await;
    assert!(gone.is_some(), "{pids:?} (worker, forked child) outlived weir serve's SIGTERM");
}
