//! WAL triggers: at-least-once, in-order delivery of flushed WAL files, at any backlog.
//!
//! - **Index.** Every flushed WAL file is recorded here (sequence number, size, the tables
//!   with rows per database) as the flusher hands it over; the newest files also keep their
//!   rows in memory ([`CACHE_WAL_BYTES`]). After a restart the retained files are listed
//!   from storage and read when a trigger reaches them.
//! - **Cursors.** Each enabled WAL trigger has a task that walks the index from its
//!   checkpoint: the next file with rows for its table(s) is read (from the cache, else from
//!   the object store), its rows are sent as one `WalBatch`, up to [`WINDOW`] in flight for
//!   a `log` trigger (1 for `retry` and `disable`, so a failed batch is retried or the
//!   trigger stopped before any later one runs). Nothing is ever dropped for being behind:
//!   a slow trigger reads its backlog from storage, in order, also after restarts.
//! - **Checkpoints.** When a batch is done (and its write-back committed) the checkpoint
//!   moves to it; when the cursor is past every file it must see, to the newest file looked
//!   at. Snapshots keep the WAL files after the lowest checkpoint.
//! - **Retention.** A trigger whose retained WAL exceeds `--trigger-max-wal-lag` is stopped
//!   (STOPPED, with the reason in `last_error`) and stops holding WAL files; only an
//!   explicit `enable --skip-to-now` (or disable and enable) starts it again, from the
//!   newest file.
//! - **Sessions.** Batches unanswered when the session breaks are sent again, in order, on
//!   the next one (at least once).

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;
use tokio::sync::watch;
use weir_proto::plugin::v1::{self as pb, core_message};

use super::{
    Engine, EngineError, calls::Next, checkpoint::TriggerKey, ipc, session::Waiting, state::LogLevel,
    write_path::WalRows,
};
use crate::{
    catalog::{ErrorBehavior, TriggerDef, TriggerSpec},
    write_buffer::FlushedWal,
};

/// Batches of one `log` trigger sent to the host before the oldest is answered.
pub const WINDOW: usize = 4;
/// The newest WAL files kept in memory, encoded as Arrow IPC, for triggers that keep up
/// (and backlogs that fit), measured in WAL file bytes (the IPC is about as large).
pub const CACHE_WAL_BYTES: u64 = 256 << 20;

/// Arrow IPC of one database's rows in a WAL file, per table.
type Encoded = Arc<Vec<(Arc<str>, Vec<u8>)>>;

/// One WAL file as delivery knows it.
#[derive(Debug)]
struct WalFile {
    seq: u64,
    bytes: u64,
    /// Tables with rows, per database; `None` until the file is read (after a restart).
    tables: Mutex<Option<HashMap<u32, Vec<Arc<str>>>>>,
    /// The rows, from the flush until the encoder has turned them into IPC.
    rows: Mutex<Option<Arc<dyn WalRows>>>,
    /// Arrow IPC per database and table, built once for all the triggers of a database
    /// while the rows are cached (right after the flush, off the flusher's path).
    encoded: Mutex<HashMap<u32, Arc<tokio::sync::OnceCell<Encoded>>>>,
}

/// The rows of database `db_id` in `rows`, as Arrow IPC per table.
fn encode_tables(rows: &dyn WalRows, db_id: u32) -> Result<Encoded, String> {
    let mut out = Vec::new();
    for (name, batch) in rows.tables(db_id) {
        match ipc(std::slice::from_ref(&batch)) {
            Ok(bytes) => out.push((name, bytes)),
            Err(e) => return Err(format!("cannot encode the rows of table {name}: {e}")),
        }
    }
    Ok(Arc::new(out))
}

fn tables_of(rows: &dyn WalRows) -> HashMap<u32, Vec<Arc<str>>> {
    rows.db_ids().into_iter().map(|db| (db, rows.table_names(db))).collect()
}

impl WalFile {
    fn encoded_cell(&self, db_id: u32) -> Arc<tokio::sync::OnceCell<Encoded>> {
        Arc::clone(self.encoded.lock().entry(db_id).or_default())
    }

