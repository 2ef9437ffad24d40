//! The `system` schema: server state as tables.
//!
//! | table | rows |
//! |---|---|
//! | `system.queries` | recent queries (newest 1,000): text, database, timing, outcome |
//! | `system.databases` | every live database |
//! | `system.tables` | tables of the current database |
//! | `system.parquet_files` | Parquet files of the current database |
//! | `system.processing_engine_triggers` | triggers of the current database |
//! | `system.processing_engine_trigger_arguments` | their arguments, one row per key |
//! | `system.processing_engine_logs` | plugin and engine log lines (newest 10,000 per server) |
//! | `system.plugin_files` | files of the plugin directory (asked of the plugin host) |
//!
//! Tables are materialised when a query names them; they are small by construction.

use std::{
    collections::VecDeque,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arrow::{
    array::{ArrayRef, BooleanArray, Int64Array, StringArray, TimestampNanosecondArray, UInt32Array, UInt64Array},
    datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit},
    record_batch::RecordBatch,
};
use async_trait::async_trait;
use datafusion::{
    catalog::SchemaProvider,
    datasource::{MemTable, TableProvider},
    error::Result as DfResult,
};
use parking_lot::Mutex;

use crate::{
    catalog::{Catalog, DatabaseSchema},
    time::{SystemTime, TimeProvider},
    write_buffer::WriteBuffer,
};

/// How many finished queries `system.queries` keeps.
pub const QUERY_LOG_SIZE: usize = 1_000;

#[derive(Debug, Clone)]
struct QueryEntry {
    id: u64,
    database: String,
    query_type: &'static str,
    text: String,
    issue_time: i64,
    duration: Option<Duration>,
    success: bool,
    running: bool,
}

/// The recent-query log.
#[derive(Debug, Default)]
pub struct QueryLog {
    next: AtomicU64,
    entries: Mutex<VecDeque<QueryEntry>>,
}

impl QueryLog {
    /// Record a query start; returns its id.
    pub fn start(&self, database: &str, query_type: &'static str, text: &str) -> u64 {
        let id = self.next.fetch_add(1, Ordering::Relaxed) + 1;
        let mut e = self.entries.lock();
        if e.len() >= QUERY_LOG_SIZE {
            e.pop_front();
        }
        e.push_back(QueryEntry {
            id,
            database: database.to_string(),
            query_type,
            text: text.to_string(),
            issue_time: SystemTime.now_ns(),
            duration: None,
            success: false,
            running: true,
        });
        id
    }

    /// Record a query's end.
    pub fn finish(&self, id: u64, duration: Duration, success: bool) {
        let mut e = self.entries.lock();
        if let Some(q) = e.iter_mut().rev().find(|q| q.id == id) {
            q.duration = Some(duration);
            q.success = success;
            q.running = false;
        }
    }

    fn batch(&self) -> DfResult<RecordBatch> {
        let e: Vec<QueryEntry> = self.entries.lock().iter().cloned().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt64, false),
            Field::new("database", DataType::Utf8, false),
            Field::new("query_type", DataType::Utf8, false),
            Field::new("query_text", DataType::Utf8, false),
            Field::new("issue_time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("end2end_duration_ms", DataType::Float64, true),
            Field::new("success", DataType::Boolean, false),
            Field::new("running", DataType::Boolean, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt64Array::from_iter_values(e.iter().map(|q| q.id))),
            Arc::new(StringArray::from_iter_values(e.iter().map(|q| q.database.as_str()))),
            Arc::new(StringArray::from_iter_values(e.iter().map(|q| q.query_type))),
            Arc::new(StringArray::from_iter_values(e.iter().map(|q| q.text.as_str()))),
            Arc::new(TimestampNanosecondArray::from_iter_values(e.iter().map(|q| q.issue_time))),
            Arc::new(arrow::array::Float64Array::from_iter(
                e.iter().map(|q| q.duration.map(|d| d.as_secs_f64() * 1e3)),
            )),
            Arc::new(BooleanArray::from_iter(e.iter().map(|q| Some(q.success)))),
            Arc::new(BooleanArray::from_iter(e.iter().map(|q| Some(q.running)))),
        ];
        Ok(RecordBatch::try_new(schema, cols)?)
    }
}

/// How many processing-engine log lines are kept (all databases together).
pub const ENGINE_LOG_SIZE: usize = 10_000;

/// Log levels of `system.processing_engine_logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    /// INFO
    Info,
    /// WARN
    Warn,
    /// ERROR
    Error,
}

