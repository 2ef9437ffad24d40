//! SQL over the write buffer and Parquet files, with DataFusion.
//!
//! Each query gets a session whose default catalog is `public` with two schemas: `iox`
//! (the database's tables, as InfluxDB 3 names it) and `system` (server state: queries,
//! databases, tables, Parquet files). `information_schema` and `SHOW TABLES` come from
//! DataFusion. `$name` placeholders are bound from string parameters; comparisons such as
//! `time >= $start` coerce the string to the column's type.

pub mod dedup;
pub mod format;
pub mod provider;
pub mod runtime;
pub mod system;

#[cfg(test)]
mod tests;

use std::{
    borrow::Cow,
    collections::HashMap,
    fmt,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Instant,
};

use arrow::{
    datatypes::{DataType, Field, SchemaRef},
    record_batch::RecordBatch,
};
use async_trait::async_trait;
use datafusion::{
    catalog::{
        CatalogProvider, SchemaProvider,
        information_schema::{INFORMATION_SCHEMA, INFORMATION_SCHEMA_TABLES},
    },
    common::{ParamValues, ScalarValue, TableReference},
    dataframe::DataFrame,
    datasource::{TableProvider, TableType},
    error::DataFusionError,
    execution::{
        SendableRecordBatchStream, SessionStateBuilder, context::SessionState, runtime_env::RuntimeEnvBuilder,
    },
    logical_expr::LogicalPlan,
    physical_plan::RecordBatchStream,
    prelude::{SQLOptions, SessionConfig, SessionContext},
};
use futures::Stream;

use self::{
    provider::WeirTable,
    system::{EngineSlot, QueryLog, SystemSchema},
};
use crate::{
    catalog::{Catalog, DatabaseSchema},
    telemetry::Metrics,
    write_buffer::WriteBuffer,
};

/// Catalog name user tables live under (InfluxDB 3 compatible).
pub const CATALOG_NAME: &str = "public";
/// Schema of user tables (InfluxDB 3 compatible).
pub const USER_SCHEMA: &str = "iox";
/// Schema of system tables.
pub const SYSTEM_SCHEMA: &str = "system";

/// The database name InfluxDB 3 users query engine logs from
/// (`SELECT * FROM system.processing_engine_logs` with `db=_internal`): when no real
/// database has that name, it is an empty database whose `system.processing_engine_logs`
/// holds every database's rows.
pub const INTERNAL_DB: &str = "_internal";

/// Query errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The database does not exist.
    #[error("database not found: {0}")]
    DbNotFound(String),
    /// The query is invalid (parse, plan, types).
    #[error("{0}")]
    Invalid(DataFusionError),
    /// A `$name` placeholder has no value.
    #[error("no value for query parameter {0}")]
    MissingParam(String),
    /// Execution failed.
    #[error("query execution failed: {0}")]
    Execution(DataFusionError),
    /// The query ran longer than `--query-timeout` and was cancelled.
    #[error("query cancelled: it ran longer than --query-timeout ({})", humantime::format_duration(*.0))]
    Timeout(std::time::Duration),
    /// The query needed more memory than `--query-memory-limit` allows (DataFusion's
    /// account of the allocation that failed, with the limit).
    #[error("query cancelled: {0}")]
    MemoryLimit(String),
}

/// The error item a query stream ends with when `--query-timeout` passes (a DataFusion
/// error, so it travels in the stream; [`Error::from`] turns it back into [`Error::Timeout`]).
#[derive(Debug, thiserror::Error)]
#[error("query cancelled: it ran longer than --query-timeout ({})", humantime::format_duration(*.0))]
pub struct QueryTimeout(pub std::time::Duration);

/// Limits every query runs under.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueryLimits {
    /// Longest a query may run, planning and execution (`None`: no limit).
    pub timeout: Option<std::time::Duration>,
    /// Most memory one query's operators may hold (`None`: no limit); sorts, joins and
    /// aggregations spill to disk where DataFusion can, others fail with
    /// [`Error::MemoryLimit`].
    pub memory: Option<usize>,
}

