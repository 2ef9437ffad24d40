//! The engine against an in-process fake plugin host and an in-memory write path: delivery
//! order, backlogs beyond the cache, resends after a reconnect, retries, checkpoints and
//! restarts, lag and the retention policy. Time is tokio's paused clock, so backoffs and
//! timeouts cost nothing.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use arrow::{
    array::{Int64Array, TimestampNanosecondArray},
    datatypes::{DataType, Field, Schema, TimeUnit},
    record_batch::RecordBatch,
};
use futures::StreamExt;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use weir_proto::plugin::v1::{self as pb, core_message, host_message};

use super::*;
use crate::{
    catalog::Catalog,
    query::{QueryShape, Result as QueryResult, TableListing},
    storage::Storage,
    time::SystemTime,
    trigger::NewTrigger,
};

// ---- the fake write path -------------------------------------------------------------

#[derive(Debug)]
struct FakeRows {
    seq: u64,
    tables: Vec<(u32, Arc<str>, RecordBatch)>,
}

impl WalRows for FakeRows {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn db_ids(&self) -> Vec<u32> {
        let mut ids: Vec<u32> = self.tables.iter().map(|t| t.0).collect();
        ids.dedup();
        ids
    }

    fn table_names(&self, db_id: u32) -> Vec<Arc<str>> {
        self.tables.iter().filter(|t| t.0 == db_id).map(|t| Arc::clone(&t.1)).collect()
    }

    fn tables(&self, db_id: u32) -> Vec<(Arc<str>, RecordBatch)> {
        self.tables.iter().filter(|t| t.0 == db_id).map(|t| (Arc::clone(&t.1), t.2.clone())).collect()
    }
}

/// WAL files in memory; plugin writes recorded (or refused while `refuse_writes` > 0).
#[derive(Debug, Default)]
struct FakeWrites {
    files: Mutex<BTreeMap<u64, Arc<FakeRows>>>,
    written: Mutex<Vec<(String, String)>>,
    refuse_writes: Mutex<u32>,
    reads: Mutex<Vec<u64>>,
}

#[async_trait::async_trait]
impl WritePath for FakeWrites {
    async fn write_lines(&self, db: &str, lines: &str, _no_sync: bool) -> std::result::Result<(), WriteError> {
        let mut refuse = self.refuse_writes.lock();
        if *refuse > 0 {
            *refuse -= 1;
            return Err(WriteError::Failed("wal flush failed: No space left on device".into()));
        }
        self.written.lock().push((db.to_string(), lines.to_string()));
        Ok(())
    }

    fn last_wal_seq(&self) -> u64 {
        self.files.lock().keys().next_back().copied().unwrap_or(0)
    }

    async fn wal_files(&self) -> std::result::Result<Vec<(u64, u64)>, String> {
        Ok(self.files.lock().keys().map(|s| (*s, FILE_BYTES)).collect())
    }

    async fn read_wal(&self, seq: u64) -> std::result::Result<Option<Arc<dyn WalRows>>, String> {
        self.reads.lock().push(seq);
        Ok(self.files.lock().get(&seq).map(|f| Arc::clone(f) as Arc<dyn WalRows>))
    }
}

/// Every fake WAL file claims this size, so the cache holds [`CACHE_FILES`] of them.
const FILE_BYTES: u64 = 1 << 20;
const CACHE_FILES: u64 = delivery::CACHE_WAL_BYTES / FILE_BYTES;