impl LogLevel {
    /// As the table spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

#[derive(Debug, Clone)]
struct EngineLogRow {
    database: Arc<str>,
    event_time: i64,
    trigger: String,
    level: LogLevel,
    text: String,
}

/// What the engine knows about one enabled trigger beyond its definition (the extra
/// columns of `system.processing_engine_triggers`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerState {
    /// The latest failure, with its traceback.
    pub last_error: Option<String>,
    /// When it happened, ns since the epoch.
    pub last_error_at: Option<i64>,
    /// Tries of the latest input (1: it ran once; more under `retry`).
    pub attempts: u64,
    /// Invocations that finished, and how many of them failed.
    pub runs: u64,
    /// Failed invocations.
    pub failures: u64,
    /// Schedule ticks that got no run of their own (coalesced into a catch-up run).
    pub missed_ticks: u64,
    /// WAL triggers: the last WAL file the plugin finished.
    pub checkpoint: Option<u64>,
    /// Why the trigger is stopped although enabled (its worker crash-looped).
    pub stopped: Option<String>,
}

/// Plugin and engine log lines behind `system.processing_engine_logs`, and the live
/// trigger states behind `system.processing_engine_triggers`.
#[derive(Debug, Default)]
pub struct EngineLog {
    rows: Mutex<VecDeque<EngineLogRow>>,
    states: Mutex<std::collections::HashMap<(u32, Arc<str>), TriggerState>>,
    /// Whether the engine has a session with the plugin host (enabled triggers are STOPPED
    /// without one).
    connected: std::sync::atomic::AtomicBool,
    /// Where `system.plugin_files` comes from (the engine, asking the plugin host).
    plugin_files: Mutex<Option<std::sync::Weak<dyn PluginFiles>>>,
}

/// One row of `system.plugin_files`.
#[derive(Debug, Clone, Default)]
pub struct PluginFileRow {
    /// The plugin (top-level file or package directory).
    pub plugin_name: String,
    /// The file, relative to the plugin.
    pub file_name: String,
    /// Absolute path on the plugin host.
    pub file_path: String,
    /// Size.
    pub size_bytes: u64,
    /// Modification time, ms since the epoch.
    pub last_modified_ms: i64,
}

fn plugin_files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("plugin_name", DataType::Utf8, false),
        Field::new("file_name", DataType::Utf8, false),
        Field::new("file_path", DataType::Utf8, false),
        Field::new("size_bytes", DataType::Int64, false),
        Field::new("last_modified", DataType::Int64, false),
    ]))
}

/// `system.plugin_files`: the schema is fixed; the rows are asked of the plugin host only
/// when the table is scanned (so `information_schema` never waits for, or fails on, it).
#[derive(Debug)]
struct PluginFilesTable {
    log: Arc<EngineLog>,
}

#[async_trait]
impl TableProvider for PluginFilesTable {
    fn schema(&self) -> SchemaRef {
        plugin_files_schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> DfResult<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        let batch = self.log.plugin_files_batch().await?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

/// A source of plugin files (the engine).
#[async_trait]
pub trait PluginFiles: Send + Sync + std::fmt::Debug {
    /// The files of the plugin directory.
    async fn plugin_files(&self) -> Result<Vec<PluginFileRow>, String>;
}

impl EngineLog {
    /// Change a trigger's state (created as default when new).
    pub fn update_state(&self, db_id: u32, trigger: &Arc<str>, f: impl FnOnce(&mut TriggerState)) {
        f(self.states.lock().entry((db_id, Arc::clone(trigger))).or_default());
    }

    /// A trigger's state, if it has one.
    pub fn state(&self, db_id: u32, trigger: &str) -> Option<TriggerState> {
        self.states.lock().get(&(db_id, Arc::from(trigger))).cloned()
    }

    /// Forget a trigger's state (deleted, disabled, or enabled again from scratch).
    pub fn clear_state(&self, db_id: u32, trigger: &str) {
        self.states.lock().remove(&(db_id, Arc::from(trigger)));
    }

    /// Register where `system.plugin_files` comes from.
    pub fn set_plugin_files(&self, source: std::sync::Weak<dyn PluginFiles>) {
        *self.plugin_files.lock() = Some(source);
    }

    async fn plugin_files_batch(&self) -> DfResult<RecordBatch> {
        let source = self.plugin_files.lock().as_ref().and_then(std::sync::Weak::upgrade);
        let rows = match source {
            Some(s) => s
                .plugin_files()
                .await
                .map_err(|e| datafusion::error::DataFusionError::Execution(format!("system.plugin_files: {e}")))?,
            None => Vec::new(),
        };
        Ok(RecordBatch::try_new(
            plugin_files_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.plugin_name.as_str()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.file_name.as_str()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.file_path.as_str()))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.size_bytes as i64))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.last_modified_ms))),
            ],
        )?)
    }

    /// Record whether the plugin host is connected.
    pub fn set_connected(&self, connected: bool) {
        self.connected.store(connected, Ordering::Relaxed);
    }

    /// Whether the plugin host is connected.
    pub fn connected(&self) -> bool {
        self.connected.load(Ordering::Relaxed)
    }

    /// Record a line (also sent to the server log).
    pub fn push(&self, database: &str, trigger: &str, level: LogLevel, text: String, event_time: i64) {
        match level {
            LogLevel::Error => tracing::warn!(database, trigger, "{text}"),
            _ => tracing::info!(database, trigger, "{text}"),
        }
        let mut rows = self.rows.lock();
        if rows.len() >= ENGINE_LOG_SIZE {
            rows.pop_front();
        }
        rows.push_back(EngineLogRow {
            database: Arc::from(database),
            event_time,
            trigger: trigger.to_string(),
            level,
            text,
        });
    }

    fn batch(&self, database: &str) -> DfResult<RecordBatch> {
        let rows: Vec<EngineLogRow> =
            self.rows.lock().iter().filter(|r| r.database.as_ref() == database).cloned().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("event_time", DataType::Timestamp(TimeUnit::Nanosecond, None), false),
            Field::new("trigger_name", DataType::Utf8, false),
            Field::new("log_level", DataType::Utf8, false),
            Field::new("log_text", DataType::Utf8, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(TimestampNanosecondArray::from_iter_values(rows.iter().map(|r| r.event_time))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.trigger.as_str()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.level.as_str()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.text.as_str()))),
            ],
        )?)
    }
}

