//! The write buffer: validated writes → WAL → in-memory buffer → Parquet snapshots.
//!
//! * [`WriteBuffer::write_lp`] validates a body against the catalog, queues the accepted
//!   lines in the WAL and (unless `no_sync`) waits until their WAL file is durable. The
//!   WAL flusher applies every flushed file to the open buffer, in log order, before it
//!   wakes the writers — so an acknowledged write is immediately queryable.
//! * A snapshot freezes the open buffer (queries keep reading it), writes it as sorted,
//!   hour-partitioned Parquet files, persists the catalog, writes a manifest listing every
//!   live file and covering the WAL up to the frozen sequence, swaps the files in for the
//!   frozen buffer in one step, and only then deletes the WAL files it covers.
//! * [`WriteBuffer::open`] restores: catalog → newest manifest → WAL replay of the files
//!   after it (a damaged newest file keeps its valid prefix; damage in an older file stops
//!   startup with an error naming the file).

pub mod persist;
pub mod table_buffer;
pub mod validate;

use std::{
    collections::HashMap,
    fmt,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arrow::record_batch::RecordBatch;
use parking_lot::RwLock;
use tokio::sync::Notify;

use self::{
    persist::{Manifest, ParquetFile},
    table_buffer::TableBuffer,
    validate::TableRows,
};
use crate::{
    catalog::{self, Catalog},
    lp::{LineError, Precision},
    storage::Storage,
    telemetry::Metrics,
    time::TimeProvider,
    wal::{self, FlushObserver, Wal, WalConfig, WalEntry, WalFileNotifier},
};

#[cfg(test)]
mod tests;

/// Whether `f` belongs to a deleted database or table (or one the catalog no longer has).
fn deleted_data(catalog: &catalog::CatalogState, f: &ParquetFile) -> bool {
    catalog.databases.get(&f.db_id).is_none_or(|d| d.deleted || d.table_by_id(f.table_id).is_none())
}

/// How often Parquet files past their database's retention period are looked for.
const RETENTION_CHECK_EVERY: Duration = Duration::from_secs(60);

/// Write buffer errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Catalog failure (bad database name, storage).
    #[error(transparent)]
    Catalog(#[from] catalog::Error),
    /// The WAL write failed: nothing was acknowledged.
    #[error(transparent)]
    Wal(#[from] wal::Error),
    /// `accept_partial=false` and some lines were invalid: nothing was written.
    #[error("parsing failed for write_lp endpoint")]
    Rejected(Vec<LineError>),
    /// Persistence failed.
    #[error("persist: {0}")]
    Persist(#[from] persist::Error),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Tuning of the write buffer.
#[derive(Debug, Clone, Copy)]
pub struct WriteBufferConfig {
    /// WAL group-commit timing.
    pub wal: WalConfig,
    /// Snapshot at least this often when the buffer holds data.
    pub snapshot_interval: Duration,
    /// Snapshot as soon as the open buffer holds this many rows.
    pub snapshot_rows: usize,
    /// Until a [`FlushListener`] is registered, snapshots retire no WAL file (the
    /// processing engine, about to start, may need them for its triggers).
    pub hold_wal_for_listener: bool,
}

impl Default for WriteBufferConfig {
    fn default() -> Self {
        Self {
            wal: WalConfig::default(),
            snapshot_interval: Duration::from_secs(600),
            snapshot_rows: 5_000_000,
            hold_wal_for_listener: false,
        }
    }
}

/// Result of a write.
#[derive(Debug, Clone, Default)]
pub struct WriteOutcome {
    /// Lines accepted (durable unless `no_sync`).
    pub accepted_lines: usize,
    /// Lines rejected, with line numbers.
    pub errors: Vec<LineError>,
    /// Bytes of line protocol accepted.
    pub accepted_bytes: usize,
}

/// What the WAL carries to the buffer for one write.
#[derive(Debug)]
pub struct WriteItem {
    db_id: u32,
    tables: Vec<TableRows>,
}

type DbBuffers = HashMap<u32, HashMap<u32, TableBuffer>>;

#[derive(Debug)]
struct Frozen {
    wal_seq: u64,
    dbs: DbBuffers,
}

#[derive(Debug, Default)]
struct BufferState {
    open: DbBuffers,
    open_rows: usize,
    /// Last WAL file applied to `open`.
    last_seq: u64,
    /// Buffers being persisted, oldest first; still queryable.
    frozen: Vec<Arc<Frozen>>,
    manifest: Arc<Manifest>,
}

/// The rows of one flushed WAL file, handed to a [`FlushListener`] after they are applied.
#[derive(Debug)]
pub struct FlushedWal {
    /// WAL file sequence number.
    pub seq: u64,
    /// Size of the WAL file.
    pub bytes: u64,
    items: Vec<WriteItem>,
    catalog: Arc<Catalog>,
}

impl FlushedWal {
    /// Databases with rows in this file.
    pub fn db_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.items.iter().map(|i| i.db_id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    /// Tables of `db_id` with rows in this file, in order of first appearance.
    pub fn table_names(&self, db_id: u32) -> Vec<Arc<str>> {
        let Some(db) = self.catalog.db_by_id(db_id) else {
            return Vec::new();
        };
        let mut ids: Vec<u32> = Vec::new();
        for item in self.items.iter().filter(|i| i.db_id == db_id) {
            for t in &item.tables {
                if !ids.contains(&t.table_id) {
                    ids.push(t.table_id);
                }
            }
        }
        ids.into_iter().filter_map(|id| db.table_by_id(id).map(|t| Arc::clone(&t.name))).collect()
    }

    /// Database `db_id`'s rows as Arrow, per table in order of first appearance, every
    /// accepted line one row, in write order (a point written twice appears twice).
    pub fn tables(&self, db_id: u32) -> Vec<(Arc<str>, RecordBatch)> {
        let Some(db) = self.catalog.db_by_id(db_id) else {
            return Vec::new();
        };
        let mut order: Vec<u32> = Vec::new();
        let mut rows: HashMap<u32, Vec<&validate::Row>> = HashMap::new();
        for item in self.items.iter().filter(|i| i.db_id == db_id) {
            for t in &item.tables {
                let entry = rows.entry(t.table_id).or_insert_with(|| {
                    order.push(t.table_id);
                    Vec::new()
                });
                entry.extend(t.rows.iter());
            }
        }
        order
            .into_iter()
            .filter_map(|id| {
                let def = db.table_by_id(id)?;
                match rows_to_batch(def, &rows[&id]) {
                    Ok(b) => Some((Arc::clone(&def.name), b)),
                    Err(e) => {
                        tracing::error!(error = %e, table = %def.name, "cannot convert flushed rows");
                        None
                    }
                }
            })
            .collect()
    }
}

/// Validated rows straight to one Arrow batch with the table's schema (tags as
/// dictionaries, absent columns null).
fn rows_to_batch(
    def: &crate::catalog::TableDef,
    rows: &[&validate::Row],
) -> Result<RecordBatch, arrow::error::ArrowError> {
    use arrow::array::{
        ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, StringDictionaryBuilder,
        TimestampNanosecondArray, UInt64Builder,
    };
    use arrow::datatypes::Int32Type;

    use crate::catalog::{ColumnKind, FieldType};
    use validate::Value;

    let schema = def.schema();
    let ids = def.schema_column_ids();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(ids.len());
    for &id in &ids {
        let col = id as u32;
        fn find(r: &validate::Row, col: u32) -> Option<&Value> {
            r.fields.iter().rev().find(|(c, _)| *c == col).map(|(_, v)| v)
        }
        let array: ArrayRef = match def.columns[id].kind {
            ColumnKind::Time => Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.time))),
            ColumnKind::Tag => {
                let mut b = StringDictionaryBuilder::<Int32Type>::new();
                for r in rows {
                    match validate::Row::decode_series_key(&r.series_key).find(|(c, _)| *c == col) {
                        Some((_, v)) => b.append_value(v),
                        None => b.append_null(),
                    }
                }
                Arc::new(b.finish())
            }
            ColumnKind::Field(FieldType::Int64) => {
                let mut b = Int64Builder::with_capacity(rows.len());
                rows.iter().for_each(|r| {
                    b.append_option(match find(r, col) {
                        Some(Value::I64(x)) => Some(*x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnKind::Field(FieldType::UInt64) => {
                let mut b = UInt64Builder::with_capacity(rows.len());
                rows.iter().for_each(|r| {
                    b.append_option(match find(r, col) {
                        Some(Value::U64(x)) => Some(*x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnKind::Field(FieldType::Float64) => {
                let mut b = Float64Builder::with_capacity(rows.len());
                rows.iter().for_each(|r| {
                    b.append_option(match find(r, col) {
                        Some(Value::F64(x)) => Some(*x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnKind::Field(FieldType::Boolean) => {
                let mut b = BooleanBuilder::with_capacity(rows.len());
                rows.iter().for_each(|r| {
                    b.append_option(match find(r, col) {
                        Some(Value::Bool(x)) => Some(*x),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
            ColumnKind::Field(FieldType::String) => {
                let mut b = StringBuilder::new();
                rows.iter().for_each(|r| {
                    b.append_option(match find(r, col) {
                        Some(Value::Str(x)) => Some(x.as_ref()),
                        _ => None,
                    })
                });
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(schema, columns)
}

/// Receives every flushed WAL file (the processing engine). Called on the WAL flusher's
/// path after the rows are applied: implementations must only hand the rows on.
pub trait FlushListener: Send + Sync + fmt::Debug {
    /// Whether rows of this database are wanted at all.
    fn wants(&self, db_id: u32) -> bool;
    /// A flushed file, with the rows of the wanted databases (every file is handed on,
    /// also one without wanted rows).
    fn flushed(&self, wal: FlushedWal);
    /// WAL files with a sequence number above this are still needed (by a trigger that has
    /// not processed them): snapshots keep them. `None`: nothing is needed.
    fn retain_after(&self) -> Option<u64> {
        None
    }
}

#[derive(Debug)]
struct Shared {
    catalog: Arc<Catalog>,
    state: RwLock<BufferState>,
    snapshot_wanted: Notify,
    snapshot_rows: usize,
    listener: RwLock<Option<Arc<dyn FlushListener>>>,
}

impl Shared {
    fn apply(&self, state: &mut BufferState, seq: u64, items: &[WriteItem]) {
        for item in items {
            let Some(db) = self.catalog.db_by_id(item.db_id) else {
                continue;
            };
            if db.deleted {
                continue;
            }
            let tables = state.open.entry(item.db_id).or_default();
            for t in &item.tables {
                let Some(def) = db.table_by_id(t.table_id) else {
                    continue;
                };
                let buf = tables.entry(t.table_id).or_default();
                let before = buf.len();
                buf.apply(def, &t.rows);
                state.open_rows += buf.len() - before;
            }
        }
        state.last_seq = state.last_seq.max(seq);
    }
}

impl WalFileNotifier<WriteItem> for Shared {
    fn flushed(&self, seq: u64, bytes: u64, items: Vec<WriteItem>) {
        let wanted = {
            let mut state = self.state.write();
            self.apply(&mut state, seq, &items);
            state.open_rows >= self.snapshot_rows
        };
        if wanted {
            self.snapshot_wanted.notify_one();
        }
        let listener = self.listener.read().clone();
        if let Some(l) = listener {
            let items: Vec<WriteItem> = items.into_iter().filter(|i| l.wants(i.db_id)).collect();
            l.flushed(FlushedWal { seq, bytes, items, catalog: Arc::clone(&self.catalog) });
        }
    }
}

/// Where one piece of a table's data lives.
#[derive(Debug, Clone)]
pub enum PieceSource {
    /// A Parquet file.
    File(ParquetFile),
    /// One buffer segment.
    Batch(RecordBatch),
}

/// A piece of a table's data for a scan, with the time range of its rows.
#[derive(Debug, Clone)]
pub struct Piece {
    /// Write generation: each snapshot's files, then each frozen buffer, then the open
    /// buffer, oldest first. A point is held at most once per generation, so only pieces
    /// of different generations can hold the same point.
    pub generation: usize,
    /// Smallest timestamp, ns.
    pub min_time: i64,
    /// Largest timestamp, ns.
    pub max_time: i64,
    /// The data.
    pub source: PieceSource,
}

/// The data of one table for a scan.
#[derive(Debug, Clone, Default)]
pub struct TableData {
    /// Every piece whose time range meets the scan's.
    pub pieces: Vec<Piece>,
}

impl TableData {
    /// Groups of pieces that may hold the same point and must be deduplicated together:
    /// the connected components of "different generation and overlapping time ranges"
    /// with two or more pieces. Every other piece can be read as it is. A point held twice
    /// sits in pieces of different generations whose ranges both contain its time, so
    /// both land in one group; a group holds only the data that overlaps, not the table.
    pub fn dedup_groups(&self) -> Vec<Vec<usize>> {
        let n = self.pieces.len();
        let mut parent: Vec<usize> = (0..n).collect();
        fn find(parent: &mut [usize], mut i: usize) -> usize {
            while parent[i] != i {
                parent[i] = parent[parent[i]];
                i = parent[i];
            }
            i
        }
        let mut order: Vec<usize> = (0..n).collect();
        order.sort_by_key(|&i| self.pieces[i].min_time);
        // Sweep by start time, keeping the pieces whose range is still open.
        let mut active: Vec<usize> = Vec::new();
        for &i in &order {
            let p = &self.pieces[i];
            active.retain(|&j| self.pieces[j].max_time >= p.min_time);
            for &j in &active {
                if self.pieces[j].generation != p.generation {
                    let (a, b) = (find(&mut parent, i), find(&mut parent, j));
                    parent[a] = b;
                }
            }
            active.push(i);
        }
        let mut groups: HashMap<usize, Vec<usize>> = HashMap::new();
        for i in 0..n {
            let root = find(&mut parent, i);
            groups.entry(root).or_default().push(i);
        }
        let mut out: Vec<Vec<usize>> = groups.into_values().filter(|g| g.len() > 1).collect();
        out.sort();
        out
    }
}

/// Arguments of [`WriteBuffer::open`].
#[derive(Debug, Clone)]
pub struct WriteBufferArgs {
    /// Catalog (already loaded).
    pub catalog: Arc<Catalog>,
    /// Object store.
    pub storage: Storage,
    /// Tuning.
    pub config: WriteBufferConfig,
    /// Clock for lines without a timestamp.
    pub time: Arc<dyn TimeProvider>,
    /// Metrics registry.
    pub metrics: Arc<Metrics>,
}

/// The write buffer.
pub struct WriteBuffer {
    shared: Arc<Shared>,
    wal: Arc<Wal<WriteItem>>,
    storage: Storage,
    time: Arc<dyn TimeProvider>,
    config: WriteBufferConfig,
    snapshot_lock: tokio::sync::Mutex<()>,
    metrics: Arc<Metrics>,
    replayed_files: AtomicU64,
}

impl fmt::Debug for WriteBuffer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WriteBuffer").field("config", &self.config).finish_non_exhaustive()
    }
}

impl WriteBuffer {
    /// Restore state from storage (manifest, then WAL replay) and start the WAL flusher
    /// and the snapshot task.
    pub async fn open(args: WriteBufferArgs) -> Result<Arc<Self>> {
        let WriteBufferArgs { catalog, storage, config, time, metrics } = args;
        let manifest = persist::load_latest_manifest(&storage).await?.map(|(_, m)| m).unwrap_or_default();
        let shared = Arc::new(Shared {
            catalog: Arc::clone(&catalog),
            state: RwLock::new(BufferState {
                last_seq: manifest.wal_seq,
                manifest: Arc::new(manifest.clone()),
                ..Default::default()
            }),
            snapshot_wanted: Notify::new(),
            snapshot_rows: config.snapshot_rows,
            listener: RwLock::new(None),
        });

        // Replay the WAL written after the snapshot.
        let files = wal::list_files(&storage).await?;
        let to_replay: Vec<_> = files.into_iter().filter(|(seq, _)| *seq > manifest.wal_seq).collect();
        let mut last_seq = manifest.wal_seq;
        let count = to_replay.len();
        for (i, (seq, path)) in to_replay.iter().enumerate() {
            let Some(bytes) = storage.get(path).await.map_err(wal::Error::from)? else {
                continue;
            };
            let decoded = wal::decode_file(&bytes, path.as_ref());
            let newest = i + 1 == count;
            let decoded = match decoded {
                Ok(d) => d,
                Err(e) if newest => {
                    tracing::warn!(file = %path, error = %e, "newest wal file is unreadable; nothing recovered from it");
                    wal::DecodedFile { seq: *seq, entries: Vec::new(), damage: Some((0, e.to_string())) }
                }
                Err(e) => return Err(e.into()),
            };
            if let Some((offset, reason)) = &decoded.damage {
                if newest {
                    tracing::warn!(
                        file = %path, offset, reason = %reason, recovered = decoded.entries.len(),
                        "newest wal file has a damaged tail; recovered its valid prefix"
                    );
                    // Rewrite it as exactly that prefix, so it is a well-formed *older*
                    // file once new writes follow it.
                    storage
                        .put_durable(path, bytes::Bytes::from(wal::encode_file(*seq, &decoded.entries)))
                        .await
                        .map_err(wal::Error::from)?;
                } else {
                    return Err(wal::Error::Corrupt {
                        path: path.to_string(),
                        offset: *offset,
                        reason: format!(
                            "{reason} (not the newest WAL file: refusing to start rather than skip acknowledged writes)"
                        ),
                    }
                    .into());
                }
            }
            let mut items = Vec::with_capacity(decoded.entries.len());
            for entry in &decoded.entries {
                let Some(db) = catalog.db_for_replay(entry.db_id, &entry.db_name)? else {
                    continue;
                };
                let text = db.without_dropped(&entry.text, *seq);
                let v = validate::validate(
                    &catalog,
                    &db.name,
                    &text,
                    entry.precision,
                    entry.default_time,
                    true,
                    catalog::Limits::NONE,
                )?;
                for e in &v.errors {
                    tracing::warn!(file = %path, error = %e, "wal line no longer valid on replay");
                }
                items.push(WriteItem { db_id: db.id, tables: v.tables });
            }
            {
                let mut state = shared.state.write();
                shared.apply(&mut state, *seq, &items);
            }
            last_seq = last_seq.max(*seq);
        }
        tracing::info!(replayed_files = count, parquet_files = manifest.files.len(), "write buffer restored");

        let observer: FlushObserver = {
            let metrics = Arc::clone(&metrics);
            Arc::new(move |stats: &wal::FlushStats, ok: bool| {
                metrics.observe_wal_flush(stats.duration, stats.bytes, ok);
            })
        };
        let wal = Wal::start(
            storage.clone(),
            config.wal,
            last_seq + 1,
            Arc::clone(&shared) as Arc<dyn WalFileNotifier<WriteItem>>,
            Some(observer),
        );
        let wb = Arc::new(Self {
            shared,
            wal,
            storage,
            time,
            config,
            snapshot_lock: tokio::sync::Mutex::new(()),
            metrics,
            replayed_files: AtomicU64::new(count as u64),
        });
        tokio::spawn(Self::snapshot_loop(Arc::downgrade(&wb)));
        tokio::spawn(Self::retention_loop(Arc::downgrade(&wb)));
        Ok(wb)
    }

    /// The catalog.
    pub fn catalog(&self) -> &Arc<Catalog> {
        &self.shared.catalog
    }

    /// Number of WAL files replayed at startup.
    pub fn replayed_files(&self) -> u64 {
        self.replayed_files.load(Ordering::Relaxed)
    }

    /// Write line protocol to `db`.
    pub async fn write_lp(
        &self,
        db: &str,
        body: &str,
        precision: Precision,
        accept_partial: bool,
        no_sync: bool,
    ) -> Result<WriteOutcome> {
        let default_time = self.time.now_ns();
        let limits = self.shared.catalog.limits();
        let v = validate::validate(&self.shared.catalog, db, body, precision, default_time, accept_partial, limits)?;
        self.metrics.observe_write(v.accepted_lines, v.errors.len(), body.len());
        if !accept_partial && !v.errors.is_empty() {
            return Err(Error::Rejected(v.errors));
        }
        let Some(db) = v.db.filter(|_| v.accepted_lines > 0) else {
            return Ok(WriteOutcome { accepted_lines: 0, errors: v.errors, accepted_bytes: 0 });
        };
        let accepted_bytes = v.accepted_text.len();
        let entry =
            WalEntry { db_id: db.id, db_name: db.name.to_string(), precision, default_time, text: v.accepted_text };
        let item = WriteItem { db_id: db.id, tables: v.tables };
        if no_sync {
            self.wal.write_no_sync(entry, item)?;
        } else {
            self.wal.write(entry, item).await.map_err(|_| wal::Error::Shutdown)??;
        }
        Ok(WriteOutcome { accepted_lines: v.accepted_lines, errors: v.errors, accepted_bytes })
    }

    /// The data of one table for a scan: the Parquet files and buffer segments whose time
    /// range meets `time_range` (inclusive bounds in ns), with their write generations.
    pub fn table_data(&self, db_id: u32, table_id: u32, time_range: Option<(i64, i64)>) -> TableData {
        let Some(def) = self.shared.catalog.db_by_id(db_id).and_then(|d| d.table_by_id(table_id).cloned()) else {
            return TableData::default();
        };
        let (lo, hi) = time_range.unwrap_or((i64::MIN, i64::MAX));
        let overlaps = |min: i64, max: i64| max >= lo && min <= hi;
        let state = self.shared.state.read();
        let mut files: Vec<&ParquetFile> = state
            .manifest
            .files
            .iter()
            .filter(|f| f.db_id == db_id && f.table_id == table_id && overlaps(f.min_time, f.max_time))
            .collect();
        files.sort_by_key(|f| f.wal_seq);
        let mut pieces = Vec::new();
        let mut generation = 0;
        for (i, f) in files.iter().enumerate() {
            if i > 0 && files[i - 1].wal_seq != f.wal_seq {
                generation += 1;
            }
            pieces.push(Piece {
                generation,
                min_time: f.min_time,
                max_time: f.max_time,
                source: PieceSource::File((*f).clone()),
            });
        }
        let buffered = state.frozen.iter().map(|f| &f.dbs).chain(std::iter::once(&state.open));
        for dbs in buffered {
            generation += 1;
            let Some(tb) = dbs.get(&db_id).and_then(|t| t.get(&table_id)) else {
                continue;
            };
            if !tb.time_range().is_some_and(|(min, max)| overlaps(min, max)) {
                continue;
            }
            match tb.segments(&def) {
                Ok(segments) => {
                    pieces.extend(segments.into_iter().filter(|s| overlaps(s.min_time, s.max_time)).map(|s| Piece {
                        generation,
                        min_time: s.min_time,
                        max_time: s.max_time,
                        source: PieceSource::Batch(s.batch),
                    }))
                }
                Err(e) => tracing::error!(error = %e, "cannot convert buffered rows"),
            }
        }
        TableData { pieces }
    }

    /// Sequence number of the newest WAL file applied to the buffer.
    pub fn last_wal_seq(&self) -> u64 {
        self.shared.state.read().last_seq
    }

    /// The WAL files in the object store as `(seq, bytes)`, ascending.
    pub async fn wal_files(&self) -> Result<Vec<(u64, u64)>> {
        Ok(wal::list_files_with_size(&self.storage).await?)
    }

    /// Read WAL file `seq` back as the rows it flushed (for a trigger catching up after a
    /// restart). `None` if the file is gone. Lines that no longer validate are left out.
    pub async fn read_wal_file(&self, seq: u64) -> Result<Option<FlushedWal>> {
        let path = self.storage.wal_path(seq);
        let Some(bytes) = self.storage.get(&path).await.map_err(wal::Error::from)? else {
            return Ok(None);
        };
        let size = bytes.len() as u64;
        let decoded = wal::decode_file(&bytes, path.as_ref())?;
        let catalog = &self.shared.catalog;
        let mut items = Vec::with_capacity(decoded.entries.len());
        for entry in &decoded.entries {
            let Some(db) = catalog.db_by_id(entry.db_id).filter(|d| !d.deleted) else {
                continue;
            };
            let text = db.without_dropped(&entry.text, seq);
            let v = validate::validate(
                catalog,
                &db.name,
                &text,
                entry.precision,
                entry.default_time,
                true,
                catalog::Limits::NONE,
            )?;
            items.push(WriteItem { db_id: db.id, tables: v.tables });
        }
        Ok(Some(FlushedWal { seq, bytes: size, items, catalog: Arc::clone(catalog) }))
    }

    /// Register the receiver of flushed WAL files' rows (the processing engine).
    pub fn set_flush_listener(&self, listener: Arc<dyn FlushListener>) {
        *self.shared.listener.write() = Some(listener);
    }

    /// All live Parquet files.
    pub fn parquet_files(&self) -> Vec<ParquetFile> {
        self.shared.state.read().manifest.files.clone()
    }

    /// Rows in the open buffer.
    pub fn buffered_rows(&self) -> usize {
        self.shared.state.read().open_rows
    }

    /// Forget buffered rows of a deleted table (buffers being persisted skip it: it is no
    /// longer in the catalog).
    pub fn drop_table(&self, db_id: u32, table_id: u32) {
        let mut state = self.shared.state.write();
        let removed = state.open.get_mut(&db_id).and_then(|tables| tables.remove(&table_id)).map_or(0, |t| t.len());
        state.open_rows = state.open_rows.saturating_sub(removed);
    }

    /// Forget buffered data of a deleted database.
    pub fn drop_db(&self, db_id: u32) {
        self.shared.state.write().open.remove(&db_id);
    }

    async fn snapshot_loop(this: std::sync::Weak<Self>) {
        loop {
            let (interval, wanted) = match this.upgrade() {
                Some(wb) => (wb.config.snapshot_interval, Arc::clone(&wb.shared)),
                None => return,
            };
            tokio::select! {
                _ = tokio::time::sleep(interval) => {}
                _ = wanted.snapshot_wanted.notified() => {}
            }
            drop(wanted);
            let Some(wb) = this.upgrade() else { return };
            if let Err(e) = wb.snapshot().await {
                tracing::error!(error = %e, "snapshot failed; will retry");
            }
        }
    }

    /// Persist everything buffered so far as Parquet and retire the WAL it covers.
    pub async fn snapshot(&self) -> Result<()> {
        let _guard = self.snapshot_lock.lock().await;
        {
            let mut state = self.shared.state.write();
            if state.open_rows > 0 {
                let frozen = Frozen { wal_seq: state.last_seq, dbs: std::mem::take(&mut state.open) };
                state.open_rows = 0;
                state.frozen.push(Arc::new(frozen));
            }
        }
        loop {
            let next = self.shared.state.read().frozen.first().cloned();
            let Some(frozen) = next else { break };
            self.persist_frozen(&frozen).await?;
        }
        Ok(())
    }

    async fn persist_frozen(&self, frozen: &Arc<Frozen>) -> Result<()> {
        let catalog = self.shared.catalog.snapshot();
        let base = Arc::clone(&self.shared.state.read().manifest);
        let mut next_file_id = base.next_file_id;
        let mut new_files = Vec::new();
        for (db_id, tables) in &frozen.dbs {
            let Some(db) = catalog.databases.get(db_id).filter(|d| !d.deleted) else {
                continue;
            };
            for (table_id, tb) in tables {
                let Some(def) = db.table_by_id(*table_id) else {
                    continue;
                };
                let batches = tb.record_batches(def).map_err(persist::Error::from)?;
                let parts = persist::partition_batches(def, &def.schema(), &batches)?;
                for part in &parts {
                    let f = persist::write_file(&self.storage, *db_id, *table_id, next_file_id, frozen.wal_seq, part)
                        .await?;
                    next_file_id += 1;
                    new_files.push(f);
                }
            }
        }
        // The catalog must know every table a file belongs to before the WAL that could
        // re-create them is retired.
        self.shared.catalog.persist().await?;
        let (dropped, kept): (Vec<ParquetFile>, Vec<ParquetFile>) =
            base.files.iter().cloned().partition(|f| deleted_data(&catalog, f));
        let manifest = Manifest {
            format_version: persist::MANIFEST_FORMAT_VERSION,
            wal_seq: frozen.wal_seq,
            next_file_id,
            files: kept.into_iter().chain(new_files).collect(),
        };
        self.storage
            .put_durable(&self.storage.snapshot_path(frozen.wal_seq), bytes::Bytes::from(manifest.encode()))
            .await
            .map_err(persist::Error::from)?;
        {
            let mut state = self.shared.state.write();
            state.manifest = Arc::new(manifest);
            state.frozen.retain(|f| !Arc::ptr_eq(f, frozen));
        }
        self.metrics.observe_snapshot();
        // Retire what the snapshot covers: WAL files (except those a trigger still needs),
        // older manifests, deleted data.
        let wal_files = wal::list_files(&self.storage).await?;
        let keep_after = match self.shared.listener.read().as_ref() {
            Some(l) => l.retain_after(),
            None if self.config.hold_wal_for_listener => Some(0),
            None => None,
        };
        for (seq, path) in wal_files {
            if seq <= frozen.wal_seq
                && keep_after.is_none_or(|k| seq <= k)
                && let Err(e) = self.storage.delete(&path).await
            {
                tracing::warn!(file = %path, error = %e, "cannot delete retired wal file");
            }
        }
        if let Ok(paths) = self.storage.list(&self.storage.snapshot_dir()).await {
            for p in paths {
                let seq = p.filename().and_then(|n| n.strip_suffix(".json")).and_then(|n| n.parse::<u64>().ok());
                if seq.is_some_and(|s| s < frozen.wal_seq) {
                    let _ = self.storage.delete(&p).await;
                }
            }
        }
        for f in dropped {
            let _ = self.storage.delete(&object_store::path::Path::from(f.path.as_str())).await;
        }
        tracing::info!(wal_seq = frozen.wal_seq, "snapshot persisted");
        Ok(())
    }

    /// Remove the Parquet files of deleted databases and the files wholly older than their
    /// database's retention period at `now_ns`: a new manifest without them is written
    /// first, then the objects are deleted. Returns how many files went. (Rows of a file
    /// that is only partly expired stay on storage until the whole file is; queries never
    /// return them.)
    pub async fn expire_files(&self, now_ns: i64) -> Result<usize> {
        let _guard = self.snapshot_lock.lock().await;
        let catalog = self.shared.catalog.snapshot();
        let base = Arc::clone(&self.shared.state.read().manifest);
        let expired = |f: &ParquetFile| {
            deleted_data(&catalog, f)
                || catalog
                    .databases
                    .get(&f.db_id)
                    .and_then(|d| d.retention_cutoff(now_ns))
                    .is_some_and(|c| f.max_time < c)
        };
        let (dropped, kept): (Vec<ParquetFile>, Vec<ParquetFile>) = base.files.iter().cloned().partition(expired);
        if dropped.is_empty() {
            return Ok(0);
        }
        let manifest = Manifest {
            format_version: persist::MANIFEST_FORMAT_VERSION,
            wal_seq: base.wal_seq,
            next_file_id: base.next_file_id,
            files: kept,
        };
        // Same WAL sequence as the manifest it replaces: written durably over it.
        self.storage
            .put_durable(&self.storage.snapshot_path(base.wal_seq), bytes::Bytes::from(manifest.encode()))
            .await
            .map_err(persist::Error::from)?;
        self.shared.state.write().manifest = Arc::new(manifest);
        for f in &dropped {
            if let Err(e) = self.storage.delete(&object_store::path::Path::from(f.path.as_str())).await {
                tracing::warn!(file = %f.path, error = %e, "cannot delete an expired Parquet file");
            }
        }
        tracing::info!(files = dropped.len(), "expired Parquet files removed (retention or deleted databases)");
        Ok(dropped.len())
    }

    /// [`WriteBuffer::expire_files`] at the buffer's clock's now. A failure is logged (the
    /// files stay listed and are tried again at the next check): the answer is how many
    /// files went.
    pub async fn expire_files_now(&self) -> usize {
        match self.expire_files(self.time.now_ns()).await {
            Ok(n) => n,
            Err(e) => {
                tracing::error!(error = %e, "removing expired or deleted Parquet files failed; tried again within a minute");
                0
            }
        }
    }

    async fn retention_loop(this: std::sync::Weak<Self>) {
        loop {
            tokio::time::sleep(RETENTION_CHECK_EVERY).await;
            let Some(wb) = this.upgrade() else { return };
            wb.expire_files_now().await;
        }
    }

    /// Flush the WAL and stop accepting writes.
    pub async fn shutdown(&self) {
        self.wal.shutdown().await;
    }
}
