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