impl From<DataFusionError> for Error {
    fn from(e: DataFusionError) -> Self {
        match e {
            DataFusionError::SQL(..)
            | DataFusionError::Plan(_)
            | DataFusionError::SchemaError(..)
            | DataFusionError::NotImplemented(_)
            | DataFusionError::Configuration(_) => Self::Invalid(e),
            DataFusionError::Context(ctx, inner) => match Self::from(*inner) {
                Self::Invalid(i) => Self::Invalid(DataFusionError::Context(ctx, Box::new(i))),
                Self::Execution(i) => Self::Execution(DataFusionError::Context(ctx, Box::new(i))),
                other => other,
            },
            DataFusionError::Diagnostic(_, inner) => Self::from(*inner),
            DataFusionError::External(ref inner) if inner.downcast_ref::<QueryTimeout>().is_some() => {
                Self::Timeout(inner.downcast_ref::<QueryTimeout>().map(|t| t.0).unwrap_or_default())
            }
            DataFusionError::ResourcesExhausted(message) => Self::MemoryLimit(message),
            // A value that does not parse or cast (a bound parameter, a literal) is the
            // query's fault.
            DataFusionError::ArrowError(ref a, _)
                if matches!(
                    **a,
                    arrow::error::ArrowError::CastError(_)
                        | arrow::error::ArrowError::ParseError(_)
                        | arrow::error::ArrowError::InvalidArgumentError(_)
                ) =>
            {
                Self::Invalid(e)
            }
            other => Self::Execution(other),
        }
    }
}

impl Error {
    /// Classify a DataFusion error as the query's fault, whatever its kind (parameter
    /// binding).
    fn invalid(e: DataFusionError) -> Self {
        match Self::from(e) {
            Self::Execution(e) => Self::Invalid(e),
            other => other,
        }
    }
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Values for a query's placeholders.
#[derive(Debug, Clone)]
pub enum QueryParams {
    /// `$name` placeholders bound from strings (HTTP `params`, `weir query --param`).
    /// Comparisons coerce the string to the other side's type.
    Named(HashMap<String, String>),
    /// `$1`, `$2`, ... (or `?`, numbered left to right) bound by position, with their own
    /// types (Flight SQL prepared statements).
    Positional(Vec<ScalarValue>),
}

impl QueryParams {
    /// Named parameters from a JSON object (HTTP `params`, the InfluxDB Flight ticket):
    /// strings, numbers and booleans are accepted and bound as their text.
    pub fn from_json(params: impl IntoIterator<Item = (String, serde_json::Value)>) -> Result<Self, String> {
        let mut out = HashMap::new();
        for (k, v) in params {
            let s = match v {
                serde_json::Value::String(s) => s,
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::Bool(b) => b.to_string(),
                other => {
                    return Err(format!("parameter {k:?} must be a string, number or boolean, got {other}"));
                }
            };
            out.insert(k, s);
        }
        Ok(Self::Named(out))
    }
}

impl Default for QueryParams {
    fn default() -> Self {
        Self::Named(HashMap::new())
    }
}

/// What a query returns and which parameters it takes, found by planning it.
#[derive(Debug, Clone)]
pub struct QueryShape {
    /// Schema of the answer.
    pub schema: SchemaRef,
    /// One field per placeholder (`$1`, `$2`, ... in order, then named ones by name); the
    /// type is `Null` where planning could not infer it.
    pub params: Vec<Field>,
}

/// A table visible to a database's queries, for catalog listings (Flight SQL `GetTables`).
#[derive(Debug, Clone)]
pub struct TableListing {
    /// Catalog name (`public`).
    pub catalog: String,
    /// Schema name (`iox`, `system`, `information_schema`).
    pub schema: String,
    /// Table name.
    pub name: String,
    /// `BASE TABLE`, `VIEW` or `LOCAL TEMPORARY`.
    pub table_type: &'static str,
    /// Arrow schema of the table.
    pub arrow_schema: SchemaRef,
}

/// The query seam used by the servers (HTTP, gRPC admin, Flight).
#[async_trait]
pub trait QueryExecutor: Send + Sync + fmt::Debug {
    /// Plan and start a SQL query against `db`; the stream yields the answer.
    async fn query_sql(&self, db: &str, sql: &str, params: QueryParams) -> Result<SendableRecordBatchStream>;

