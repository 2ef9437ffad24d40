//! Line protocol → Arrow tables without the catalog, for dry runs: the rows a plugin would
//! get, with no database, table or column created.

use std::{collections::HashMap, sync::Arc};

use arrow::{
    array::{
        ArrayRef, BooleanBuilder, Float64Builder, Int64Builder, StringBuilder, TimestampNanosecondBuilder,
        UInt64Builder,
    },
    datatypes::{DataType, Field, Schema, TimeUnit},
    error::ArrowError,
    record_batch::RecordBatch,
};

use crate::lp::{FieldValue, Precision, parse_lines};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tag,
    I64,
    U64,
    F64,
    Bool,
    Str,
}

impl Kind {
    fn of(v: &FieldValue<'_>) -> Self {
        match v {
            FieldValue::I64(_) => Self::I64,
            FieldValue::U64(_) => Self::U64,
            FieldValue::F64(_) => Self::F64,
            FieldValue::Bool(_) => Self::Bool,
            FieldValue::Str(_) => Self::Str,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::Tag => "tag",
            Self::I64 => "integer",
            Self::U64 => "unsigned integer",
            Self::F64 => "float",
            Self::Bool => "boolean",
            Self::Str => "string",
        }
    }
}

#[derive(Debug, Clone)]
enum Value {
    Str(String),
    I64(i64),
    U64(u64),
    F64(f64),
    Bool(bool),
}

#[derive(Debug, Default)]
struct Table {
    columns: Vec<(String, Kind)>,
    index: HashMap<String, usize>,
    rows: Vec<(HashMap<usize, Value>, i64)>,
}

/// Tables by name, in order of first appearance.
pub type Tables = Vec<(String, RecordBatch)>;

/// The tables of `lp` in order of first appearance (rows in line order) and the
/// 1-based-line-numbered errors of lines that were left out.
pub fn tables(lp: &str, default_time: i64) -> Result<(Tables, Vec<String>), ArrowError> {
    let mut order: Vec<String> = Vec::new();
    let mut tables: HashMap<String, Table> = HashMap::new();
    let mut errors = Vec::new();
    for item in parse_lines(lp) {
        let (line_no, _, line) = match item {
            Ok(x) => x,
            Err(e) => {
                errors.push(format!("line {}: {}", e.line_number, e.message));
                continue;
            }
        };
        let time = match line.timestamp {
            // Nanoseconds, as InfluxDB 3's plugin_test reads them (not the write path's `auto`).
            Some(ts) => match Precision::Nanosecond.to_nanos(ts) {
                Some(t) => t,
                None => {
                    errors.push(format!("line {line_no}: timestamp {ts} is out of range"));
                    continue;
                }
            },
            None => default_time,
        };
        let name = line.measurement.to_string();
        if !tables.contains_key(&name) {
            order.push(name.clone());
        }
        let t = tables.entry(name).or_default();
        let mut row = HashMap::new();
        let mut bad = None;
        let cells = line.tags.iter().map(|(k, v)| (k.as_ref(), Kind::Tag, Value::Str(v.to_string()))).chain(
            line.fields.iter().map(|(k, v)| {
                let value = match v {
                    FieldValue::I64(x) => Value::I64(*x),
                    FieldValue::U64(x) => Value::U64(*x),
                    FieldValue::F64(x) => Value::F64(*x),
                    FieldValue::Bool(x) => Value::Bool(*x),
                    FieldValue::Str(x) => Value::Str(x.to_string()),
                };
                (k.as_ref(), Kind::of(v), value)
            }),
        );
        let mut additions = Vec::new();
        for (key, kind, value) in cells {
            let col = match t.index.get(key) {
                Some(&i) => {
                    if t.columns[i].1 != kind {
                        bad = Some(format!(
                            "line {line_no}: column {key:?} is a {} here but a {} in an earlier line",
                            kind.name(),
                            t.columns[i].1.name()
                        ));
                        break;
                    }
                    i
                }
                None => match additions.iter().position(|(k, _): &(String, Kind)| k == key) {
                    Some(j) => t.columns.len() + j,
                    None => {
                        additions.push((key.to_string(), kind));
                        t.columns.len() + additions.len() - 1
                    }
                },
            };
            row.insert(col, value);
        }
        if let Some(e) = bad {
            errors.push(e);
            continue;
        }
        for (k, kind) in additions {
            t.index.insert(k.clone(), t.columns.len());
            t.columns.push((k, kind));
        }
        t.rows.push((row, time));
    }
    let mut out = Vec::with_capacity(order.len());
    for name in order {
        let t = &tables[&name];
        let mut fields = Vec::with_capacity(t.columns.len() + 1);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(t.columns.len() + 1);
        for (i, (col, kind)) in t.columns.iter().enumerate() {
            let cells = t.rows.iter().map(|(r, _)| r.get(&i));
            let (dt, array): (DataType, ArrayRef) = match kind {
                Kind::Tag | Kind::Str => {
                    let mut b = StringBuilder::new();
                    cells.for_each(|c| {
                        b.append_option(match c {
                            Some(Value::Str(s)) => Some(s.as_str()),
                            _ => None,
                        })
                    });
                    (DataType::Utf8, Arc::new(b.finish()))
                }
                Kind::I64 => {
                    let mut b = Int64Builder::new();
                    cells.for_each(|c| {
                        b.append_option(match c {
                            Some(Value::I64(x)) => Some(*x),
                            _ => None,
                        })
                    });
                    (DataType::Int64, Arc::new(b.finish()))
                }
                Kind::U64 => {
                    let mut b = UInt64Builder::new();
                    cells.for_each(|c| {
                        b.append_option(match c {
                            Some(Value::U64(x)) => Some(*x),
                            _ => None,
                        })
                    });
                    (DataType::UInt64, Arc::new(b.finish()))
                }
                Kind::F64 => {
                    let mut b = Float64Builder::new();
                    cells.for_each(|c| {
                        b.append_option(match c {
                            Some(Value::F64(x)) => Some(*x),
                            _ => None,
                        })
                    });
                    (DataType::Float64, Arc::new(b.finish()))
                }
                Kind::Bool => {
                    let mut b = BooleanBuilder::new();
                    cells.for_each(|c| {
                        b.append_option(match c {
                            Some(Value::Bool(x)) => Some(*x),
                            _ => None,
                        })
                    });
                    (DataType::Boolean, Arc::new(b.finish()))
                }
            };
            fields.push(Field::new(col, dt, true));
            arrays.push(array);
        }
        let mut time = TimestampNanosecondBuilder::new();
        t.rows.iter().for_each(|(_, ts)| time.append_value(*ts));
        fields.push(Field::new("time", DataType::Timestamp(TimeUnit::Nanosecond, None), false));
        arrays.push(Arc::new(time.finish()));
        out.push((name, RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?));
    }
    Ok((out, errors))
}

