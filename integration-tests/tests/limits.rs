//! Hostile clients against the real `weir serve`: connections that never finish their
//! headers or sit idle, more connections than allowed, a wide line, an abandoned query.

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use integration_tests::{Server, ServerConfig};

fn start(extra: &[&str]) -> Server {
    Server::start(ServerConfig { args: extra.iter().map(|s| s.to_string()).collect(), ..Default::default() })
}

fn addr(s: &Server) -> String {
    s.url.trim_start_matches("http://").to_string()
}

/// Whether the server closes `conn` within `within` (reads EOF or a reset).
fn closed_within(conn: &mut TcpStream, within: Duration) -> bool {
    conn.set_read_timeout(Some(within)).unwrap();
    let mut buf = [0u8; 1024];
    loop {
        match conn.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                return false;
            }
            Err(_) => return true,
        }
    }
}

/// Slow-header and idle connections are closed after the header timeout; past the cap a
/// new connection gets a 503 at once; `/health` answers throughout.
#[test]
fn slow_idle_and_surplus_connections_are_bounded() {
    let s = start(&["--http-header-read-timeout", "1s", "--max-connections", "6"]);
    let a = addr(&s);
    let mut held: Vec<TcpStream> = Vec::new();
    // Two idle, two sending headers a byte at a time (slowloris).
    for i in 0..4 {
        let mut c = TcpStream::connect(&a).unwrap();
        if i >= 2 {
            c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ").unwrap();
        }
        held.push(c);
    }
    // Two more fill the cap; the next is refused with a readable answer.
    held.push(TcpStream::connect(&a).unwrap());
    held.push(TcpStream::connect(&a).unwrap());
    std::thread::sleep(Duration::from_millis(200));
    let mut surplus = TcpStream::connect(&a).unwrap();
    surplus.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut answer = String::new();
    let _ = surplus.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer:?}");
    assert!(answer.contains("--max-connections"), "{answer}");
    // Every held connection is closed by the server within a generous deadline.
    for (i, c) in held.iter_mut().enumerate() {
        if (2..4).contains(&i) {
            let _ = c.write_all(b"a");
        }
        assert!(closed_within(c, Duration::from_secs(30)), "connection {i} was kept open");
    }
    // Room again: a normal request works.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut c = TcpStream::connect(&a).unwrap();
        c.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").unwrap();
        let mut out = String::new();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = c.read_to_string(&mut out);
        if out.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(Instant::now() < deadline, "health never answered: {out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A plugin cannot reach the database's files (catalog, WAL, another database's Parquet)
/// or other processes' environments, and gets PermissionError; its normal work (writes,
/// queries, its own files, temporary files) still succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plugins_cannot_reach_the_databases_files() {
    use serde_json::json;
    // Outside /tmp, like a real data directory.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let s = Server::start(ServerConfig {
        data_dir: Some(dir.path().to_path_buf()),
        args: vec!["--snapshot-rows".into(), "1".into()],
        ..Default::default()
    });
    s.create_db("other").await;
    s.write("other", "secret,k=v value=42i 1000000000").await;
    let store = dir.path().join("store").join("weir-node");
    let parquet = integration_tests::eventually(Duration::from_secs(60), || async {
        walk(&store.join("dbs")).into_iter().find(|p| p.extension().is_some_and(|e| e == "parquet"))
    })
    .await
    .expect("the other database was persisted to Parquet");
    s.create_db("app").await;
    s.plugin("own.txt", "mine");
    s.plugin(
        "snoop.py",
        r#"
import os, tempfile
def process_writes(influxdb3_local, table_batches, args):
    for key in ("catalog", "wal", "parquet", "environ"):
        try:
            if key == "wal":
                influxdb3_local.info(key, "LISTED", os.listdir(args[key]))
                continue
            with open(args[key], "rb") as f:
                influxdb3_local.info(key, "READ", len(f.read()))
        except PermissionError:
            influxdb3_local.info(key, "PermissionError")
        except Exception as e:
            influxdb3_local.info(key, type(e).__name__)
    with open(os.path.join(os.environ["PLUGIN_DIR"], "own.txt")) as f:
        influxdb3_local.info("own", f.read())
    with tempfile.NamedTemporaryFile() as t:
        t.write(b"x")
        influxdb3_local.info("tmp", "ok")
    rows = influxdb3_local.query("SELECT count(*) AS n FROM m")
    influxdb3_local.write(LineBuilder("seen").int64_field("n", rows[0]["n"]))
"#,
    );
    let args = json!({
        "catalog": store.join("catalog").join("catalog.json").display().to_string(),
        "wal": store.join("wal").display().to_string(),
        "parquet": parquet.display().to_string(),
        "environ": "/proc/1/environ",
    });
    let (status, body) = s
        .create_trigger(json!({"db": "app", "plugin_filename": "snoop.py", "trigger_name": "snoop",
            "trigger_specification": "all_tables", "trigger_arguments": args}))
        .await;
    assert_eq!(status, 200, "{body}");
    s.write("app", "m v=1i 1000000000").await;
    let seen = s.rows_when("app", "SELECT n FROM seen", |r| !r.is_empty()).await;
    assert_eq!(seen[0]["n"], 1, "the plugin's normal work succeeded");
    let logs = s.engine_logs("app").await;
    for want in [
        "INFO: catalog PermissionError",
        "INFO: wal PermissionError",
        "INFO: parquet PermissionError",
        "INFO: environ PermissionError",
        "INFO: own mine",
        "INFO: tmp ok",
    ] {
        assert!(logs.iter().any(|l| l == want), "missing {want:?} in {logs:?}");
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut dirs = vec![dir.to_path_buf()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if !e.file_name().to_string_lossy().starts_with('.') {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Someone holding the session token (a plugin that stole it, say) cannot take the plugin
/// host over from a live `weir serve`: the second session is refused and the engine keeps
/// working. A wrong token is refused outright.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_session_cannot_take_the_plugin_host_over() {
    use serde_json::json;
    use weir_proto::plugin::v1::{self as pb, plugin_host_client::PluginHostClient};
    const TOKEN: &str = "session-secret-for-test";
    let plugins = tempfile::tempdir().unwrap();
    let host = integration_tests::PluginHost::start(plugins.path(), TOKEN);
    let s = Server::start(ServerConfig {
        args: vec!["--plugin-host-url".into(), host.url.clone()],
        env: vec![("WEIR_PLUGIN_HOST_TOKEN".into(), TOKEN.into())],
        ..Default::default()
    });
    std::fs::write(
        plugins.path().join("count.py"),
        "def process_writes(influxdb3_local, table_batches, args):\n    influxdb3_local.write(LineBuilder('seen').int64_field('n', len(table_batches[0]['rows'])))\n",
    )
    .unwrap();
    s.create_db("app").await;
    let ready = integration_tests::eventually(Duration::from_secs(60), || async {
        let r = s.http().get(format!("{}/ready", s.url)).send().await.ok()?;
        r.status().is_success().then_some(())
    })
    .await;
    assert!(ready.is_some(), "the plugin host never connected");
    let (status, body) = s
        .create_trigger(json!({"db": "app", "plugin_filename": "count.py", "trigger_name": "c", "trigger_specification": "all_tables"}))
        .await;
    assert_eq!(status, 200, "{body}");

    let attack = |token: &'static str| {
        let url = host.url.clone();
        async move {
            let mut client = PluginHostClient::connect(url).await.unwrap();
            let (_tx, rx) = tokio::sync::mpsc::channel::<pb::CoreMessage>(1);
            let mut request = tonic::Request::new(tokio_stream::wrappers::ReceiverStream::new(rx));
            request.metadata_mut().insert("authorization", format!("Bearer {token}").parse().unwrap());
            client.session(request).await.map(|_| ()).unwrap_err()
        }
    };
    let e = attack("guessed").await;
    assert_eq!(e.code(), tonic::Code::Unauthenticated, "{e:?}");
    let e = attack(TOKEN).await;
    assert_eq!(e.code(), tonic::Code::AlreadyExists, "{e:?}");
    // The engine still works through its own session.
    s.write("app", "m v=1i 1000000000").await;
    let seen = s.rows_when("app", "SELECT n FROM seen", |r| !r.is_empty()).await;
    assert_eq!(seen[0]["n"], 1);
    let row = s.rows("app", "SELECT state FROM system.processing_engine_triggers WHERE trigger_name = 'c'").await;
    assert_eq!(row[0]["state"], "RUNNING");
}
