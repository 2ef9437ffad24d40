//! The `weir` CLI against a real server, over the admin gRPC service.

use integration_tests::{Server, ServerConfig, weir_cli};

const TOKEN: &str = "apiv3_cli-admin";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_round_trip() {
    let s = Server::start(ServerConfig { admin_token: Some(TOKEN.into()), ..Default::default() });
    let host = s.url.as_str();
    let common = ["--host", host, "--token", TOKEN];

    // create / show / delete database
    let (ok, out, err) = weir_cli(&[&["create", "database"][..], &common, &["cli_db"]].concat(), None);
    assert!(ok, "{err}");
    assert!(out.contains("created"), "{out}");
    let (ok, _, err) = weir_cli(&[&["create", "database"][..], &common, &["cli_db"]].concat(), None);
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, out, _) = weir_cli(&[&["show", "databases"][..], &common, &["--format", "csv"]].concat(), None);
    assert!(ok);
    assert_eq!(out, "iox::database\ncli_db\n");

    // write from arguments, from stdin, from a file in several batches
    let (ok, _, err) =
        weir_cli(&[&["write", "-d", "cli_db"][..], &common, &["m,k=a v=1 1", "m,k=b v=2 2"]].concat(), None);
    assert!(ok, "{err}");
    assert!(err.contains("accepted 2 of 2 line(s)"), "{err}");
    let (ok, _, err) = weir_cli(&[&["write", "-d", "cli_db"][..], &common].concat(), Some("m,k=c v=3 3\n"));
    assert!(ok, "{err}");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("data.lp");
    let mut lp = String::from("# a comment\n");
    for i in 0..2500 {
        lp.push_str(&format!("big,k=k{} v={i}i {}\n", i % 5, 1000 + i));
    }
    lp.push_str("big,k=x v=\"wrong type\" 99999\n");
    std::fs::write(&file, &lp).unwrap();
    let (ok, _, err) = weir_cli(
        &[&["write", "-d", "cli_db", "--batch-lines", "1000", "--file"][..], &[file.to_str().unwrap()], &common]
            .concat(),
        None,
    );
    assert!(!ok, "a rejected line makes the command fail");
    assert!(err.contains("accepted 2500 of 2501 line(s)"), "{err}");
    // The rejected line is reported with its line number in the file (comment is line 1).
    assert!(err.contains("rejected line 2502:"), "{err}");

    // query in several formats
    let (ok, out, err) = weir_cli(
        &[&["query", "-d", "cli_db"][..], &common, &["--format", "csv", "SELECT k, v FROM m ORDER BY k"]].concat(),
        None,
    );
    assert!(ok, "{err}");
    assert_eq!(out, "k,v\na,1.0\nb,2.0\nc,3.0\n");
    let (ok, out, _) =
        weir_cli(&[&["query", "-d", "cli_db"][..], &common, &["SELECT count(*) AS n FROM big"]].concat(), None);
    assert!(ok);
    assert!(out.contains("| 2500 |"), "{out}");
    let (ok, out, _) = weir_cli(
        &[
            &["query", "-d", "cli_db"][..],
            &common,
            &["--format", "json", "--param", "k=b", "SELECT v FROM m WHERE k = $k"],
        ]
        .concat(),
        None,
    );
    assert!(ok);
    assert_eq!(out, r#"[{"v":2.0}]"#);
    let pq = dir.path().join("out.parquet");
    let (ok, _, err) = weir_cli(
        &[
            &["query", "-d", "cli_db", "--format", "parquet", "--output"][..],
            &[pq.to_str().unwrap()],
            &common,
            &["SELECT * FROM big"],
        ]
        .concat(),
        None,
    );
    assert!(ok, "{err}");
    let bytes = bytes::Bytes::from(std::fs::read(&pq).unwrap());
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 4096).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 2500);
    let (ok, _, err) = weir_cli(&[&["query", "-d", "cli_db"][..], &common, &["SELECT nope FROM m"]].concat(), None);
    assert!(!ok && err.contains("nope"), "{err}");

    // wrong token, missing token
    let (ok, _, err) = weir_cli(&["show", "databases", "--host", host, "--token", "apiv3_bad"], None);
    assert!(!ok && err.contains("invalid token"), "{err}");
    let (ok, _, err) = weir_cli(&["show", "databases", "--host", host], None);
    assert!(!ok && err.contains("authorization required"), "{err}");

    // a second admin token
    let (ok, out, err) = weir_cli(&[&["create", "token", "--admin", "--name", "ops"][..], &common].concat(), None);
    assert!(ok, "{err}");
    let ops = out.lines().last().unwrap().trim().to_string();
    assert!(ops.starts_with("apiv3_"));
    let (ok, _, err) = weir_cli(&["show", "databases", "--host", host, "--token", &ops], None);
    assert!(ok, "{err}");

    let (ok, _, err) = weir_cli(&[&["delete", "database"][..], &common, &["cli_db"]].concat(), None);
    assert!(ok, "{err}");
    let (ok, out, _) = weir_cli(&[&["show", "databases"][..], &common, &["--format", "csv"]].concat(), None);
    assert!(ok);
    assert_eq!(out, "iox::database\n");
}

