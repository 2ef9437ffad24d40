//! The write-ahead log: group commit into checksummed, versioned files on the object store.
//!
//! ## Group commit
//! Writers hand [`WalEntry`]s (plus an opaque payload, the validated rows) to [`Wal::write`].
//! One flusher task owns the log: as soon as entries are waiting and the previous flush has
//! finished, it takes *everything* waiting, encodes one WAL file, writes it durably
//! ([`Storage::put_durable`]), gives the payloads to the [`WalFileNotifier`] in log order
//! (which applies them to the in-memory buffer), and only then wakes the writers. A lone
//! write is durable in one fsync; under load each flush naturally carries many writes.
//! `min_spacing` (bounded by `flush_interval`) spaces flushes apart to limit the PUT rate
//! on S3-like stores. A failed write fails every writer in that flush; their data is
//! dropped, never retried behind their backs.
//!
//! ## File format (version 1)
//! ```text
//! header:  "WEIRWAL\0" (8) | version u16 LE | sequence u64 LE
//! frames:  length u32 LE | crc32 u32 LE (of payload) | payload
//! payload: kind u8 (1 = write) | db_id u32 | name_len u16 | db name | precision u8
//!          | default_time i64 | text_len u32 | line protocol text (accepted lines only)
//! footer:  0xFFFF_FFFF u32 | entry count u32 LE | crc32 u32 LE (of every byte before it)
//! ```
//! The footer makes a file that was cut exactly between two frames detectable too.
//! Replay re-parses the text with the recorded precision and default time, reproducing the
//! original rows exactly. A damaged frame ends the valid prefix of a file: tolerated (with
//! a warning) in the newest file, fatal in any earlier one.

use std::{
    fmt,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use parking_lot::Mutex;
use tokio::sync::{Notify, oneshot};

use crate::{
    lp::Precision,
    storage::{self, Storage},
};

#[cfg(test)]
pub(crate) mod tests;

/// File magic.
pub const WAL_MAGIC: &[u8; 8] = b"WEIRWAL\0";
/// Current file format version.
pub const WAL_FORMAT_VERSION: u16 = 1;
const HEADER_LEN: usize = 8 + 2 + 8;
const KIND_WRITE: u8 = 1;
const FOOTER_MARKER: u32 = u32::MAX;
const FOOTER_LEN: usize = 12;

/// WAL errors.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Writing a WAL file failed; the writes in it were not acknowledged.
    #[error("wal write of file {seq} failed: {message}")]
    Write {
        /// File sequence number.
        seq: u64,
        /// Cause.
        message: String,
    },
    /// A WAL file cannot be read.
    #[error("wal file {path} is corrupt at byte {offset}: {reason}")]
    Corrupt {
        /// Object path.
        path: String,
        /// Byte offset of the damage.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// The server is shutting down.
    #[error("wal is shut down")]
    Shutdown,
    /// WAL files cannot be written at the moment and the `no_sync` writes waiting for a
    /// retry have reached their limit: this write is refused (nothing was accepted).
    #[error(
        "the WAL cannot be written right now ({pending_bytes} bytes of no_sync writes are waiting for storage, \
         the limit is {limit}); retry later"
    )]
    Backlog {
        /// Bytes waiting.
        pending_bytes: usize,
        /// The limit.
        limit: usize,
    },
    /// Storage failure while listing or reading.
    #[error("wal storage: {0}")]
    Storage(String),
}