    /// Whether the file may hold rows for a trigger of `db_id` with `spec` (an unread file
    /// may).
    fn may_concern(&self, db_id: u32, spec: &TriggerSpec) -> bool {
        match &*self.tables.lock() {
            None => true,
            Some(t) => t.get(&db_id).is_some_and(|names| names.iter().any(|n| spec.wants_table(n))),
        }
    }
}

/// A trigger's delivery task.
#[derive(Debug)]
struct Task {
    def: Arc<TriggerDef>,
    stop: watch::Sender<bool>,
}

/// Why a batch could not be made.
#[derive(Debug)]
enum Fetch {
    /// The WAL file is no longer in storage.
    Gone,
    /// Reading it failed (the store may be down): try again.
    Failed(String),
}

/// The WAL index, the cache of the newest rows, and the trigger tasks.
#[derive(Debug)]
pub(super) struct Delivery {
    files: Mutex<BTreeMap<u64, Arc<WalFile>>>,
    /// Files waiting for the encoder (one at a time, off the flusher's path).
    encode_tx: tokio::sync::mpsc::UnboundedSender<Arc<WalFile>>,
    encode_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<Arc<WalFile>>>>,
    /// Sequence numbers whose rows are cached, oldest first, and their total size.
    cached: Mutex<(VecDeque<u64>, u64)>,
    latest: watch::Sender<u64>,
    tasks: Mutex<HashMap<TriggerKey, Task>>,
}

impl Delivery {
    pub(super) fn new() -> Self {
        let (encode_tx, encode_rx) = tokio::sync::mpsc::unbounded_channel();
        Self {
            files: Mutex::new(BTreeMap::new()),
            encode_tx,
            encode_rx: Mutex::new(Some(encode_rx)),
            cached: Mutex::new((VecDeque::new(), 0)),
            latest: watch::channel(0).0,
            tasks: Mutex::new(HashMap::new()),
        }
    }

    /// A flushed file (on the flusher's path: only bookkeeping, no conversion).
    pub(super) fn record_flush(&self, seq: u64, bytes: u64, rows: Arc<dyn WalRows>) {
        let file = Arc::new(WalFile {
            seq,
            bytes,
            tables: Mutex::new(Some(tables_of(rows.as_ref()))),
            rows: Mutex::new(Some(rows)),
            encoded: Mutex::new(HashMap::new()),
        });
        self.files.lock().insert(seq, Arc::clone(&file));
        // Encoded for the triggers right away by the encoder (a trigger that keeps up, or a
        // backlog in the cache, finds its batch ready); the rows are dropped then.
        if file.tables.lock().as_ref().is_some_and(|t| !t.is_empty()) {
            let _ = self.encode_tx.send(Arc::clone(&file));
        }
        {
            let mut cached = self.cached.lock();
            cached.0.push_back(seq);
            cached.1 += bytes;
            // Keep at least the newest file.
            while cached.1 > CACHE_WAL_BYTES && cached.0.len() > 1 {
                let Some(old) = cached.0.pop_front() else { break };
                if let Some(f) = self.files.lock().get(&old) {
                    cached.1 = cached.1.saturating_sub(f.bytes);
                    *f.rows.lock() = None;
                    f.encoded.lock().clear();
                }
            }
        }
        self.latest.send_if_modified(|l| {
            let newer = seq > *l;
            *l = (*l).max(seq);
            newer
        });
    }

    /// Encode flushed files one at a time on the blocking pool (like ingest, at most one
    /// core's worth at once), then drop their rows: the cache holds Arrow IPC.
    pub(super) async fn encoder(&self) {
        let Some(mut rx) = self.encode_rx.lock().take() else { return };
        while let Some(file) = rx.recv().await {
            let Some(rows) = file.rows.lock().clone() else { continue };
            let dbs: Vec<u32> = file.tables.lock().as_ref().map(|t| t.keys().copied().collect()).unwrap_or_default();
            let f = Arc::clone(&file);
            let done = tokio::task::spawn_blocking(move || {
                dbs.into_iter().all(|db_id| {
                    let cell = f.encoded_cell(db_id);
                    cell.get().is_some()
                        || encode_tables(rows.as_ref(), db_id)
                            .is_ok_and(|e| cell.set(e).is_ok() || cell.get().is_some())
                })
            })
            .await
            .unwrap_or(false);
            if done {
                *file.rows.lock() = None;
            }
        }
    }

