//! Arrow record batches → Python's `marshal` format, which the worker turns into lists of
//! dicts with one C call (`marshal.loads`), no per-row Python code.
//!
//! Only the stable subset of the format is written: `None`, booleans, ints (`i` for 32-bit
//! values, `l` with 15-bit digits beyond), binary floats (`g`), strings (`z`/`u`, interned
//! `Z` for column names), bytes (`s`), lists and dicts, plus back-references (`r`) so each
//! column name and each distinct tag value is decoded once and shared by every row.

use std::collections::HashMap;

use arrow::{
    array::{
        Array, ArrayRef, AsArray, BooleanArray, DictionaryArray, Float16Array, Float32Array, Float64Array, Int8Array,
        Int16Array, Int32Array, Int64Array, UInt8Array, UInt16Array, UInt32Array, UInt64Array,
    },
    datatypes::{
        ArrowDictionaryKeyType, DataType, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, TimeUnit, UInt8Type,
        UInt16Type, UInt32Type, UInt64Type,
    },
    error::ArrowError,
    record_batch::RecordBatch,
    util::display::{ArrayFormatter, FormatOptions},
};

const FLAG_REF: u8 = 0x80;

/// What to do with a null value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Nulls {
    /// Leave the key out of the row (WAL rows: absent columns are omitted).
    Omit,
    /// Write `None` (query results).
    AsNone,
}

/// A marshal writer with a back-reference table.
#[derive(Debug, Default)]
pub struct Writer {
    out: Vec<u8>,
    refs: u32,
    interned: HashMap<String, u32>,
}

impl Writer {
    /// The encoded bytes.
    pub fn finish(self) -> Vec<u8> {
        self.out
    }

    fn u32(&mut self, n: u32) {
        self.out.extend_from_slice(&n.to_le_bytes());
    }

    /// `None`.
    pub fn none(&mut self) {
        self.out.push(b'N');
    }

    /// A bool.
    pub fn bool(&mut self, b: bool) {
        self.out.push(if b { b'T' } else { b'F' });
    }

    /// An int of any size.
    pub fn int(&mut self, v: i128) {
        if let Ok(small) = i32::try_from(v) {
            self.out.push(b'i');
            self.out.extend_from_slice(&small.to_le_bytes());
            return;
        }
        // Python longs: sign in the digit count, magnitude in base 2**15, least significant
        // first (at most 9 digits for 128 bits).
        let mut mag = v.unsigned_abs();
        let mut digits = [0u8; 18];
        let mut n = 0;
        while mag > 0 {
            digits[2 * n..2 * n + 2].copy_from_slice(&((mag & 0x7fff) as u16).to_le_bytes());
            mag >>= 15;
            n += 1;
        }
        self.out.push(b'l');
        let count = n as i32;
        self.out.extend_from_slice(&(if v < 0 { -count } else { count }).to_le_bytes());
        self.out.extend_from_slice(&digits[..2 * n]);
    }

    /// A float.
    pub fn float(&mut self, v: f64) {
        self.out.push(b'g');
        self.out.extend_from_slice(&v.to_le_bytes());
    }

    /// A str (not shared).
    pub fn str(&mut self, s: &str) {
        if s.len() < 256 && s.is_ascii() {
            self.out.push(b'z');
            self.out.push(s.len() as u8);
        } else {
            self.out.push(b'u');
            self.u32(s.len() as u32);
        }
        self.out.extend_from_slice(s.as_bytes());
    }

    /// A str written once and referenced afterwards (column names, tag values); `intern`
    /// makes it an interned string, which speeds up dict lookups by key.
    pub fn shared_str(&mut self, s: &str, intern: bool) {
        self.shared(s, intern);
    }