    /// Plan `sql` without running it: the answer's schema and the placeholders.
    async fn describe(&self, db: &str, sql: &str) -> Result<QueryShape>;

    /// Every table `db`'s queries can see, in catalog order.
    async fn list_tables(&self, db: &str) -> Result<Vec<TableListing>>;
}

/// Arguments of [`SqlExecutor::new`].
#[derive(Debug, Clone)]
pub struct SqlExecutorArgs {
    /// Catalog.
    pub catalog: Arc<Catalog>,
    /// Write buffer.
    pub buffer: Arc<WriteBuffer>,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Object store (registered with DataFusion for Parquet scans).
    pub object_store: Arc<dyn object_store::ObjectStore>,
    /// Where DataFusion work runs.
    pub runtime: runtime::QueryRuntime,
    /// Time and memory limits of every query.
    pub limits: QueryLimits,
}

/// The DataFusion-backed executor.
pub struct SqlExecutor {
    catalog: Arc<Catalog>,
    buffer: Arc<WriteBuffer>,
    metrics: Arc<Metrics>,
    state: SessionState,
    log: Arc<QueryLog>,
    engine: Arc<EngineSlot>,
    runtime: runtime::QueryRuntime,
    limits: QueryLimits,
}

impl fmt::Debug for SqlExecutor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqlExecutor").finish_non_exhaustive()
    }
}

impl SqlExecutor {
    /// Build the executor (one session template shared by all queries).
    pub fn new(args: SqlExecutorArgs) -> Result<Self> {
        let config = SessionConfig::new()
            .with_information_schema(true)
            .with_default_catalog_and_schema(CATALOG_NAME, USER_SCHEMA)
            .with_create_default_catalog_and_schema(false);
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        let url = datafusion::execution::object_store::ObjectStoreUrl::parse(provider::STORE_URL)?;
        runtime.register_object_store(url.as_ref(), args.object_store);
        let state =
            SessionStateBuilder::new().with_config(config).with_runtime_env(runtime).with_default_features().build();
        Ok(Self {
            catalog: args.catalog,
            buffer: args.buffer,
            metrics: args.metrics,
            state,
            log: Arc::new(QueryLog::default()),
            engine: Arc::new(EngineSlot::default()),
            runtime: args.runtime,
            limits: args.limits,
        })
    }

    /// The query log behind `system.queries`.
    pub fn query_log(&self) -> &Arc<QueryLog> {
        &self.log
    }

    /// Where the `system.processing_engine_*` and `system.plugin_files` tables find the
    /// processing engine (set once it has started).
    pub fn engine_slot(&self) -> &Arc<EngineSlot> {
        &self.engine
    }

    fn context(&self, db: Arc<DatabaseSchema>) -> SessionContext {
        let state = match self.limits.memory {
            // Each query its own pool: one query cannot take what the limit gives another.
            Some(bytes) => {
                let template = self.state.runtime_env();
                let runtime = Arc::new(datafusion::execution::runtime_env::RuntimeEnv {
                    memory_pool: Arc::new(datafusion::execution::memory_pool::FairSpillPool::new(bytes)),
                    disk_manager: Arc::clone(&template.disk_manager),
                    cache_manager: Arc::clone(&template.cache_manager),
                    object_store_registry: Arc::clone(&template.object_store_registry),
                });
                SessionStateBuilder::new_from_existing(self.state.clone()).with_runtime_env(runtime).build()
            }
            None => self.state.clone(),
        };
        let ctx = SessionContext::new_with_state(state);
        let catalog = WeirCatalog {
            user: Arc::new(UserSchema { db: Arc::clone(&db), buffer: Arc::clone(&self.buffer) }),
            system: Arc::new(SystemSchema::new(
                Arc::clone(&self.catalog),
                Arc::clone(&self.buffer),
                db,
                Arc::clone(&self.log),
                Arc::clone(&self.engine),
            )),
        };
        ctx.register_catalog(CATALOG_NAME, Arc::new(catalog));
        ctx
    }
}