    /// Files found in storage at startup (read when a trigger reaches them).
    pub(super) fn record_stored(&self, files: &[(u64, u64)]) {
        let mut index = self.files.lock();
        for &(seq, bytes) in files {
            index.entry(seq).or_insert_with(|| {
                Arc::new(WalFile {
                    seq,
                    bytes,
                    tables: Mutex::new(None),
                    rows: Mutex::new(None),
                    encoded: Mutex::new(HashMap::new()),
                })
            });
        }
        let max = files.iter().map(|f| f.0).max().unwrap_or(0);
        self.latest.send_if_modified(|l| {
            let newer = max > *l;
            *l = (*l).max(max);
            newer
        });
    }

    /// Forget files at or below `seq` (no trigger needs them).
    pub(super) fn forget_through(&self, seq: u64) {
        let mut index = self.files.lock();
        let keep = index.split_off(&(seq + 1));
        *index = keep;
    }

    fn next_after(&self, seq: u64) -> Option<Arc<WalFile>> {
        self.files.lock().range(seq + 1..).next().map(|(_, f)| Arc::clone(f))
    }

    /// Files after `checkpoint` that may hold rows for the trigger, and the bytes of all
    /// files after it (what is kept in storage for it).
    pub(super) fn lag(&self, checkpoint: u64, db_id: u32, spec: &TriggerSpec) -> (u64, u64) {
        let index = self.files.lock();
        let mut files = 0;
        let mut bytes = 0;
        for f in index.range(checkpoint + 1..).map(|(_, f)| f) {
            bytes += f.bytes;
            if f.may_concern(db_id, spec) {
                files += 1;
            }
        }
        (files, bytes)
    }

    /// The newest file recorded.
    pub(super) fn latest(&self) -> u64 {
        *self.latest.borrow()
    }

    /// Stop every task whose trigger is not in `wanted` (or whose definition changed);
    /// returns the triggers that need a new task.
    fn sync(
        &self,
        wanted: &HashMap<TriggerKey, Arc<TriggerDef>>,
    ) -> Vec<(TriggerKey, Arc<TriggerDef>, watch::Receiver<bool>)> {
        let mut tasks = self.tasks.lock();
        tasks.retain(|key, task| {
            let keep = wanted.get(key).is_some_and(|d| d.as_ref() == task.def.as_ref());
            if !keep {
                let _ = task.stop.send(true);
            }
            keep
        });
        let mut start = Vec::new();
        for (key, def) in wanted {
            if tasks.contains_key(key) {
                continue;
            }
            let (stop, rx) = watch::channel(false);
            tasks.insert(key.clone(), Task { def: Arc::clone(def), stop });
            start.push((key.clone(), Arc::clone(def), rx));
        }
        start
    }

    /// Stop every task (shutdown).
    pub(super) fn stop_all(&self) {
        for (_, task) in self.tasks.lock().drain() {
            let _ = task.stop.send(true);
        }
    }

    /// Stop one trigger's task (the retention policy stopped it).
    fn stop(&self, key: &TriggerKey) {
        if let Some(task) = self.tasks.lock().remove(key) {
            let _ = task.stop.send(true);
        }
    }
}

/// A batch on its way: sent (and waiting for its reply) or not yet.
#[derive(Debug)]
struct Queued {
    seq: u64,
    batch: pb::WalBatch,
    waiting: Option<Waiting>,
    /// The last (or only) part of its WAL file: when it is done, the file is.
    last_of_file: bool,
}

/// Most Arrow IPC bytes in one `WalBatch` (well under the session's message limit, with room
/// for the envelope).
pub const MAX_BATCH_BYTES: usize = weir_proto::MAX_MESSAGE_BYTES / 2;