    /// [`Writer::shared_str`], returning the bytes that refer to `s` from now on, so a
    /// caller writing the same string per row skips the lookup.
    fn shared(&mut self, s: &str, intern: bool) -> [u8; 5] {
        if let Some(&idx) = self.interned.get(s) {
            let r = back_ref(idx);
            self.out.extend_from_slice(&r);
            return r;
        }
        let short = s.len() < 256 && s.is_ascii();
        let tag = match (intern, short) {
            (true, true) => b'Z',
            (true, false) => b't',
            (false, true) => b'z',
            (false, false) => b'u',
        };
        self.out.push(tag | FLAG_REF);
        if short {
            self.out.push(s.len() as u8);
        } else {
            self.u32(s.len() as u32);
        }
        self.out.extend_from_slice(s.as_bytes());
        let idx = self.refs;
        self.interned.insert(s.to_string(), idx);
        self.refs += 1;
        back_ref(idx)
    }

    /// A shared str whose reference bytes are cached in `slot` once known.
    fn cached(&mut self, slot: &mut Option<[u8; 5]>, s: &str, intern: bool) {
        match slot {
            Some(r) => self.out.extend_from_slice(r),
            None => *slot = Some(self.shared(s, intern)),
        }
    }

    /// bytes.
    pub fn bytes(&mut self, b: &[u8]) {
        self.bytes_header(b.len());
        self.out.extend_from_slice(b);
    }

    /// Start a list of `n` items.
    pub fn list(&mut self, n: usize) {
        self.out.push(b'[');
        self.u32(n as u32);
    }

    /// Start a dict; end it with [`Writer::dict_end`].
    pub fn dict(&mut self) {
        self.out.push(b'{');
    }

    /// End a dict.
    pub fn dict_end(&mut self) {
        self.out.push(b'0');
    }

    /// Rows of `batches` as a list of dicts (column name → value), in order.
    pub fn rows(&mut self, batches: &[RecordBatch], nulls: Nulls) -> Result<(), ArrowError> {
        let total: usize = batches.iter().map(RecordBatch::num_rows).sum();
        self.list(total);
        for batch in batches {
            let names: Vec<&str> = batch.schema_ref().fields().iter().map(|f| f.name().as_str()).collect();
            let mut columns: Vec<Column<'_>> = batch.columns().iter().map(Column::new).collect::<Result<_, _>>()?;
            // Per column: may it hold nulls, and the name's reference once written.
            let nullable: Vec<bool> = batch.columns().iter().map(|c| c.null_count() > 0).collect();
            let mut keys: Vec<Option<[u8; 5]>> = vec![None; names.len()];
            self.out.reserve(batch.num_rows() * (1 + names.len() * 10));
            for row in 0..batch.num_rows() {
                self.dict();
                for (i, col) in columns.iter_mut().enumerate() {
                    if nullable[i] && col.is_null(row) {
                        if nulls == Nulls::AsNone {
                            self.cached(&mut keys[i], names[i], true);
                            self.none();
                        }
                        continue;
                    }
                    self.cached(&mut keys[i], names[i], true);
                    col.write(self, row);
                }
                self.dict_end();
            }
        }
        Ok(())
    }
}

/// The marshal bytes referring to back-reference `idx`.
fn back_ref(idx: u32) -> [u8; 5] {
    let mut r = [b'r', 0, 0, 0, 0];
    r[1..].copy_from_slice(&idx.to_le_bytes());
    r
}

