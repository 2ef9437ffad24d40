//! Shared fixtures for in-process tests: a write buffer and SQL executor on a given store.

use std::{sync::Arc, time::Duration};

use arrow::util::pretty::pretty_format_batches;
use futures::TryStreamExt;

use crate::{
    auth::Authenticator,
    catalog::Catalog,
    lp::Precision,
    query::{QueryExecutor, SqlExecutor, SqlExecutorArgs, runtime::QueryRuntime},
    server::{ServerState, SharedState},
    storage::Storage,
    telemetry::Metrics,
    time::MockTime,
    write_buffer::{self, WriteBuffer, WriteBufferArgs, WriteBufferConfig, WriteOutcome},
};

/// One query runtime shared by all tests of this process.
pub(crate) fn test_runtime() -> QueryRuntime {
    static RT: std::sync::OnceLock<QueryRuntime> = std::sync::OnceLock::new();
    RT.get_or_init(|| QueryRuntime::start(2).expect("query runtime")).clone()
}

/// A database in process: write buffer plus executor, clock fixed at 1,000 s.
#[derive(Debug)]
pub(crate) struct TestDb {
    pub(crate) buffer: Arc<WriteBuffer>,
    pub(crate) exec: SqlExecutor,
    pub(crate) metrics: Arc<Metrics>,
}

impl TestDb {
    /// Open (or restore) a database on `storage`.
    pub(crate) async fn open(storage: &Storage) -> write_buffer::Result<Self> {
        Self::open_with(storage, crate::query::QueryLimits::default()).await
    }

    /// [`TestDb::open`] with query limits.
    pub(crate) async fn open_with(storage: &Storage, limits: crate::query::QueryLimits) -> write_buffer::Result<Self> {
        let catalog = Arc::new(Catalog::load(storage.clone()).await?);
        let metrics = Arc::new(Metrics::new());
        let buffer = WriteBuffer::open(WriteBufferArgs {
            catalog: Arc::clone(&catalog),
            storage: storage.clone(),
            config: WriteBufferConfig { snapshot_interval: Duration::from_secs(3600), ..Default::default() },
            time: Arc::new(MockTime::new(1_000_000_000_000)),
            metrics: Arc::clone(&metrics),
        })
        .await?;
        let exec = SqlExecutor::new(SqlExecutorArgs {
            catalog,
            buffer: Arc::clone(&buffer),
            metrics: Arc::clone(&metrics),
            object_store: storage.object_store(),
            runtime: test_runtime(),
            limits,
        })
        .expect("executor");
        Ok(Self { buffer, exec, metrics })
    }

    /// Server state over this database, with `token` registered as the admin token.
    pub(crate) async fn into_server(self, auth: bool, token: Option<&str>, max_request_bytes: usize) -> SharedState {
        let catalog = Arc::clone(self.buffer.catalog());
        let auth = Authenticator::new(Arc::clone(&catalog), auth);
        if let Some(t) = token {
            auth.register_admin_token("_admin", t).await.expect("register token");
        }
        Arc::new(ServerState {
            catalog,
            buffer: self.buffer,
            query: Arc::new(self.exec),
            auth,
            metrics: self.metrics,
            max_request_bytes,
            engine: None,
        })
    }

    /// Write to database `db` with ns precision; panics on a request-level error.
    pub(crate) async fn write(&self, lp: &str) -> WriteOutcome {
        self.buffer.write_lp("db", lp, Precision::Nanosecond, true, false).await.expect("write")
    }

    /// Run SQL on `db` and pretty-print the answer; panics on error.
    pub(crate) async fn sql(&self, sql: &str) -> String {
        self.try_sql(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
    }

    /// Run SQL on `db` and pretty-print the answer.
    pub(crate) async fn try_sql(&self, sql: &str) -> Result<String, String> {
        let stream =
            self.exec.query_sql("db", sql, crate::query::QueryParams::default()).await.map_err(|e| e.to_string())?;
        let batches: Vec<_> = stream.try_collect().await.map_err(|e| e.to_string())?;
        Ok(pretty_format_batches(&batches).map_err(|e| e.to_string())?.to_string())
    }
}
