//! Schedule and request triggers, error behaviour and trigger state, end to end through
//! `weir serve`, the real plugin host and real Python workers.

use std::time::{Duration, Instant};

use integration_tests::{Server, ServerConfig, eventually, weir_cli};
use serde_json::{Value, json};

fn start(extra: &[&str]) -> Server {
    Server::start(ServerConfig { args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() })
}

async fn trigger_row(s: &Server, db: &str, name: &str) -> Value {
    let sql = format!("SELECT * FROM system.processing_engine_triggers WHERE trigger_name = '{name}'");
    s.rows(db, &sql).await.into_iter().next().unwrap_or(Value::Null)
}

/// Wait (60 s at most) until the trigger's system-table row satisfies `check`.
async fn trigger_row_when(s: &Server, db: &str, name: &str, check: impl Fn(&Value) -> bool) -> Value {
    let got = eventually(Duration::from_secs(60), || async {
        let row = trigger_row(s, db, name).await;
        check(&row).then_some(row)
    })
    .await;
    match got {
        Some(row) => row,
        None => panic!("trigger {name}: {:?}\nlogs: {:?}", trigger_row(s, db, name).await, s.engine_logs(db).await),
    }
}

const TICK: &str = r#"
import datetime

def process_scheduled_call(influxdb3_local, call_time, args):
    # call_time: naive, whole seconds, UTC.
    assert call_time.tzinfo is None, call_time.tzinfo
    assert call_time.microsecond == 0
    secs = int(call_time.replace(tzinfo=datetime.timezone.utc).timestamp())
    influxdb3_local.write(LineBuilder("ticks").tag("trigger", args["name"]).int64_field("call_s", secs))
"#;

const SLOW_TICK: &str = r#"
import time