#[async_trait]
impl QueryExecutor for SqlExecutor {
    async fn query_sql(&self, db: &str, sql: &str, params: QueryParams) -> Result<SendableRecordBatchStream> {
        let started = Instant::now();
        let entry = self.log.start(db, "sql", sql);
        let deadline = self.limits.timeout.map(|t| tokio::time::Instant::now() + t);
        let result = async {
            let ctx = self.context(self.db(db)?);
            let planned = self.runtime.run(plan_and_execute(ctx, sql.to_string(), params));
            let stream = match deadline {
                Some(d) => tokio::time::timeout_at(d, planned)
                    .await
                    .map_err(|_| Error::Timeout(self.limits.timeout.unwrap_or_default()))?,
                None => planned.await,
            }
            .map_err(Error::Execution)??;
            Ok::<_, Error>(self.runtime.bridge(stream, deadline.zip(self.limits.timeout), self.limits.memory))
        }
        .await;
        match result {
            Ok(stream) => Ok(Box::pin(LoggedStream {
                inner: stream,
                finish: Some(Finish {
                    log: Arc::clone(&self.log),
                    metrics: Arc::clone(&self.metrics),
                    entry,
                    started,
                    ok: true,
                }),
            })),
            Err(e) => {
                self.log.finish(entry, started.elapsed(), false);
                self.metrics.observe_query(started.elapsed(), false);
                Err(e)
            }
        }
    }

    async fn describe(&self, db: &str, sql: &str) -> Result<QueryShape> {
        let ctx = self.context(self.db(db)?);
        let sql = sql.to_string();
        self.runtime
            .run(async move {
                let plan = plan(&ctx, &sql).await?;
                let schema = Arc::new(plan.schema().as_arrow().clone());
                let mut params: Vec<(String, Option<DataType>)> = plan.get_parameter_types()?.into_iter().collect();
                // Positional placeholders are bound by index, so report $1..$max even when
                // the statement skips one.
                let max = params.iter().filter_map(|(n, _)| n.trim_start_matches('$').parse::<usize>().ok()).max();
                for i in 1..=max.unwrap_or(0) {
                    let name = format!("${i}");
                    if !params.iter().any(|(n, _)| *n == name) {
                        params.push((name, None));
                    }
                }
                params.sort_by_key(|(name, _)| placeholder_order(name));
                let params =
                    params.into_iter().map(|(name, ty)| Field::new(name, ty.unwrap_or(DataType::Null), true)).collect();
                Ok(QueryShape { schema, params })
            })
            .await
            .map_err(Error::Execution)?
    }

    async fn list_tables(&self, db: &str) -> Result<Vec<TableListing>> {
        let ctx = self.context(self.db(db)?);
        let mut out = Vec::new();
        let mut push = |schema: &str, name: &str, table: &Arc<dyn TableProvider>| {
            out.push(TableListing {
                catalog: CATALOG_NAME.to_string(),
                schema: schema.to_string(),
                name: name.to_string(),
                table_type: match table.table_type() {
                    TableType::Base => "BASE TABLE",
                    TableType::View => "VIEW",
                    TableType::Temporary => "LOCAL TEMPORARY",
                },
                arrow_schema: table.schema(),
            });
        };
        let catalog = ctx
            .catalog(CATALOG_NAME)
            .ok_or_else(|| Error::Execution(DataFusionError::Internal("catalog not registered".into())))?;
        for schema_name in catalog.schema_names() {
            let Some(schema) = catalog.schema(&schema_name) else { continue };
            for name in schema.table_names() {
                if let Some(table) = schema.table(&name).await? {
                    push(&schema_name, &name, &table);
                }
            }
        }
        for name in INFORMATION_SCHEMA_TABLES {
            let reference = TableReference::full(CATALOG_NAME, INFORMATION_SCHEMA, *name);
            if let Ok(table) = ctx.table_provider(reference).await {
                push(INFORMATION_SCHEMA, name, &table);
            }
        }
        Ok(out)
    }
}

impl SqlExecutor {
    fn db(&self, name: &str) -> Result<Arc<DatabaseSchema>> {
        match self.catalog.db(name) {
            Some(db) => Ok(db),
            None if name == INTERNAL_DB => Ok(Arc::new(DatabaseSchema::new(u32::MAX, Arc::from(INTERNAL_DB)))),
            None => Err(Error::DbNotFound(name.to_string())),
        }
    }
}

