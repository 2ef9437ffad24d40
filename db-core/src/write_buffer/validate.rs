//! Validation of parsed line protocol against the catalog.
//!
//! Every line either becomes a [`Row`] or a [`LineError`] naming its 1-based line number.
//! Missing tables and columns are created in the catalog (first writer decides a field's
//! type); a line whose field type disagrees with the catalog is rejected on its own.

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
};

use crate::{
    catalog::{self, Catalog, ColumnAddition, ColumnKind, DatabaseSchema, FieldType, Limits, TIME_COLUMN},
    lp::{self, FieldValue, LineError, ParsedLine, Precision},
};

/// An owned field value.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    /// Signed integer.
    I64(i64),
    /// Unsigned integer.
    U64(u64),
    /// Float.
    F64(f64),
    /// Boolean.
    Bool(bool),
    /// String.
    Str(Box<str>),
}

impl Value {
    fn from_lp(v: &FieldValue<'_>) -> Self {
        match v {
            FieldValue::I64(v) => Self::I64(*v),
            FieldValue::U64(v) => Self::U64(*v),
            FieldValue::F64(v) => Self::F64(*v),
            FieldValue::Bool(v) => Self::Bool(*v),
            FieldValue::Str(s) => Self::Str(Box::from(s.as_ref())),
        }
    }
}

fn lp_field_type(v: &FieldValue<'_>) -> FieldType {
    match v {
        FieldValue::I64(_) => FieldType::Int64,
        FieldValue::U64(_) => FieldType::UInt64,
        FieldValue::F64(_) => FieldType::Float64,
        FieldValue::Bool(_) => FieldType::Boolean,
        FieldValue::Str(_) => FieldType::String,
    }
}

/// One validated point.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// Timestamp, ns since the epoch.
    pub time: i64,
    /// Canonical series key: for each tag in column-id order, the column id (u32 LE),
    /// the value length (u32 LE) and the value bytes. Equal tag sets give equal keys.
    pub series_key: Box<[u8]>,
    /// Field values by column id, in line order (a repeated key keeps the last value).
    pub fields: Vec<(u32, Value)>,
}

impl Row {
    /// Decode the tags of a series key: `(column id, value)`.
    pub fn decode_series_key(key: &[u8]) -> impl Iterator<Item = (u32, &str)> + '_ {
        let mut rest = key;
        std::iter::from_fn(move || {
            if rest.len() < 8 {
                return None;
            }
            let col = u32::from_le_bytes(rest[0..4].try_into().ok()?);
            let len = u32::from_le_bytes(rest[4..8].try_into().ok()?) as usize;
            let value = std::str::from_utf8(rest.get(8..8 + len)?).ok()?;
            rest = &rest[8 + len..];
            Some((col, value))
        })
    }
}

/// Rows for one table, in write order.
#[derive(Debug, Clone, PartialEq)]
pub struct TableRows {
    /// Table id.
    pub table_id: u32,
    /// Rows.
    pub rows: Vec<Row>,
}

/// The outcome of validating one request body.
#[derive(Debug, Clone)]
pub struct ValidatedWrite {
    /// Database (absent when no line was valid and the database did not exist).
    pub db: Option<Arc<DatabaseSchema>>,
    /// Accepted rows per table, tables in order of first appearance.
    pub tables: Vec<TableRows>,
    /// Number of accepted lines.
    pub accepted_lines: usize,
    /// Rejected lines.
    pub errors: Vec<LineError>,
    /// Text of the accepted lines, for the WAL (re-parsed on replay with the same
    /// precision and default time, which reproduces exactly these rows).
    pub accepted_text: String,
}

enum Outcome {
    Row(u32, Row),
    Missing(Vec<ColumnAddition>),
    Rejected(String),
}