#[cfg(test)]
mod tests {
    use arrow::util::pretty::pretty_format_batches;

    use super::*;

    #[test]
    fn tables_in_order_with_nulls_and_line_errors() {
        let lp = "cpu,host=a usage=1.5 1700000000000000000\nmem free=3i 1700000000000000000\ncpu,host=b usage=2,idle=t\ncpu usage=\"x\"\nnot a line";
        let (tables, errors) = tables(lp, 7).unwrap();
        assert_eq!(tables.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["cpu", "mem"]);
        let cpu = pretty_format_batches(&[tables[0].1.clone()]).unwrap().to_string();
        let rows: Vec<Vec<&str>> = cpu.lines().map(|l| l.split('|').map(str::trim).collect()).collect();
        assert!(rows.iter().any(|r| r.get(1..5) == Some(&["a", "1.5", "", "2023-11-14T22:13:20"][..])), "{cpu}");
        assert!(
            rows.iter().any(|r| r.get(1..5) == Some(&["b", "2.0", "true", "1970-01-01T00:00:00.000000007"][..])),
            "{cpu}"
        );
        assert_eq!(errors.len(), 2, "{errors:?}");
        assert!(errors[0].starts_with("line 4: column \"usage\" is a string here but a float"), "{errors:?}");
        assert!(errors[1].starts_with("line 5:"), "{errors:?}");
    }

    /// A small timestamp is nanoseconds, as in InfluxDB 3's plugin_test (the write path's
    /// `auto` would read 500 as seconds).
    #[test]
    fn timestamps_are_nanoseconds() {
        let (tables, errors) = tables("t,a=1 v=1i 500", 7).unwrap();
        assert!(errors.is_empty(), "{errors:?}");
        let t = pretty_format_batches(&[tables[0].1.clone()]).unwrap().to_string();
        assert!(t.contains("1970-01-01T00:00:00.000000500"), "{t}");
    }
}
