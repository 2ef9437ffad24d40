//! The in-memory buffer of one table: columnar, one row per point.
//!
//! A point is its series (tag set) plus its timestamp. Writing a point that is already
//! buffered updates that row in place, field by field (fields the new write does not name
//! keep their values), so the buffer never holds two rows for one point.
//!
//! Queries read the buffer as Arrow record batches of [`SEGMENT_ROWS`] rows. Each segment's
//! batch is cached until a write touches that segment or the table's schema grows, so a
//! query over a mostly-static buffer converts only what changed.

use std::sync::Arc;

use arrow::{
    array::{
        ArrayRef, BooleanArray, DictionaryArray, Float64Array, Int32Array, Int64Array, StringArray,
        TimestampNanosecondArray, UInt64Array, new_null_array,
    },
    datatypes::{Int32Type, SchemaRef},
    error::ArrowError,
    record_batch::RecordBatch,
};
use parking_lot::Mutex;

use super::validate::{Row, Value};
use crate::catalog::{ColumnKind, FieldType, TableDef};

/// Hash maps on the write hot path use a fast non-cryptographic hasher (keys are not
/// attacker-chosen in a way that matters: a flood of distinct series costs memory anyway).
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

/// Rows per cached record batch.
pub const SEGMENT_ROWS: usize = 16 * 1024;

#[derive(Debug)]
enum FieldColumn {
    I64(Vec<i64>, Vec<bool>),
    U64(Vec<u64>, Vec<bool>),
    F64(Vec<f64>, Vec<bool>),
    Bool(Vec<bool>, Vec<bool>),
    Str(Vec<Option<Box<str>>>),
}

impl FieldColumn {
    fn new(t: FieldType) -> Self {
        match t {
            FieldType::Int64 => Self::I64(Vec::new(), Vec::new()),
            FieldType::UInt64 => Self::U64(Vec::new(), Vec::new()),
            FieldType::Float64 => Self::F64(Vec::new(), Vec::new()),
            FieldType::Boolean => Self::Bool(Vec::new(), Vec::new()),
            FieldType::String => Self::Str(Vec::new()),
        }
    }

    /// Set row `row` (growing with nulls as needed). Returns false on a type mismatch,
    /// which validation rules out.
    fn set(&mut self, row: usize, v: &Value) -> bool {
        fn put<T: Default + Clone>(vals: &mut Vec<T>, valid: &mut Vec<bool>, row: usize, x: T) {
            if vals.len() <= row {
                vals.resize(row + 1, T::default());
                valid.resize(row + 1, false);
            }
            vals[row] = x;
            valid[row] = true;
        }
        match (self, v) {
            (Self::I64(vals, valid), Value::I64(x)) => put(vals, valid, row, *x),
            (Self::U64(vals, valid), Value::U64(x)) => put(vals, valid, row, *x),
            (Self::F64(vals, valid), Value::F64(x)) => put(vals, valid, row, *x),
            (Self::Bool(vals, valid), Value::Bool(x)) => put(vals, valid, row, *x),
            (Self::Str(vals), Value::Str(x)) => {
                if vals.len() <= row {
                    vals.resize(row + 1, None);
                }
                vals[row] = Some(x.clone());
            }
            _ => return false,
        }
        true
    }

    fn to_array(&self, start: usize, end: usize) -> ArrayRef {
        fn prim<'a, T: Copy + Default>(
            vals: &'a [T],
            valid: &'a [bool],
            start: usize,
            end: usize,
        ) -> impl Iterator<Item = Option<T>> + 'a {
            (start..end).map(move |i| if valid.get(i).copied().unwrap_or(false) { Some(vals[i]) } else { None })
        }
        match self {
            Self::I64(v, m) => Arc::new(prim(v, m, start, end).collect::<Int64Array>()),
            Self::U64(v, m) => Arc::new(prim(v, m, start, end).collect::<UInt64Array>()),
            Self::F64(v, m) => Arc::new(prim(v, m, start, end).collect::<Float64Array>()),
            Self::Bool(v, m) => Arc::new(prim(v, m, start, end).collect::<BooleanArray>()),
            Self::Str(v) => {
                Arc::new((start..end).map(|i| v.get(i).and_then(|s| s.as_deref())).collect::<StringArray>())
            }
        }
    }
}