/// Validate a body: parse, resolve the database (auto-created when at least one line
/// parses), check every line against the catalog and create what is missing.
///
/// With `accept_partial = false`, a body with any unparsable line returns before touching
/// the catalog, so a rejected request creates no database, table or column.
/// `limits`: the schema limits a write is checked against ([`Limits::NONE`] for WAL replay:
/// what was acknowledged stays, whatever the limits are now).
pub fn validate(
    catalog: &Catalog,
    db_name: &str,
    body: &str,
    precision: Precision,
    default_time: i64,
    accept_partial: bool,
    limits: Limits,
) -> catalog::Result<ValidatedWrite> {
    let mut parsed: Vec<(usize, &str, ParsedLine<'_>)> = Vec::new();
    let mut errors: Vec<LineError> = Vec::new();
    for item in lp::parse_lines(body) {
        match item {
            Ok(p) => parsed.push(p),
            Err(e) => errors.push(e),
        }
    }
    if parsed.is_empty() || (!accept_partial && !errors.is_empty()) {
        return Ok(ValidatedWrite {
            db: catalog.db(db_name),
            tables: Vec::new(),
            accepted_lines: 0,
            errors,
            accepted_text: String::new(),
        });
    }
    let (mut db, _) = catalog.db_or_create(db_name)?;
    let mut outcomes: Vec<Outcome> =
        parsed.iter().map(|(_, _, line)| check_line(&db, line, precision, default_time)).collect();

    let additions = plan_additions(catalog, &db, &mut outcomes, limits);
    if !additions.is_empty() {
        db = catalog.add_columns(db.id, &additions, limits)?;
        for (o, (_, _, line)) in outcomes.iter_mut().zip(&parsed) {
            if matches!(o, Outcome::Missing(_)) {
                *o = match check_line(&db, line, precision, default_time) {
                    // Still missing after the additions: a concurrent writer filled the table
                    // or created the column with another type.
                    Outcome::Missing(adds) => Outcome::Rejected(still_missing(&db, &adds, limits)),
                    other => other,
                };
            }
        }
    }

    let mut tables: Vec<TableRows> = Vec::new();
    let mut table_pos: HashMap<u32, usize> = HashMap::new();
    let mut accepted_text = String::with_capacity(body.len());
    let mut accepted_lines = 0;
    for (o, (line_number, original, _)) in outcomes.into_iter().zip(&parsed) {
        match o {
            Outcome::Row(table_id, row) => {
                let pos = *table_pos.entry(table_id).or_insert_with(|| {
                    tables.push(TableRows { table_id, rows: Vec::new() });
                    tables.len() - 1
                });
                tables[pos].rows.push(row);
                if accepted_lines > 0 {
                    accepted_text.push('\n');
                }
                accepted_text.push_str(original);
                accepted_lines += 1;
            }
            Outcome::Rejected(message) => errors.push(LineError::new(*line_number, original, message)),
            Outcome::Missing(_) => errors.push(LineError::new(*line_number, original, "schema could not be created")),
        }
    }
    errors.sort_by_key(|e| e.line_number);
    Ok(ValidatedWrite { db: Some(db), tables, accepted_lines, errors, accepted_text })
}

/// The columns (and tables) the lines still missing schema need, first line first: a line
/// whose additions would pass a limit is rejected on its own (InfluxDB 3's message) and
/// adds nothing; the first line to name a column decides its kind.
fn plan_additions(
    catalog: &Catalog,
    db: &DatabaseSchema,
    outcomes: &mut [Outcome],
    limits: Limits,
) -> Vec<ColumnAddition> {
    let mut additions: Vec<ColumnAddition> = Vec::new();
    let mut planned: HashSet<(Arc<str>, Arc<str>)> = HashSet::new();
    // Per table: its column count once the planned additions are made.
    let mut columns: HashMap<Arc<str>, usize> = HashMap::new();
    let mut tables_left = limits.tables.map(|max| max.saturating_sub(catalog.table_count()));
    for o in outcomes.iter_mut() {
        let Outcome::Missing(adds) = o else { continue };
        let Some(table) = adds.first().map(|a| Arc::clone(&a.table)) else { continue };
        let new_table = db.table(&table).is_none() && !columns.contains_key(&table);
        if new_table && tables_left == Some(0) {
            *o = Outcome::Rejected(catalog::Error::TooManyTables(limits.tables.unwrap_or_default()).to_string());
            continue;
        }
        let fresh: Vec<&ColumnAddition> =
            adds.iter().filter(|a| !planned.contains(&(Arc::clone(&a.table), Arc::clone(&a.column)))).collect();
        // A new table has its time column.
        let count = *columns.get(&table).unwrap_or(&db.table(&table).map_or(1, |t| t.columns.len()));
        if count + fresh.len() > limits.columns_per_table {
            *o = Outcome::Rejected(catalog::Error::TooManyColumns(limits.columns_per_table).to_string());
            continue;
        }
        columns.insert(Arc::clone(&table), count + fresh.len());
        if new_table {
            tables_left = tables_left.map(|n| n - 1);
        }
        for a in fresh {
            planned.insert((Arc::clone(&a.table), Arc::clone(&a.column)));
            additions.push(a.clone());
        }
    }
    additions
}

/// Why a line still misses schema after the additions were applied.
fn still_missing(db: &DatabaseSchema, adds: &[ColumnAddition], limits: Limits) -> String {
    match adds.first().map(|a| db.table(&a.table)) {
        Some(None) if limits.tables.is_some() => {
            catalog::Error::TooManyTables(limits.tables.unwrap_or_default()).to_string()
        }
        Some(Some(t)) if t.columns.len() >= limits.columns_per_table => {
            catalog::Error::TooManyColumns(limits.columns_per_table).to_string()
        }
        _ => "column was created concurrently with a different type".to_string(),
    }
}

fn check_line(db: &DatabaseSchema, line: &ParsedLine<'_>, precision: Precision, default_time: i64) -> Outcome {
    let time = match line.timestamp {
        Some(ts) => match precision.to_nanos(ts) {
            Some(t) => t,
            None => {
                return Outcome::Rejected(format!("timestamp {ts} overflows nanoseconds at precision {precision:?}"));
            }
        },
        None => default_time,
    };
    // A set once the line is wide (a scan per tag would be quadratic).
    let field_names: Option<HashSet<&str>> =
        (line.tags.len() * line.fields.len() > 256).then(|| line.fields.iter().map(|(f, _)| f.as_ref()).collect());
    for (k, _) in &line.tags {
        if k.as_ref() == TIME_COLUMN {
            return Outcome::Rejected("tag key \"time\" is reserved".to_string());
        }
        let both = match &field_names {
            Some(set) => set.contains(k.as_ref()),
            None => line.fields.iter().any(|(f, _)| f == k),
        };
        if both {
            return Outcome::Rejected(format!("key {k:?} is used as both a tag and a field"));
        }
    }
    for (k, _) in &line.fields {
        if k.as_ref() == TIME_COLUMN {
            return Outcome::Rejected("field key \"time\" is reserved".to_string());
        }
    }
    let Some(table) = db.table(&line.measurement) else {
        let table: Arc<str> = Arc::from(line.measurement.as_ref());
        let adds = line
            .tags
            .iter()
            .map(|(k, _)| ColumnAddition {
                table: Arc::clone(&table),
                column: Arc::from(k.as_ref()),
                kind: ColumnKind::Tag,
            })
            .chain(line.fields.iter().map(|(k, v)| ColumnAddition {
                table: Arc::clone(&table),
                column: Arc::from(k.as_ref()),
                kind: ColumnKind::Field(lp_field_type(v)),
            }))
            .collect();
        return Outcome::Missing(adds);
    };

    let mut missing = Vec::new();
    let mut tags: Vec<(u32, &str)> = Vec::with_capacity(line.tags.len());
    for (k, v) in &line.tags {
        match table.column_id(k) {
            Some(id) => match table.columns[id].kind {
                ColumnKind::Tag => tags.push((id as u32, v.as_ref())),
                ColumnKind::Field(t) => {
                    return Outcome::Rejected(format!(
                        "column {k:?} in table {:?} is a {} field, not a tag",
                        table.name,
                        t.name()
                    ));
                }
                ColumnKind::Time => {
                    return Outcome::Rejected("tag key \"time\" is reserved".to_string());
                }
            },
            None => missing.push(ColumnAddition {
                table: Arc::clone(&table.name),
                column: Arc::from(k.as_ref()),
                kind: ColumnKind::Tag,
            }),
        }
    }
    let mut fields: Vec<(u32, Value)> = Vec::with_capacity(line.fields.len());
    for (k, v) in &line.fields {
        let t = lp_field_type(v);
        match table.column_id(k) {
            Some(id) => match table.columns[id].kind {
                // The parser collapsed repeated field keys (the last value wins), so every
                // key is new here.
                ColumnKind::Field(existing) if existing == t => fields.push((id as u32, Value::from_lp(v))),
                ColumnKind::Field(existing) => {
                    return Outcome::Rejected(format!(
                        "invalid column type for column '{k}', expected iox::column_type::field::{}, got iox::column_type::field::{}",
                        existing.iox_name(),
                        t.iox_name()
                    ));
                }
                ColumnKind::Tag => {
                    return Outcome::Rejected(format!("column {k:?} in table {:?} is a tag, not a field", table.name));
                }
                ColumnKind::Time => {
                    return Outcome::Rejected("field key \"time\" is reserved".to_string());
                }
            },
            None => missing.push(ColumnAddition {
                table: Arc::clone(&table.name),
                column: Arc::from(k.as_ref()),
                kind: ColumnKind::Field(t),
            }),
        }
    }
    if !missing.is_empty() {
        return Outcome::Missing(missing);
    }
    tags.sort_unstable_by_key(|(id, _)| *id);
    let key_len: usize = tags.iter().map(|(_, v)| 8 + v.len()).sum();
    let mut key = Vec::with_capacity(key_len);
    for (id, v) in &tags {
        key.extend_from_slice(&id.to_le_bytes());
        key.extend_from_slice(&(v.len() as u32).to_le_bytes());
        key.extend_from_slice(v.as_bytes());
    }
    Outcome::Row(table.id, Row { time, series_key: key.into_boxed_slice(), fields })
}
