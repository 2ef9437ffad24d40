//! Snapshot persistence: buffered rows → sorted, time-partitioned Parquet files, and the
//! snapshot manifest that lists every live Parquet file.

use std::sync::Arc;

use arrow::{
    array::{RecordBatch, TimestampNanosecondArray, UInt32Array},
    compute::{SortColumn, SortOptions, concat_batches, lexsort_to_indices, take_record_batch},
    datatypes::SchemaRef,
};
use bytes::Bytes;
use parquet::{
    arrow::ArrowWriter,
    basic::Compression,
    file::{metadata::KeyValue, properties::WriterProperties},
};
use serde::{Deserialize, Serialize};

use crate::{
    catalog::{TIME_COLUMN, TableDef},
    storage::{self, Storage},
};

/// Current manifest format version.
pub const MANIFEST_FORMAT_VERSION: u32 = 1;

/// Width of a time partition: every Parquet file holds rows of one hour.
pub const PARTITION_NANOS: i64 = 3_600 * 1_000_000_000;

/// Errors while persisting.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Arrow failed (sorting, concatenating).
    #[error("arrow: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
    /// Parquet encoding failed.
    #[error("parquet: {0}")]
    Parquet(#[from] parquet::errors::ParquetError),
    /// Storage failed.
    #[error("storage: {0}")]
    Storage(#[from] storage::Error),
    /// A manifest cannot be decoded.
    #[error("snapshot manifest {path} is unreadable: {message}")]
    Manifest {
        /// Object path.
        path: String,
        /// Why.
        message: String,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// One persisted Parquet file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParquetFile {
    /// Unique id (also its name).
    pub id: u64,
    /// Object path.
    pub path: String,
    /// Database id.
    pub db_id: u32,
    /// Table id.
    pub table_id: u32,
    /// Partition key (`YYYY-MM-DD/HH`).
    pub partition: String,
    /// Smallest timestamp, ns.
    pub min_time: i64,
    /// Largest timestamp, ns.
    pub max_time: i64,
    /// Rows.
    pub row_count: u64,
    /// Size in bytes.
    pub size_bytes: u64,
    /// WAL sequence of the snapshot that wrote it: later files win on equal points.
    pub wal_seq: u64,
}

/// A snapshot manifest: the full list of live Parquet files after persisting the WAL up to
/// `wal_seq`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format version.
    pub format_version: u32,
    /// Last WAL file whose data is in these files.
    pub wal_seq: u64,
    /// Next Parquet file id.
    pub next_file_id: u64,
    /// Live files.
    pub files: Vec<ParquetFile>,
}

impl Default for Manifest {
    fn default() -> Self {
        Self { format_version: MANIFEST_FORMAT_VERSION, wal_seq: 0, next_file_id: 1, files: Vec::new() }
    }
}

impl Manifest {
    /// Decode a manifest.
    pub fn decode(bytes: &[u8], path: &str) -> Result<Self> {
        let m: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Manifest { path: path.to_string(), message: e.to_string() })?;
        if m.format_version > MANIFEST_FORMAT_VERSION {
            return Err(Error::Manifest {
                path: path.to_string(),
                message: format!(
                    "format version {} is newer than supported {MANIFEST_FORMAT_VERSION}",
                    m.format_version
                ),
            });
        }
        Ok(m)
    }

    /// Encode a manifest.
    pub fn encode(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }
}

/// Load the newest manifest, if any.
pub async fn load_latest_manifest(storage: &Storage) -> Result<Option<(u64, Manifest)>> {
    let paths = storage.list(&storage.snapshot_dir()).await?;
    let newest = paths
        .iter()
        .filter_map(|p| {
            let seq = p.filename()?.strip_suffix(".json")?.parse::<u64>().ok()?;
            Some((seq, p))
        })
        .max_by_key(|(s, _)| *s);
    let Some((seq, path)) = newest else {
        return Ok(None);
    };
    let Some(bytes) = storage.get(path).await? else {
        return Ok(None);
    };
    Ok(Some((seq, Manifest::decode(&bytes, path.as_ref())?)))
}

/// Partition key of a timestamp.
pub fn partition_key(ns: i64) -> String {
    let start = ns.div_euclid(PARTITION_NANOS) * PARTITION_NANOS;
    let secs = start.div_euclid(1_000_000_000);
    match chrono::DateTime::from_timestamp(secs, 0) {
        Some(t) => t.format("%Y-%m-%d/%H").to_string(),
        None => format!("p{}", ns.div_euclid(PARTITION_NANOS)),
    }
}