#[derive(Debug, Default)]
struct TagDict {
    values: Vec<Arc<str>>,
    index: HashMap<Arc<str>, i32>,
}

impl TagDict {
    fn key(&mut self, v: &str) -> i32 {
        if let Some(k) = self.index.get(v) {
            return *k;
        }
        let k = self.values.len() as i32;
        let v: Arc<str> = Arc::from(v);
        self.values.push(Arc::clone(&v));
        self.index.insert(v, k);
        k
    }
}

#[derive(Debug)]
struct CachedSegment {
    schema: SchemaRef,
    batch: BufferedBatch,
}

/// One segment of a table buffer as Arrow, with the time range of its rows.
#[derive(Debug, Clone)]
pub struct BufferedBatch {
    /// The rows.
    pub batch: RecordBatch,
    /// Smallest timestamp in the batch, ns.
    pub min_time: i64,
    /// Largest timestamp in the batch, ns.
    pub max_time: i64,
}

/// A series' rows, to find a point written again.
#[derive(Debug)]
enum SeriesRows {
    /// Every row so far came later in time than the one before (the usual case): row ids
    /// in time order, so a repeated time is found by binary search and a new latest point
    /// costs a push.
    Ordered(Vec<u32>),
    /// Once a point arrives earlier than the series' latest: time → row.
    Map(HashMap<i64, u32>),
}

impl SeriesRows {
    /// The row of the point at `time`, or `next` (recorded as that point's row) if new.
    fn row(&mut self, time: i64, times: &[i64], next: u32) -> u32 {
        match self {
            SeriesRows::Ordered(rows) => {
                match rows.last() {
                    None => {}
                    Some(&last) if times[last as usize] < time => {}
                    Some(_) => match rows.binary_search_by_key(&time, |&r| times[r as usize]) {
                        Ok(i) => return rows[i],
                        Err(_) => {
                            let mut map: HashMap<i64, u32> = rows.iter().map(|&r| (times[r as usize], r)).collect();
                            map.insert(time, next);
                            *self = SeriesRows::Map(map);
                            return next;
                        }
                    },
                }
                rows.push(next);
                next
            }
            SeriesRows::Map(map) => *map.entry(time).or_insert(next),
        }
    }
}

/// Buffered rows of one table.
#[derive(Debug, Default)]
pub struct TableBuffer {
    series: HashMap<Box<[u8]>, u32>,
    /// Per series: (tag column id, dictionary key).
    series_tags: Vec<Vec<(u32, i32)>>,
    /// Per series: its rows by time.
    series_rows: Vec<SeriesRows>,
    row_series: Vec<u32>,
    time: Vec<i64>,
    fields: HashMap<u32, FieldColumn>,
    tags: HashMap<u32, TagDict>,
    min_time: i64,
    max_time: i64,
    cache: Mutex<Vec<Option<CachedSegment>>>,
}

impl TableBuffer {
    /// Number of rows (points).
    pub fn len(&self) -> usize {
        self.time.len()
    }

    /// Whether the buffer is empty.
    pub fn is_empty(&self) -> bool {
        self.time.is_empty()
    }