/// One WAL file's tables for a trigger, as one batch, or as several in order when they
/// would not fit one message (tables apart, then a table's rows in slices): the plugin
/// sees every row, in write order, over several calls.
fn split_for_messages(tables: Vec<pb::TableRows>, limit: usize) -> Result<Vec<Vec<pb::TableRows>>, String> {
    let mut parts: Vec<Vec<pb::TableRows>> = Vec::new();
    let mut current: Vec<pb::TableRows> = Vec::new();
    let mut size = 0;
    for t in tables {
        let pieces = if t.arrow_ipc.len() > limit { slice_table(&t, limit)? } else { vec![t] };
        for p in pieces {
            if size + p.arrow_ipc.len() > limit && !current.is_empty() {
                parts.push(std::mem::take(&mut current));
                size = 0;
            }
            size += p.arrow_ipc.len();
            current.push(p);
        }
    }
    if !current.is_empty() {
        parts.push(current);
    }
    Ok(parts)
}

/// A table's IPC re-encoded in row slices of at most about `limit` bytes each.
fn slice_table(t: &pb::TableRows, limit: usize) -> Result<Vec<pb::TableRows>, String> {
    let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&t.arrow_ipc[..]), None)
        .map_err(|e| e.to_string())?;
    let batches: Vec<arrow::record_batch::RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    let rows: usize = batches.iter().map(|b| b.num_rows()).sum();
    let per_slice = (rows * limit / t.arrow_ipc.len().max(1)).max(1);
    let mut out = Vec::new();
    for b in &batches {
        let mut offset = 0;
        while offset < b.num_rows() {
            let len = per_slice.min(b.num_rows() - offset);
            let bytes = ipc(&[b.slice(offset, len)]).map_err(|e| e.to_string())?;
            out.push(pb::TableRows { table_name: t.table_name.clone(), arrow_ipc: bytes });
            offset += len;
        }
    }
    Ok(out)
}

impl Engine {
    /// Start or stop delivery tasks so that exactly the enabled WAL triggers that are not
    /// stopped have one (a changed definition gets a new task).
    pub(super) fn sync_wal_triggers(self: &Arc<Self>) {
        // Under the lock of the schedules too: two concurrent syncs cannot apply an older
        // catalog snapshot after a newer one.
        let _order = self.sync_lock.lock();
        if self.is_stopping() {
            return;
        }
        let mut wanted = HashMap::new();
        for db in self.catalog.databases() {
            for t in db.triggers.values().filter(|t| !t.disabled && t.spec().is_wal()) {
                let key = (db.id, Arc::clone(&t.name));
                if self.checkpoints.get(&key).is_some_and(|cp| cp.stopped.is_none()) {
                    wanted.insert(key, Arc::clone(t));
                }
            }
        }
        for (key, def, stop) in self.delivery.sync(&wanted) {
            self.tasks.spawn(Arc::clone(self).trigger_loop(key, def, stop));
        }
    }

    /// The flusher handed over a WAL file.
    pub(super) fn wal_flushed(&self, wal: FlushedWal) {
        let (seq, bytes) = (wal.seq, wal.bytes);
        self.delivery.record_flush(seq, bytes, Arc::new(wal));
    }

    /// The retention policy: stop every trigger that holds more than the maximum lag.
    pub(super) fn enforce_max_lag(self: &Arc<Self>) {
        let Some(max) = self.config.max_wal_lag_bytes else { return };
        for (key, cp) in self.checkpoints.all() {
            if cp.stopped.is_some() {
                continue;
            }
            let Some(def) = self.catalog.db_by_id(key.0).and_then(|d| d.triggers.get(key.1.as_ref()).cloned()) else {
                continue;
            };
            let (_, bytes) = self.delivery.lag(cp.wal_seq, key.0, def.spec());
            if bytes > max {
                let reason = format!(
                    "trigger stopped: it is {bytes} bytes of WAL behind, more than --trigger-max-wal-lag ({max} bytes); \
                     its WAL files are no longer kept. Start it again from the newest data with \
                     `weir enable trigger {} --skip-to-now` (or disable and enable it)",
                    key.1
                );
                self.stop_lagging(&key, reason);
            }
        }
    }