/// Sort a table's rows by its series key (tags by name) then time.
pub fn sort_batch(table: &TableDef, batch: &RecordBatch) -> Result<RecordBatch> {
    let schema = batch.schema();
    let mut cols: Vec<SortColumn> = Vec::new();
    for id in table.tag_ids_sorted() {
        if let Ok(i) = schema.index_of(&table.columns[id].name) {
            cols.push(SortColumn {
                values: Arc::clone(batch.column(i)),
                options: Some(SortOptions { descending: false, nulls_first: true }),
            });
        }
    }
    if let Ok(i) = schema.index_of(TIME_COLUMN) {
        cols.push(SortColumn { values: Arc::clone(batch.column(i)), options: None });
    }
    if cols.is_empty() || batch.num_rows() < 2 {
        return Ok(batch.clone());
    }
    let idx = lexsort_to_indices(&cols, None)?;
    Ok(take_record_batch(batch, &idx)?)
}

/// A batch split by partition: `(partition key, min, max, batch)`.
pub type PartitionedBatch = (String, i64, i64, RecordBatch);

/// Concatenate, split by hour partition and sort each part.
pub fn partition_batches(
    table: &TableDef,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<Vec<PartitionedBatch>> {
    let all = concat_batches(schema, batches)?;
    if all.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let time_idx = schema.index_of(TIME_COLUMN)?;
    let times = all
        .column(time_idx)
        .as_any()
        .downcast_ref::<TimestampNanosecondArray>()
        .ok_or_else(|| arrow::error::ArrowError::SchemaError("time column is not a ns timestamp".into()))?;
    let mut parts: std::collections::BTreeMap<i64, Vec<u32>> = std::collections::BTreeMap::new();
    for (i, t) in times.values().iter().enumerate() {
        parts.entry(t.div_euclid(PARTITION_NANOS)).or_default().push(i as u32);
    }
    let mut out = Vec::with_capacity(parts.len());
    for (p, idx) in parts {
        let batch =
            if idx.len() == all.num_rows() { all.clone() } else { take_record_batch(&all, &UInt32Array::from(idx))? };
        let sorted = sort_batch(table, &batch)?;
        let t = sorted
            .column(time_idx)
            .as_any()
            .downcast_ref::<TimestampNanosecondArray>()
            .map(|a| {
                let v = a.values();
                (v.iter().copied().min().unwrap_or_default(), v.iter().copied().max().unwrap_or_default())
            })
            .unwrap_or_default();
        out.push((partition_key(p * PARTITION_NANOS), t.0, t.1, sorted));
    }
    Ok(out)
}

/// Encode one Parquet file. Files carry the table's whole schema at the time they were
/// written; older files lack later columns, which the scan fills with nulls.
pub fn encode_parquet(batch: &RecordBatch, min_time: i64, max_time: i64) -> Result<Bytes> {
    let props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_key_value_metadata(Some(vec![
            KeyValue::new("weir.min_time".to_string(), min_time.to_string()),
            KeyValue::new("weir.max_time".to_string(), max_time.to_string()),
        ]))
        .set_max_row_group_row_count(Some(1024 * 1024))
        .build();
    let mut buf = Vec::with_capacity(1024 * 1024);
    let mut writer = ArrowWriter::try_new(&mut buf, batch.schema(), Some(props))?;
    writer.write(batch)?;
    writer.close()?;
    Ok(Bytes::from(buf))
}

/// Write one Parquet file for a partition and describe it.
pub async fn write_file(
    storage: &Storage,
    db_id: u32,
    table_id: u32,
    file_id: u64,
    wal_seq: u64,
    part: &PartitionedBatch,
) -> Result<ParquetFile> {
    let (partition, min_time, max_time, batch) = part;
    let bytes = encode_parquet(batch, *min_time, *max_time)?;
    let path = storage.parquet_path(db_id, table_id, partition, file_id);
    let size = bytes.len() as u64;
    storage.put(&path, bytes).await?;
    Ok(ParquetFile {
        id: file_id,
        path: path.to_string(),
        db_id,
        table_id,
        partition: partition.clone(),
        min_time: *min_time,
        max_time: *max_time,
        row_count: batch.num_rows() as u64,
        size_bytes: size,
        wal_seq,
    })
}