impl From<storage::Error> for Error {
    fn from(e: storage::Error) -> Self {
        Self::Storage(e.to_string())
    }
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One logged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalEntry {
    /// Database id.
    pub db_id: u32,
    /// Database name (lets replay re-create an auto-created database).
    pub db_name: String,
    /// Precision the lines were written with.
    pub precision: Precision,
    /// Time given to lines without a timestamp, ns.
    pub default_time: i64,
    /// The accepted lines.
    pub text: String,
}

fn precision_code(p: Precision) -> u8 {
    match p {
        Precision::Auto => 0,
        Precision::Second => 1,
        Precision::Millisecond => 2,
        Precision::Microsecond => 3,
        Precision::Nanosecond => 4,
    }
}

fn precision_from_code(c: u8) -> Option<Precision> {
    Some(match c {
        0 => Precision::Auto,
        1 => Precision::Second,
        2 => Precision::Millisecond,
        3 => Precision::Microsecond,
        4 => Precision::Nanosecond,
        _ => return None,
    })
}

/// Encode one WAL file.
pub fn encode_file<'a>(seq: u64, entries: impl IntoIterator<Item = &'a WalEntry>) -> Vec<u8> {
    let mut out = Vec::with_capacity(4096);
    out.extend_from_slice(WAL_MAGIC);
    out.extend_from_slice(&WAL_FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    let mut count: u32 = 0;
    for e in entries {
        let name = e.db_name.as_bytes();
        let name_len = name.len().min(u16::MAX as usize);
        let payload_len = 1 + 4 + 2 + name_len + 1 + 8 + 4 + e.text.len();
        let start = out.len();
        out.extend_from_slice(&(payload_len as u32).to_le_bytes());
        out.extend_from_slice(&[0; 4]);
        out.push(KIND_WRITE);
        out.extend_from_slice(&e.db_id.to_le_bytes());
        out.extend_from_slice(&(name_len as u16).to_le_bytes());
        out.extend_from_slice(&name[..name_len]);
        out.push(precision_code(e.precision));
        out.extend_from_slice(&e.default_time.to_le_bytes());
        out.extend_from_slice(&(e.text.len() as u32).to_le_bytes());
        out.extend_from_slice(e.text.as_bytes());
        let crc = crc32fast::hash(&out[start + 8..]);
        out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
        count += 1;
    }
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&FOOTER_MARKER.to_le_bytes());
    out.extend_from_slice(&count.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

/// A decoded WAL file: its entries, and where its valid prefix ended if it is damaged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodedFile {
    /// Sequence number from the header.
    pub seq: u64,
    /// Entries of the valid prefix.
    pub entries: Vec<WalEntry>,
    /// `(offset, reason)` of the first damaged frame, if any.
    pub damage: Option<(usize, String)>,
}

/// Decode a WAL file. A bad header is an error; a bad frame ends the valid prefix.
pub fn decode_file(bytes: &[u8], path: &str) -> Result<DecodedFile> {
    let corrupt = |offset: usize, reason: String| Error::Corrupt { path: path.to_string(), offset, reason };
    if bytes.len() < HEADER_LEN {
        return Err(corrupt(0, format!("file is {} bytes, shorter than its header", bytes.len())));
    }
    if &bytes[..8] != WAL_MAGIC {
        return Err(corrupt(0, "bad magic, not a Weir WAL file".to_string()));
    }
    let version = u16::from_le_bytes([bytes[8], bytes[9]]);
    if version != WAL_FORMAT_VERSION {
        return Err(corrupt(8, format!("unsupported format version {version}")));
    }
    let mut seq_bytes = [0u8; 8];
    seq_bytes.copy_from_slice(&bytes[10..18]);
    let seq = u64::from_le_bytes(seq_bytes);
    let mut entries = Vec::new();
    let mut pos = HEADER_LEN;
    let mut damage = None;
    let mut complete = false;
    while pos < bytes.len() {
        if bytes.len() - pos >= 4 && bytes[pos..pos + 4] == FOOTER_MARKER.to_le_bytes() {
            damage = check_footer(bytes, pos, entries.len()).err().map(|r| (pos, r));
            complete = damage.is_none();
            break;
        }
        match decode_frame(&bytes[pos..]) {
            Ok((entry, used)) => {
                entries.push(entry);
                pos += used;
            }
            Err(reason) => {
                damage = Some((pos, reason));
                break;
            }
        }
    }
    if damage.is_none() && !complete {
        damage = Some((pos, "missing end marker: the file was truncated".to_string()));
    }
    Ok(DecodedFile { seq, entries, damage })
}

fn check_footer(bytes: &[u8], pos: usize, entries: usize) -> Result<(), String> {
    let footer = bytes.get(pos..pos + FOOTER_LEN).ok_or_else(|| "torn end marker".to_string())?;
    if bytes.len() != pos + FOOTER_LEN {
        return Err(format!("{} unexpected bytes after the end marker", bytes.len() - pos - FOOTER_LEN));
    }
    let count = u32::from_le_bytes([footer[4], footer[5], footer[6], footer[7]]) as usize;
    let crc = u32::from_le_bytes([footer[8], footer[9], footer[10], footer[11]]);
    if count != entries {
        return Err(format!("end marker counts {count} entries, file holds {entries}"));
    }
    if crc32fast::hash(&bytes[..pos]) != crc {
        return Err("file checksum mismatch".to_string());
    }
    Ok(())
}

fn decode_frame(b: &[u8]) -> Result<(WalEntry, usize), String> {
    struct Cursor<'a>(&'a [u8]);
    impl<'a> Cursor<'a> {
        fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
            if self.0.len() < n {
                return Err("frame ends early".to_string());
            }
            let (a, b) = self.0.split_at(n);
            self.0 = b;
            Ok(a)
        }
        fn u8(&mut self) -> Result<u8, String> {
            Ok(self.take(1)?[0])
        }
        fn u16(&mut self) -> Result<u16, String> {
            let b = self.take(2)?;
            Ok(u16::from_le_bytes([b[0], b[1]]))
        }
        fn u32(&mut self) -> Result<u32, String> {
            let b = self.take(4)?;
            Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        }
        fn i64(&mut self) -> Result<i64, String> {
            let mut a = [0u8; 8];
            a.copy_from_slice(self.take(8)?);
            Ok(i64::from_le_bytes(a))
        }
    }
    let mut head = Cursor(b);
    let len = head.u32().map_err(|_| "torn frame header".to_string())? as usize;
    let crc = head.u32().map_err(|_| "torn frame header".to_string())?;
    let payload =
        head.take(len).map_err(|_| format!("torn frame: {len} payload bytes announced, {} present", head.0.len()))?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".to_string());
    }
    let mut c = Cursor(payload);
    let kind = c.u8()?;
    if kind != KIND_WRITE {
        return Err(format!("unknown entry kind {kind}"));
    }
    let db_id = c.u32()?;
    let name_len = c.u16()? as usize;
    let db_name =
        std::str::from_utf8(c.take(name_len)?).map_err(|_| "database name is not UTF-8".to_string())?.to_string();
    let precision = precision_from_code(c.u8()?).ok_or("unknown precision code")?;
    let default_time = c.i64()?;
    let text_len = c.u32()? as usize;
    let text =
        std::str::from_utf8(c.take(text_len)?).map_err(|_| "line protocol text is not UTF-8".to_string())?.to_string();
    Ok((WalEntry { db_id, db_name, precision, default_time, text }, 8 + len))
}