fn batch(values: &[i64]) -> RecordBatch {
    let schema = Arc::new(Schema::new(vec![
        Field::new("v", DataType::Int64, true),
        Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(Int64Array::from(values.to_vec())),
            Arc::new(TimestampNanosecondArray::from_iter_values(values.iter().copied())),
        ],
    )
    .unwrap()
}

#[derive(Debug)]
struct NoQueries;

#[async_trait::async_trait]
impl QueryExecutor for NoQueries {
    async fn query_sql(
        &self,
        db: &str,
        _sql: &str,
        _params: QueryParams,
    ) -> QueryResult<datafusion::execution::SendableRecordBatchStream> {
        Err(crate::query::Error::DbNotFound(db.to_string()))
    }

    async fn describe(&self, db: &str, _sql: &str) -> QueryResult<QueryShape> {
        Err(crate::query::Error::DbNotFound(db.to_string()))
    }

    async fn list_tables(&self, _db: &str) -> QueryResult<Vec<TableListing>> {
        Ok(Vec::new())
    }
}

// ---- the fake plugin host ------------------------------------------------------------

/// What the fake host does with a WAL batch.
#[derive(Debug, Clone)]
struct Outcome {
    ok: bool,
    error: String,
    writes: Vec<pb::DatabaseWrites>,
    delay: Duration,
}

impl Default for Outcome {
    fn default() -> Self {
        Self { ok: true, error: String::new(), writes: Vec::new(), delay: Duration::from_millis(1) }
    }
}

type Behaviour = Box<dyn Fn(&pb::WalBatch) -> Outcome + Send + Sync>;

/// Plays `weir-plugin-host`: records what it receives and answers batches in order.
struct FakeHost {
    behaviour: Mutex<Behaviour>,
    /// (trigger, wal_seq) of every batch run, in run order.
    runs: Mutex<Vec<(String, u64)>>,
    defined: Mutex<Vec<String>>,
    dropped: Mutex<Vec<String>>,
    sessions: Mutex<u32>,
    /// The current session's task: aborting it ends the session.
    cut: Mutex<Option<tokio::task::AbortHandle>>,
    refuse: Mutex<bool>,
}

impl std::fmt::Debug for FakeHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHost").finish_non_exhaustive()
    }
}

impl FakeHost {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            behaviour: Mutex::new(Box::new(|_| Outcome::default())),
            runs: Mutex::new(Vec::new()),
            defined: Mutex::new(Vec::new()),
            dropped: Mutex::new(Vec::new()),
            sessions: Mutex::new(0),
            cut: Mutex::new(None),
            refuse: Mutex::new(false),
        })
    }

    fn behave(&self, f: impl Fn(&pb::WalBatch) -> Outcome + Send + Sync + 'static) {
        *self.behaviour.lock() = Box::new(f);
    }

    fn runs_of(&self, trigger: &str) -> Vec<u64> {
        self.runs.lock().iter().filter(|(t, _)| t == trigger).map(|(_, s)| *s).collect()
    }

    /// End the current session (as a host restart does).
    fn cut_session(&self) {
        if let Some(task) = self.cut.lock().take() {
            task.abort();
        }
    }
}

#[async_trait::async_trait]
impl HostConnector for Arc<FakeHost> {
    async fn connect(&self, _url: &str, _token: Option<&str>) -> std::result::Result<HostStream, ConnectError> {
        if *self.refuse.lock() {
            return Err(ConnectError::Transport("connection refused".into()));
        }
        let (core_tx, mut core_rx) = mpsc::channel::<pb::CoreMessage>(1024);
        let (host_tx, host_rx) = mpsc::channel(1024);
        *self.sessions.lock() += 1;
        let host = Arc::clone(self);
        let task = tokio::spawn(async move {
            let tx = host_tx;
            // Batches run one at a time, in arrival order, like the real host.
            while let Some(msg) = core_rx.recv().await {
                let reply = match msg.body {
                    Some(core_message::Body::TriggerSet(t)) => {
                        host.defined.lock().push(t.trigger.map(|t| t.name).unwrap_or_default());
                        None
                    }
                    Some(core_message::Body::TriggerDrop(t)) => {
                        host.dropped.lock().push(t.name);
                        None
                    }
                    Some(core_message::Body::PreparePlugin(p)) => {
                        Some(host_message::Body::AdminResult(pb::AdminResult {
                            ok: !p.name.starts_with("missing"),
                            error: format!("plugin {} not found", p.name),
                            error_kind: pb::ErrorKind::Invalid as i32,
                            ..Default::default()
                        }))
                    }
                    Some(core_message::Body::WalBatch(b)) => {
                        let outcome = (host.behaviour.lock())(&b);
                        tokio::time::sleep(outcome.delay).await;
                        host.runs.lock().push((b.trigger.clone(), b.wal_seq));
                        Some(host_message::Body::Done(pb::Done {
                            ok: outcome.ok,
                            // As the host's breaker reports it.
                            stopped: outcome.error.starts_with("trigger stopped"),
                            error: outcome.error,
                            writes: outcome.writes,
                            ..Default::default()
                        }))
                    }
                    _ => None,
                };
                if let Some(body) = reply {
                    let _ = tx.send(Ok(pb::HostMessage { id: msg.id, body: Some(body) })).await;
                }
            }
        });
        *self.cut.lock() = Some(task.abort_handle());
        Ok(HostStream { tx: core_tx, inbound: ReceiverStream::new(host_rx).boxed() })
    }
}

