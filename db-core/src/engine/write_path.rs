//! What the engine needs of the write path, as a trait: the engine is unit-tested against an
//! in-memory implementation, and runs against the [`WriteBuffer`].

use std::sync::Arc;

use arrow::record_batch::RecordBatch;

use crate::{
    lp::Precision,
    write_buffer::{self, FlushedWal, WriteBuffer},
};

/// Why plugin output was not written.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Lines the database refused (type conflicts, bad syntax): nothing was written.
    #[error("{0}")]
    Rejected(String),
    /// The write path failed (the WAL could not be written, shutdown).
    #[error("{0}")]
    Failed(String),
}

/// The rows of one WAL file, per database and table.
pub trait WalRows: Send + Sync + std::fmt::Debug {
    /// WAL file sequence number.
    fn seq(&self) -> u64;
    /// Databases with rows in it.
    fn db_ids(&self) -> Vec<u32>;
    /// Tables of `db_id` with rows in it, in order of first appearance (cheap: no rows
    /// are converted).
    fn table_names(&self, db_id: u32) -> Vec<Arc<str>>;
    /// Database `db_id`'s rows as Arrow, per table in order of first appearance, every
    /// accepted line one row, in write order.
    fn tables(&self, db_id: u32) -> Vec<(Arc<str>, RecordBatch)>;
}

/// The write path as the engine uses it.
#[async_trait::async_trait]
pub trait WritePath: Send + Sync + std::fmt::Debug {
    /// Write plugin output to `db`: all lines or none, nanosecond precision.
    async fn write_lines(&self, db: &str, lines: &str, no_sync: bool) -> Result<(), WriteError>;
    /// The newest WAL file applied.
    fn last_wal_seq(&self) -> u64;
    /// The WAL files in storage as `(seq, bytes)`, ascending.
    async fn wal_files(&self) -> Result<Vec<(u64, u64)>, String>;
    /// Read WAL file `seq` back (`None`: it is gone).
    async fn read_wal(&self, seq: u64) -> Result<Option<Arc<dyn WalRows>>, String>;
}

#[async_trait::async_trait]
impl WritePath for WriteBuffer {
    async fn write_lines(&self, db: &str, lines: &str, no_sync: bool) -> Result<(), WriteError> {
        match self.write_lp(db, lines, Precision::Nanosecond, false, no_sync).await {
            Ok(outcome) if outcome.errors.is_empty() => Ok(()),
            Ok(outcome) => {
                Err(WriteError::Rejected(outcome.errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
            }
            Err(write_buffer::Error::Rejected(errors)) => {
                Err(WriteError::Rejected(errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ")))
            }
            Err(e @ write_buffer::Error::Catalog(_)) => Err(WriteError::Rejected(e.to_string())),
            Err(e) => Err(WriteError::Failed(e.to_string())),
        }
    }

    fn last_wal_seq(&self) -> u64 {
        WriteBuffer::last_wal_seq(self)
    }

    async fn wal_files(&self) -> Result<Vec<(u64, u64)>, String> {
        WriteBuffer::wal_files(self).await.map_err(|e| e.to_string())
    }

    async fn read_wal(&self, seq: u64) -> Result<Option<Arc<dyn WalRows>>, String> {
        match self.read_wal_file(seq).await {
            Ok(wal) => Ok(wal.map(|w| Arc::new(w) as Arc<dyn WalRows>)),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl WalRows for FlushedWal {
    fn seq(&self) -> u64 {
        self.seq
    }

    fn db_ids(&self) -> Vec<u32> {
        FlushedWal::db_ids(self)
    }

    fn table_names(&self, db_id: u32) -> Vec<Arc<str>> {
        FlushedWal::table_names(self, db_id)
    }

    fn tables(&self, db_id: u32) -> Vec<(Arc<str>, RecordBatch)> {
        FlushedWal::tables(self, db_id)
    }
}
