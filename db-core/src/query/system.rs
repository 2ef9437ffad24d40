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
    catalog::{Catalog, DatabaseSchema, TriggerDef},
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

/// What the processing engine shows in the system tables (implemented by the engine; the
/// tables are empty when the server runs without one).
#[async_trait]
pub trait EngineView: Send + Sync + std::fmt::Debug {
    /// `system.processing_engine_logs` rows of `database`, oldest first.
    fn log_rows(&self, database: &str) -> Vec<EngineLogRow>;
    /// The live status of a trigger of database `db_id`.
    fn trigger_status(&self, db_id: u32, trigger: &TriggerDef) -> TriggerStatus;
    /// The files of the plugin directory (asked of the plugin host).
    async fn plugin_files(&self) -> Result<Vec<PluginFileRow>, String>;
}

/// One row of `system.processing_engine_logs`.
#[derive(Debug, Clone)]
pub struct EngineLogRow {
    /// ns since the epoch.
    pub event_time: i64,
    /// Trigger name (empty for engine-wide lines).
    pub trigger: String,
    /// `INFO`, `WARN` or `ERROR`.
    pub level: &'static str,
    /// The text.
    pub text: String,
}

/// The live columns of `system.processing_engine_triggers`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerStatus {
    /// `RUNNING`, `LAGGING`, `STOPPED` or `DISABLED`.
    pub state: &'static str,
    /// The latest failure (with its traceback), or why the trigger is stopped.
    pub last_error: Option<String>,
    /// When it happened, ns since the epoch.
    pub last_error_at: Option<i64>,
    /// Tries of the latest input.
    pub attempts: u64,
    /// Invocations that finished.
    pub runs: u64,
    /// Failed invocations.
    pub failures: u64,
    /// Schedule ticks without a run of their own.
    pub missed_ticks: u64,
    /// WAL triggers: the last WAL file the plugin finished.
    pub checkpoint: Option<u64>,
    /// WAL triggers: WAL files after the checkpoint with rows for the trigger.
    pub lag: Option<u64>,
    /// WAL triggers: bytes of the WAL files kept for the trigger.
    pub retained_wal_bytes: Option<u64>,
}

/// Where the system tables find the engine: set once the engine has started.
#[derive(Debug, Default)]
pub struct EngineSlot(parking_lot::RwLock<Option<std::sync::Weak<dyn EngineView>>>);

impl EngineSlot {
    /// Point at the running engine.
    pub fn set(&self, engine: std::sync::Weak<dyn EngineView>) {
        *self.0.write() = Some(engine);
    }

    fn get(&self) -> Option<Arc<dyn EngineView>> {
        self.0.read().as_ref().and_then(std::sync::Weak::upgrade)
    }
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
    engine: Arc<EngineSlot>,
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
        let batch = plugin_files_batch(self.engine.get()).await?;
        MemTable::try_new(batch.schema(), vec![vec![batch]])?.scan(state, projection, filters, limit).await
    }
}

async fn plugin_files_batch(engine: Option<Arc<dyn EngineView>>) -> DfResult<RecordBatch> {
    let rows = match engine {
        Some(e) => e
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

fn engine_logs_batch(rows: &[EngineLogRow]) -> DfResult<RecordBatch> {
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
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.level))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.text.as_str()))),
        ],
    )?)
}

/// The `system` schema of one query's database.
#[derive(Debug)]
pub struct SystemSchema {
    catalog: Arc<Catalog>,
    buffer: Arc<WriteBuffer>,
    db: Arc<DatabaseSchema>,
    log: Arc<QueryLog>,
    engine: Arc<EngineSlot>,
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
        engine: Arc<EngineSlot>,
    ) -> Self {
        Self { catalog, buffer, db, log, engine }
    }

    fn triggers(&self) -> DfResult<RecordBatch> {
        let t: Vec<_> = self.db.triggers.values().collect();
        let engine = self.engine.get();
        let states: Vec<TriggerStatus> = t
            .iter()
            .map(|t| match &engine {
                Some(e) => e.trigger_status(self.db.id, t),
                None => TriggerStatus { state: if t.disabled { "DISABLED" } else { "STOPPED" }, ..Default::default() },
            })
            .collect();
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
            Field::new("retained_wal_bytes", DataType::UInt64, true),
        ]));
        Ok(RecordBatch::try_new(
            schema,
            vec![
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.name.as_ref()))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.plugin_filename.as_str()))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.specification.to_string()))),
                Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.disabled)))),
                Arc::new(StringArray::from_iter_values(t.iter().map(|t| t.error_behavior.as_str()))),
                Arc::new(BooleanArray::from_iter(t.iter().map(|t| Some(t.run_async)))),
                Arc::new(StringArray::from_iter_values(states.iter().map(|s| s.state))),
                Arc::new(StringArray::from_iter(states.iter().map(|s| s.last_error.as_deref()))),
                Arc::new(TimestampNanosecondArray::from_iter(states.iter().map(|s| s.last_error_at))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.attempts))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.runs))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.failures))),
                Arc::new(UInt64Array::from_iter_values(states.iter().map(|s| s.missed_ticks))),
                Arc::new(UInt64Array::from_iter(states.iter().map(|s| s.checkpoint))),
                Arc::new(UInt64Array::from_iter(states.iter().map(|s| s.lag))),
                Arc::new(UInt64Array::from_iter(states.iter().map(|s| s.retained_wal_bytes))),
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
            "processing_engine_logs" => {
                engine_logs_batch(&self.engine.get().map(|e| e.log_rows(&self.db.name)).unwrap_or_default())?
            }
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
            return Ok(Some(Arc::new(PluginFilesTable { engine: Arc::clone(&self.engine) })));
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
