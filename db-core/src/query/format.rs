//! Encoding query answers for HTTP: json, jsonl, csv, pretty, parquet.
//!
//! json, jsonl and csv stream batch by batch, so a large answer never sits in memory;
//! pretty (column widths need every row) and parquet (the footer indexes the whole file)
//! are assembled before sending.

use std::str::FromStr;

use arrow::{
    csv::WriterBuilder as CsvWriterBuilder,
    json::{WriterBuilder as JsonWriterBuilder, writer::LineDelimited},
    record_batch::RecordBatch,
    util::pretty::pretty_format_batches,
};
use bytes::Bytes;
use datafusion::{error::DataFusionError, execution::SendableRecordBatchStream};
use futures::{Stream, StreamExt, TryStreamExt, stream};
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
                return Err(format!(
                    "unsupported format {other:?}: expected json, jsonl, csv, pretty or parquet"
                ));
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
    let mut buf = Vec::with_capacity(batch.num_rows() * 64);
    {
        let mut w: arrow::json::Writer<_, LineDelimited> =
            JsonWriterBuilder::new().with_explicit_nulls(false).build(&mut buf);
        w.write(batch)?;
        w.finish()?;
    }
    Ok(buf)
}

/// Encode a result stream.
pub fn encode(format: Format, input: SendableRecordBatchStream) -> BoxedBytes {
    match format {
        Format::JsonLines => Box::pin(input.map(|r| Ok(Bytes::from(jsonl(&r?)?)))),
        Format::Json => {
            let mut first = true;
            let body = input.map(move |r| {
                let lines = jsonl(&r?)?;
                let mut out = Vec::with_capacity(lines.len() + 1);
                for line in lines.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
                    if !first {
                        out.push(b',');
                    }
                    first = false;
                    out.extend_from_slice(line);
                }
                Ok(Bytes::from(out))
            });
            Box::pin(
                stream::once(async { Ok(Bytes::from_static(b"[")) })
                    .chain(body)
                    .chain(stream::once(async { Ok(Bytes::from_static(b"]")) })),
            )
        }
        Format::Csv => {
            let mut header = true;
            Box::pin(input.map(move |r| {
                let batch = r?;
                let mut buf = Vec::with_capacity(batch.num_rows() * 48);
                {
                    let mut w = CsvWriterBuilder::new().with_header(header).build(&mut buf);
                    w.write(&batch)?;
                }
                header = false;
                Ok(Bytes::from(buf))
            }))
        }
        Format::Pretty => Box::pin(stream::once(async move {
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let table = pretty_format_batches(&batches)?;
            Ok(Bytes::from(format!("{table}\n")))
        })),
        Format::Parquet => Box::pin(stream::once(async move {
            let schema = input.schema();
            let batches: Vec<RecordBatch> = input.try_collect().await?;
            let mut buf = Vec::new();
            let mut w = ArrowWriter::try_new(&mut buf, schema, None)?;
            for b in &batches {
                w.write(b)?;
            }
            w.close()?;
            Ok(Bytes::from(buf))
        })),
    }
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

