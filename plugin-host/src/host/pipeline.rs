//! The WAL pipeline of a trigger: batches decoded from Arrow and encoded for Python while
//! the previous one runs, run in order, the next one staged in the worker right behind the
//! current call.

use std::{
    io::Cursor,
    sync::{Arc, atomic::Ordering},
};

use arrow::{ipc::reader::StreamReader, record_batch::RecordBatch};
use tokio::sync::mpsc;
use weir_proto::plugin::v1::{self as pb, host_message};

use super::{
    Host,
    runtime::{Call, done_message, failed},
};
use crate::{
    marshal,
    worker::{Done, Level, TriggerId},
};

/// A WAL batch ready for `process_writes`.
#[derive(Debug)]
pub(super) struct EncodedWal {
    /// marshal-encoded `[table_batches]` (rows, or columns for workers with the speedups).
    pub(super) args: Vec<u8>,
    rows: usize,
    tables: usize,
}

/// `columns`: as [`marshal::wal_call_args_columns`] (workers with the speedups), else as rows.
pub(super) fn encode_wal(batch: &pb::WalBatch, columns: bool) -> Result<EncodedWal, String> {
    let mut tables = Vec::with_capacity(batch.tables.len());
    let mut rows = 0;
    for t in &batch.tables {
        let reader = StreamReader::try_new(Cursor::new(&t.arrow_ipc[..]), None).map_err(|e| e.to_string())?;
        let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(|e| e.to_string())?;
        rows += batches.iter().map(RecordBatch::num_rows).sum::<usize>();
        tables.push((t.table_name.clone(), batches));
    }
    let args = if columns { marshal::wal_call_args_columns(&tables) } else { marshal::wal_call_args(&tables) };
    let args = args.map_err(|e| e.to_string())?;
    Ok(EncodedWal { args, rows, tables: tables.len() })
}

/// A batch in a trigger's pipeline, encoding (or encoded).
#[derive(Debug)]
pub(super) struct Queued {
    id: u64,
    seq: u64,
    epoch: u64,
    encoding: Encoding,
}

#[derive(Debug)]
enum Encoding {
    Running(tokio::task::JoinHandle<Result<EncodedWal, String>>),
    Done(Result<EncodedWal, String>),
}

impl Queued {
    /// The batch encoded for Python (waiting for the encoder the first time).
    pub(super) async fn encoded(&mut self) -> Result<&EncodedWal, String> {
        if let Encoding::Running(task) = &mut self.encoding {
            let result = task.await.unwrap_or_else(|e| Err(format!("encoding the batch failed: {e}")));
            self.encoding = Encoding::Done(result);
        }
        match &self.encoding {
            Encoding::Done(result) => result.as_ref().map_err(Clone::clone),
            Encoding::Running(_) => unreachable!("replaced above"),
        }
    }

    /// Whether encoding has finished (so [`Queued::encoded`] does not wait).
    pub(super) fn is_encoded(&self) -> bool {
        match &self.encoding {
            Encoding::Running(task) => task.is_finished(),
            Encoding::Done(_) => true,
        }
    }

    pub(super) fn abort(&self) {
        if let Encoding::Running(task) = &self.encoding {
            task.abort();
        }
    }
}

impl Host {
    /// Accept a WAL batch: decode and encode it for Python right away (on the blocking
    /// pool, overlapping the call before it), then queue it behind the trigger's earlier
    /// batches, which run one at a time in arrival order.
    pub(super) fn wal_batch(self: &Arc<Self>, id: u64, batch: pb::WalBatch) {
        let tid = TriggerId { database: batch.database.clone(), name: batch.trigger.clone() };
        let seq = batch.wal_seq;
        let columns = self.venv.native;
        let encoding = Encoding::Running(tokio::task::spawn_blocking(move || encode_wal(&batch, columns)));
        let tx = {
            let mut pipelines = self.pipelines.lock();
            pipelines
                .entry(tid.clone())
                .or_insert_with(|| {
                    let (tx, rx) = mpsc::unbounded_channel();
                    tokio::spawn(Arc::clone(self).wal_pipeline(tid.clone(), rx));
                    tx
                })
                .clone()
        };
        let epoch = self.epoch.load(Ordering::Acquire);
        let _ = tx.send(Queued { id, seq, epoch, encoding });
    }

    /// Run a trigger's queued batches in order and answer each with `Done`. The next
    /// batch, when already queued and encoded, goes to the worker right behind the current
    /// one, so the worker starts it without waiting for megabytes of rows to cross the socket.
    pub(super) async fn wal_pipeline(self: Arc<Self>, tid: TriggerId, mut rx: mpsc::UnboundedReceiver<Queued>) {
        let mut next: Option<Queued> = None;
        // (batch id, the stage holding its arguments)
        let mut staged: Option<(u64, u64)> = None;
        loop {
            let mut q = match next.take() {
                Some(q) => q,
                None => match rx.recv().await {
                    Some(q) => q,
                    None => return,
                },
            };
            let epoch = self.epoch.load(Ordering::Acquire);
            if q.epoch != epoch {
                // Its session ended: the core sends it again, in order, on the new one.
                q.abort();
                continue;
            }
            let (id, seq) = (q.id, q.seq);
            let result = match q.encoded().await {
                Ok(encoded) => {
                    next = rx.try_recv().ok();
                    let mine = staged.take().filter(|(batch, _)| *batch == id).map(|(_, stage)| stage);
                    let next_id = next.as_ref().map(|n| n.id);
                    let ahead = match next.as_mut() {
                        Some(n) if n.epoch == epoch && n.is_encoded() => {
                            n.encoded().await.ok().map(|e| e.args.as_slice())
                        }
                        _ => None,
                    };
                    let done = self.run_wal(&tid, seq, encoded, mine, ahead).await;
                    staged = next_id.zip(done.staged);
                    Ok(done)
                }
                Err(e) => Err(e),
            };
            let done = result.unwrap_or_else(|e| {
                self.log(&tid, Level::Error, e.clone());
                failed(e)
            });
            self.link.send(id, host_message::Body::Done(done_message(done))).await;
        }
    }

    pub(super) async fn run_wal(
        &self,
        tid: &TriggerId,
        seq: u64,
        encoded: &EncodedWal,
        staged: Option<u64>,
        ahead: Option<&[u8]>,
    ) -> Done {
        let started =
            format!("starting execution with {} rows from {} tables (WAL file {seq})", encoded.rows, encoded.tables);
        let call = Call {
            entry: "process_writes",
            args: &encoded.args,
            started: Some(started),
            staged,
            ahead,
            deadline: None,
        };
        self.run_call(tid, call).await
    }
}