// ---- the harness ---------------------------------------------------------------------

struct Harness {
    engine: Arc<Engine>,
    host: Arc<FakeHost>,
    writes: Arc<FakeWrites>,
    catalog: Arc<Catalog>,
    db_id: u32,
}

async fn harness_with(storage: Storage, writes: Arc<FakeWrites>, host: Arc<FakeHost>, max_lag: Option<u64>) -> Harness {
    let catalog = Arc::new(Catalog::load(storage.clone()).await.unwrap());
    let db_id = match catalog.db("plant") {
        Some(db) => db.id,
        None => catalog.create_db("plant").await.unwrap().id,
    };
    let mut config = EngineConfig::new("/nonexistent".into());
    config.host_url = Some("fake://host".into());
    config.plugin_timeout = Duration::from_secs(5);
    config.max_wal_lag_bytes = max_lag;
    let engine = Engine::start(EngineArgs {
        config,
        catalog: Arc::clone(&catalog),
        writes: Arc::clone(&writes) as Arc<dyn WritePath>,
        query: Arc::new(NoQueries),
        storage: storage.clone(),
        time: Arc::new(SystemTime),
        connector: Arc::new(Arc::clone(&host)),
        metrics: Arc::new(Metrics::new()),
    });
    engine.resume().await.unwrap();
    wait_for(|| engine.connected()).await;
    Harness { engine, host, writes, catalog, db_id }
}

async fn harness() -> Harness {
    harness_with(Storage::in_memory(), Arc::new(FakeWrites::default()), FakeHost::new(), None).await
}

/// Poll (in paused time, so it costs nothing) until `f` holds; fail after 10 minutes of
/// virtual time.
async fn wait_for(mut f: impl FnMut() -> bool) {
    for _ in 0..60_000 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("condition not met");
}

impl Harness {
    async fn trigger(&self, name: &str, spec: &str, error_behavior: &str) {
        let def = NewTrigger {
            name: name.into(),
            plugin_filename: "p.py".into(),
            specification: spec.into(),
            error_behavior: Some(error_behavior.into()),
            max_retries: Some(3),
            ..NewTrigger::default()
        }
        .validate()
        .unwrap();
        self.catalog.create_trigger("plant", def).await.unwrap();
    }

    /// Flush one WAL file with rows for `tables` (1 row each, value = seq).
    fn flush(&self, tables: &[&str]) -> u64 {
        let seq = self.writes.last_wal_seq() + 1;
        let rows = Arc::new(FakeRows {
            seq,
            tables: tables.iter().map(|t| (self.db_id, Arc::from(*t), batch(&[seq as i64]))).collect(),
        });
        self.writes.files.lock().insert(seq, Arc::clone(&rows));
        self.engine.delivery.record_flush(seq, FILE_BYTES, rows);
        seq
    }

    fn checkpoint(&self, name: &str) -> Option<u64> {
        self.engine.checkpoints.get(&(self.db_id, Arc::from(name))).map(|c| c.wal_seq)
    }

    fn status(&self, name: &str) -> TriggerStatus {
        let db = self.catalog.db("plant").unwrap();
        self.engine.trigger_status(self.db_id, &db.triggers[name])
    }