/// Sort key for placeholders: positional ones (`$1`, `$2`, ...) by number, then named ones.
fn placeholder_order(name: &str) -> (usize, String) {
    match name.trim_start_matches('$').parse::<usize>() {
        Ok(n) => (n, String::new()),
        Err(_) => (usize::MAX, name.to_string()),
    }
}

/// Number `?` placeholders `$1`, `$2`, ... left to right, leaving string literals, quoted
/// identifiers (`"..."` and `` `...` ``) and comments alone. DataFusion only understands the
/// numbered form, while JDBC/ADBC users write `?`. Mixing `?` with `$1`-style placeholders
/// is refused: the numbering would be ambiguous.
pub fn number_question_marks(sql: &str) -> Result<Cow<'_, str>> {
    if !sql.contains('?') {
        return Ok(Cow::Borrowed(sql));
    }
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    let mut numbered = false;
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\'' | '"' | '`' => {
                out.push(c);
                // Copy through the closing quote; a doubled quote is an escaped one and the
                // loop simply re-enters the quoted state.
                for d in chars.by_ref() {
                    out.push(d);
                    if d == c {
                        break;
                    }
                }
            }
            '-' if chars.peek() == Some(&'-') => {
                out.push(c);
                for d in chars.by_ref() {
                    out.push(d);
                    if d == '\n' {
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                out.push(c);
                let mut prev = '\0';
                for d in chars.by_ref() {
                    out.push(d);
                    if prev == '*' && d == '/' {
                        break;
                    }
                    prev = d;
                }
            }
            '$' if chars.peek().is_some_and(char::is_ascii_digit) => {
                numbered = true;
                out.push(c);
            }
            '?' => {
                n += 1;
                out.push('$');
                out.push_str(&n.to_string());
            }
            _ => out.push(c),
        }
    }
    if n > 0 && numbered {
        return Err(Error::Invalid(DataFusionError::Plan(
            "use either ? or $1-style placeholders in one statement, not both".to_string(),
        )));
    }
    Ok(Cow::Owned(out))
}

/// Parse and plan `sql` with writes and statements refused.
async fn plan(ctx: &SessionContext, sql: &str) -> Result<LogicalPlan> {
    let options = SQLOptions::new().with_allow_ddl(false).with_allow_dml(false).with_allow_statements(false);
    let sql = number_question_marks(sql)?;
    let state = ctx.state();
    let plan = state.create_logical_plan(&sql).await?;
    options.verify_plan(&plan)?;
    Ok(plan)
}

/// Plan `sql` in `ctx`, bind parameters, and start execution (runs on the query runtime).
async fn plan_and_execute(ctx: SessionContext, sql: String, params: QueryParams) -> Result<SendableRecordBatchStream> {
    let plan = plan(&ctx, &sql).await?;
    let mut wanted: Vec<String> = plan.get_parameter_names()?.into_iter().collect();
    wanted.sort_by_key(|name| placeholder_order(name));
    let mut df = DataFrame::new(ctx.state(), plan);
    match params {
        QueryParams::Named(params) => {
            if let Some(missing) = wanted.iter().find(|p| !params.contains_key(p.trim_start_matches('$'))) {
                return Err(Error::MissingParam(missing.clone()));
            }
            if !params.is_empty() {
                let values: Vec<(String, ScalarValue)> =
                    params.into_iter().map(|(k, v)| (k, ScalarValue::Utf8(Some(v)))).collect();
                df = df.with_param_values(ParamValues::from(values)).map_err(Error::invalid)?;
            }
        }
        QueryParams::Positional(values) => {
            let bound =
                |name: &str| name.trim_start_matches('$').parse::<usize>().is_ok_and(|i| i >= 1 && i <= values.len());
            if let Some(missing) = wanted.iter().find(|p| !bound(p)) {
                return Err(Error::MissingParam(missing.clone()));
            }
            let expected = wanted.iter().filter_map(|p| p.trim_start_matches('$').parse::<usize>().ok()).max();
            if values.len() != expected.unwrap_or(0) && !values.is_empty() {
                return Err(Error::Invalid(DataFusionError::Plan(format!(
                    "the statement takes {} parameter(s) but {} were bound",
                    expected.unwrap_or(0),
                    values.len()
                ))));
            }
            if !values.is_empty() {
                df = df.with_param_values(ParamValues::from(values)).map_err(Error::invalid)?;
            }
        }
    }
    Ok(df.execute_stream().await?)
}