/// The `system` schema of one query's database.
#[derive(Debug)]
pub struct SystemSchema {
    catalog: Arc<Catalog>,
    buffer: Arc<WriteBuffer>,
    db: Arc<DatabaseSchema>,
    log: Arc<QueryLog>,
    engine_log: Arc<EngineLog>,
}

const TABLES: &[&str] = &[
    "databases",
    "parquet_files",
    "plugin_files",
    "processing_engine_logs",
    "processing_engine_trigger_arguments",
    "processing_engine_triggers",
    "queries",
    "tables",
];

impl SystemSchema {
    /// The system tables as seen from `db`.
    pub fn new(
        catalog: Arc<Catalog>,
        buffer: Arc<WriteBuffer>,
        db: Arc<DatabaseSchema>,
        log: Arc<QueryLog>,
        engine_log: Arc<EngineLog>,
    ) -> Self {
        Self { catalog, buffer, db, log, engine_log }
    }

    fn triggers(&self) -> DfResult<RecordBatch> {
        let t: Vec<_> = self.db.triggers.values().collect();
        let states: Vec<TriggerState> =
            t.iter().map(|t| self.engine_log.state(self.db.id, &t.name).unwrap_or_default()).collect();
        let connected = self.engine_log.connected();
        let last_wal = self.buffer.last_wal_seq();
        let state = |t: &crate::catalog::TriggerDef, s: &TriggerState| match () {
            _ if t.disabled => "DISABLED",
            _ if s.stopped.is_some() || !connected => "STOPPED",
            _ => "RUNNING",
        };
        let schema = Arc::new(Schema::new(vec![
            Field::new("trigger_name", DataType::Utf8, false),
            Field::new("plugin_filename", DataType::Utf8, false),
            Field::new("trigger_specification", DataType::Utf8, false),
            Field::new("disabled", DataType::Boolean, false),
            Field::new("error_behavior", DataType::Utf8, false),
            Field::new("run_async", DataType::Boolean, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("last_error", DataType::Utf8, true),
            Field::new("last_error_at", DataType::Timestamp(TimeUnit::Nanosecond, None), true),
            Field::new("attempts", DataType::UInt64, false),
            Field::new("runs", DataType::UInt64, false),
            Field::new("failures", DataType::UInt64, false),
            Field::new("missed_ticks", DataType::UInt64, false),
            Field::new("checkpoint", DataType::UInt64, true),
            Field::new("lag", DataType::UInt64, true),
        ]));
        let checkpoint = |t: &crate::catalog::TriggerDef, s: &TriggerState| {
            s.checkpoint.filter(|_| t.spec().is_wal() && !t.disabled)
        };
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.name.as_ref()))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.plugin_filename.as_str()))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.specification.as_str()))),
                Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.disabled)))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.error_behavior.as_str()))),
                Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.run_async)))),
                Arc::new(StringArray::from_iter_values(t.iter().zip(&states).map(|(t, s)| state(t, s)))),
                Arc::new(StringArray::from_iter(
                    states.iter().map(|s| s.stopped.as_deref().or(s.last_error.as_deref())),
                )),
                Arc::new(TimestampNanosecondArray::from_iter(states.iter().map(|s| s.last_error_at))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.attempts))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.runs))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.failures))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.missed_ticks))),
                Arc::new(UInt64Array::from_iter(t.iter().zip(&states).map(|(t, s)| checkpoint(t, s)))),
                // WAL files flushed since the checkpoint.
                Arc::new(UInt64Array::from_iter(
                    t.iter().zip(&states).map(|(t, s)| checkpoint(t, s).map(|cp| last_wal.saturating_sub(cp))),
                )),
            ],
        )?)
    }

    fn trigger_arguments(&self) -> DfResult<RecordBatch> {
        let rows: Vec<(&str, &str, &str)> = self
            .db
            .triggers
            .values()
            .flat_map(|t| t.arguments.iter().flatten().map(move |(k, v)| (t.name.as_ref(), k.as_str(), v.as_str())))
            .collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("trigger_name", DataType::Utf8, false),
            Field::new("argument_key", DataType::Utf8, false),
            Field::new("argument_value", DataType::Utf8, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
            ],
        )?)
    }

    fn databases(&self) -> DfResult<RecordBatch> {
        let dbs = self.catalog.databases();
        let schema = Arc::new(Schema::new(vec![
            Field::new("database_name", DataType::Utf8, false),
            Field::new("database_id", DataType::UInt32, false),
            Field::new("table_count", DataType::UInt64, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(dbs.iter().map(|d| d.name.as_ref()))),
                Arc::new(UInt32Array::from_iter_values(dbs.iter().map(|d| d.id))),
                Arc::new(UInt64Array::from_iter_values(dbs.iter().map(|d| d.tables.len() as u64))),
            ],
        )?)
    }

    fn tables(&self) -> DfResult<RecordBatch> {
        let tables: Vec<_> = self.db.tables.values().collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("database_name", DataType::Utf8, false),
            Field::new("table_name", DataType::Utf8, false),
            Field::new("table_id", DataType::UInt32, false),
            Field::new("column_count", DataType::UInt64, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(tables.iter().map(|_| self.db.name.as_ref()))),
                Arc::new(StringArray::from_iter_values(tables.iter().map(|t| t.name.as_ref()))),
                Arc::new(UInt32Array::from_iter_values(tables.iter().map(|t| t.id))),
                Arc::new(UInt64Array::from_iter_values(tables.iter().map(|t| t.columns.len() as u64))),
            ],
        )?)
    }

    fn parquet_files(&self) -> DfResult<RecordBatch> {
        let files: Vec<_> = self.buffer.parquet_files().into_iter().filter(|f| f.db_id == self.db.id).collect();
        let table_name = |id: u32| self.db.table_by_id(id).map(|t| t.name.to_string()).unwrap_or_default();
        let schema = Arc::new(Schema::new(vec![
            Field::new("table_name", DataType::Utf8, false),
            Field::new("path", DataType::Utf8, false),
            Field::new("size_bytes", DataType::Int64, false),
            Field::new("row_count", DataType::Int64, false),
            Field::new("min_time", DataType::Int64, false),
            Field::new("max_time", DataType::Int64, false),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(files.iter().map(|f| table_name(f.table_id)))),
                Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.path.as_str()))),
                Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.size_bytes as i64))),
                Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.row_count as i64))),
                Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.min_time))),
                Arc::new(Int64Array::from_iter_values(files.iter().map(|f| f.max_time))),
            ],
        )?)
    }

    fn build(&self, name: &str) -> DfResult<Option<RecordBatch>> {
        Ok(Some(match name {
            "databases" => self.databases()?,
            "tables" => self.tables()?,
            "parquet_files" => self.parquet_files()?,
            "queries" => self.log.batch()?,
            "processing_engine_triggers" => self.triggers()?,
            "processing_engine_trigger_arguments" => self.trigger_arguments()?,
            "processing_engine_logs" => self.engine_log.batch(&self.db.name)?,
            _ => return Ok(None),
        }))
    }
}

#[async_trait]
impl SchemaProvider for SystemSchema {
    fn table_names(&self) -> Vec<String> {
        TABLES.iter().map(|s| s.to_string()).collect()
    }

    async fn table(&self, name: &str) -> DfResult<Option<Arc<dyn TableProvider>>> {
        if name == "plugin_files" {
            return Ok(Some(Arc::new(PluginFilesTable { log: Arc::clone(&self.engine_log) })));
        }
        let Some(batch) = self.build(name)? else {
            return Ok(None);
        };
        let schema: SchemaRef = batch.schema();
        Ok(Some(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?)))
    }

    fn table_exist(&self, name: &str) -> bool {
        TABLES.contains(&name)
    }
}