#[test]
fn help_explains_itself() {
    let (ok, out, _) = weir_cli(&["serve", "--help"], None);
    assert!(ok);
    for flag in [
        "--http-bind",
        "--object-store",
        "--data-dir",
        "--wal-flush-interval",
        "--without-auth",
        "--max-http-request-size",
        "WEIR_HTTP_BIND",
        "--plugin-dir",
        "--plugin-repo",
        "--plugin-timeout",
        "--package-manager",
    ] {
        assert!(out.contains(flag), "serve --help lacks {flag}");
    }
    let (ok, out, _) = weir_cli(&["--help"], None);
    assert!(ok);
    for cmd in ["serve", "write", "query", "create", "show", "delete", "update", "test", "install", "enable", "disable"]
    {
        assert!(out.contains(cmd), "--help lacks {cmd}");
    }
}

/// `weir write` retries with backoff while the server is unavailable, then succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_retries_until_the_server_is_up() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let host = format!("http://127.0.0.1:{port}");
    // Start the CLI first: nothing listens yet.
    let cli = {
        let host = host.clone();
        std::thread::spawn(move || {
            weir_cli(&["write", "-d", "late", "--host", &host, "--retries", "8", "m v=1 1"], None)
        })
    };
    std::thread::sleep(std::time::Duration::from_millis(700));
    let s = Server::start(ServerConfig { bind: Some(format!("127.0.0.1:{port}")), ..Default::default() });
    let (ok, _, err) = cli.join().unwrap();
    assert!(ok, "{err}");
    assert!(err.contains("retry 1/8"), "the first attempt failed and was retried: {err}");
    assert!(err.contains("accepted 1 of 1 line(s)"), "{err}");
    assert_eq!(s.query("late", "SELECT v FROM m", "csv").await, "v\n1.0\n");
}

