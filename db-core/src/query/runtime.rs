//! A dedicated Tokio runtime for DataFusion's CPU-heavy work.
//!
//! Planning and execution run on their own threads so a large scan or sort cannot starve
//! the runtime that serves HTTP, gRPC and the WAL flusher. Results come back through a
//! bounded channel (two batches), which also gives backpressure: a slow client slows the
//! query instead of letting batches pile up.

use std::{fmt, future::Future};

use datafusion::{
    error::DataFusionError, execution::SendableRecordBatchStream, physical_plan::stream::RecordBatchStreamAdapter,
};
use futures::StreamExt;
use tokio::{runtime::Handle, sync::mpsc};

/// Handle to the query runtime. The runtime lives on its own thread for the life of the
/// process (dropping a runtime from async code is not allowed, so it is never dropped).
#[derive(Clone)]
pub struct QueryRuntime {
    handle: Handle,
}

impl fmt::Debug for QueryRuntime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueryRuntime").finish_non_exhaustive()
    }
}

impl QueryRuntime {
    /// Start a runtime with `threads` workers.
    pub fn start(threads: usize) -> std::io::Result<Self> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads.max(1))
            .thread_name("weir-query")
            .enable_all()
            .build()?;
        let handle = rt.handle().clone();
        std::thread::Builder::new()
            .name("weir-query-rt".to_string())
            .spawn(move || rt.block_on(std::future::pending::<()>()))?;
        Ok(Self { handle })
    }

    /// Run `fut` on the query runtime and await its result here.
    pub async fn run<T, F>(&self, fut: F) -> Result<T, DataFusionError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        self.handle.spawn(fut).await.map_err(|e| DataFusionError::Execution(format!("query task failed: {e}")))
    }

    /// Drive `stream` on the query runtime; the returned stream receives its batches.
    pub fn bridge(&self, mut stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let (tx, rx) = mpsc::channel(2);
        self.handle.spawn(async move {
            while let Some(item) = stream.next().await {
                if tx.send(item).await.is_err() {
                    // The consumer went away: stop executing.
                    break;
                }
            }
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(schema, out))
    }
}
