//! Encoding query answers for HTTP: json, jsonl, csv, pretty, parquet.
//!
//! json, jsonl, csv and parquet stream batch by batch (parquet row group by row group, its
//! footer last), so a large answer never sits in memory; pretty (column widths need every
//! row) is assembled first and holds at most [`PRETTY_MAX_ROWS`] rows.

use std::str::FromStr;

use arrow::{
    csv::WriterBuilder as CsvWriterBuilder,
    json::{WriterBuilder as JsonWriterBuilder, writer::LineDelimited},
    record_batch::RecordBatch,
    util::pretty::pretty_format_batches,
};
use bytes::Bytes;
use datafusion::{error::DataFusionError, execution::SendableRecordBatchStream};
use futures::{Stream, StreamExt, stream};
use parquet::arrow::ArrowWriter;

/// An output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    /// A JSON array of objects.
    #[default]
    Json,
    /// One JSON object per line.
    JsonLines,
    /// CSV with a header row.
    Csv,
    /// A human-readable table.
    Pretty,
    /// A Parquet file.
    Parquet,
}

impl FromStr for Format {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "json" => Self::Json,
            "jsonl" => Self::JsonLines,
            "csv" => Self::Csv,
            "pretty" => Self::Pretty,
            "parquet" => Self::Parquet,
            other => {
                return Err(format!("unsupported format {other:?}: expected json, jsonl, csv, pretty or parquet"));
            }
        })
    }
}

impl Format {
    /// HTTP content type.
    pub fn content_type(self) -> &'static str {
        match self {
            Self::Json => "application/json",
            Self::JsonLines => "application/jsonl",
            Self::Csv => "text/csv",
            Self::Pretty => "text/plain; charset=utf-8",
            Self::Parquet => "application/vnd.apache.parquet",
        }
    }
}

type BoxedBytes = std::pin::Pin<Box<dyn Stream<Item = Result<Bytes, DataFusionError>> + Send>>;

fn jsonl(batch: &RecordBatch) -> Result<Vec<u8>, DataFusionError> {
    jsonl_into(Vec::with_capacity(batch.num_rows() * 96), batch)
}