    fn logs(&self) -> Vec<String> {
        self.engine.state.log_rows("plant").into_iter().map(|r| format!("{}: {}", r.level, r.text)).collect()
    }
}

// ---- the tests -----------------------------------------------------------------------

#[tokio::test(start_paused = true)]
async fn batches_arrive_in_order_and_the_checkpoint_follows() {
    let h = harness().await;
    h.trigger("hot", "table:temps", "log").await;
    wait_for(|| h.host.defined.lock().contains(&"hot".to_string())).await;
    let mut want = Vec::new();
    for i in 0..50 {
        want.push(h.flush(&["temps"]));
        if i % 7 == 0 {
            h.flush(&["other"]);
        }
    }
    let last = h.writes.last_wal_seq();
    wait_for(|| h.checkpoint("hot") == Some(last)).await;
    assert_eq!(h.host.runs_of("hot"), want);
    assert_eq!(h.status("hot").lag, Some(0));
    assert_eq!(h.status("hot").state, "RUNNING");
}

/// Far more files than the in-memory cache holds, behind a slow plugin: every one arrives,
/// in order, the old ones read back from storage; nothing is skipped.
#[tokio::test(start_paused = true)]
async fn a_backlog_beyond_the_cache_is_read_from_storage_in_order() {
    let h = harness().await;
    h.trigger("slow", "all_tables", "log").await;
    h.host.behave(|_| Outcome { delay: Duration::from_millis(200), ..Outcome::default() });
    let n = CACHE_FILES * 3;
    for _ in 0..n {
        h.flush(&["temps"]);
    }
    wait_for(|| h.checkpoint("slow") == Some(n)).await;
    let runs = h.host.runs_of("slow");
    assert_eq!(runs, (1..=n).collect::<Vec<_>>());
    let reads = h.writes.reads.lock().clone();
    assert!(reads.len() as u64 >= n - CACHE_FILES, "only {} files read from storage", reads.len());
    assert!(!h.logs().iter().any(|l| l.contains("not delivered")), "{:?}", h.logs());
}

#[tokio::test(start_paused = true)]
async fn unanswered_batches_are_sent_again_after_a_reconnect() {
    let h = harness().await;
    h.trigger("hot", "table:temps", "log").await;
    h.host.behave(|_| Outcome { delay: Duration::from_millis(50), ..Outcome::default() });
    for _ in 0..20 {
        h.flush(&["temps"]);
    }
    wait_for(|| h.host.runs_of("hot").len() >= 5).await;
    h.host.cut_session();
    wait_for(|| *h.host.sessions.lock() >= 2).await;
    wait_for(|| h.checkpoint("hot") == Some(20)).await;
    let runs = h.host.runs_of("hot");
    for seq in 1..=20 {
        assert!(runs.contains(&seq), "batch {seq} never ran: {runs:?}");
    }
    // The trigger was defined again on the new session before its batches.
    assert!(h.host.defined.lock().iter().filter(|n| *n == "hot").count() >= 2);
}

/// A write-back the database refuses is the invocation's failure: `retry` runs the batch
/// again and the checkpoint waits; `log` records it and moves on.
#[tokio::test(start_paused = true)]
async fn a_refused_write_back_fails_the_batch() {
    let h = harness().await;
    h.trigger("keep", "table:temps", "retry").await;
    h.host.behave(|b| Outcome {
        writes: vec![pb::DatabaseWrites { database: "plant".into(), lines: vec![format!("out v={}i", b.wal_seq)] }],
        ..Outcome::default()
    });
    *h.writes.refuse_writes.lock() = 2;
    let seq = h.flush(&["temps"]);
    wait_for(|| h.checkpoint("keep") == Some(seq)).await;
    assert_eq!(h.host.runs_of("keep"), vec![seq, seq, seq]);
    assert_eq!(h.writes.written.lock().clone(), vec![("plant".to_string(), format!("out v={seq}i"))]);
    let logs = h.logs();
    assert!(
        logs.iter().any(|l| l.starts_with("ERROR: error writing back lines to plant: wal flush failed")),
        "{logs:?}"
    );
    assert!(logs.iter().any(|l| l.contains("attempt 2 failed; retrying")), "{logs:?}");

    h.trigger("lossy", "table:temps", "log").await;
    *h.writes.refuse_writes.lock() = 2;
    let seq = h.flush(&["temps"]);
    wait_for(|| h.checkpoint("lossy") == Some(seq) && h.checkpoint("keep") == Some(seq)).await;
    assert_eq!(h.host.runs_of("lossy"), vec![seq]);
    assert_eq!(h.status("lossy").failures, 1);
}

