//! WAL tests: format round trip, golden file, damage detection, group commit, failures.

use std::{
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use parking_lot::Mutex;

use super::*;
use crate::storage::Storage;

fn entry(db: u32, text: &str) -> WalEntry {
    WalEntry {
        db_id: db,
        db_name: format!("db{db}"),
        precision: Precision::Nanosecond,
        default_time: 1_700_000_000_000_000_000,
        text: text.to_string(),
    }
}

fn sample() -> Vec<WalEntry> {
    vec![
        entry(1, "cpu,host=a usage=1.5 1"),
        WalEntry { precision: Precision::Auto, ..entry(2, "mem,host=b free=10i 2\nmem,host=c free=11i 3") },
        entry(3, "s,t=x msg=\"multi\nline\" 4"),
    ]
}

#[test]
fn round_trip() {
    let entries = sample();
    let bytes = encode_file(42, &entries);
    let d = decode_file(&bytes, "x").unwrap();
    assert_eq!(d.seq, 42);
    assert_eq!(d.entries, entries);
    assert!(d.damage.is_none());
}

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/golden/wal-v1.wal");

/// The v1 format is frozen: this file was written by the first version and must decode
/// to the same entries forever (regenerate only with WEIR_UPDATE_GOLDEN=1 when adding a
/// *new* version alongside).
#[test]
fn golden_v1_file_decodes() {
    if std::env::var_os("WEIR_UPDATE_GOLDEN").is_some() {
        std::fs::write(GOLDEN, encode_file(7, &sample())).unwrap();
    }
    let bytes = std::fs::read(GOLDEN).expect("golden file present");
    let d = decode_file(&bytes, GOLDEN).unwrap();
    assert_eq!(d.seq, 7);
    assert_eq!(d.entries, sample());
    assert!(d.damage.is_none());
    assert_eq!(encode_file(7, &sample()), bytes, "encoder output changed for v1");
}

#[test]
fn torn_and_corrupt_tails_keep_the_valid_prefix() {
    let entries = sample();
    let bytes = encode_file(1, &entries);
    // Every truncation point: never a panic, always a prefix of the entries.
    for cut in HEADER_LEN + 1..bytes.len() {
        let d = decode_file(&bytes[..cut], "x").unwrap();
        assert!(d.entries.len() <= entries.len());
        assert_eq!(d.entries[..], entries[..d.entries.len()]);
        assert!(d.damage.is_some(), "cut at {cut} must be reported");
    }
    // A flipped bit in the last frame's payload: checksum mismatch, two entries survive.
    let mut bad = bytes.clone();
    let last = bad.len() - FOOTER_LEN - 2;
    bad[last] ^= 0x40;
    let d = decode_file(&bad, "x").unwrap();
    assert_eq!(d.entries.len(), 2);
    assert_eq!(d.damage.unwrap().1, "checksum mismatch");
    // Trailing garbage after the end marker is damage too.
    let mut long = bytes.clone();
    long.push(0);
    assert!(decode_file(&long, "x").unwrap().damage.is_some());
    // An empty file (no entries) is well-formed.
    let empty = encode_file(3, &[]);
    let d = decode_file(&empty, "x").unwrap();
    assert!(d.entries.is_empty() && d.damage.is_none());
}

#[test]
fn bad_headers_are_errors() {
    assert!(matches!(decode_file(b"short", "f"), Err(Error::Corrupt { offset: 0, .. })));
    let mut b = encode_file(1, &sample());
    b[0] = b'X';
    assert!(decode_file(&b, "f").unwrap_err().to_string().contains("bad magic"));
    let mut b = encode_file(1, &sample());
    b[8] = 9;
    assert!(decode_file(&b, "f").unwrap_err().to_string().contains("unsupported format version 9"));
}

#[derive(Debug, Default)]
struct Recorder {
    files: Mutex<Vec<(u64, Vec<u32>)>>,
}

impl WalFileNotifier<u32> for Recorder {
    fn flushed(&self, seq: u64, _bytes: u64, items: Vec<u32>) {
        self.files.lock().push((seq, items));
    }
}

#[tokio::test]
async fn lone_write_is_durable_and_applied_before_ack() {
    let storage = Storage::in_memory();
    let rec = Arc::new(Recorder::default());
    let wal = Wal::start(storage.clone(), WalConfig::default(), 5, rec.clone(), None);
    let seq = wal.write(entry(1, "a v=1 1"), 10).await.unwrap().unwrap();
    assert_eq!(seq, 5);
    // Applied before the writer was woken.
    assert_eq!(rec.files.lock().clone(), vec![(5, vec![10])]);
    let bytes = storage.get(&storage.wal_path(5)).await.unwrap().unwrap();
    assert_eq!(decode_file(&bytes, "x").unwrap().entries, vec![entry(1, "a v=1 1")]);
    wal.shutdown().await;
}

#[tokio::test]
async fn concurrent_writes_are_grouped_and_ordered() {
    let storage = Storage::in_memory();
    let rec = Arc::new(Recorder::default());
    let wal = Wal::start(storage.clone(), WalConfig::default(), 1, rec.clone(), None);
    let rxs: Vec<_> = (0..200u32).map(|i| wal.write(entry(1, &format!("a v={i} {i}")), i)).collect();
    for rx in rxs {
        rx.await.unwrap().unwrap();
    }
    let files = rec.files.lock().clone();
    // Items come out in the order they went in, across all files.
    let all: Vec<u32> = files.iter().flat_map(|(_, i)| i.clone()).collect();
    assert_eq!(all, (0..200).collect::<Vec<_>>());
    // Sequence numbers are consecutive and grouping happened (fewer files than writes).
    assert!(files.len() < 200, "expected group commit, got {} files", files.len());
    for (i, (seq, _)) in files.iter().enumerate() {
        assert_eq!(*seq, i as u64 + 1);
    }
    wal.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn min_spacing_bounds_the_flush_rate() {
    let storage = Storage::in_memory();
    let rec = Arc::new(Recorder::default());
    let cfg = WalConfig {
        flush_interval: Duration::from_secs(1),
        min_spacing: Duration::from_millis(200),
        ..WalConfig::default()
    };
    let wal = Wal::start(storage, cfg, 1, rec.clone(), None);
    let start = tokio::time::Instant::now();
    wal.write(entry(1, "a v=1 1"), 1).await.unwrap().unwrap();
    wal.write(entry(1, "a v=2 2"), 2).await.unwrap().unwrap();
    // The second flush waited for the spacing (virtual time).
    assert!(start.elapsed() >= Duration::from_millis(200));
    assert_eq!(rec.files.lock().len(), 2);
    wal.shutdown().await;
}

/// An object store that fails every PUT while `fail` is set.
#[derive(Debug)]
struct Flaky {
    inner: object_store::memory::InMemory,
    fail: Arc<AtomicUsize>,
}

impl std::fmt::Display for Flaky {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Flaky")
    }
}

#[async_trait::async_trait]
impl object_store::ObjectStore for Flaky {
    async fn put_opts(
        &self,
        location: &object_store::path::Path,
        payload: object_store::PutPayload,
        opts: object_store::PutOptions,
    ) -> object_store::Result<object_store::PutResult> {
        if self.fail.load(Ordering::SeqCst) > 0 {
            return Err(object_store::Error::Generic { store: "flaky", source: "disk on fire".into() });
        }
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &object_store::path::Path,
        opts: object_store::PutMultipartOptions,
    ) -> object_store::Result<Box<dyn object_store::MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(
        &self,
        location: &object_store::path::Path,
        options: object_store::GetOptions,
    ) -> object_store::Result<object_store::GetResult> {
        self.inner.get_opts(location, options).await
    }

    fn delete_stream(
        &self,
        locations: futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::path::Path>> {
        self.inner.delete_stream(locations)
    }

    fn list(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> futures::stream::BoxStream<'static, object_store::Result<object_store::ObjectMeta>> {
        self.inner.list(prefix)
    }

    async fn list_with_delimiter(
        &self,
        prefix: Option<&object_store::path::Path>,
    ) -> object_store::Result<object_store::ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(
        &self,
        from: &object_store::path::Path,
        to: &object_store::path::Path,
        options: object_store::CopyOptions,
    ) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

pub(crate) fn flaky_storage() -> (Storage, Arc<AtomicUsize>) {
    let fail = Arc::new(AtomicUsize::new(0));
    let store = Flaky { inner: object_store::memory::InMemory::new(), fail: Arc::clone(&fail) };
    (Storage::new(Arc::new(store), None, "node0"), fail)
}

#[tokio::test]
async fn failed_flush_fails_its_writers_and_is_not_applied() {
    let (storage, fail) = flaky_storage();
    let rec = Arc::new(Recorder::default());
    let wal = Wal::start(storage.clone(), WalConfig::default(), 1, rec.clone(), None);
    fail.store(1, Ordering::SeqCst);
    let err = wal.write(entry(1, "a v=1 1"), 1).await.unwrap().unwrap_err();
    assert!(matches!(err, Error::Write { seq: 1, .. }), "{err}");
    assert!(rec.files.lock().is_empty(), "failed data must not be applied");
    assert!(storage.get(&storage.wal_path(1)).await.unwrap().is_none());
    // The log recovers: the next write gets the next file.
    fail.store(0, Ordering::SeqCst);
    assert_eq!(wal.write(entry(1, "a v=2 2"), 2).await.unwrap().unwrap(), 2);
    assert_eq!(rec.files.lock().clone(), vec![(2, vec![2])]);
    wal.shutdown().await;
}

#[tokio::test]
async fn writes_after_shutdown_are_refused() {
    let storage = Storage::in_memory();
    let rec = Arc::new(Recorder::default());
    let wal = Wal::start(storage, WalConfig::default(), 1, rec, None);
    wal.shutdown().await;
    let r = wal.write(entry(1, "a v=1 1"), 1).await.unwrap();
    assert!(matches!(r, Err(Error::Shutdown)));
}

/// A failed flush never drops an acknowledged `no_sync` write: it is written with the next
/// flush that works, in order; durable writers in the failed flush get the error; while
/// storage fails, `no_sync` writes past the backlog limit are refused, not accepted and lost.
#[tokio::test]
async fn no_sync_writes_survive_failed_flushes_and_are_bounded() {
    let (storage, fail) = flaky_storage();
    let rec = Arc::new(Recorder::default());
    let config = WalConfig { no_sync_backlog: 40, ..WalConfig::default() };
    let wal = Wal::start(storage.clone(), config, 1, rec.clone(), None);
    fail.store(1, Ordering::SeqCst);
    wal.write_no_sync(entry(1, "a v=1 1"), 1).unwrap();
    let durable = wal.write(entry(1, "a v=2 2"), 2).await.unwrap();
    assert!(matches!(durable, Err(Error::Write { .. })), "{durable:?}");
    wal.write_no_sync(entry(1, "a v=3 3"), 3).unwrap();
    // 14 bytes wait; one more of 7 is fine, then the limit of 40 refuses.
    wal.write_no_sync(entry(1, "a v=4 4"), 4).unwrap();
    wal.write_no_sync(entry(1, "a v=5 5"), 5).unwrap();
    let e = wal.write_no_sync(entry(1, &format!("a v=6 {}", "6".repeat(30))), 6).unwrap_err();
    assert!(matches!(e, Error::Backlog { limit: 40, .. }), "{e}");
    assert!(rec.files.lock().is_empty());
    // Storage recovers: everything acknowledged is written, in order.
    fail.store(0, Ordering::SeqCst);
    let seq = wal.write(entry(1, "a v=7 7"), 7).await.unwrap().unwrap();
    let items: Vec<u32> = rec.files.lock().iter().flat_map(|(_, i)| i.clone()).collect();
    assert_eq!(items, vec![1, 3, 4, 5, 7]);
    assert!(storage.get(&storage.wal_path(seq)).await.unwrap().is_some());
    // And the backlog is empty again.
    wal.write_no_sync(entry(1, &format!("a v=8 {}", "8".repeat(30))), 8).unwrap();
    wal.shutdown().await;
}