    /// Stop a trigger for good (until an operator skips it forward): it no longer holds WAL
    /// files, and says why.
    pub(super) fn stop_lagging(&self, key: &TriggerKey, reason: String) {
        self.checkpoints.stop(key, reason.clone());
        self.delivery.stop(key);
        let db = self.catalog.db_by_id(key.0).map(|d| d.name.to_string()).unwrap_or_default();
        self.record(&db, &key.1, LogLevel::Error, reason);
    }

    /// Start a WAL trigger again from the newest WAL file (what the operator asks with
    /// `--skip-to-now`); the files in between are not delivered to it.
    pub(super) async fn skip_to_now(self: &Arc<Self>, db_id: u32, name: &str) -> Result<(), EngineError> {
        let key = (db_id, Arc::from(name));
        let now = self.writes.last_wal_seq();
        let skipped = self.checkpoints.get(&key).map(|cp| cp.wal_seq);
        self.checkpoints.set(key.clone(), super::checkpoint::Checkpoint { wal_seq: now, stopped: None });
        self.delivery.stop(&key);
        self.state.clear(db_id, name);
        if let Some(from) = skipped.filter(|from| *from < now) {
            let db = self.catalog.db_by_id(db_id).map(|d| d.name.to_string()).unwrap_or_default();
            self.record(
                &db,
                name,
                LogLevel::Warn,
                format!("skipped to now: WAL files {} to {now} are not delivered to this trigger", from + 1),
            );
        }
        self.save_checkpoints_now().await;
        self.sync_wal_triggers();
        Ok(())
    }

    /// The rows of `file` for database `db_id`, as Arrow IPC per table: from the cache
    /// (encoded once for every trigger of the database), else read back from storage.
    async fn encoded(&self, file: &WalFile, db_id: u32) -> Result<Encoded, Fetch> {
        if let Some(e) = file.encoded_cell(db_id).get() {
            return Ok(Arc::clone(e));
        }
        let cached = file.rows.lock().clone();
        if let Some(rows) = cached {
            let cell = file.encoded_cell(db_id);
            let encoded = cell
                .get_or_try_init(|| async move {
                    tokio::task::spawn_blocking(move || encode_tables(rows.as_ref(), db_id))
                        .await
                        .map_err(|e| e.to_string())?
                })
                .await
                .map_err(|e| Fetch::Failed(e.clone()))?;
            return Ok(Arc::clone(encoded));
        }
        let rows = match self.writes.read_wal(file.seq).await {
            Ok(Some(r)) => r,
            Ok(None) => return Err(Fetch::Gone),
            Err(e) => return Err(Fetch::Failed(e)),
        };
        {
            let mut tables = file.tables.lock();
            if tables.is_none() {
                *tables = Some(tables_of(rows.as_ref()));
            }
        }
        tokio::task::spawn_blocking(move || encode_tables(rows.as_ref(), db_id))
            .await
            .map_err(|e| Fetch::Failed(e.to_string()))?
            .map_err(Fetch::Failed)
    }

    /// The next batch for a trigger after `after`: `Ok(Some)` a batch, `Ok(None)` no file
    /// after `after` yet. Files without rows for the trigger are passed (`after` moves).
    async fn next_batch(
        &self,
        db: &str,
        db_id: u32,
        def: &TriggerDef,
        after: &mut u64,
    ) -> Result<Option<(u64, Vec<pb::WalBatch>)>, (u64, Fetch)> {
        while let Some(file) = self.delivery.next_after(*after) {
            if !file.may_concern(db_id, def.spec()) {
                *after = file.seq;
                continue;
            }
            let tables = self.encoded(&file, db_id).await.map_err(|e| (file.seq, e))?;
            let chosen: Vec<pb::TableRows> = tables
                .iter()
                .filter(|(name, _)| def.spec().wants_table(name))
                .map(|(name, bytes)| pb::TableRows { table_name: name.to_string(), arrow_ipc: bytes.clone() })
                .collect();
            *after = file.seq;
            // Weir: a table trigger is not called for a file without its table.
            if chosen.is_empty() {
                continue;
            }
            let parts = split_for_messages(chosen, MAX_BATCH_BYTES).map_err(|e| {
                (file.seq, Fetch::Failed(format!("cannot split an oversized WAL file for delivery: {e}")))
            })?;
            let batches = parts
                .into_iter()
                .map(|tables| pb::WalBatch {
                    database: db.to_string(),
                    trigger: def.name.to_string(),
                    wal_seq: file.seq,
                    tables,
                })
                .collect();
            return Ok(Some((file.seq, batches)));
        }
        Ok(None)
    }

