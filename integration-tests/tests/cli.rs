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