struct Finish {
    log: Arc<QueryLog>,
    metrics: Arc<Metrics>,
    entry: u64,
    started: Instant,
    ok: bool,
}

impl Drop for Finish {
    fn drop(&mut self) {
        let d = self.started.elapsed();
        self.log.finish(self.entry, d, self.ok);
        self.metrics.observe_query(d, self.ok);
    }
}

/// Records the query's end (success, duration) when the stream ends or is dropped.
struct LoggedStream {
    inner: SendableRecordBatchStream,
    finish: Option<Finish>,
}

impl Stream for LoggedStream {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let r = self.inner.as_mut().poll_next(cx);
        match &r {
            Poll::Ready(Some(Err(e))) => {
                if let Some(f) = self.finish.as_mut() {
                    // Counted in weir_query_errors when the stream ends.
                    f.ok = false;
                    tracing::error!(query_id = f.entry, error = %e, "query failed while its answer was being sent");
                }
            }
            Poll::Ready(None) => {
                self.finish.take();
            }
            _ => {}
        }
        r
    }
}

impl RecordBatchStream for LoggedStream {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

#[derive(Debug)]
struct WeirCatalog {
    user: Arc<UserSchema>,
    system: Arc<SystemSchema>,
}

impl CatalogProvider for WeirCatalog {
    fn schema_names(&self) -> Vec<String> {
        vec![USER_SCHEMA.to_string(), SYSTEM_SCHEMA.to_string()]
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        match name {
            USER_SCHEMA => Some(Arc::clone(&self.user) as Arc<dyn SchemaProvider>),
            SYSTEM_SCHEMA => Some(Arc::clone(&self.system) as Arc<dyn SchemaProvider>),
            _ => None,
        }
    }
}

#[derive(Debug)]
struct UserSchema {
    db: Arc<DatabaseSchema>,
    buffer: Arc<WriteBuffer>,
}

#[async_trait]
impl SchemaProvider for UserSchema {
    fn table_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.db.tables.values().map(|t| t.name.to_string()).collect();
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        let Some(t) = self.db.table(name) else { return Ok(None) };
        let table: Arc<dyn TableProvider> =
            Arc::new(WeirTable::new(self.db.id, Arc::clone(t), Arc::clone(&self.buffer)));
        let now = crate::time::TimeProvider::now_ns(&crate::time::SystemTime);
        match self.db.retention_cutoff(now) {
            None => Ok(Some(table)),
            Some(cutoff) => Ok(Some(Arc::new(Retained::new(name, table, cutoff)?))),
        }
    }

    fn table_exist(&self, name: &str) -> bool {
        self.db.table(name).is_some()
    }
}

/// A table of a database with a retention period: the table with `time >= cutoff` applied
/// (a view, reported as a base table). The cutoff is pushed down to the table, which then
/// skips files and buffer segments wholly older than it.
#[derive(Debug)]
struct Retained {
    view: datafusion::datasource::ViewTable,
}

impl Retained {
    fn new(name: &str, table: Arc<dyn TableProvider>, cutoff: i64) -> datafusion::error::Result<Self> {
        use datafusion::{
            datasource::provider_as_source,
            logical_expr::{LogicalPlanBuilder, col, lit},
        };
        let plan = LogicalPlanBuilder::scan(name, provider_as_source(table), None)?
            .filter(col(crate::catalog::TIME_COLUMN).gt_eq(lit(ScalarValue::TimestampNanosecond(Some(cutoff), None))))?
            .build()?;
        Ok(Self { view: datafusion::datasource::ViewTable::new(plan, None) })
    }
}

#[async_trait]
impl TableProvider for Retained {
    fn schema(&self) -> arrow::datatypes::SchemaRef {
        self.view.schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::Base
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&datafusion::logical_expr::Expr],
    ) -> datafusion::error::Result<Vec<datafusion::logical_expr::TableProviderFilterPushDown>> {
        self.view.supports_filters_pushdown(filters)
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::logical_expr::Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn datafusion::physical_plan::ExecutionPlan>> {
        self.view.scan(state, projection, filters, limit).await
    }
}