/// Receives flushed WAL contents, in log order, before writers are acknowledged.
pub trait WalFileNotifier<T>: Send + Sync + fmt::Debug {
    /// WAL file `seq` (`bytes` long) holding `items` is durable.
    fn flushed(&self, seq: u64, bytes: u64, items: Vec<T>);
}

/// Timing of group commits.
#[derive(Debug, Clone, Copy)]
pub struct WalConfig {
    /// Longest time data may wait before a flush starts (caps `min_spacing`).
    pub flush_interval: Duration,
    /// Minimum time between the starts of two flushes (0: flush as soon as possible).
    pub min_spacing: Duration,
    /// `no_sync` writes waiting for storage (line-protocol bytes) past which new ones are
    /// refused while WAL files cannot be written.
    pub no_sync_backlog: usize,
}

impl Default for WalConfig {
    fn default() -> Self {
        Self {
            flush_interval: Duration::from_secs(1),
            min_spacing: Duration::ZERO,
            no_sync_backlog: NO_SYNC_BACKLOG_LIMIT,
        }
    }
}

struct Pending<T> {
    entries: Vec<WalEntry>,
    items: Vec<T>,
    /// Per entry: its writer's receiver (durable), or `None` (`no_sync`: acknowledged
    /// already, so a failed flush keeps it for the next one).
    waiters: Vec<Option<oneshot::Sender<Result<u64>>>>,
    /// Text bytes of the `no_sync` entries waiting (new ones are refused past the limit).
    no_sync_bytes: usize,
    shutdown: bool,
}

/// Default [`WalConfig::no_sync_backlog`]: 256 MiB.
pub const NO_SYNC_BACKLOG_LIMIT: usize = 256 << 20;
/// First wait after a failed flush; it doubles per failure up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_millis(100);
const RETRY_CAP: Duration = Duration::from_secs(5);
/// Failed attempts at shutdown before the waiting `no_sync` writes are given up (logged).
const SHUTDOWN_ATTEMPTS: u32 = 5;

/// Statistics of the last flushes, for metrics.
#[derive(Debug, Clone, Copy, Default)]
pub struct FlushStats {
    /// Sequence number of the file.
    pub seq: u64,
    /// Entries in it.
    pub entries: usize,
    /// Bytes written.
    pub bytes: usize,
    /// Time to write it durably.
    pub duration: Duration,
}