/// Append `batch` to `buf` as JSON lines.
fn jsonl_into(mut buf: Vec<u8>, batch: &RecordBatch) -> Result<Vec<u8>, DataFusionError> {
    {
        let mut w: arrow::json::Writer<_, LineDelimited> =
            JsonWriterBuilder::new().with_explicit_nulls(false).build(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

/// Batches encoded at the same time by the streaming text formats (answers still go out in
/// order). Encoding, not the scan, bounds their throughput, so two batches are encoded in
/// parallel off the async workers; memory stays bounded by these few batches.
const ENCODE_AHEAD: usize = 2;

/// Encode each batch with `f(batch, is_first_batch)` on the blocking pool, `ENCODE_AHEAD` at a
/// time, keeping their order.
fn encode_ordered(
    input: SendableRecordBatchStream,
    f: fn(&RecordBatch, bool) -> Result<Vec<u8>, DataFusionError>,
) -> impl Stream<Item = Result<Bytes, DataFusionError>> + Send {
    input
        .enumerate()
        .map(move |(i, r)| async move {
            let batch = r?;
            tokio::task::spawn_blocking(move || f(&batch, i == 0))
                .await
                .map_err(|e| DataFusionError::External(Box::new(e)))?
                .map(Bytes::from)
        })
        .buffered(ENCODE_AHEAD)
}

/// One batch as JSON array elements, each preceded by a comma (the caller drops the very
/// first one). JSON lines are rewritten in place: JSON escapes newlines inside strings, so
/// every raw '\n' ends a row.
fn json_elements(batch: &RecordBatch, _first: bool) -> Result<Vec<u8>, DataFusionError> {
    if batch.num_rows() == 0 {
        return Ok(Vec::new());
    }
    let mut out = Vec::with_capacity(batch.num_rows() * 96 + 1);
    out.push(b',');
    let mut out = jsonl_into(out, batch)?;
    if out.last() == Some(&b'\n') {
        out.pop();
    }
    for b in &mut out[1..] {
        if *b == b'\n' {
            *b = b',';
        }
    }
    Ok(out)
}

fn csv(batch: &RecordBatch, header: bool) -> Result<Vec<u8>, DataFusionError> {
    let mut buf = Vec::with_capacity(batch.num_rows() * 64 + 256);
    {
        let mut w = CsvWriterBuilder::new().with_header(header).build(&mut buf);
        w.write(batch)?;
    }
    Ok(buf)
}

/// Encode a result stream.
pub fn encode(format: Format, input: SendableRecordBatchStream) -> BoxedBytes {
    match format {
        Format::JsonLines => Box::pin(encode_ordered(input, |b, _| jsonl(b))),
        Format::Json => {
            let mut first = true;
            let body = encode_ordered(input, json_elements).map(move |chunk| {
                let chunk = chunk?;
                if chunk.is_empty() || !first {
                    return Ok(chunk);
                }
                first = false;
                Ok(chunk.slice(1..))
            });
            Box::pin(
                stream::once(async { Ok(Bytes::from_static(b"[")) })
                    .chain(body)
                    .chain(stream::once(async { Ok(Bytes::from_static(b"]")) })),
            )
        }
        Format::Csv => Box::pin(encode_ordered(input, csv)),
        Format::Pretty => Box::pin(stream::once(async move {
            pretty(input, PRETTY_MAX_ROWS).await.map(Bytes::from).map_err(|e| match e {
                PrettyError::Query(q) => q,
                too_long => DataFusionError::Execution(too_long.to_string()),
            })
        })),
        Format::Parquet => Box::pin(parquet(input)),
    }
}

/// Most rows the `pretty` format prints (it is assembled in memory to size its columns).
pub const PRETTY_MAX_ROWS: usize = 100_000;

/// Why a `pretty` answer was not made.
#[derive(Debug, thiserror::Error)]
pub enum PrettyError {
    /// More rows than the format holds.
    #[error(
        "the pretty format shows at most {0} rows (a table for people to read); use format json, jsonl, csv or \
         parquet for larger answers, or add a LIMIT"
    )]
    TooLong(usize),
    /// The query failed.
    #[error(transparent)]
    Query(#[from] DataFusionError),
}

/// The whole answer as a text table (at most `max_rows` rows).
pub async fn pretty(mut input: SendableRecordBatchStream, max_rows: usize) -> Result<String, PrettyError> {
    let mut batches = Vec::new();
    let mut rows = 0;
    while let Some(b) = input.next().await {
        let b = b?;
        rows += b.num_rows();
        if rows > max_rows {
            return Err(PrettyError::TooLong(max_rows));
        }
        batches.push(b);
    }
    Ok(format!("{}\n", pretty_format_batches(&batches).map_err(DataFusionError::from)?))
}

/// Bytes of encoded rows a Parquet answer holds before it writes a row group out.
const PARQUET_ROW_GROUP_BYTES: usize = 32 << 20;

/// A Parquet file, streamed: each row group goes out as soon as it is written (memory is
/// bounded by one row group, not the answer), the footer last.
fn parquet(input: SendableRecordBatchStream) -> impl Stream<Item = Result<Bytes, DataFusionError>> + Send {
    struct State {
        input: SendableRecordBatchStream,
        writer: Option<ArrowWriter<Vec<u8>>>,
        done: bool,
    }
    let state = State { input, writer: None, done: false };
    stream::try_unfold(state, |mut st| async move {
        if st.done {
            return Ok(None);
        }
        if st.writer.is_none() {
            st.writer = Some(ArrowWriter::try_new(Vec::new(), st.input.schema(), None)?);
        }
        while let Some(batch) = st.input.next().await {
            let batch = batch?;
            let Some(w) = st.writer.as_mut() else { break };
            w.write(&batch)?;
            if w.in_progress_size() >= PARQUET_ROW_GROUP_BYTES {
                w.flush()?;
            }
            if !w.inner().is_empty() {
                let out = Bytes::from(std::mem::take(w.inner_mut()));
                return Ok(Some((out, st)));
            }
        }
        st.done = true;
        let rest = match st.writer.take() {
            Some(w) => w.into_inner()?,
            None => Vec::new(),
        };
        Ok(Some((Bytes::from(rest), st)))
    })
}

/// Encode batches already in memory (tests, CLI) into one buffer.
pub async fn encode_all(format: Format, input: SendableRecordBatchStream) -> Result<Vec<u8>, DataFusionError> {
    let mut out = Vec::new();
    let mut s = encode(format, input);
    while let Some(chunk) = s.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::{
        array::{Int64Array, StringArray},
        datatypes::{DataType, Field, Schema},
    };
    use datafusion::physical_plan::stream::RecordBatchStreamAdapter;

    use super::*;

    fn batches(sizes: &[usize]) -> SendableRecordBatchStream {
        let schema = Arc::new(Schema::new(vec![
            Field::new("n", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
        ]));
        let mut next = 0i64;
        let out: Vec<_> = sizes
            .iter()
            .map(|&len| {
                let n: Vec<i64> = (next..next + len as i64).collect();
                next += len as i64;
                let s: Vec<String> = n.iter().map(|i| format!("line {i}\nwith \"quotes\"")).collect();
                Ok(RecordBatch::try_new(
                    Arc::clone(&schema),
                    vec![Arc::new(Int64Array::from(n)), Arc::new(StringArray::from(s))],
                )?)
            })
            .collect();
        Box::pin(RecordBatchStreamAdapter::new(schema, stream::iter(out)))
    }

    #[tokio::test]
    async fn json_array_spans_batches_including_empty_ones() {
        let body = encode_all(Format::Json, batches(&[0, 3, 0, 2, 1])).await.unwrap();
        let v: Vec<serde_json::Value> = serde_json::from_slice(&body).unwrap();
        let n: Vec<i64> = v.iter().map(|r| r["n"].as_i64().unwrap()).collect();
        assert_eq!(n, [0, 1, 2, 3, 4, 5]);
        assert_eq!(v[4]["s"], "line 4\nwith \"quotes\"");

        let empty = encode_all(Format::Json, batches(&[0, 0])).await.unwrap();
        assert_eq!(empty, b"[]");
    }

    #[tokio::test]
    async fn csv_has_one_header_across_batches() {
        let body = encode_all(Format::Csv, batches(&[2, 1])).await.unwrap();
        let text = String::from_utf8(body).unwrap();
        assert!(text.starts_with("n,s\n"), "{text}");
        assert_eq!(text.matches("n,s").count(), 1);
    }
}