    /// Time range of the buffered rows, inclusive; `None` when empty.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        (!self.is_empty()).then_some((self.min_time, self.max_time))
    }

    /// Apply validated rows in order.
    pub fn apply(&mut self, table: &TableDef, rows: &[Row]) {
        let mut cache = self.cache.lock();
        for row in rows {
            let series = match self.series.get(&row.series_key) {
                Some(s) => *s,
                None => {
                    let id = self.series_tags.len() as u32;
                    let tags: Vec<(u32, i32)> = Row::decode_series_key(&row.series_key)
                        .map(|(col, v)| (col, self.tags.entry(col).or_default().key(v)))
                        .collect();
                    self.series_tags.push(tags);
                    self.series_rows.push(SeriesRows::Ordered(Vec::new()));
                    self.series.insert(row.series_key.clone(), id);
                    id
                }
            };
            let next = self.time.len() as u32;
            let r = self.series_rows[series as usize].row(row.time, &self.time, next);
            if r == next {
                if self.time.is_empty() {
                    self.min_time = row.time;
                    self.max_time = row.time;
                } else {
                    self.min_time = self.min_time.min(row.time);
                    self.max_time = self.max_time.max(row.time);
                }
                self.time.push(row.time);
                self.row_series.push(series);
            }
            let r = r as usize;
            for (col, v) in &row.fields {
                let Some(ColumnKind::Field(t)) = table.columns.get(*col as usize).map(|c| c.kind) else {
                    continue;
                };
                self.fields.entry(*col).or_insert_with(|| FieldColumn::new(t)).set(r, v);
            }
            if let Some(seg) = cache.get_mut(r / SEGMENT_ROWS) {
                *seg = None;
            }
        }
    }

    /// The buffer as record batches with `table`'s current schema.
    pub fn record_batches(&self, table: &TableDef) -> Result<Vec<RecordBatch>, ArrowError> {
        Ok(self.segments(table)?.into_iter().map(|b| b.batch).collect())
    }

    /// The buffer as one record batch per segment, with each segment's time range. Only
    /// segments a write touched since the last call are converted again.
    pub fn segments(&self, table: &TableDef) -> Result<Vec<BufferedBatch>, ArrowError> {
        let schema = table.schema();
        let ids = table.schema_column_ids();
        let segments = self.len().div_ceil(SEGMENT_ROWS);
        let mut cache = self.cache.lock();
        cache.resize_with(segments, || None);
        let mut out = Vec::with_capacity(segments);
        for (i, slot) in cache.iter_mut().enumerate() {
            if let Some(c) = slot
                && Arc::ptr_eq(&c.schema, &schema)
            {
                out.push(c.batch.clone());
                continue;
            }
            let start = i * SEGMENT_ROWS;
            let end = (start + SEGMENT_ROWS).min(self.len());
            let times = &self.time[start..end];
            let batch = BufferedBatch {
                batch: self.build_batch(table, &schema, &ids, start, end)?,
                min_time: times.iter().copied().min().unwrap_or(i64::MAX),
                max_time: times.iter().copied().max().unwrap_or(i64::MIN),
            };
            *slot = Some(CachedSegment { schema: Arc::clone(&schema), batch: batch.clone() });
            out.push(batch);
        }
        Ok(out)
    }

    fn build_batch(
        &self,
        table: &TableDef,
        schema: &SchemaRef,
        ids: &[usize],
        start: usize,
        end: usize,
    ) -> Result<RecordBatch, ArrowError> {
        let n = end - start;
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(ids.len());
        for (&id, field) in ids.iter().zip(schema.fields()) {
            let col = &table.columns[id];
            let array: ArrayRef = match col.kind {
                ColumnKind::Time => Arc::new(TimestampNanosecondArray::from(self.time[start..end].to_vec())),
                ColumnKind::Tag => match self.tags.get(&(id as u32)) {
                    Some(dict) => {
                        let keys: Int32Array = self.row_series[start..end]
                            .iter()
                            .map(|s| {
                                self.series_tags[*s as usize].iter().find(|(c, _)| *c == id as u32).map(|(_, k)| *k)
                            })
                            .collect();
                        let values = StringArray::from_iter_values(dict.values.iter().map(|v| v.as_ref()));
                        Arc::new(DictionaryArray::<Int32Type>::try_new(keys, Arc::new(values))?)
                    }
                    None => new_null_array(field.data_type(), n),
                },
                ColumnKind::Field(_) => match self.fields.get(&(id as u32)) {
                    Some(c) => c.to_array(start, end),
                    None => new_null_array(field.data_type(), n),
                },
            };
            columns.push(array);
        }
        RecordBatch::try_new(Arc::clone(schema), columns)
    }
}