/// Observer of flushes (metrics).
pub type FlushObserver = Arc<dyn Fn(&FlushStats, bool) + Send + Sync>;

/// The WAL: accepts writes and owns the flusher task.
pub struct Wal<T: Send + 'static> {
    pending: Mutex<Pending<T>>,
    notify: Notify,
    done: Notify,
    storage: Storage,
    config: WalConfig,
    notifier: Arc<dyn WalFileNotifier<T>>,
    observer: Option<FlushObserver>,
}

impl<T: Send + 'static> fmt::Debug for Wal<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Wal").field("config", &self.config).field("storage", &self.storage).finish_non_exhaustive()
    }
}

impl<T: Send + 'static> Wal<T> {
    /// Create the WAL and start its flusher; the first file written gets `next_seq`.
    pub fn start(
        storage: Storage,
        config: WalConfig,
        next_seq: u64,
        notifier: Arc<dyn WalFileNotifier<T>>,
        observer: Option<FlushObserver>,
    ) -> Arc<Self> {
        let wal = Arc::new(Self {
            pending: Mutex::new(Pending {
                entries: Vec::new(),
                items: Vec::new(),
                waiters: Vec::new(),
                no_sync_bytes: 0,
                shutdown: false,
            }),
            notify: Notify::new(),
            done: Notify::new(),
            storage,
            config,
            notifier,
            observer,
        });
        tokio::spawn(Arc::clone(&wal).flush_loop(next_seq));
        wal
    }

    /// Queue a write. The returned receiver resolves with the WAL file sequence number
    /// once the write is durable and applied (or with the error that lost it).
    pub fn write(&self, entry: WalEntry, item: T) -> oneshot::Receiver<Result<u64>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            if p.shutdown {
                let _ = tx.send(Err(Error::Shutdown));
                return rx;
            }
            p.entries.push(entry);
            p.items.push(item);
            p.waiters.push(Some(tx));
        }
        self.notify.notify_one();
        rx
    }

    /// Queue a `no_sync` write: acknowledged now, written with the next flush, and kept for
    /// the flush after that if storage fails (never dropped while the server runs). While
    /// storage keeps failing and [`WalConfig::no_sync_backlog`] bytes wait, new ones are
    /// refused.
    pub fn write_no_sync(&self, entry: WalEntry, item: T) -> Result<()> {
        {
            let mut p = self.pending.lock();
            if p.shutdown {
                return Err(Error::Shutdown);
            }
            let limit = self.config.no_sync_backlog;
            if p.no_sync_bytes + entry.text.len() > limit && p.no_sync_bytes > 0 {
                return Err(Error::Backlog { pending_bytes: p.no_sync_bytes, limit });
            }
            p.no_sync_bytes += entry.text.len();
            p.entries.push(entry);
            p.items.push(item);
            p.waiters.push(None);
        }
        self.notify.notify_one();
        Ok(())
    }

    /// Flush what is waiting and stop the flusher.
    pub async fn shutdown(&self) {
        let done = self.done.notified();
        self.pending.lock().shutdown = true;
        self.notify.notify_one();
        done.await;
    }

    async fn flush_loop(self: Arc<Self>, mut seq: u64) {
        let spacing = self.config.min_spacing.min(self.config.flush_interval);
        let mut last_start: Option<Instant> = None;
        let mut failures: u32 = 0;
        loop {
            let notified = self.notify.notified();
            let (has_work, shutdown) = {
                let p = self.pending.lock();
                (!p.entries.is_empty(), p.shutdown)
            };
            if !has_work {
                if shutdown {
                    break;
                }
                notified.await;
                continue;
            }
            if let Some(last) = last_start {
                let due = last + spacing;
                if !shutdown && Instant::now() < due {
                    tokio::time::sleep_until(due.into()).await;
                }
            }
            if failures > 0 {
                if shutdown && failures >= SHUTDOWN_ATTEMPTS {
                    self.abandon_at_shutdown();
                    continue;
                }
                let wait = RETRY_BASE.saturating_mul(1 << (failures - 1).min(10)).min(RETRY_CAP);
                tokio::time::sleep(wait).await;
            }
            last_start = Some(Instant::now());
            let (entries, items, waiters) = {
                let mut p = self.pending.lock();
                (std::mem::take(&mut p.entries), std::mem::take(&mut p.items), std::mem::take(&mut p.waiters))
            };
            let bytes = Bytes::from(encode_file(seq, &entries));
            let stats = FlushStats { seq, entries: entries.len(), bytes: bytes.len(), duration: Duration::ZERO };
            let started = Instant::now();
            let path = self.storage.wal_path(seq);
            let result = self.storage.put_durable(&path, bytes).await;
            let stats = FlushStats { duration: started.elapsed(), ..stats };
            if let Some(obs) = &self.observer {
                obs(&stats, result.is_ok());
            }
            match result {
                Ok(()) => {
                    if failures > 0 {
                        tracing::info!(seq, after_failures = failures, "wal flushes work again");
                    }
                    failures = 0;
                    let flushed_no_sync: usize =
                        entries.iter().zip(&waiters).filter(|(_, w)| w.is_none()).map(|(e, _)| e.text.len()).sum();
                    self.pending.lock().no_sync_bytes -= flushed_no_sync;
                    self.notifier.flushed(seq, stats.bytes as u64, items);
                    for w in waiters.into_iter().flatten() {
                        let _ = w.send(Ok(seq));
                    }
                }
                Err(e) => {
                    failures += 1;
                    // Best effort: a half-written file must not resurrect failed writes.
                    let _ = self.storage.delete(&path).await;
                    let err = Error::Write { seq, message: e.to_string() };
                    // Durable writers get the error (nothing was acknowledged to them);
                    // no_sync writes were acknowledged: they go back, first in line.
                    let mut kept_entries = Vec::new();
                    let mut kept_items = Vec::new();
                    for ((entry, item), w) in entries.into_iter().zip(items).zip(waiters) {
                        match w {
                            Some(w) => {
                                let _ = w.send(Err(err.clone()));
                            }
                            None => {
                                kept_entries.push(entry);
                                kept_items.push(item);
                            }
                        }
                    }
                    let kept = kept_entries.len();
                    tracing::error!(
                        seq,
                        error = %e,
                        no_sync_kept = kept,
                        attempt = failures,
                        "wal flush failed: durable writes in it fail; no_sync writes are kept and written again"
                    );
                    let mut p = self.pending.lock();
                    let newer_entries = std::mem::replace(&mut p.entries, kept_entries);
                    let newer_items = std::mem::replace(&mut p.items, kept_items);
                    let newer_waiters = std::mem::replace(&mut p.waiters, (0..kept).map(|_| None).collect());
                    p.entries.extend(newer_entries);
                    p.items.extend(newer_items);
                    p.waiters.extend(newer_waiters);
                }
            }
            seq += 1;
        }
        self.done.notify_waiters();
    }

    /// Shutdown while storage keeps failing: the durable writes fail, the no_sync ones (a
    /// crash would lose them too) are given up, loudly.
    fn abandon_at_shutdown(&self) {
        let mut p = self.pending.lock();
        let lost = p.waiters.iter().filter(|w| w.is_none()).count();
        for w in std::mem::take(&mut p.waiters).into_iter().flatten() {
            let _ = w.send(Err(Error::Shutdown));
        }
        p.entries.clear();
        p.items.clear();
        if lost > 0 {
            tracing::error!(
                lost,
                bytes = p.no_sync_bytes,
                "shutting down while WAL files cannot be written: {lost} acknowledged no_sync writes are lost"
            );
        }
        p.no_sync_bytes = 0;
    }
}

/// List the WAL files in storage as `(seq, bytes)`, sorted by sequence.
pub async fn list_files_with_size(storage: &Storage) -> Result<Vec<(u64, u64)>> {
    let mut out: Vec<(u64, u64)> = storage
        .list_meta(&storage.wal_dir())
        .await?
        .into_iter()
        .filter_map(|(p, size)| Some((p.filename()?.strip_suffix(".wal")?.parse::<u64>().ok()?, size)))
        .collect();
    out.sort_unstable();
    Ok(out)
}

/// List the WAL files in storage as `(seq, path)`, sorted by sequence.
pub async fn list_files(storage: &Storage) -> Result<Vec<(u64, object_store::path::Path)>> {
    let mut out: Vec<(u64, object_store::path::Path)> = storage
        .list(&storage.wal_dir())
        .await?
        .into_iter()
        .filter_map(|p| {
            let name = p.filename()?;
            let seq = name.strip_suffix(".wal")?.parse::<u64>().ok()?;
            Some((seq, p))
        })
        .collect();
    out.sort_by_key(|(s, _)| *s);
    Ok(out)
}