def process_scheduled_call(influxdb3_local, call_time, args):
    start = time.time_ns()
    time.sleep(2.5)
    influxdb3_local.write(LineBuilder("slow").int64_field("start", start).int64_field("end", time.time_ns()))
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_triggers_fire_on_their_schedule_and_coalesce_overruns() {
    let s = start(&[]);
    s.create_db("sch").await;
    s.plugin("tick.py", TICK);
    s.plugin("slow.py", SLOW_TICK);
    for (name, spec) in [("every", "every:1s"), ("cron6", "cron:*/2 * * * * *")] {
        let (status, body) = s
            .create_trigger(json!({
                "db": "sch", "plugin_filename": "tick.py", "trigger_name": name,
                "trigger_specification": spec, "trigger_arguments": {"name": name}
            }))
            .await;
        assert_eq!(status, 200, "{body}");
    }
    // Bad schedules are refused with the reason.
    for (spec, want) in [
        ("every:500us", "minimum schedule interval of 1ms"),
        ("cron:* * *", "expected 6 fields"),
        ("every:often", "invalid duration"),
    ] {
        let (status, body) = s
            .create_trigger(json!({"db": "sch", "plugin_filename": "tick.py", "trigger_name": "bad", "trigger_specification": spec}))
            .await;
        assert_eq!(status, 400, "{spec}: {body}");
        assert!(body.contains(want), "{spec}: {body}");
    }
    let ticks = s
        .rows_when("sch", "SELECT trigger, call_s FROM ticks ORDER BY time", |r| {
            r.iter().filter(|t| t["trigger"] == "every").count() >= 3 && r.iter().any(|t| t["trigger"] == "cron6")
        })
        .await;
    for t in &ticks {
        if t["trigger"] == "cron6" {
            assert_eq!(t["call_s"].as_i64().unwrap() % 2, 0, "{t}");
        }
    }
    // every:1s calls are whole, consecutive seconds (aligned to the epoch, none twice).
    let every: Vec<i64> =
        ticks.iter().filter(|t| t["trigger"] == "every").map(|t| t["call_s"].as_i64().unwrap()).collect();
    assert!(every.windows(2).all(|w| w[1] > w[0]), "{every:?}");

    // A synchronous trigger that overruns: never two runs at once, missed ticks counted,
    // one catch-up run instead of a burst.
    let (status, body) = s
        .create_trigger(json!({"db": "sch", "plugin_filename": "slow.py", "trigger_name": "slow", "trigger_specification": "every:1s"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let runs = s.rows_when("sch", "SELECT start, \"end\" FROM slow ORDER BY start", |r| r.len() >= 3).await;
    for w in runs.windows(2) {
        assert!(w[1]["start"].as_i64() >= w[0]["end"].as_i64(), "overlapping runs: {runs:?}");
        // The catch-up run starts right after the previous one, not a second later.
        let gap = w[1]["start"].as_i64().unwrap() - w[0]["end"].as_i64().unwrap();
        assert!(gap < 1_000_000_000, "no catch-up run: gap {gap} ns");
    }
    let row = trigger_row_when(&s, "sch", "slow", |r| r["missed_ticks"].as_u64() > Some(0)).await;
    assert_eq!(row["state"], "RUNNING", "{row}");
    assert!(row["runs"].as_u64() >= Some(3), "{row}");

    // Disabling stops the ticks.
    let r = s
        .http()
        .post(format!("{}/api/v3/configure/processing_engine_trigger/disable?db=sch&trigger_name=every", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let row = trigger_row(&s, "sch", "every").await;
    assert_eq!(row["state"], "DISABLED", "{row}");
    let count = |rows: Vec<Value>| rows.iter().filter(|t| t["trigger"] == "every").count();
    // A tick already sent may still land; after that, nothing more.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let before = count(s.rows("sch", "SELECT trigger FROM ticks").await);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(s.rows("sch", "SELECT trigger FROM ticks").await), before);
}

const WEB: &str = r#"
import json, os

class FlaskLike:
    status_code = 201
    headers = {"X-Kind": "flask"}
    def __flask_response__(self):
        return True
    def get_data(self):
        return b"made by flask"

def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    mode = query_parameters.get("mode", "json")
    if mode == "json":
        return {"status": "ok", "method": request_headers.get("x-method-seen"), "pid": os.getpid()}
    if mode == "echo":
        return 200, {"Content-Type": "application/octet-stream", "X-Len": str(len(request_body))}, request_body
    if mode == "inputs":
        return {"query": query_parameters, "headers": request_headers,
                "body_type": type(request_body).__name__, "body": request_body.decode()}
    if mode == "flask":
        return FlaskLike()
    if mode == "text":
        return "<b>hi</b>", 202
    if mode == "write":
        influxdb3_local.write(LineBuilder("hits").tag("path", "web").int64_field("n", 1))
        return {"written": True}
    if mode == "raise":
        raise ValueError("bad mode requested")
    if mode == "sleep":
        import time
        time.sleep(30)
    return "unknown mode", 400
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_triggers_answer_every_method_with_converted_returns() {
    let s = start(&["--plugin-timeout", "3s", "--max-http-request-size", "1000000"]);
    s.create_db("web").await;
    s.create_db("other").await;
    s.plugin("web.py", WEB);
    let (status, body) = s
        .create_trigger(json!({"db": "web", "plugin_filename": "web.py", "trigger_name": "hook", "trigger_specification": "request:hooks/v1"}))
        .await;
    assert_eq!(status, 200, "{body}");
    // The path is taken, whatever the database.
    let (status, body) = s
        .create_trigger(json!({"db": "other", "plugin_filename": "web.py", "trigger_name": "dup", "trigger_specification": "request:/hooks/v1/"}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(body.contains("hooks/v1"), "{body}");

    let url = format!("{}/api/v3/engine/hooks/v1", s.url);
    let http = s.http();
    // The host may still be starting: wait for the first answer.
    let first = eventually(Duration::from_secs(60), || async {
        let r = http.get(&url).header("x-method-seen", "GET").send().await.ok()?;
        (r.status() == 200).then_some(r)
    })
    .await
    .expect("the request trigger answers");
    assert_eq!(first.headers()["content-type"], "application/json");
    let v: Value = first.json().await.unwrap();
    assert_eq!(v["status"], "ok");
    assert_eq!(v["method"], "GET");

    for method in [reqwest::Method::POST, reqwest::Method::PUT, reqwest::Method::DELETE, reqwest::Method::PATCH] {
        let r = http.request(method.clone(), &url).header("X-Method-Seen", method.as_str()).send().await.unwrap();
        assert_eq!(r.status(), 200, "{method}");
        let v: Value = r.json().await.unwrap();
        assert_eq!(v["method"], method.as_str());
    }
    // Inputs: query parameters (last wins), lower-case headers without Authorization, bytes body.
    let r = http
        .post(format!("{url}?mode=inputs&a=1&a=2"))
        .header("X-Custom", "Yes")
        .header("Authorization", "Bearer secret")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["query"]["a"], "2");
    assert_eq!(v["headers"]["x-custom"], "Yes");
    assert!(v["headers"].get("authorization").is_none(), "{v}");
    assert_eq!(v["body_type"], "bytes");
    assert_eq!(v["body"], "payload");
    // Binary in, binary out, status first with headers (the InfluxDB example's order).
    let blob: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
    let r = http.post(format!("{url}?mode=echo")).body(blob.clone()).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "application/octet-stream");
    assert_eq!(r.headers()["x-len"], "100000");
    assert_eq!(r.bytes().await.unwrap().to_vec(), blob);
    // Flask-like objects and (body, status) tuples.
    let r = http.get(format!("{url}?mode=flask")).send().await.unwrap();
    assert_eq!(r.status(), 201);
    assert_eq!(r.headers()["x-kind"], "flask");
    assert_eq!(r.text().await.unwrap(), "made by flask");
    let r = http.get(format!("{url}?mode=text")).send().await.unwrap();
    assert_eq!(r.status(), 202);
    assert!(r.headers()["content-type"].to_str().unwrap().starts_with("text/html"));
    // Buffered writes are committed before the answer.
    let r = http.post(format!("{url}?mode=write")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(s.rows("web", "SELECT n FROM hits").await.len(), 1);
    // A plugin exception: 500 with the message; the traceback goes to the engine log.
    let r = http.get(format!("{url}?mode=raise")).send().await.unwrap();
    assert_eq!(r.status(), 500);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("bad mode requested"), "{v}");
    let logs = s.engine_logs("web").await;
    assert!(logs.iter().any(|l| l.contains("bad mode requested") && l.contains("Traceback")), "{logs:?}");
    // Past the plugin timeout: 504; the next request gets a fresh worker.
    let r = http.get(format!("{url}?mode=sleep")).send().await.unwrap();
    assert_eq!(r.status(), 504, "{}", r.text().await.unwrap());
    let r = http.get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    // An async trigger: calls that die with a timed-out sibling's worker are not counted
    // as crashes (the trigger keeps running).
    let (status, body) = s
        .create_trigger(json!({"db": "web", "plugin_filename": "web.py", "trigger_name": "ahook", "trigger_specification": "request:ahook",
                               "trigger_settings": {"run_async": true}}))
        .await;
    assert_eq!(status, 200, "{body}");
    let aurl = format!("{}/api/v3/engine/ahook", s.url);
    assert_eq!(http.get(&aurl).send().await.unwrap().status(), 200);
    let sleepers = (0..6).map(|_| {
        let (http, url) = (http.clone(), format!("{aurl}?mode=sleep"));
        async move { http.get(url).send().await.unwrap().status().as_u16() }
    });
    let statuses = futures::future::join_all(sleepers).await;
    assert!(statuses.iter().all(|s| *s == 504 || *s == 500), "{statuses:?}");
    assert!(statuses.contains(&504), "{statuses:?}");
    assert_eq!(http.get(&aurl).send().await.unwrap().status(), 200);
    assert_eq!(trigger_row(&s, "web", "ahook").await["state"], "RUNNING");
    // Unknown path: 404 with valid JSON.
    let r = http.get(format!("{}/api/v3/engine/nothing/here", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("nothing/here"), "{v}");
    // The request body limit applies.
    let r = http.post(&url).body(vec![b'x'; 2_000_000]).send().await.unwrap();
    assert_eq!(r.status(), 413);
    // A disabled trigger does not serve.
    let r = http
        .post(format!("{}/api/v3/configure/processing_engine_trigger/disable?db=web&trigger_name=hook", s.url))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(http.get(&url).send().await.unwrap().status(), 404);
    let row = trigger_row(&s, "web", "hook").await;
    assert_eq!(row["state"], "DISABLED");
    assert!(row["failures"].as_u64() >= Some(2), "{row}");
}

const CALLER: &str = r#"
import json, urllib.request

def process_writes(influxdb3_local, table_batches, args):
    # Re-entrancy: call this server's own request trigger while this trigger runs.
    with urllib.request.urlopen(args["url"], data=b"from-wal", timeout=30) as r:
        answer = json.loads(r.read())
    influxdb3_local.write(LineBuilder("relayed").string_field("answer", answer["echo"]))
"#;

const ECHO: &str = r#"
def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    return {"echo": request_body.decode()}
"#;

const PID: &str = r#"
import os, time

def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):
    time.sleep(0.05)
    return {"pid": os.getpid()}
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_call_request_triggers_and_async_triggers_spread_over_workers() {
    let s = start(&[]);
    s.create_db("re").await;
    s.plugin("caller.py", CALLER);
    s.plugin("echo.py", ECHO);
    s.plugin("pid.py", PID);
    let echo_url = format!("{}/api/v3/engine/echo", s.url);
    for body in [
        json!({"db": "re", "plugin_filename": "echo.py", "trigger_name": "echo", "trigger_specification": "request:echo"}),
        json!({"db": "re", "plugin_filename": "caller.py", "trigger_name": "caller", "trigger_specification": "table:in",
               "trigger_arguments": {"url": echo_url}}),
        json!({"db": "re", "plugin_filename": "pid.py", "trigger_name": "pid", "trigger_specification": "request:pid",
               "trigger_settings": {"run_async": true, "workers": 2}}),
    ] {
        let (status, text) = s.create_trigger(body).await;
        assert_eq!(status, 200, "{text}");
    }
    let (status, _) = s.write("re", "in v=1").await;
    assert_eq!(status, 204);
    let relayed = s.rows_when("re", "SELECT answer FROM relayed", |r| !r.is_empty()).await;
    assert_eq!(relayed[0]["answer"], "from-wal");

    // `workers: 2`: concurrent requests are served by two processes.
    let pid_url = format!("{}/api/v3/engine/pid", s.url);
    let pids = eventually(Duration::from_secs(60), || async {
        let calls = (0..8).map(|_| {
            let http = s.http();
            let url = pid_url.clone();
            async move { http.get(url).send().await.ok()?.json::<Value>().await.ok() }
        });
        let answers = futures::future::join_all(calls).await;
        let pids: std::collections::BTreeSet<i64> =
            answers.iter().flatten().filter_map(|v| v["pid"].as_i64()).collect();
        (pids.len() == 2).then_some(pids)
    })
    .await;
    assert!(pids.is_some(), "an async trigger with 2 workers never used both");
}

const FLAKY: &str = r#"
def process_writes(influxdb3_local, table_batches, args):
    n = influxdb3_local.cache.get("attempts", 0) + 1
    influxdb3_local.cache.put("attempts", n)
    if n < 3:
        raise RuntimeError(f"flaky failure {n}")
    influxdb3_local.write(LineBuilder("flaky_ok").int64_field("attempt", n))
"#;

const FAILING: &str = r#"
def process_scheduled_call(influxdb3_local, call_time, args):
    raise RuntimeError("scheduled failure")
"#;

const FIXED: &str = r#"
def process_scheduled_call(influxdb3_local, call_time, args):
    influxdb3_local.write(LineBuilder("fixed").int64_field("ok", 1))
"#;

const CRASH_AT_IMPORT: &str = "import os\nos._exit(3)\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_behaviours_retry_disable_and_stop_crash_loops() {
    let s = start(&[]);
    s.create_db("err").await;
    s.plugin("flaky.py", FLAKY);
    s.plugin("failing.py", FAILING);
    s.plugin("crasher/__init__.py", CRASH_AT_IMPORT);
    s.plugin("crasher/tasks.py", "");
    for body in [
        json!({"db": "err", "plugin_filename": "flaky.py", "trigger_name": "flaky", "trigger_specification": "table:in",
               "trigger_settings": {"error_behavior": "retry"}}),
        json!({"db": "err", "plugin_filename": "failing.py", "trigger_name": "failing", "trigger_specification": "every:1s",
               "trigger_settings": {"error_behavior": "disable"}}),
        json!({"db": "err", "plugin_filename": "crasher", "trigger_name": "crasher", "trigger_specification": "every:1s"}),
    ] {
        let (status, text) = s.create_trigger(body).await;
        assert_eq!(status, 200, "{text}");
    }
    // retry: the same batch again until it succeeds (third attempt).
    s.write("err", "in v=1").await;
    let ok = s.rows_when("err", "SELECT attempt FROM flaky_ok", |r| !r.is_empty()).await;
    assert_eq!(ok[0]["attempt"], 3);
    let row = trigger_row_when(&s, "err", "flaky", |r| r["attempts"] == 3).await;
    assert!(row["last_error"].as_str().unwrap().contains("flaky failure 2"), "{row}");
    assert_eq!(row["failures"], 2);
    // WAL triggers show their checkpoint (the WAL file finished) and how far behind they are.
    let row = trigger_row_when(&s, "err", "flaky", |r| r["checkpoint"].as_u64().is_some_and(|c| c > 0)).await;
    assert!(row["lag"].as_u64().is_some(), "{row}");
    assert_eq!(row["state"], "RUNNING", "{row}");
    let logs = s.engine_logs("err").await;
    assert!(logs.iter().any(|l| l.contains("attempt 1 failed; retrying in")), "{logs:?}");

    // disable: the first failure disables the trigger in the catalog, with the error readable.
    let row = trigger_row_when(&s, "err", "failing", |r| r["disabled"] == true).await;
    assert_eq!(row["state"], "DISABLED");
    assert!(row["last_error"].as_str().unwrap().contains("scheduled failure"), "{row}");

    // The crash-loop breaker stops a worker that dies at import.
    let row = trigger_row_when(&s, "err", "crasher", |r| r["state"] == "STOPPED").await;
    assert!(row["last_error"].as_str().unwrap().contains("failed 5 times in a row"), "{row}");
    assert_eq!(row["disabled"], false);

    // Disabled survives a restart; enable really runs it again.
    let s = s.restart();
    assert_eq!(trigger_row(&s, "err", "failing").await["disabled"], true);
    s.plugin("failing.py", FIXED);
    let (ok, out, err) = weir_cli(&["enable", "trigger", "failing", "-d", "err", "--host", &s.url], None);
    assert!(ok, "{out}{err}");
    s.rows_when("err", "SELECT ok FROM fixed", |r| !r.is_empty()).await;
    let row = trigger_row(&s, "err", "failing").await;
    assert_eq!(row["state"], "RUNNING", "{row}");
    assert!(row["last_error"].is_null(), "{row}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedule_and_request_dry_runs_over_http_and_the_cli() {
    let s = start(&[]);
    s.create_db("dry").await;
    s.plugin("tick.py", TICK);
    s.plugin("web.py", WEB);
    let http = s.http();
    // 503 until the plugin host is up.
    let r = eventually(Duration::from_secs(60), || async {
        let r = http
            .post(format!("{}/api/v3/plugin_test/schedule", s.url))
            .json(&json!({"filename": "tick.py", "database": "dry", "schedule": "every:1h", "input_arguments": {"name": "dry"}}))
            .send()
            .await
            .ok()?;
        (r.status() != 503).then_some(r)
    })
    .await
    .expect("the plugin host comes up");
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert!(v["errors"].as_array().unwrap().is_empty(), "{v}");
    // every:1h: the next full hour.
    let time = v["trigger_time"].as_str().unwrap();
    assert!(time.ends_with(":00:00.000Z"), "{time}");
    let line = v["database_writes"]["dry"][0].as_str().unwrap();
    assert!(line.starts_with("ticks,trigger=dry call_s="), "{line}");
    // Nothing was written.
    assert!(s.rows("dry", "SHOW TABLES").await.iter().all(|t| t["table_name"] != "ticks"));

    let r = http
        .post(format!("{}/api/v3/plugin_test/request", s.url))
        .json(&json!({"filename": "web.py", "database": "dry", "query_parameters": {"mode": "inputs"},
                      "headers": {"X-Test": "1"}, "body": "hello"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["response"]["status"], 200, "{v}");
    let body: Value = serde_json::from_str(v["response"]["body"].as_str().unwrap()).unwrap();
    assert_eq!(body["headers"]["x-test"], "1");
    assert_eq!(body["body"], "hello");

    let (ok, out, err) = weir_cli(
        &[
            "test",
            "schedule_plugin",
            "tick.py",
            "-d",
            "dry",
            "--schedule",
            "cron:0 0 * * *",
            "--input-arguments",
            "name=cli",
            "--host",
            &s.url,
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["trigger_time"].as_str().unwrap().ends_with("T00:00:00.000Z"), "{v}");
    let (ok, out, err) = weir_cli(
        &["test", "request_plugin", "web.py", "-d", "dry", "--query", "mode=echo", "--body", "ping", "--host", &s.url],
        None,
    );
    assert!(ok, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["response"]["body"], "ping", "{v}");
    let (ok, out, err) =
        weir_cli(&["test", "request_plugin", "web.py", "-d", "dry", "--query", "mode=raise", "--host", &s.url], None);
    // The answer is printed, and the command fails: a dry run can gate a CI job.
    assert!(!ok && err.contains("the plugin reported 1 error(s)"), "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert!(v["errors"][0].as_str().unwrap().contains("bad mode requested"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_get_503_at_once_when_the_plugin_host_is_down() {
    // The trigger is created while a host can confirm its plugin...
    let mut first = start(&[]);
    first.create_db("down").await;
    first.plugin("web.py", "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):\n    return 'up'\n");
    let (status, body) = first
        .create_trigger(json!({"db": "down", "plugin_filename": "web.py", "trigger_name": "hook", "trigger_specification": "request:down"}))
        .await;
    assert_eq!(status, 200, "{body}");
    first.stop();
    // ...then the server runs against a host URL nothing listens on.
    let s = Server::start(ServerConfig {
        data_dir: Some(first.data_dir.clone()),
        args: ["--plugin-host-url", "http://127.0.0.1:9", "--plugin-timeout", "60s"]
            .iter()
            .map(|a| a.to_string())
            .collect(),
        ..Default::default()
    });
    // A new trigger cannot have its plugin checked: refused with the reason, not stored.
    let (status, body) = s
        .create_trigger(json!({"db": "down", "plugin_filename": "web.py", "trigger_name": "other", "trigger_specification": "request:other"}))
        .await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("plugin host is not connected"), "{body}");
    assert_eq!(trigger_row(&s, "down", "other").await, Value::Null);
    let started = Instant::now();
    let r = s.http().get(format!("{}/api/v3/engine/down", s.url)).send().await.unwrap();
    assert_eq!(r.status(), 503);
    let v: Value = r.json().await.unwrap();
    assert!(v["error"].as_str().unwrap().contains("plugin host"), "{v}");
    // Not after the 60 s plugin timeout.
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    let row = trigger_row(&s, "down", "hook").await;
    assert_eq!(row["state"], "STOPPED", "{row}");
    // Catalog queries never wait for the host; only system.plugin_files needs it.
    let cols =
        s.rows("down", "SELECT column_name FROM information_schema.columns WHERE table_name = 'plugin_files'").await;
    assert_eq!(cols.len(), 5, "{cols:?}");
    let r = s
        .http()
        .get(format!("{}/api/v3/query_sql", s.url))
        .query(&[("db", "down"), ("q", "SELECT * FROM system.plugin_files")])
        .send()
        .await
        .unwrap();
    assert!(!r.status().is_success());
    assert!(r.text().await.unwrap().contains("plugin host"));
}

const TOKEN: &str = "apiv3_triggers-test-admin-token";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_are_uploaded_updated_and_listed_with_an_admin_token() {
    let s = Server::start(ServerConfig { admin_token: Some(TOKEN.into()), ..Default::default() });
    s.create_db("up").await;
    let http = s.http();
    let upload = |body: Value| {
        let http = http.clone();
        let url = format!("{}/api/v3/plugins/files", s.url);
        async move { http.post(url).json(&body).send().await.unwrap() }
    };
    // No token: refused.
    let r = reqwest::Client::new()
        .post(format!("{}/api/v3/plugins/files", s.url))
        .json(&json!({"plugin_name": "a.py", "content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let v1 = "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n    return {'v': 1}\n";
    // The host may still be starting.
    let r = eventually(Duration::from_secs(60), || async {
        let r = upload(json!({"plugin_name": "hello.py", "content": v1})).await;
        (r.status() != 503).then_some(r)
    })
    .await
    .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    assert_eq!(upload(json!({"plugin_name": "hello.py", "content": v1})).await.status(), 409);
    for bad in ["../evil.py", "/tmp/evil.py", ".venv/evil.py", "a\\..\\evil.py", "%2e%2e/evil.py"] {
        let r = upload(json!({"plugin_name": bad, "content": "x"})).await;
        assert_eq!(r.status(), 400, "{bad}");
        assert!(r.text().await.unwrap().contains("Path traversal detected"), "{bad}");
    }
    let (status, body) = s
        .create_trigger(json!({"db": "up", "plugin_filename": "hello.py", "trigger_name": "hello", "trigger_specification": "request:hello"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let get = || async {
        http.get(format!("{}/api/v3/engine/hello", s.url)).send().await.unwrap().json::<Value>().await.unwrap()
    };
    assert_eq!(get().await["v"], 1);
    // PUT replaces; the next call runs the new version.
    let r = http
        .put(format!("{}/api/v3/plugins/files", s.url))
        .json(&json!({"plugin_name": "hello.py", "content": v1.replace("'v': 1", "'v': 2")}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert_eq!(get().await["v"], 2);
    let r = http
        .put(format!("{}/api/v3/plugins/files", s.url))
        .json(&json!({"plugin_name": "missing.py", "content": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // A package directory, swapped as a whole; then `weir update trigger` from a local dir.
    let pkg = |version: &str| {
        json!({"plugin_name": "pkg", "files": [
            {"relative_path": "__init__.py", "content": "from .impl import process_request\n"},
            {"relative_path": "impl.py", "content": format!("def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n    return {{'pkg': '{version}'}}\n")},
        ]})
    };
    let r = http.put(format!("{}/api/v3/plugins/directory", s.url)).json(&pkg("one")).send().await.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());
    let (status, body) = s
        .create_trigger(json!({"db": "up", "plugin_filename": "pkg", "trigger_name": "pkg", "trigger_specification": "request:pkg"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let pkg_get = || async {
        http.get(format!("{}/api/v3/engine/pkg", s.url)).send().await.unwrap().json::<Value>().await.unwrap()
    };
    assert_eq!(pkg_get().await["pkg"], "one");
    let local = tempfile::tempdir().unwrap();
    let dir = local.path().join("pkg");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("__init__.py"), "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n    return {'pkg': 'two'}\n").unwrap();
    let (ok, out, err) = weir_cli(
        &[
            "update",
            "trigger",
            "-d",
            "up",
            "-t",
            "pkg",
            "-p",
            dir.to_str().unwrap(),
            "--host",
            &s.url,
            "--token",
            TOKEN,
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    assert_eq!(pkg_get().await["pkg"], "two");
    assert!(!s.plugin_dir().join("pkg/impl.py").exists(), "the old tree was replaced as a whole");

    // `--upload` with create trigger, from a local file.
    let file = local.path().join("uploaded.py");
    std::fs::write(&file, "def process_scheduled_call(influxdb3_local, call_time, args):\n    pass\n").unwrap();
    let (ok, out, err) = weir_cli(
        &[
            "create",
            "trigger",
            "up_tick",
            "-d",
            "up",
            "--path",
            file.to_str().unwrap(),
            "--upload",
            "--trigger-spec",
            "every:1h",
            "--host",
            &s.url,
            "--token",
            TOKEN,
        ],
        None,
    );
    assert!(ok, "{out}{err}");
    assert!(s.plugin_dir().join("uploaded.py").exists());

    let files = s
        .rows(
            "up",
            "SELECT plugin_name, file_name, size_bytes FROM system.plugin_files ORDER BY plugin_name, file_name",
        )
        .await;
    let names: Vec<(String, String)> = files
        .iter()
        .map(|f| (f["plugin_name"].as_str().unwrap().to_string(), f["file_name"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(
        names,
        [("hello.py", "hello.py"), ("pkg", "__init__.py"), ("uploaded.py", "uploaded.py")]
            .map(|(a, b)| (a.to_string(), b.to_string()))
    );
    let (ok, out, err) = weir_cli(&["show", "plugins", "--host", &s.url, "--token", TOKEN], None);
    assert!(ok && out.contains("uploaded.py"), "{out}{err}");
    // last_modified reads as a time, not epoch milliseconds.
    let is_date = |w: &[u8]| {
        w.len() == 11
            && w.iter().enumerate().all(|(i, c)| match i {
                4 | 7 => *c == b'-',
                10 => *c == b'T',
                _ => c.is_ascii_digit(),
            })
    };
    assert!(out.lines().any(|l| l.contains("uploaded.py") && l.as_bytes().windows(11).any(is_date)), "{out}");
    let (ok, out, err) =
        weir_cli(&["show", "summary", "-d", "up", "--host", &s.url, "--token", TOKEN, "--format", "json"], None);
    assert!(ok, "{out}{err}");
    let summary: Vec<Value> = serde_json::from_str(&out).unwrap();
    assert_eq!(summary.len(), 3, "{summary:?}");
    assert!(summary.iter().all(|t| t["state"] == "RUNNING"), "{summary:?}");
}

/// `python3 -m http.server` over `dir`: a stand-in for the plugin repository.
struct Repo {
    child: std::process::Child,
    url: String,
}

impl Repo {
    fn serve(dir: &std::path::Path) -> Self {
        use std::io::BufRead as _;
        let mut child = std::process::Command::new("python3")
            .args(["-u", "-m", "http.server", "0", "--bind", "127.0.0.1", "--directory"])
            .arg(dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("python3 -m http.server");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        // "Serving HTTP on 127.0.0.1 port 41234 (http://127.0.0.1:41234/) ..."
        let port = line.split(" port ").nth(1).and_then(|r| r.split_whitespace().next()).expect("a port").to_string();
        Self { child, url: format!("http://127.0.0.1:{port}/") }
    }
}

impl Drop for Repo {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gh_plugins_are_fetched_once_and_served_from_the_cache() {
    let repo_dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(repo_dir.path().join("examples/hello")).unwrap();
    std::fs::write(
        repo_dir.path().join("examples/hello/hello.py"),
        "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args):\n    return {'from': 'repo'}\n",
    )
    .unwrap();
    let repo = Repo::serve(repo_dir.path());
    let s = start(&["--plugin-repo", &repo.url]);
    s.create_db("gh").await;
    let create = |file: &'static str, name: &'static str| {
        s.create_trigger(json!({"db": "gh", "plugin_filename": file, "trigger_name": name, "trigger_specification": format!("request:{name}")}))
    };
    // The host may still be starting (503).
    let (status, body) = eventually(Duration::from_secs(60), || async {
        let (status, body) = create("gh:examples/hello/hello.py", "hello").await;
        (status != 503).then_some((status, body))
    })
    .await
    .unwrap();
    assert_eq!(status, 200, "{body}");
    let (status, body) = create("gh:examples/missing.py", "missing").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("cannot fetch gh:examples/missing.py") && body.contains("404"), "{body}");
    let (status, body) = create("gh:../etc/passwd", "evil").await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("Path traversal detected"), "{body}");
    let index: Value = serde_json::from_slice(&std::fs::read(s.plugin_dir().join(".gh/index.json")).unwrap()).unwrap();
    assert_eq!(index["examples/hello/hello.py"]["sha256"].as_str().unwrap().len(), 64, "{index}");
    let get = |s: &Server| {
        let (http, url) = (s.http(), format!("{}/api/v3/engine/hello", s.url));
        async move { http.get(url).send().await.unwrap().json::<Value>().await.unwrap() }
    };
    assert_eq!(get(&s).await["from"], "repo");
    // The repository goes away: a restart serves the cached copy.
    drop(repo);
    let s = s.restart();
    let answer = eventually(Duration::from_secs(60), || async {
        let r = s.http().get(format!("{}/api/v3/engine/hello", s.url)).send().await.ok()?;
        (r.status() == 200).then_some(())?;
        r.json::<Value>().await.ok()
    })
    .await
    .expect("the cached gh: plugin answers after a restart");
    assert_eq!(answer["from"], "repo");
}

/// Every API checks a trigger the same way before storing it: plugin paths that could
/// never run, plugin files that do not exist and settings the host would ignore are
/// refused at creation (HTTP and the CLI's gRPC), and nothing is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn triggers_are_checked_before_they_are_stored_on_every_api() {
    let s = start(&[]);
    s.create_db("chk").await;
    s.plugin("ok.py", "def process_writes(influxdb3_local, table_batches, args=None):\n    pass\n");
    for (plugin, want) in [
        ("../../etc/passwd", "Path traversal detected"),
        ("/etc/passwd", "Path traversal detected"),
        ("missing.py", "missing.py"),
    ] {
        let (status, body) = s
            .create_trigger(json!({"db": "chk", "plugin_filename": plugin, "trigger_name": "t", "trigger_specification": "all_tables"}))
            .await;
        assert_eq!(status, 400, "{plugin}: {body}");
        assert!(body.contains(want), "{plugin}: {body}");
        let (ok, out, err) = weir_cli(
            &[
                "create",
                "trigger",
                "t",
                "-d",
                "chk",
                "--path",
                plugin,
                "--trigger-spec",
                "all_tables",
                "--host",
                &s.url,
            ],
            None,
        );
        assert!(!ok, "{plugin}: the CLI reported success: {out}");
        assert!(err.contains(want), "{plugin}: {err}");
    }
    // Several workers need run_async (the gRPC service checks it too: db-core's admin tests).
    let (status, body) = s
        .create_trigger(json!({"db": "chk", "plugin_filename": "ok.py", "trigger_name": "t",
            "trigger_specification": "request:chk", "trigger_settings": {"workers": 2}}))
        .await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("needs run_async"), "{body}");
    assert!(s.rows("chk", "SELECT trigger_name FROM system.processing_engine_triggers").await.is_empty());
    // A good one is stored and runs at once.
    let (status, body) = s
        .create_trigger(json!({"db": "chk", "plugin_filename": "ok.py", "trigger_name": "t", "trigger_specification": "all_tables"}))
        .await;
    assert_eq!(status, 200, "{body}");
    let row = trigger_row(&s, "chk", "t").await;
    assert_eq!(row["state"], "RUNNING", "{row}");
}