    /// Deliver one trigger's batches in order until `stop` (see the module docs).
    async fn trigger_loop(self: Arc<Self>, key: TriggerKey, def: Arc<TriggerDef>, mut stop: watch::Receiver<bool>) {
        let (db_id, name) = key.clone();
        let Some(db) = self.catalog.db_by_id(db_id).map(|d| d.name.to_string()) else { return };
        let Some(start) = self.checkpoints.get(&key) else { return };
        let window = if def.error_behavior == ErrorBehavior::Log { WINDOW } else { 1 };
        let mut queued: VecDeque<Queued> = VecDeque::new();
        // The newest file the cursor has looked at.
        let mut after = start.wal_seq;
        let mut announced: Option<u64> = None;
        let mut attempt: u32 = 1;
        let mut read_failures: u32 = 0;
        let mut latest = self.delivery.latest.subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            // Files recorded after this are announced by `latest` changing.
            latest.borrow_and_update();
            // Fill the window.
            let mut read_failed = false;
            while queued.len() < window {
                match self.next_batch(&db, db_id, &def, &mut after).await {
                    Ok(Some((seq, batches))) => {
                        read_failures = 0;
                        let n = batches.len();
                        for (i, batch) in batches.into_iter().enumerate() {
                            queued.push_back(Queued { seq, batch, waiting: None, last_of_file: i + 1 == n });
                        }
                    }
                    Ok(None) => break,
                    Err((seq, Fetch::Gone)) => {
                        self.stop_lagging(
                            &key,
                            format!(
                                "trigger stopped: WAL file {seq}, which it has not processed, is no longer in storage; \
                                 start it again with `weir enable trigger {name} --skip-to-now`"
                            ),
                        );
                        return;
                    }
                    Err((seq, Fetch::Failed(e))) => {
                        read_failures += 1;
                        if read_failures == 1 || read_failures.is_power_of_two() {
                            let text = format!(
                                "cannot read WAL file {seq} for this trigger (attempt {read_failures}); retrying: {e}"
                            );
                            self.record(&db, &name, LogLevel::Error, text);
                        }
                        read_failed = true;
                        break;
                    }
                }
            }
            if queued.is_empty() {
                if read_failed {
                    let delay = super::calls::backoff(read_failures, self.time.now_ns().unsigned_abs());
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    continue;
                }
                // Caught up: every file looked at is done.
                self.checkpoints.advance(&key, after);
                tokio::select! {
                    changed = latest.changed() => if changed.is_err() { return },
                    _ = stop.changed() => return,
                }
                continue;
            }
            // Send what is not sent yet, the trigger's definition first on a new session.
            if queued.iter().all(|q| q.waiting.is_none()) {
                let message = super::trigger_message(&db, &def);
                self.link
                    .announce(&mut announced, || {
                        core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(message) })
                    })
                    .await;
            }
            let mut no_session = false;
            for q in queued.iter_mut().filter(|q| q.waiting.is_none()) {
                match self.link.send(core_message::Body::WalBatch(q.batch.clone())).await {
                    Some(w) => q.waiting = Some(w),
                    None => {
                        no_session = true;
                        break;
                    }
                }
            }
            let Some(front) = queued.front_mut() else { continue };
            let Some(waiting) = front.waiting.take() else {
                if no_session {
                    tokio::select! {
                        _ = self.link.wait_for_session(Duration::from_secs(5)) => {}
                        _ = stop.changed() => return,
                    }
                }
                continue;
            };
            // The host enforces the plugin timeout; this only guards against a lost reply.
            let deadline = self.config.plugin_timeout * (WINDOW as u32) + Duration::from_secs(60);
            let reply = tokio::select! {
                r = tokio::time::timeout(deadline, waiting.reply::<pb::Done>("a WAL batch")) => r,
                _ = stop.changed() => return,
            };
            let done = match reply {
                Ok(Ok(done)) => done,
                Ok(Err(e @ EngineError::Protocol { .. })) => {
                    pb::Done { ok: false, error: e.to_string(), ..Default::default() }
                }
                // The session ended, or the reply was lost: send the unanswered ones again.
                Ok(Err(_)) | Err(_) => {
                    queued.iter_mut().for_each(|q| q.waiting = None);
                    continue;
                }
            };
            let failure = if done.ok {
                let Some(front) = queued.front() else { continue };
                self.commit_writes(&front.batch.database, &front.batch.trigger, done.writes)
                    .await
                    .err()
                    .map(|e| (e, false))
            } else {
                Some((done.error, done.stopped))
            };
            match self.after_call(db_id, &db, &def, attempt, failure) {
                // Stopped by the crash-loop breaker: the batch stays undone, the WAL kept.
                Next::Halt => return,
                Next::Retry(delay) => {
                    // Only this batch is in flight (window 1): it runs again after the delay.
                    queued.iter_mut().for_each(|q| q.waiting = None);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = stop.changed() => return,
                    }
                    attempt += 1;
                }
                next => {
                    let Some(finished) = queued.pop_front() else { continue };
                    // A file is done with its last part; with nothing else in flight the
                    // cursor's position is done too.
                    let through = if !finished.last_of_file {
                        finished.seq.saturating_sub(1)
                    } else if queued.is_empty() {
                        after
                    } else {
                        finished.seq
                    };
                    self.checkpoints.advance(&key, through);
                    attempt = 1;
                    if next == Next::Stop {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod split_tests {
    use std::sync::Arc;

    use arrow::array::Int64Array;

    use super::*;

    fn table(name: &str, rows: i64) -> pb::TableRows {
        let batch = arrow::record_batch::RecordBatch::try_from_iter([(
            "v",
            Arc::new(Int64Array::from_iter_values(0..rows)) as arrow::array::ArrayRef,
        )])
        .unwrap();
        pb::TableRows { table_name: name.into(), arrow_ipc: ipc(&[batch]).unwrap() }
    }

    fn rows(parts: &[Vec<pb::TableRows>]) -> Vec<(String, i64)> {
        parts
            .iter()
            .flatten()
            .flat_map(|t| {
                let reader =
                    arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(&t.arrow_ipc[..]), None).unwrap();
                reader
                    .flat_map(|b| {
                        let b = b.unwrap();
                        let v = b.column(0).as_any().downcast_ref::<Int64Array>().unwrap().clone();
                        v.values().iter().map(|x| (t.table_name.clone(), *x)).collect::<Vec<_>>()
                    })
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// A WAL file too large for one message reaches the plugin in several, every row once,
    /// in order.
    #[test]
    fn oversized_files_are_split_in_order_without_losing_rows() {
        let tables = vec![table("a", 10), table("b", 100_000), table("c", 5)];
        let whole = rows(std::slice::from_ref(&tables));
        let limit = 64 * 1024;
        let parts = split_for_messages(tables.clone(), limit).unwrap();
        assert!(parts.len() > 2, "{} parts", parts.len());
        for p in &parts {
            let size: usize = p.iter().map(|t| t.arrow_ipc.len()).sum();
            assert!(size <= limit * 2, "a part of {size} bytes");
        }
        assert_eq!(rows(&parts), whole);
        // Small enough: one batch, untouched.
        assert_eq!(split_for_messages(tables.clone(), usize::MAX).unwrap(), vec![tables]);
    }
}