/// One column, typed once per batch so the per-row loop is a plain match.
enum Column<'a> {
    I64(Vec<i128>, &'a dyn Array),
    F64(Vec<f64>, &'a dyn Array),
    Bool(&'a BooleanArray),
    Str(&'a dyn Array, StrKind<'a>),
    Bytes(&'a dyn Array),
    /// Strings from a dictionary: keys per row, values shared by reference (each value's
    /// reference bytes cached once written).
    Dict(Vec<Option<usize>>, Vec<String>, Vec<Option<[u8; 5]>>),
    /// Anything else, through Arrow's display formatting.
    Text(Vec<Option<String>>),
}

enum StrKind<'a> {
    Utf8(&'a arrow::array::StringArray),
    Large(&'a arrow::array::LargeStringArray),
    View(&'a arrow::array::StringViewArray),
}

fn ints<T: Array + 'static>(a: &dyn Array, f: impl Fn(&T, usize) -> i128) -> Vec<i128> {
    let a = a.as_any().downcast_ref::<T>().expect("type checked by caller");
    (0..a.len()).map(|i| f(a, i)).collect()
}

fn dict_keys<K: ArrowDictionaryKeyType>(a: &dyn Array) -> Result<Column<'_>, ArrowError> {
    let d: &DictionaryArray<K> = a.as_dictionary::<K>();
    let values = arrow::compute::cast(d.values(), &DataType::Utf8)?;
    let values = values.as_string::<i32>();
    let strings: Vec<String> = (0..values.len()).map(|i| values.value(i).to_string()).collect();
    let keys = d.keys();
    let idx = (0..keys.len())
        .map(|i| if d.is_null(i) { None } else { arrow::datatypes::ArrowNativeType::to_usize(keys.value(i)) })
        .collect();
    let refs = vec![None; strings.len()];
    Ok(Column::Dict(idx, strings, refs))
}

impl<'a> Column<'a> {
    fn new(a: &'a ArrayRef) -> Result<Self, ArrowError> {
        let a = a.as_ref();
        Ok(match a.data_type() {
            DataType::Int8 => Column::I64(ints::<Int8Array>(a, |a, i| a.value(i).into()), a),
            DataType::Int16 => Column::I64(ints::<Int16Array>(a, |a, i| a.value(i).into()), a),
            DataType::Int32 => Column::I64(ints::<Int32Array>(a, |a, i| a.value(i).into()), a),
            DataType::Int64 => Column::I64(ints::<Int64Array>(a, |a, i| a.value(i).into()), a),
            DataType::UInt8 => Column::I64(ints::<UInt8Array>(a, |a, i| a.value(i).into()), a),
            DataType::UInt16 => Column::I64(ints::<UInt16Array>(a, |a, i| a.value(i).into()), a),
            DataType::UInt32 => Column::I64(ints::<UInt32Array>(a, |a, i| a.value(i).into()), a),
            DataType::UInt64 => Column::I64(ints::<UInt64Array>(a, |a, i| a.value(i).into()), a),
            DataType::Timestamp(unit, _) => {
                let scale = i128::from(ns_per(*unit));
                let raw = arrow::compute::cast(a, &DataType::Int64)?;
                let raw = raw.as_primitive::<Int64Type>();
                // Timestamps are ints of nanoseconds since the epoch.
                Column::I64((0..raw.len()).map(|i| i128::from(raw.value(i)) * scale).collect(), a)
            }
            DataType::Float16 => {
                let f = a.as_any().downcast_ref::<Float16Array>().expect("checked");
                Column::F64((0..f.len()).map(|i| f.value(i).to_f64()).collect(), a)
            }
            DataType::Float32 => {
                let f = a.as_any().downcast_ref::<Float32Array>().expect("checked");
                Column::F64((0..f.len()).map(|i| f64::from(f.value(i))).collect(), a)
            }
            DataType::Float64 => {
                let f = a.as_any().downcast_ref::<Float64Array>().expect("checked");
                Column::F64(f.values().to_vec(), a)
            }
            DataType::Boolean => Column::Bool(a.as_boolean()),
            DataType::Utf8 => Column::Str(a, StrKind::Utf8(a.as_string::<i32>())),
            DataType::LargeUtf8 => Column::Str(a, StrKind::Large(a.as_string::<i64>())),
            DataType::Utf8View => Column::Str(a, StrKind::View(a.as_string_view())),
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Column::Bytes(a),
            DataType::Dictionary(key, value)
                if matches!(**value, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
            {
                match **key {
                    DataType::Int8 => dict_keys::<Int8Type>(a)?,
                    DataType::Int16 => dict_keys::<Int16Type>(a)?,
                    DataType::Int32 => dict_keys::<Int32Type>(a)?,
                    DataType::Int64 => dict_keys::<Int64Type>(a)?,
                    DataType::UInt8 => dict_keys::<UInt8Type>(a)?,
                    DataType::UInt16 => dict_keys::<UInt16Type>(a)?,
                    DataType::UInt32 => dict_keys::<UInt32Type>(a)?,
                    DataType::UInt64 => dict_keys::<UInt64Type>(a)?,
                    _ => text(a)?,
                }
            }
            _ => text(a)?,
        })
    }

    fn is_null(&self, row: usize) -> bool {
        match self {
            Column::I64(_, a) | Column::F64(_, a) | Column::Str(a, _) | Column::Bytes(a) => a.is_null(row),
            Column::Bool(a) => a.is_null(row),
            Column::Dict(keys, ..) => keys[row].is_none(),
            Column::Text(v) => v[row].is_none(),
        }
    }

    fn write(&mut self, w: &mut Writer, row: usize) {
        match self {
            Column::I64(v, _) => w.int(v[row]),
            Column::F64(v, _) => w.float(v[row]),
            Column::Bool(a) => w.bool(a.value(row)),
            Column::Str(_, StrKind::Utf8(a)) => w.str(a.value(row)),
            Column::Str(_, StrKind::Large(a)) => w.str(a.value(row)),
            Column::Str(_, StrKind::View(a)) => w.str(a.value(row)),
            Column::Bytes(a) => {
                let b = match a.data_type() {
                    DataType::Binary => a.as_binary::<i32>().value(row),
                    DataType::LargeBinary => a.as_binary::<i64>().value(row),
                    _ => a.as_binary_view().value(row),
                };
                w.bytes(b);
            }
            Column::Dict(keys, values, refs) => {
                let k = keys[row].expect("checked by is_null");
                w.cached(&mut refs[k], &values[k], false);
            }
            Column::Text(v) => w.str(v[row].as_deref().unwrap_or_default()),
        }
    }
}

/// Nanoseconds in one `unit`.
fn ns_per(unit: TimeUnit) -> i64 {
    match unit {
        TimeUnit::Second => 1_000_000_000,
        TimeUnit::Millisecond => 1_000_000,
        TimeUnit::Microsecond => 1_000,
        TimeUnit::Nanosecond => 1,
    }
}

/// Any other type (dates, decimals, lists, ...) as its display string: never a failure.
fn text(a: &dyn Array) -> Result<Column<'_>, ArrowError> {
    let f = ArrayFormatter::try_new(a, &FormatOptions::default())?;
    Ok(Column::Text((0..a.len()).map(|i| (!a.is_null(i)).then(|| f.value(i).to_string())).collect()))
}

/// `[table_batches]`: the argument list of `process_writes` after `influxdb3_local`.
pub fn wal_call_args(tables: &[(String, Vec<RecordBatch>)]) -> Result<Vec<u8>, ArrowError> {
    let mut w = Writer::default();
    w.list(1);
    w.list(tables.len());
    for (name, batches) in tables {
        w.dict();
        w.shared_str("table_name", true);
        w.str(name);
        w.shared_str("rows", true);
        w.rows(batches, Nulls::Omit)?;
        w.dict_end();
    }
    Ok(w.finish())
}

/// [`wal_call_args`] with each table's rows as columns, which a worker with the runtime's
/// speedups builds into the same dicts about twice as fast as `marshal.loads` builds them
/// (the format is described in `weir_plugin/rows.py`): `[[[table_name, segments], ...]]`,
/// one segment `[row_count, columns]` per record batch, a column
/// `[name, kind, present, data, values]`.
pub fn wal_call_args_columns(tables: &[(String, Vec<RecordBatch>)]) -> Result<Vec<u8>, ArrowError> {
    let mut w = Writer::default();
    w.list(1);
    w.list(tables.len());
    for (name, batches) in tables {
        w.list(2);
        w.str(name);
        w.list(batches.len());
        for batch in batches {
            w.list(2);
            w.int(batch.num_rows() as i128);
            w.list(batch.num_columns());
            for (field, column) in batch.schema_ref().fields().iter().zip(batch.columns()) {
                w.list(5);
                w.shared_str(field.name(), true);
                w.column(column)?;
            }
        }
    }
    Ok(w.finish())
}

/// Column kinds of the columns encoding (the numbers `weir_plugin/rows.py` reads).
mod kind {
    pub(super) const F64: i128 = 0;
    pub(super) const I64: i128 = 1;
    pub(super) const U64: i128 = 2;
    pub(super) const BOOL: i128 = 3;
    pub(super) const REF: i128 = 4;
    pub(super) const OBJ: i128 = 5;
}

impl Writer {
    /// `kind, present, data, values` of one column.
    fn column(&mut self, a: &ArrayRef) -> Result<(), ArrowError> {
        match a.data_type() {
            DataType::Float64 => {
                let v = a.as_primitive::<Float64Type>().values();
                self.fixed(kind::F64, a, v.iter().map(|x| x.to_le_bytes()), v.len());
            }
            DataType::Float16 | DataType::Float32 => {
                let cast = arrow::compute::cast(a, &DataType::Float64)?;
                return self.column(&cast);
            }
            DataType::Int64 => {
                let v = a.as_primitive::<Int64Type>().values();
                self.fixed(kind::I64, a, v.iter().map(|x| x.to_le_bytes()), v.len());
            }
            DataType::Int8
            | DataType::Int16
            | DataType::Int32
            | DataType::UInt8
            | DataType::UInt16
            | DataType::UInt32 => {
                let cast = arrow::compute::cast(a, &DataType::Int64)?;
                return self.column(&cast);
            }
            DataType::UInt64 => {
                let v = a.as_primitive::<UInt64Type>().values();
                self.fixed(kind::U64, a, v.iter().map(|x| x.to_le_bytes()), v.len());
            }
            DataType::Timestamp(unit, _) => {
                let scale = ns_per(*unit);
                let raw = arrow::compute::cast(a, &DataType::Int64)?;
                let raw = raw.as_primitive::<Int64Type>().values();
                // Nanoseconds since the epoch (the time column already is: no copy); a value
                // past i64 goes as a Python int instead.
                if scale == 1 {
                    self.fixed(kind::I64, a, raw.iter().map(|x| x.to_le_bytes()), raw.len());
                } else {
                    match raw.iter().map(|x| x.checked_mul(scale)).collect::<Option<Vec<i64>>>() {
                        Some(v) => self.fixed(kind::I64, a, v.iter().map(|x| x.to_le_bytes()), v.len()),
                        None => self.objects(a)?,
                    }
                }
            }
            DataType::Boolean => {
                let v = a.as_boolean().values();
                self.fixed(kind::BOOL, a, v.iter().map(|x| [u8::from(x)]), v.len());
            }
            DataType::Dictionary(key, value)
                if matches!(**value, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) =>
            {
                match **key {
                    DataType::Int8 => self.refs::<Int8Type>(a)?,
                    DataType::Int16 => self.refs::<Int16Type>(a)?,
                    DataType::Int32 => self.refs::<Int32Type>(a)?,
                    DataType::Int64 => self.refs::<Int64Type>(a)?,
                    DataType::UInt8 => self.refs::<UInt8Type>(a)?,
                    DataType::UInt16 => self.refs::<UInt16Type>(a)?,
                    DataType::UInt32 => self.refs::<UInt32Type>(a)?,
                    DataType::UInt64 => self.refs::<UInt64Type>(a)?,
                    _ => self.objects(a)?,
                }
            }
            _ => self.objects(a)?,
        }
        Ok(())
    }

    /// One byte per row, 0 for null; `None` when nothing is null.
    fn presence(&mut self, a: &dyn Array) {
        match a.nulls().filter(|n| n.null_count() > 0) {
            None => self.none(),
            Some(nulls) => {
                self.bytes_header(nulls.len());
                self.out.extend(nulls.iter().map(u8::from));
            }
        }
    }

    /// The start of a bytes object of `len` bytes; the caller appends exactly those.
    fn bytes_header(&mut self, len: usize) {
        self.out.push(b's');
        self.u32(len as u32);
    }

    /// A fixed-width column: little-endian values, one per row.
    fn fixed<const W: usize>(&mut self, kind: i128, a: &dyn Array, values: impl Iterator<Item = [u8; W]>, n: usize) {
        self.int(kind);
        self.presence(a);
        self.bytes_header(n * W);
        self.out.reserve(n * W);
        for v in values {
            self.out.extend_from_slice(&v);
        }
        self.none();
    }

    /// Dictionary-encoded strings: a u32 index per row into the list of values.
    fn refs<K: ArrowDictionaryKeyType>(&mut self, a: &dyn Array) -> Result<(), ArrowError> {
        let d: &DictionaryArray<K> = a.as_dictionary::<K>();
        let values = arrow::compute::cast(d.values(), &DataType::Utf8)?;
        let values = values.as_string::<i32>();
        self.int(kind::REF);
        self.presence(a);
        let keys = d.keys();
        self.bytes_header(keys.len() * 4);
        self.out.reserve(keys.len() * 4);
        for i in 0..keys.len() {
            let k = if keys.is_null(i) {
                0
            } else {
                arrow::datatypes::ArrowNativeType::to_usize(keys.value(i)).unwrap_or(0) as u32
            };
            self.out.extend_from_slice(&k.to_le_bytes());
        }
        self.list(values.len());
        for i in 0..values.len() {
            self.shared_str(values.value(i), false);
        }
        Ok(())
    }

    /// Any other column: a list with each row's value (None where null).
    fn objects(&mut self, a: &ArrayRef) -> Result<(), ArrowError> {
        let mut col = Column::new(a)?;
        self.int(kind::OBJ);
        let present: Vec<u8> = (0..a.len()).map(|row| u8::from(!col.is_null(row))).collect();
        if present.contains(&0) {
            self.bytes(&present);
        } else {
            self.none();
        }
        self.list(a.len());
        for row in 0..a.len() {
            if col.is_null(row) {
                self.none();
            } else {
                col.write(self, row);
            }
        }
        self.none();
        Ok(())
    }
}

/// `[call_time]` for `process_scheduled_call`: whole seconds since the epoch (the worker
/// turns them into a naive `datetime`).
pub fn schedule_call_args(call_time_s: i64) -> Vec<u8> {
    let mut w = Writer::default();
    w.list(1);
    w.int(i128::from(call_time_s));
    w.finish()
}

/// `[query_parameters, request_headers, request_body]` for `process_request`.
pub fn request_call_args<'a>(
    query: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    headers: impl ExactSizeIterator<Item = (&'a String, &'a String)>,
    body: &[u8],
) -> Vec<u8> {
    let mut w = Writer::default();
    w.list(3);
    for map in [query.collect::<Vec<_>>(), headers.collect::<Vec<_>>()] {
        w.dict();
        for (k, v) in map {
            w.str(k);
            w.str(v);
        }
        w.dict_end();
    }
    w.bytes(body);
    w.finish()
}

/// A query answer: a list of dicts, nulls as `None`.
pub fn query_rows(batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut w = Writer::default();
    w.rows(batches, Nulls::AsNone)?;
    Ok(w.finish())
}

#[cfg(test)]
mod tests;
