//! WAL damage through the real binary: a torn newest file keeps its valid prefix; damage
//! in an older file stops startup with an error naming the file.

use std::{path::PathBuf, process::Command};

use integration_tests::{Server, ServerConfig, bin};

fn wal_files(data_dir: &std::path::Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(data_dir.join("store/weir-node/wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_tail_recovers_and_older_damage_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServerConfig { data_dir: Some(dir.path().to_path_buf()), ..Default::default() };
    let mut s = Server::start(config.clone());
    for i in 0..3 {
        let (status, body) = s.write("w", &format!("m v={i} {i}")).await;
        assert_eq!(status, 204, "{body}");
    }
    s.kill9();
    let files = wal_files(dir.path());
    assert_eq!(files.len(), 3, "one WAL file per sequential durable write: {files:?}");

    // Tear the newest file in the middle of its only entry.
    let newest = files.last().unwrap();
    let len = std::fs::metadata(newest).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(newest).unwrap();
    f.set_len(len - 20).unwrap();
    drop(f);

    let s = Server::start(config.clone());
    assert_eq!(s.query("w", "SELECT v FROM m ORDER BY time", "csv").await, "v\n0.0\n1.0\n");
    assert!(s.log().contains("damaged tail"), "the recovery is logged:\n{}", s.log());
    // New writes after recovery work and survive.
    assert_eq!(s.write("w", "m v=5 5").await.0, 204);
    let mut s = s.restart();
    assert_eq!(s.query("w", "SELECT v FROM m ORDER BY time", "csv").await, "v\n0.0\n1.0\n5.0\n");
    s.kill9();

    // Flip a byte inside the oldest file's entry: startup must refuse, naming the file.
    let oldest = wal_files(dir.path()).into_iter().next().unwrap();
    let mut bytes = std::fs::read(&oldest).unwrap();
    bytes[25] ^= 0xff;
    std::fs::write(&oldest, bytes).unwrap();
    let out = Command::new(bin("weir"))
        .args(["serve", "--without-auth", "--http-bind", "127.0.0.1:0", "--data-dir"])
        .arg(dir.path().join("store"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "server must refuse to start");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let name = oldest.file_name().unwrap().to_string_lossy().into_owned();
    assert!(stderr.contains(&name), "error names the file {name}: {stderr}");
    assert!(stderr.contains("refusing to start"), "{stderr}");
}
