//! The S3 object store end to end, against moto's S3-compatible server (installed into
//! the test venv by scripts/setup-test-env and found on PATH).

use std::{
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use integration_tests::{Server, ServerConfig};

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

async fn start_moto() -> (Moto, String) {
    let port = free_port();
    let child = Command::new("moto_server")
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("moto_server not found on PATH: run scripts/setup-test-env and put its venv's bin on PATH (scripts/test does)");
    let moto = Moto(child);
    let url = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if reqwest::get(format!("{url}/moto-api/")).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    (moto, url)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_store_persists_and_restarts() {
    let (_moto, endpoint) = start_moto().await;
    let r = reqwest::Client::new().put(format!("{endpoint}/weir-bucket")).send().await.unwrap();
    assert!(r.status().is_success(), "create bucket: {}", r.status());

    let config = ServerConfig {
        args: vec![
            "--object-store".into(),
            "s3".into(),
            "--bucket".into(),
            "weir-bucket".into(),
            "--aws-endpoint".into(),
            endpoint.clone(),
            "--aws-allow-http".into(),
            "--snapshot-rows".into(),
            "50".into(),
        ],
        env: vec![("AWS_ACCESS_KEY_ID".into(), "test".into()), ("AWS_SECRET_ACCESS_KEY".into(), "test".into())],
        ..Default::default()
    };
    let s = Server::start(config);
    let mut lp = String::new();
    for i in 0..120 {
        lp.push_str(&format!("s3m,k=k{} v={i}i {}\n", i % 3, 1_700_000_000_000_000_000i64 + i * 1_000_000_000));
    }
    assert_eq!(s.write("s3db", &lp).await.0, 204);
    assert_eq!(s.write("s3db", "s3m,k=late v=1000i 1").await.0, 204);
    let parquet = integration_tests::eventually(Duration::from_secs(60), || async {
        let n = s.query("s3db", "SELECT count(*) AS n FROM system.parquet_files", "csv").await;
        (n != "n\n0\n").then_some(n)
    })
    .await;
    assert!(parquet.is_some(), "a snapshot wrote Parquet to S3");
    let before = s.query("s3db", "SELECT k, count(*) AS n, sum(v) AS s FROM s3m GROUP BY k ORDER BY k", "csv").await;
    assert!(before.contains("late,1,1000"), "{before}");

    // The objects really are in the bucket.
    let listing = reqwest::get(format!("{endpoint}/weir-bucket?list-type=2")).await.unwrap().text().await.unwrap();
    assert!(listing.contains("weir-node/catalog/catalog.json"), "{listing}");
    assert!(listing.contains(".parquet"), "{listing}");

    let s = s.restart();
    assert_eq!(
        s.query("s3db", "SELECT k, count(*) AS n, sum(v) AS s FROM s3m GROUP BY k ORDER BY k", "csv").await,
        before
    );
}
