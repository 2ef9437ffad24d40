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

use super::QueryTimeout;

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

    /// Run `fut` on the query runtime and await its result here; dropping the returned
    /// future (a client that went away, a timeout) aborts the work.
    pub async fn run<T, F>(&self, fut: F) -> Result<T, DataFusionError>
    where
        F: Future<Output = T> + Send + 'static,
        T: Send + 'static,
    {
        struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);
        impl<T> Drop for AbortOnDrop<T> {
            fn drop(&mut self) {
                self.0.abort();
            }
        }
        let mut task = AbortOnDrop(self.handle.spawn(fut));
        (&mut task.0).await.map_err(|e| DataFusionError::Execution(format!("query task failed: {e}")))
    }

    /// Drive `stream` on the query runtime; the returned stream receives its batches.
    /// Execution stops (and its operators are dropped, cancelling their work) as soon as
    /// the consumer goes away, even while no batch is ready, and at `deadline` (with
    /// [`QueryTimeout`] as the last item). An allocation past `memory_limit` ends the
    /// stream with an error that names the limit.
    pub fn bridge(
        &self,
        mut stream: SendableRecordBatchStream,
        deadline: Option<(tokio::time::Instant, std::time::Duration)>,
        memory_limit: Option<usize>,
    ) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let (tx, rx) = mpsc::channel(2);
        self.handle.spawn(async move {
            let expired = async {
                match deadline {
                    Some((at, _)) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(expired);
            loop {
                let item = tokio::select! {
                    // The consumer went away: stop executing.
                    _ = tx.closed() => break,
                    _ = &mut expired => {
                        let timeout = deadline.map(|(_, t)| t).unwrap_or_default();
                        let _ = tx.send(Err(DataFusionError::External(Box::new(QueryTimeout(timeout))))).await;
                        break;
                    }
                    item = stream.next() => item,
                };
                let Some(item) = item else { break };
                let item = item.map_err(|e| match (e, memory_limit) {
                    (DataFusionError::ResourcesExhausted(m), Some(limit)) => DataFusionError::ResourcesExhausted(
                        format!("{m} (the query is over --query-memory-limit of {limit} bytes)"),
                    ),
                    (e, _) => e,
                });
                if tx.send(item).await.is_err() {
                    break;
                }
            }
        });
        let out = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|b| (b, rx)) });
        Box::pin(RecordBatchStreamAdapter::new(schema, out))
    }
}