#[tokio::test(start_paused = true)]
async fn lag_counts_only_files_with_the_triggers_table() {
    let h = harness().await;
    h.trigger("hot", "table:temps", "log").await;
    // The plugin never answers while we look.
    h.host.behave(|_| Outcome { delay: Duration::from_secs(3600), ..Outcome::default() });
    h.flush(&["temps"]);
    for _ in 0..10 {
        h.flush(&["other"]);
    }
    h.flush(&["temps", "other"]);
    wait_for(|| h.host.defined.lock().contains(&"hot".to_string())).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let s = h.status("hot");
    assert_eq!(s.lag, Some(2), "{s:?}");
    assert_eq!(s.retained_wal_bytes, Some(12 * FILE_BYTES));

    // Caught up, other tables' writes do not count.
    h.host.behave(|_| Outcome::default());
    h.host.cut_session();
    wait_for(|| h.checkpoint("hot") == Some(12)).await;
    for _ in 0..10 {
        h.flush(&["other"]);
    }
    wait_for(|| h.checkpoint("hot") == Some(22)).await;
    assert_eq!(h.status("hot").lag, Some(0));
}

/// Past the maximum lag the trigger is stopped with the reason, stops holding WAL, and
/// only an explicit skip starts it again.
#[tokio::test(start_paused = true)]
async fn the_retention_policy_stops_a_trigger_visibly_and_skip_restarts_it() {
    let h = harness_with(Storage::in_memory(), Arc::new(FakeWrites::default()), FakeHost::new(), Some(10 * FILE_BYTES))
        .await;
    h.trigger("stuck", "table:temps", "log").await;
    h.trigger("fine", "table:other", "log").await;
    h.host.behave(|b| Outcome {
        delay: if b.trigger == "stuck" { Duration::from_secs(3600) } else { Duration::from_millis(1) },
        ..Outcome::default()
    });
    for _ in 0..6 {
        h.flush(&["temps"]);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(h.status("stuck").state, "LAGGING");
    for _ in 0..6 {
        h.flush(&["temps"]);
    }
    wait_for(|| h.status("stuck").state == "STOPPED").await;
    let s = h.status("stuck");
    assert!(s.last_error.as_deref().is_some_and(|e| e.contains("--skip-to-now")), "{s:?}");
    assert_eq!(h.engine.checkpoints.retain_after(), h.checkpoint("fine"));
    assert!(h.logs().iter().any(|l| l.starts_with("ERROR: trigger stopped:")));

    h.host.behave(|_| Outcome::default());
    h.host.cut_session();
    h.engine.skip_trigger_to_now("plant", "stuck").await.unwrap();
    assert_eq!(h.status("stuck").state, "RUNNING");
    let seq = h.flush(&["temps"]);
    wait_for(|| h.checkpoint("stuck") == Some(seq)).await;
    assert!(h.host.runs_of("stuck").contains(&seq));
}

/// A restart resumes every trigger from its durable checkpoint, in order, with the files
/// kept in storage.
#[tokio::test(start_paused = true)]
async fn a_restart_resumes_from_the_checkpoint() {
    let storage = Storage::in_memory();
    let writes = Arc::new(FakeWrites::default());
    let h = harness_with(storage.clone(), Arc::clone(&writes), FakeHost::new(), None).await;
    h.trigger("hot", "table:temps", "log").await;
    for _ in 0..5 {
        h.flush(&["temps"]);
    }
    wait_for(|| h.checkpoint("hot") == Some(5)).await;
    h.engine.shutdown(Duration::from_secs(1)).await;
    // Written while the engine was down (its listener gone).
    for seq in 6..=9 {
        writes
            .files
            .lock()
            .insert(seq, Arc::new(FakeRows { seq, tables: vec![(h.db_id, Arc::from("temps"), batch(&[seq as i64]))] }));
    }
    drop(h);
    let host = FakeHost::new();
    let h2 = harness_with(storage, writes, Arc::clone(&host), None).await;
    wait_for(|| h2.checkpoint("hot") == Some(9)).await;
    assert_eq!(host.runs_of("hot"), vec![6, 7, 8, 9]);
}

#[tokio::test(start_paused = true)]
async fn every_trigger_change_reaches_the_host_and_missing_plugins_are_refused() {
    let h = harness().await;
    h.trigger("a", "table:temps", "log").await;
    h.catalog.set_trigger_disabled("plant", "a", true).await.unwrap();
    h.catalog.set_trigger_disabled("plant", "a", false).await.unwrap();
    h.catalog.delete_trigger("plant", "a", true).await.unwrap();
    wait_for(|| h.host.dropped.lock().len() == 2).await;
    assert_eq!(h.host.defined.lock().iter().filter(|n| *n == "a").count(), 2);
    assert_eq!(h.checkpoint("a"), None);
    let e = h.engine.prepare_plugin("missing.py").await.unwrap_err();
    assert!(matches!(e, EngineError::Host { kind: HostErrorKind::Invalid, .. }), "{e:?}");
}

/// The host's crash-loop breaker stopping a WAL trigger does not consume its input: the
/// batch stays undone (the WAL kept), nothing more is sent, the trigger shows STOPPED, and
/// disabling and enabling it starts it again from new data.
#[tokio::test(start_paused = true)]
async fn a_breaker_stop_keeps_the_wal_trigger_input() {
    let h = harness().await;
    h.trigger("crashy", "table:temps", "log").await;
    h.host.behave(|b| {
        if b.wal_seq >= 2 {
            Outcome {
                ok: false,
                error: "trigger stopped: its worker failed 5 times in a row".into(),
                ..Outcome::default()
            }
        } else {
            Outcome::default()
        }
    });
    // The fake marks a failure as a breaker stop through the error text below.
    for _ in 0..5 {
        h.flush(&["temps"]);
    }
    wait_for(|| h.checkpoint("crashy") == Some(1)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.checkpoint("crashy"), Some(1), "the stopped batch must not be checkpointed");
    assert_eq!(h.status("crashy").state, "STOPPED");
    // Batches already in the window were answered as stopped too; nothing new goes out.
    let sent = h.host.runs_of("crashy").len();
    h.flush(&["temps"]);
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(h.host.runs_of("crashy").len(), sent, "nothing is sent after the breaker stop");
    assert_eq!(h.engine.checkpoints.retain_after(), Some(1), "its WAL is kept");
    h.catalog.set_trigger_disabled("plant", "crashy", true).await.unwrap();
    h.catalog.set_trigger_disabled("plant", "crashy", false).await.unwrap();
    assert_eq!(h.status("crashy").state, "RUNNING");
    h.host.behave(|_| Outcome::default());
    let seq = h.flush(&["temps"]);
    wait_for(|| h.checkpoint("crashy") == Some(seq)).await;
}

/// `--skip-to-now` is refused for other than WAL triggers before anything changes.
#[tokio::test(start_paused = true)]
async fn skip_to_now_is_only_for_wal_triggers() {
    let h = harness().await;
    h.trigger("tick", "every:1h", "log").await;
    h.trigger("hot", "table:temps", "log").await;
    let e = h.engine.check_skip_to_now("plant", "tick").unwrap_err();
    assert!(e.to_string().contains("applies to WAL triggers"), "{e}");
    h.engine.check_skip_to_now("plant", "hot").unwrap();
}