/// Resource tokens, listing, deletion and admin regeneration through the CLI and a real
/// server; the files holding token material are owner-only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_through_the_cli() {
    use std::os::unix::fs::PermissionsExt as _;
    let s = Server::start(ServerConfig { admin_token: Some(TOKEN.into()), ..Default::default() });
    let host = s.url.clone();
    let with = |token: &str, args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--host", host.as_str(), "--token", token]);
        weir_cli(&all, None)
    };
    let (ok, _, err) = with(TOKEN, &["write", "-d", "sensors", "m v=1 1"]);
    assert!(ok, "{err}");

    // A read-only token for one database, expiring in an hour.
    let (ok, out, err) = with(
        TOKEN,
        &["create", "token", "--name", "dash", "--permission", "db:sensors:read", "--expiry", "1h", "--format", "json"],
    );
    assert!(ok, "{err}");
    let created: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(created["permissions"], serde_json::json!(["db:sensors:read"]));
    assert!(created["expiry"].is_string(), "{created}");
    let dash = created["token"].as_str().unwrap().to_string();

    let (ok, out, err) = with(&dash, &["query", "-d", "sensors", "--format", "csv", "SELECT v FROM m"]);
    assert!(ok, "{err}");
    assert_eq!(out, "v\n1.0\n");
    let (ok, _, err) = with(&dash, &["write", "-d", "sensors", "m v=2 2"]);
    assert!(!ok && err.contains("may not write database \"sensors\""), "{err}");
    let (ok, _, err) = with(&dash, &["query", "-d", "other", "SELECT 1"]);
    assert!(!ok && err.contains("may not read database \"other\""), "{err}");
    let (ok, _, err) = with(&dash, &["create", "database", "x"]);
    assert!(!ok && err.contains("admin token"), "{err}");
    let (ok, _, err) = with(&dash, &["show", "tokens"]);
    assert!(!ok && err.contains("admin token"), "{err}");
    // A bad permission is explained.
    let (ok, _, err) = with(TOKEN, &["create", "token", "--name", "bad", "--permission", "db:sensors:delete"]);
    assert!(!ok && err.contains("unknown action \"delete\""), "{err}");

    let (ok, out, err) = with(TOKEN, &["show", "tokens", "--format", "json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dash_row = list.as_array().unwrap().iter().find(|t| t["name"] == "dash").expect("dash listed");
    assert_eq!(dash_row["permissions"], "db:sensors:read");
    assert_eq!(dash_row["expired"], false);
    assert!(!out.contains(&dash), "the list never shows a secret");

    let (ok, _, err) = with(TOKEN, &["delete", "token", "dash"]);
    assert!(ok, "{err}");
    let (ok, _, err) = with(&dash, &["query", "-d", "sensors", "SELECT 1"]);
    assert!(!ok && err.contains("invalid token"), "a deleted token is refused at once: {err}");

    // Files holding token material are owner-only.
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    let catalog = s.data_dir.join("store/weir-node/catalog/catalog.json");
    assert_eq!(mode(&catalog), 0o600, "{}", catalog.display());
    let recovery = s.data_dir.join("admin-token-recovery");
    assert_eq!(mode(&recovery), 0o600);

    // The admin token is lost: whoever can read the server's recovery file renews it.
    let (ok, _, err) = weir_cli(&["create", "token", "--admin", "--regenerate", "--host", &host], None);
    assert!(!ok && err.contains("recovery file"), "no token and no file: {err}");
    let wrong = s.data_dir.join("wrong-secret");
    std::fs::write(&wrong, "weir-recovery_guess\n").unwrap();
    let (ok, _, err) = weir_cli(
        &["create", "token", "--admin", "--regenerate", "--host", &host, "--recovery-file", wrong.to_str().unwrap()],
        None,
    );
    assert!(!ok && err.contains("does not match"), "{err}");
    let (ok, out, err) = weir_cli(
        &["create", "token", "--admin", "--regenerate", "--host", &host, "--recovery-file", recovery.to_str().unwrap()],
        None,
    );
    assert!(ok, "{err}");
    let renewed = out.lines().find(|l| l.starts_with("apiv3_")).expect("new token printed").to_string();
    let (ok, _, err) = with(TOKEN, &["show", "databases"]);
    assert!(!ok && err.contains("invalid token"), "the old admin token is refused at once: {err}");
    let (ok, out, err) = with(&renewed, &["show", "databases", "--format", "csv"]);
    assert!(ok, "{err}");
    assert_eq!(out, "iox::database\nsensors\n");

    // After a restart the renewed token still works and the old recovery secret does not.
    let old_secret = std::fs::read_to_string(&recovery).unwrap();
    let s = s.restart();
    let host = s.url.clone();
    let (ok, _, err) = weir_cli(&["show", "databases", "--host", &host, "--token", &renewed], None);
    assert!(ok, "{err}");
    assert_ne!(std::fs::read_to_string(&recovery).unwrap(), old_secret, "a new secret at every start");
    std::fs::write(&wrong, &old_secret).unwrap();
    let (ok, _, err) = weir_cli(
        &["create", "token", "--admin", "--regenerate", "--host", &host, "--recovery-file", wrong.to_str().unwrap()],
        None,
    );
    assert!(!ok && err.contains("does not match"), "{err}");
}

/// What an influxdb3 user types: its environment variables, `w`/`q`, SQL from a file or
/// standard input, `--accept-partial`, a bare cron for `test schedule_plugin`, dry runs
/// that fail when the plugin raised, nanosecond `plugin_test` timestamps, engine logs
/// from `_internal`, and `serve`'s `--admin-token-file` and `--virtual-env-location`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn influxdb3_habits() {
    use integration_tests::weir_cli_env;
    let tmp = tempfile::tempdir().unwrap();
    let token_file = tmp.path().join("admin-token.json");
    std::fs::write(&token_file, format!(r#"{{"token": "{TOKEN}", "name": "_admin"}}"#)).unwrap();
    let venv = tmp.path().join("elsewhere/venv");
    let s = Server::start(ServerConfig {
        admin_token: None,
        args: vec![
            "--admin-token-file".into(),
            token_file.to_str().unwrap().into(),
            "--virtual-env-location".into(),
            venv.to_str().unwrap().into(),
            "--package-manager".into(),
            "discover".into(),
            "--aws-default-region".into(),
            "eu-west-1".into(),
        ],
        env: vec![("INFLUXDB3_NODE_IDENTIFIER_PREFIX".into(), "habits-node".into())],
        ..Default::default()
    });
    let env =
        [("INFLUXDB3_HOST_URL", s.url.as_str()), ("INFLUXDB3_AUTH_TOKEN", TOKEN), ("INFLUXDB3_DATABASE_NAME", "h")];
    let cli = |args: &[&str], stdin: Option<&str>| weir_cli_env(args, stdin, &env);

    let (ok, _, err) = cli(&["w", "m,k=a v=1i 1"], None);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["q", "--format", "csv", "SELECT k, v FROM m"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "k,v\na,1\n");
    let sql = tmp.path().join("q.sql");
    std::fs::write(&sql, "SELECT count(*) AS n FROM m\n").unwrap();
    let (ok, out, err) = cli(&["query", "--format", "csv", "-f", sql.to_str().unwrap()], None);
    assert!(ok, "{err}");
    assert_eq!(out, "n\n1\n");
    let (ok, out, err) = cli(&["query", "--format", "csv"], Some("SELECT v FROM m"));
    assert!(ok, "{err}");
    assert_eq!(out, "v\n1\n");
    let (ok, _, err) = cli(&["query"], Some("  \n"));
    assert!(!ok && err.contains("the query is empty"), "{err}");

    // --accept-partial=false writes nothing of a batch with a bad line; the default writes
    // the good ones.
    let (ok, _, err) = cli(&["write", "--accept-partial=false", "m,k=b v=2i 2", "m,k=c v=oops 3"], None);
    assert!(!ok, "{err}");
    let (_, out, _) = cli(&["q", "--format", "csv", "SELECT count(*) AS n FROM m"], None);
    assert_eq!(out, "n\n1\n");
    let (ok, _, err) = cli(&["write", "m,k=b v=2i 2", "m,k=c v=oops 3"], None);
    assert!(!ok && err.contains("accepted 1 of 2 line(s)"), "{err}");
    let (_, out, _) = cli(&["q", "--format", "csv", "SELECT count(*) AS n FROM m"], None);
    assert_eq!(out, "n\n2\n");
    // As a bare flag (influxdb3's spelling) it takes no value: the next word is a line.
    let (ok, _, err) = cli(&["write", "--accept-partial", "m,k=d v=4i 4"], None);
    assert!(ok, "{err}");

    // Dry runs: a bare cron, nanosecond timestamps, a plugin that raises fails the command.
    s.plugin(
        "tick.py",
        "def process_scheduled_call(influxdb3_local, call_time, args=None):\n    influxdb3_local.info('tick')\n",
    );
    let (ok, out, err) = cli(&["test", "schedule_plugin", "tick.py", "--schedule", "0 0 * * *"], None);
    assert!(ok, "{err}\n{out}");
    let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(answer["trigger_time"].as_str().is_some_and(|t| t.ends_with("T00:00:00.000Z")), "{answer}");
    s.plugin(
        "times.py",
        "def process_writes(influxdb3_local, table_batches, args=None):\n    \
         for b in table_batches:\n        for r in b['rows']:\n            influxdb3_local.info(f\"time={r['time']}\")\n",
    );
    let (ok, out, err) = cli(&["test", "wal_plugin", "times.py", "--lp", "t,a=1 v=1i 500"], None);
    assert!(ok, "{err}\n{out}");
    assert!(out.contains("time=500\""), "{out}");
    s.plugin(
        "boom.py",
        "def process_writes(influxdb3_local, table_batches, args=None):\n    raise ValueError('boom')\n",
    );
    let (ok, out, err) = cli(&["test", "wal_plugin", "boom.py", "--lp", "t v=1"], None);
    assert!(!ok, "a plugin that raised must fail the command: {out}");
    assert!(out.contains("boom") && err.contains("the plugin reported 1 error(s)"), "{out}\n{err}");

    // Retention: rows older than the period are not queryable; a bad period is refused.
    let hour_ns: i64 = 3_600_000_000_000;
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as i64;
    let (ok, _, err) = cli(&["create", "database", "r", "--retention-period", "1h"], None);
    assert!(ok, "{err}");
    let old_line = format!("m,k=old v=1i {}", now - 3 * hour_ns);
    let new_line = format!("m,k=new v=2i {}", now - hour_ns / 6);
    let (ok, _, err) = cli(&["write", "-d", "r", "--precision", "ns", &old_line, &new_line], None);
    assert!(ok, "{err}");
    let (ok, out, err) = cli(&["q", "-d", "r", "--format", "csv", "SELECT k FROM m"], None);
    assert!(ok, "{err}");
    assert_eq!(out, "k\nnew\n");
    let (ok, _, err) = cli(&["create", "database", "r2", "--retention-period", "soon"], None);
    assert!(!ok && err.contains("invalid retention period"), "{err}");
    let r = reqwest::Client::new()
        .post(format!("{}/api/v3/configure/database", s.url))
        .bearer_auth(TOKEN)
        .json(&serde_json::json!({"db": "r3", "retention_period": "7d"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let (ok, out, err) = cli(&["delete", "database", "r", "--hard-delete"], None);
    assert!(ok && out.contains("its files removed"), "{err}{out}");

    // Engine logs from _internal, across databases.
    s.plugin(
        "hello.py",
        "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):\n    \
         influxdb3_local.info('hello from h')\n    return {'ok': True}\n",
    );
    let (ok, _, err) =
        cli(&["create", "trigger", "hello", "--path", "hello.py", "--trigger-spec", "request:hello"], None);
    assert!(ok, "{err}");
    let r =
        reqwest::Client::new().get(format!("{}/api/v3/engine/hello", s.url)).bearer_auth(TOKEN).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let (ok, out, err) = weir_cli_env(
        &[
            "q",
            "-d",
            "_internal",
            "--format",
            "csv",
            "SELECT trigger_name, log_text FROM system.processing_engine_logs",
        ],
        None,
        &env[..2],
    );
    assert!(ok, "{err}");
    assert!(out.contains("hello,hello from h"), "{out}");

    // The token came from --admin-token-file (a wrong one is refused), the venv is where
    // --virtual-env-location put it, and log lines carry no colour codes when not a terminal.
    let (ok, _, err) = weir_cli_env(&["show", "databases"], None, &[("INFLUXDB3_HOST_URL", s.url.as_str())]);
    assert!(!ok && err.contains("authorization required"), "{err}");
    assert!(venv.join("pyvenv.cfg").is_file(), "no venv at {}", venv.display());
    // influxdb3's serve variable names the node (its files live under it); discover chose
    // a package manager.
    assert!(s.data_dir.join("store/habits-node").is_dir(), "INFLUXDB3_NODE_IDENTIFIER_PREFIX was not used");
    assert!(s.log().contains("--package-manager discover"), "{}", s.log());
    assert!(!s.log().contains('\u{1b}'), "ANSI escape codes in a log that is not a terminal");
}

/// `weir` alone prints its help, which explains the shared flags and influxdb3's variables.
#[test]
fn bare_weir_prints_help() {
    let (ok, out, err) = weir_cli(&[], None);
    assert!(!ok, "no command is a usage error");
    let text = format!("{out}{err}");
    for want in ["Usage: weir", "serve", "--log-filter", "INFLUXDB3_HOST_URL", "[alias: w]", "[alias: q]"] {
        assert!(text.contains(want), "`weir` alone lacks {want:?}:\n{text}");
    }
    let (ok, out, _) = weir_cli(&["serve", "--help"], None);
    assert!(ok);
    for flag in ["--admin-token-file", "--virtual-env-location", "--aws-default-region", "discover"] {
        assert!(out.contains(flag), "serve --help lacks {flag}");
    }
    // Help and errors that say what to do.
    let (ok, out, _) = weir_cli(&["enable", "trigger", "--help"], None);
    assert!(ok && out.contains("run again from the next flush") && out.contains("Examples:"), "{out}");
    let (ok, out, _) = weir_cli(&["disable", "trigger", "--help"], None);
    assert!(ok && out.contains("does not run"), "{out}");
    let (ok, _, err) = weir_cli(&["install", "package"], None);
    assert!(!ok && err.contains("no packages given") && err.contains("-r requirements.txt"), "{err}");
    // --log-filter is explained once, in `weir --help`, not in every subcommand.
    let (_, out, _) = weir_cli(&["write", "--help"], None);
    assert!(!out.contains("--log-filter"), "{out}");
}

/// `weir update trigger` changes arguments, error behaviour and state in place, and will
/// not silently replace a plugin file another trigger uses; `show databases
/// --show-deleted` lists deleted ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_trigger_in_place() {
    let s = Server::start(ServerConfig { admin_token: Some(TOKEN.into()), ..Default::default() });
    let host = s.url.clone();
    let cli = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--host", host.as_str(), "--token", TOKEN]);
        weir_cli(&all, None)
    };
    let call = |path: &'static str| {
        let url = format!("{}/api/v3/engine/{path}", s.url);
        async move {
            let r = reqwest::Client::new().get(url).bearer_auth(TOKEN).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let plugin = |version: u32| {
        format!(
            "def process_request(influxdb3_local, query_parameters, request_headers, request_body, args=None):\n    \
             return {{'v': {version}, 'args': args}}\n"
        )
    };
    s.plugin("echo.py", &plugin(1));
    assert!(cli(&["create", "database", "u"]).0);
    for (name, args) in [("echo", "a=1"), ("echo2", "z=9")] {
        let spec = format!("request:{name}");
        let (ok, _, err) = cli(&[
            "create",
            "trigger",
            name,
            "-d",
            "u",
            "--path",
            "echo.py",
            "--trigger-spec",
            &spec,
            "--trigger-arguments",
            args,
        ]);
        assert!(ok, "{err}");
    }
    let json = |text: &str| serde_json::from_str::<serde_json::Value>(text).unwrap();
    let (status, body) = call("echo").await;
    assert_eq!((status, json(&body)), (200, serde_json::json!({"v": 1, "args": {"a": "1"}})));

    let (ok, out, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "--trigger-arguments", "a=2,b=3"]);
    assert!(ok, "{err}");
    assert!(out.contains("arguments a=2,b=3"), "{out}");
    let (_, body) = call("echo").await;
    assert_eq!(json(&body)["args"], serde_json::json!({"a": "2", "b": "3"}));

    let (ok, out, err) =
        cli(&["update", "trigger", "-d", "u", "-t", "echo", "--error-behavior", "retry", "--disabled"]);
    assert!(ok, "{err}");
    assert!(out.contains("error behavior retry, disabled"), "{out}");
    assert_eq!(call("echo").await.0, 404, "a disabled request trigger is not served");
    let (ok, _, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "--enabled"]);
    assert!(ok, "{err}");
    assert_eq!(call("echo").await.0, 200);
    let (ok, _, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "--error-behavior", "sometimes"]);
    assert!(!ok && err.contains("sometimes"), "{err}");
    let (ok, _, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo"]);
    assert!(!ok && err.contains("nothing to update"), "{err}");

    // The plugin file is shared with echo2: replacing it needs --force.
    let dir = tempfile::tempdir().unwrap();
    let new = dir.path().join("echo_v2.py");
    std::fs::write(&new, plugin(2)).unwrap();
    let (ok, _, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "-p", new.to_str().unwrap()]);
    assert!(!ok && err.contains("also used by u/echo2") && err.contains("--force"), "{err}");
    assert_eq!(json(&call("echo2").await.1)["v"], 1, "refused: nothing changed");
    let (ok, out, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "-p", new.to_str().unwrap(), "--force"]);
    assert!(ok, "{err}");
    assert!(out.contains("Also changed for: u/echo2"), "{out}");
    assert!(
        integration_tests::eventually(std::time::Duration::from_secs(30), || async {
            (json(&call("echo2").await.1)["v"] == 2).then_some(())
        })
        .await
        .is_some()
    );

    // Arguments removed: the plugin gets None.
    let (ok, _, err) = cli(&["update", "trigger", "-d", "u", "-t", "echo", "--trigger-arguments", ""]);
    assert!(ok, "{err}");
    assert_eq!(json(&call("echo").await.1)["args"], serde_json::Value::Null);

    // delete table: the data goes, the name is free again.
    assert!(cli(&["write", "-d", "u", "old,k=a v=1i 1"]).0);
    let (ok, out, err) = cli(&["delete", "table", "old", "-d", "u"]);
    assert!(ok && out.contains("Table u.old deleted"), "{err}");
    let (ok, _, err) = cli(&["query", "-d", "u", "SELECT * FROM old"]);
    assert!(!ok && err.contains("not found"), "{err}");
    let (ok, _, err) = cli(&["delete", "table", "old", "-d", "u"]);
    assert!(!ok && err.contains("table \"old\" not found"), "{err}");
    assert!(cli(&["write", "-d", "u", "old,k=b v=2i 2"]).0);
    let (_, out, _) = cli(&["query", "-d", "u", "--format", "csv", "SELECT k FROM old"]);
    assert_eq!(out, "k\nb\n");
    let r = reqwest::Client::new()
        .delete(format!("{}/api/v3/configure/table?db=u&table=nope", s.url))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);

    // Deleted databases are listed on request.
    assert!(cli(&["create", "database", "gone"]).0);
    assert!(cli(&["delete", "database", "gone"]).0);
    let (ok, out, _) = cli(&["show", "databases", "--format", "csv"]);
    assert!(ok && !out.contains("gone"), "{out}");
    let (ok, out, err) = cli(&["show", "databases", "--show-deleted", "--format", "csv"]);
    assert!(ok, "{err}");
    assert!(
        out.starts_with("iox::database,deleted\n") && out.contains(",true\n") && out.contains("u,false\n"),
        "{out}"
    );
}
