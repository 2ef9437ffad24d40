//! End to end through the real binary: the three write endpoints, every query format,
//! and identical answers after a graceful restart and after `kill -9`.

use integration_tests::{Server, ServerConfig};

const TOKEN: &str = "apiv3_e2e-admin";

async fn write_all_endpoints(s: &Server) {
    let http = s.http();
    // v3: seconds precision, partial write with one bad line.
    let r = http
        .post(format!("{}/api/v3/write_lp?db=e2e&precision=s", s.url))
        .body("cpu,host=a,region=eu usage=1.5,count=3i 1700000000\ncpu,host=b usage=2.5 1700000000\nnot a line\n")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["error"], "partial write of line protocol occurred");
    assert_eq!(body["data"][0]["line_number"], 3);
    // v2: bucket, ms precision, gzip body.
    let gz = {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(b"cpu,host=c usage=3.5 1700000001000\nmem,host=a free=10u 1700000001000").unwrap();
        e.finish().unwrap()
    };
    let r = http
        .post(format!("{}/api/v2/write?bucket=e2e&org=ignored&precision=ms", s.url))
        .header("content-encoding", "gzip")
        .body(gz)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
    // v1: ns default precision; a later write of an existing point updates one field.
    let r = http
        .post(format!("{}/write?db=e2e", s.url))
        .body("cpu,region=eu,host=a usage=9.5 1700000000000000000\nflags,host=a ok=true,note=\"say \\\"hi\\\"\" 1700000002000000000")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 204, "{}", r.text().await.unwrap());
}

const QUERIES: &[(&str, &str)] = &[
    ("SELECT host, region, usage, count, time FROM cpu ORDER BY host", "csv"),
    ("SELECT host, region, usage, count, time FROM cpu ORDER BY host", "json"),
    ("SELECT host, free, time FROM mem", "jsonl"),
    ("SELECT host, ok, note FROM flags", "pretty"),
    ("SELECT count(*) AS n, sum(usage) AS s FROM cpu", "csv"),
    ("SHOW TABLES", "csv"),
];

async fn answers(s: &Server) -> Vec<String> {
    let mut out = Vec::new();
    for (q, f) in QUERIES {
        out.push(s.query("e2e", q, f).await);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_endpoints_query_formats_and_restarts() {
    let s = Server::start(ServerConfig { admin_token: Some(TOKEN.into()), ..Default::default() });
    write_all_endpoints(&s).await;

    let a = answers(&s).await;
    assert_eq!(
        a[0],
        "host,region,usage,count,time\n\
         a,eu,9.5,3,2023-11-14T22:13:20\n\
         b,,2.5,,2023-11-14T22:13:20\n\
         c,,3.5,,2023-11-14T22:13:21\n"
    );
    assert_eq!(
        a[1],
        r#"[{"host":"a","region":"eu","usage":9.5,"count":3,"time":"2023-11-14T22:13:20"},{"host":"b","usage":2.5,"time":"2023-11-14T22:13:20"},{"host":"c","usage":3.5,"time":"2023-11-14T22:13:21"}]"#
    );
    assert_eq!(a[2], "{\"host\":\"a\",\"free\":10,\"time\":\"2023-11-14T22:13:21\"}\n");
    assert!(a[3].contains(r#"| a    | true | say "hi" |"#), "{}", a[3]);
    assert_eq!(a[4], "n,s\n3,15.5\n");
    assert!(a[5].contains("public,iox,cpu,BASE TABLE"), "{}", a[5]);

    // Parquet format is a real Parquet file with the same rows.
    let r = s
        .http()
        .get(format!("{}/api/v3/query_sql", s.url))
        .query(&[("db", "e2e"), ("q", "SELECT * FROM cpu"), ("format", "parquet")])
        .send()
        .await
        .unwrap();
    let bytes = r.bytes().await.unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReader::try_new(bytes, 1024).unwrap();
    assert_eq!(reader.map(|b| b.unwrap().num_rows()).sum::<usize>(), 3);

    // Graceful restart (WAL replay): same answers.
    let mut s = s;
    s.stop();
    let s = s.restart();
    assert_eq!(answers(&s).await, a, "answers changed after a graceful restart");

    // kill -9 and restart: same answers.
    let s = s.restart();
    assert_eq!(answers(&s).await, a, "answers changed after kill -9");

    // Unauthenticated requests are refused by the real server too.
    let r = reqwest::get(format!("{}/api/v3/query_sql?db=e2e&q=SELECT%201", s.url)).await.unwrap();
    assert_eq!(r.status(), 401);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_to_parquet_and_restarts_from_them() {
    let s = Server::start(ServerConfig { args: vec!["--snapshot-rows".into(), "100".into()], ..Default::default() });
    let mut lp = String::new();
    for i in 0..250 {
        lp.push_str(&format!("m,k=k{} v={i}i {}\n", i % 10, 1_700_000_000_000_000_000i64 + i * 1_000_000_000));
    }
    let (status, body) = s.write("snap", &lp).await;
    assert_eq!(status, 204, "{body}");
    // The snapshot runs in the background: poll for Parquet files.
    let files = integration_tests::eventually(std::time::Duration::from_secs(60), || async {
        let n = s.query("snap", "SELECT count(*) AS n FROM system.parquet_files", "csv").await;
        (n != "n\n0\n").then_some(n)
    })
    .await
    .expect("a snapshot wrote Parquet files");
    assert!(files.starts_with("n\n"), "{files}");
    let before = s.query("snap", "SELECT k, count(*) AS n, sum(v) AS s FROM m GROUP BY k ORDER BY k", "csv").await;
    let s = s.restart();
    assert_eq!(
        s.query("snap", "SELECT k, count(*) AS n, sum(v) AS s FROM m GROUP BY k ORDER BY k", "csv").await,
        before
    );
    assert_eq!(s.query("snap", "SELECT count(*) AS n FROM m", "csv").await, "n\n250\n");
    // WAL files covered by the snapshot were retired.
    let wal_dir = s.data_dir.join("store/weir-node/wal");
    let remaining = std::fs::read_dir(&wal_dir).map(|d| d.count()).unwrap_or(0);
    assert!(remaining <= 1, "{remaining} wal files left in {}", wal_dir.display());
}

/// Over-limit bodies get the 413 JSON answer over a real socket (the server drains what
/// the client is still sending instead of resetting the connection), from many clients
/// at once. (Before the drain, 4 MB bodies from 16 clients got connection errors.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_bodies_get_a_413_answer_not_a_reset() {
    let s = Server::start(ServerConfig {
        args: vec!["--max-http-request-size".into(), "64KiB".into()],
        ..Default::default()
    });
    let body = "m v=1 1\n".repeat(500_000); // 4 MB
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let http = s.http();
            let url = format!("{}/api/v3/write_lp?db=big", s.url);
            let body = body.clone();
            tokio::spawn(async move {
                let r = http.post(url).body(body).send().await.expect("a response, not a connection error");
                (r.status().as_u16(), r.text().await.unwrap_or_default())
            })
        })
        .collect();
    for t in tasks {
        let (status, text) = t.await.unwrap();
        assert_eq!(status, 413, "{text}");
        assert!(text.contains("exceeds the limit of 65536 bytes"), "{text}");
    }
}
