//! The catalog: databases → tables → columns, plus API tokens.
//!
//! The catalog is created on first write (databases, tables and columns appear as line
//! protocol names them) and only grows: a column's type never changes once set, so a line
//! that disagrees with it is rejected. Deleted databases are kept as tombstones (their id
//! is never reused), which lets WAL replay tell "deleted" apart from "not yet persisted".
//!
//! Persistence: the whole catalog is one versioned JSON object (`catalog/catalog.json`)
//! written with [`Storage::put_durable`]. DDL (create/delete database, tokens) persists
//! before it returns; schema growth from writes marks the catalog dirty and is persisted
//! by the snapshot before any WAL file is retired — until then WAL replay re-derives it.

use std::{
    collections::{BTreeMap, HashMap},
    fmt,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use bytes::Bytes;
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};

use crate::storage::{self, Storage};
pub use crate::trigger::{DEFAULT_MAX_RETRIES, ErrorBehavior, TriggerDef, TriggerSpec};

/// Name lookups run for every line written, so they use a fast hasher (foldhash, seeded
/// randomly per process, as the write buffer's maps).
type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[cfg(test)]
mod tests;

/// Current catalog format version.
pub const CATALOG_FORMAT_VERSION: u32 = 1;

/// Longest database name accepted.
pub const MAX_DB_NAME_LEN: usize = 64;

/// Name of the time column in every table.
pub const TIME_COLUMN: &str = "time";

/// Catalog errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Invalid database name.
    #[error("invalid database name {name:?}: {reason}")]
    InvalidDbName {
        /// The name.
        name: String,
        /// Why it was rejected.
        reason: &'static str,
    },
    /// Database already exists.
    #[error("database {0:?} already exists")]
    DbExists(String),
    /// Database does not exist.
    #[error("database {0:?} not found")]
    DbNotFound(String),
    /// Token name already used.
    #[error("token {0:?} already exists")]
    TokenExists(String),
    /// No token by this name.
    #[error("token {0:?} not found")]
    TokenNotFound(String),
    /// A token request that cannot be granted as asked.
    #[error("{0}")]
    InvalidToken(String),
    /// A trigger with this name exists in the database.
    #[error("trigger {name:?} already exists in database {db:?}")]
    TriggerExists {
        /// Database.
        db: String,
        /// Trigger.
        name: String,
    },
    /// A request trigger already serves this path (request paths are unique across
    /// databases).
    #[error("request path {path:?} is already served by trigger {trigger:?} in database {db:?}")]
    RequestPathTaken {
        /// The path below /api/v3/engine/.
        path: String,
        /// Database of the trigger serving it.
        db: String,
        /// That trigger.
        trigger: String,
    },
    /// No such table.
    #[error("table {table:?} not found in database {db:?}")]
    TableNotFound {
        /// Database.
        db: String,
        /// Table.
        table: String,
    },
    /// No such trigger.
    #[error("trigger {name:?} not found in database {db:?}")]
    TriggerNotFound {
        /// Database.
        db: String,
        /// Trigger.
        name: String,
    },
    /// An enabled trigger can only be deleted with `force`.
    #[error("trigger {name:?} in database {db:?} is enabled: disable it first or delete it with force")]
    TriggerEnabled {
        /// Database.
        db: String,
        /// Trigger.
        name: String,
    },
    /// The trigger definition is invalid.
    #[error("invalid trigger: {0}")]
    InvalidTrigger(#[from] crate::trigger::Error),
    /// Persisting or loading failed.
    #[error("catalog storage: {0}")]
    Storage(#[from] storage::Error),
    /// The persisted catalog cannot be decoded.
    #[error("catalog at {path} is unreadable: {message}")]
    Corrupt {
        /// Object path.
        path: String,
        /// Decoder message.
        message: String,
    },
    /// A new column would take a table past `--num-total-columns-per-table-limit`.
    #[error("Update to schema would exceed number of columns per table limit of {0} columns")]
    TooManyColumns(usize),
    /// A new table would take the server past `--num-table-limit`.
    #[error("Update to schema would exceed number of tables limit of {0} tables")]
    TooManyTables(usize),
    /// A new database would take the server past `--num-database-limit`.
    #[error("Adding a new database would exceed limit of {0} databases")]
    TooManyDbs(usize),
    /// The persisted catalog is from a newer Weir.
    #[error("catalog format version {found} is newer than this server supports ({supported})")]
    UnsupportedVersion {
        /// Version found.
        found: u32,
        /// Highest supported.
        supported: u32,
    },
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Type of a field column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldType {
    /// `12i`
    Int64,
    /// `12u`
    UInt64,
    /// `1.5`
    Float64,
    /// `t` / `false`
    Boolean,
    /// `"text"`
    String,
}

impl FieldType {
    /// Arrow type of the column.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::Int64 => DataType::Int64,
            Self::UInt64 => DataType::UInt64,
            Self::Float64 => DataType::Float64,
            Self::Boolean => DataType::Boolean,
            Self::String => DataType::Utf8,
        }
    }

    /// InfluxDB 3's name for the type in conflict messages (`iox::column_type::field::<name>`).
    pub fn iox_name(self) -> &'static str {
        match self {
            Self::Int64 => "integer",
            Self::UInt64 => "uinteger",
            Self::Float64 => "float",
            Self::Boolean => "boolean",
            Self::String => "string",
        }
    }

    /// Human name used in error messages.
    pub fn name(self) -> &'static str {
        match self {
            Self::Int64 => "integer",
            Self::UInt64 => "unsigned integer",
            Self::Float64 => "float",
            Self::Boolean => "boolean",
            Self::String => "string",
        }
    }
}

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "type")]
pub enum ColumnKind {
    /// A tag (string, part of the series key).
    Tag,
    /// A field of the given type.
    Field(FieldType),
    /// The time column.
    Time,
}

/// Arrow type of tag columns.
pub fn tag_arrow_type() -> DataType {
    DataType::Dictionary(Box::new(DataType::Int32), Box::new(DataType::Utf8))
}

/// Arrow type of the time column.
pub fn time_arrow_type() -> DataType {
    DataType::Timestamp(TimeUnit::Nanosecond, None)
}

impl ColumnKind {
    /// Arrow type of the column.
    pub fn arrow_type(self) -> DataType {
        match self {
            Self::Tag => tag_arrow_type(),
            Self::Field(t) => t.arrow_type(),
            Self::Time => time_arrow_type(),
        }
    }
}

/// One column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ColumnDef {
    /// Column name.
    pub name: Arc<str>,
    /// Kind and type.
    #[serde(flatten)]
    pub kind: ColumnKind,
}

/// One table. Column ids are positions in `columns`, which only grows.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TableDef {
    /// Table id, unique within its database.
    pub id: u32,
    /// Table name.
    pub name: Arc<str>,
    /// Columns in creation order; `time` is always column 0.
    pub columns: Vec<ColumnDef>,
    #[serde(skip)]
    by_name: FastMap<Arc<str>, usize>,
    #[serde(skip)]
    schema: Option<SchemaRef>,
}

impl PartialEq for TableDef {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.name == other.name && self.columns == other.columns
    }
}

impl TableDef {
    fn new(id: u32, name: Arc<str>) -> Self {
        let mut t = Self {
            id,
            name,
            columns: vec![ColumnDef { name: Arc::from(TIME_COLUMN), kind: ColumnKind::Time }],
            by_name: FastMap::default(),
            schema: None,
        };
        t.reindex();
        t
    }

    fn reindex(&mut self) {
        self.by_name = self.columns.iter().enumerate().map(|(i, c)| (Arc::clone(&c.name), i)).collect();
        self.schema = Some(Arc::new(self.build_schema()));
    }

    /// Column id by name.
    pub fn column_id(&self, name: &str) -> Option<usize> {
        self.by_name.get(name).copied()
    }

    /// Column by name.
    pub fn column(&self, name: &str) -> Option<&ColumnDef> {
        self.column_id(name).map(|i| &self.columns[i])
    }

    /// Ids of the tag columns, sorted by tag name (the series key order).
    pub fn tag_ids_sorted(&self) -> Vec<usize> {
        let mut ids: Vec<usize> =
            (0..self.columns.len()).filter(|&i| self.columns[i].kind == ColumnKind::Tag).collect();
        ids.sort_by(|&a, &b| self.columns[a].name.cmp(&self.columns[b].name));
        ids
    }

    /// Arrow schema as queries see it: tags (sorted by name), fields (sorted by name), time.
    pub fn schema(&self) -> SchemaRef {
        match &self.schema {
            Some(s) => Arc::clone(s),
            None => Arc::new(self.build_schema()),
        }
    }

    /// Column ids in schema order (matching [`TableDef::schema`]).
    pub fn schema_column_ids(&self) -> Vec<usize> {
        let mut tags = Vec::new();
        let mut fields = Vec::new();
        let mut time = Vec::new();
        for (i, c) in self.columns.iter().enumerate() {
            match c.kind {
                ColumnKind::Tag => tags.push(i),
                ColumnKind::Field(_) => fields.push(i),
                ColumnKind::Time => time.push(i),
            }
        }
        tags.sort_by(|&a, &b| self.columns[a].name.cmp(&self.columns[b].name));
        fields.sort_by(|&a, &b| self.columns[a].name.cmp(&self.columns[b].name));
        tags.into_iter().chain(fields).chain(time).collect()
    }

    fn build_schema(&self) -> Schema {
        let fields: Vec<Field> = self
            .schema_column_ids()
            .into_iter()
            .map(|i| {
                let c = &self.columns[i];
                Field::new(c.name.as_ref(), c.kind.arrow_type(), c.kind != ColumnKind::Time)
            })
            .collect();
        Schema::new(fields)
    }
}

/// One database.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DatabaseSchema {
    /// Database id; never reused.
    pub id: u32,
    /// Database name.
    pub name: Arc<str>,
    /// Soft-deleted: hidden, name free for reuse, id kept as a tombstone.
    #[serde(default)]
    pub deleted: bool,
    /// Next table id.
    pub next_table_id: u32,
    /// Tables by id.
    pub tables: BTreeMap<u32, Arc<TableDef>>,
    /// Processing-engine triggers by name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub triggers: BTreeMap<Arc<str>, Arc<TriggerDef>>,
    /// Retention period (ns): rows older than now minus this are not queryable and their
    /// Parquet files are removed. `None`: kept until the database is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_period_ns: Option<i64>,
    /// Deleted tables by name: the newest WAL file (sequence) whose rows of that table
    /// were deleted with it. WAL replay and trigger catch-up leave those rows out; rows in
    /// later files belong to a table created again under the name.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub dropped_tables: BTreeMap<Arc<str>, u64>,
    /// Table ids by name (derived; rebuilt by [`DatabaseSchema::reindex`]).
    #[serde(skip)]
    table_ids: FastMap<Arc<str>, u32>,
}

impl PartialEq for DatabaseSchema {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
            && self.name == other.name
            && self.deleted == other.deleted
            && self.next_table_id == other.next_table_id
            && self.tables == other.tables
            && self.triggers == other.triggers
            && self.retention_period_ns == other.retention_period_ns
            && self.dropped_tables == other.dropped_tables
    }
}

impl DatabaseSchema {
    /// An empty database.
    pub fn new(id: u32, name: Arc<str>) -> Self {
        Self {
            id,
            name,
            deleted: false,
            next_table_id: 1,
            tables: BTreeMap::new(),
            triggers: BTreeMap::new(),
            retention_period_ns: None,
            dropped_tables: BTreeMap::new(),
            table_ids: FastMap::default(),
        }
    }

    /// `text` (line protocol of WAL file `seq`) without the lines of tables deleted after
    /// that file was written.
    pub fn without_dropped<'a>(&self, text: &'a str, seq: u64) -> std::borrow::Cow<'a, str> {
        if !self.dropped_tables.values().any(|&s| s >= seq) {
            return std::borrow::Cow::Borrowed(text);
        }
        let mut out = String::with_capacity(text.len());
        for (_, raw, line) in crate::lp::parse_lines(text).flatten() {
            if self.dropped_tables.get(line.measurement.as_ref()).is_some_and(|&s| s >= seq) {
                continue;
            }
            out.push_str(raw);
            out.push('\n');
        }
        std::borrow::Cow::Owned(out)
    }

    /// The oldest time (ns) still kept at `now_ns`, if the database has a retention period.
    pub fn retention_cutoff(&self, now_ns: i64) -> Option<i64> {
        self.retention_period_ns.map(|p| now_ns.saturating_sub(p))
    }

    fn reindex(&mut self) {
        self.table_ids = self.tables.values().map(|t| (Arc::clone(&t.name), t.id)).collect();
    }

    fn insert_table(&mut self, table: TableDef) {
        self.table_ids.insert(Arc::clone(&table.name), table.id);
        self.tables.insert(table.id, Arc::new(table));
    }

    /// Table by name.
    pub fn table(&self, name: &str) -> Option<&Arc<TableDef>> {
        self.table_ids.get(name).and_then(|id| self.tables.get(id))
    }

    /// Table by id.
    pub fn table_by_id(&self, id: u32) -> Option<&Arc<TableDef>> {
        self.tables.get(&id)
    }
}

/// A stored API token (only its hash is kept).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenInfo {
    /// Token id.
    pub id: u32,
    /// Token name.
    pub name: String,
    /// Hex SHA-256 of `salt:token` (of the bare token when `salt` is absent: tokens
    /// made before salting).
    pub hash: String,
    /// Random per-token salt, hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub salt: Option<String>,
    /// Creation time, ns since the epoch.
    pub created_at: i64,
    /// Admin tokens may do everything.
    pub admin: bool,
    /// What a resource (non-admin) token may do.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub permissions: Vec<crate::auth::Permission>,
    /// When the token stops working, ns since the epoch; `None` never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

/// The persisted catalog document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CatalogState {
    /// Format version ([`CATALOG_FORMAT_VERSION`]).
    pub format_version: u32,
    /// Bumped on every change.
    pub sequence: u64,
    /// Next database id.
    pub next_db_id: u32,
    /// Databases by id, tombstones included.
    pub databases: BTreeMap<u32, Arc<DatabaseSchema>>,
    /// API tokens.
    #[serde(default)]
    pub tokens: Vec<TokenInfo>,
    /// Next token id.
    #[serde(default)]
    pub next_token_id: u32,
}

impl Default for CatalogState {
    fn default() -> Self {
        Self {
            format_version: CATALOG_FORMAT_VERSION,
            sequence: 0,
            next_db_id: 1,
            databases: BTreeMap::new(),
            tokens: Vec::new(),
            next_token_id: 1,
        }
    }
}

impl CatalogState {
    /// Live (not deleted) database by name.
    pub fn db(&self, name: &str) -> Option<&Arc<DatabaseSchema>> {
        self.databases.values().find(|d| !d.deleted && d.name.as_ref() == name)
    }

    /// The request trigger (any state) serving `path` (normalized), with its database.
    pub fn request_trigger(&self, path: &str) -> Option<(&Arc<DatabaseSchema>, &Arc<TriggerDef>)> {
        self.databases
            .values()
            .filter(|d| !d.deleted)
            .find_map(|d| d.triggers.values().find(|t| t.specification.request_path() == Some(path)).map(|t| (d, t)))
    }

    /// Decode a persisted catalog.
    pub fn decode(bytes: &[u8], path: &str) -> Result<Self> {
        #[derive(Deserialize)]
        struct Probe {
            format_version: u32,
        }
        let probe: Probe = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt { path: path.to_string(), message: e.to_string() })?;
        if probe.format_version > CATALOG_FORMAT_VERSION {
            return Err(Error::UnsupportedVersion { found: probe.format_version, supported: CATALOG_FORMAT_VERSION });
        }
        let mut state: Self = serde_json::from_slice(bytes)
            .map_err(|e| Error::Corrupt { path: path.to_string(), message: e.to_string() })?;
        for db in state.databases.values_mut() {
            let db = Arc::make_mut(db);
            for t in db.tables.values_mut() {
                Arc::make_mut(t).reindex();
            }
            db.reindex();
        }
        Ok(state)
    }

    /// Encode for persistence (pretty JSON: operators read it).
    pub fn encode(&self) -> Vec<u8> {
        // Serializing plain data structures cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }
}

fn check_db_limit(s: &CatalogState, limit: Option<usize>) -> Result<()> {
    match limit {
        Some(max) if s.databases.values().filter(|d| !d.deleted).count() >= max => Err(Error::TooManyDbs(max)),
        _ => Ok(()),
    }
}

/// Check a database name against InfluxDB 3's rules: 1–64 characters, ASCII letters,
/// digits, `_` and `-`, starting with a letter or digit.
pub fn validate_db_name(name: &str) -> Result<()> {
    let invalid = |reason| Err(Error::InvalidDbName { name: name.to_string(), reason });
    if name.is_empty() {
        return invalid("name is empty");
    }
    if name.len() > MAX_DB_NAME_LEN {
        return invalid("name is longer than 64 characters");
    }
    if !name.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("name must start with a letter or digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return invalid("only ASCII letters, digits, '_' and '-' are allowed");
    }
    Ok(())
}

/// A schema addition requested by a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnAddition {
    /// Table name.
    pub table: Arc<str>,
    /// Column name.
    pub column: Arc<str>,
    /// Kind.
    pub kind: ColumnKind,
}

/// Schema limits (the `--num-*-limit` flags, with InfluxDB 3's names and error texts).
/// Writes are checked against them; WAL replay is not (what was acknowledged stays).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Live databases (`None`: no limit).
    pub databases: Option<usize>,
    /// Tables across all live databases (`None`: no limit).
    pub tables: Option<usize>,
    /// Columns per table, `time` included.
    pub columns_per_table: usize,
}

/// Default `--num-table-limit`.
pub const DEFAULT_TABLE_LIMIT: usize = 2_000;
/// Default `--num-total-columns-per-table-limit`.
pub const DEFAULT_COLUMN_LIMIT: usize = 500;

impl Default for Limits {
    fn default() -> Self {
        Self { databases: None, tables: Some(DEFAULT_TABLE_LIMIT), columns_per_table: DEFAULT_COLUMN_LIMIT }
    }
}

impl Limits {
    /// No limits (WAL replay, tests).
    pub const NONE: Self = Self { databases: None, tables: None, columns_per_table: usize::MAX };
}

/// A retention period as users write it (`30d`, `12h`, `1w`; `none` or `infinite` for no
/// retention): nanoseconds, or `None`.
pub fn parse_retention_period(text: &str) -> std::result::Result<Option<i64>, String> {
    let t = text.trim();
    if t.eq_ignore_ascii_case("none") || t.eq_ignore_ascii_case("infinite") {
        return Ok(None);
    }
    let d = humantime::parse_duration(t)
        .map_err(|e| format!("invalid retention period {t:?}: {e} (examples: 30d, 12h, 1w, none)"))?;
    let ns = i64::try_from(d.as_nanos()).map_err(|_| format!("retention period {t:?} is too long"))?;
    if ns < 1_000_000_000 {
        return Err(format!("retention period {t:?} is shorter than one second"));
    }
    Ok(Some(ns))
}

/// What [`Catalog::update_trigger`] changes (`None`: keep).
#[derive(Debug, Clone, Default)]
pub struct TriggerUpdate {
    /// New `trigger_arguments` (`Some(None)` removes them).
    pub arguments: Option<Option<BTreeMap<String, String>>>,
    /// New error behaviour.
    pub error_behavior: Option<crate::trigger::ErrorBehavior>,
    /// Disable (`true`) or enable (`false`).
    pub disabled: Option<bool>,
}

/// A change to triggers, announced to [`CatalogObserver`]s once it is persisted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CatalogChange {
    /// A trigger was created, deleted, enabled or disabled (its current definition, if
    /// any, is in the catalog).
    Trigger {
        /// Database name.
        db: Arc<str>,
        /// Database id.
        db_id: u32,
        /// Trigger name.
        name: Arc<str>,
    },
    /// A database was deleted, with the triggers it had.
    DatabaseDeleted {
        /// Database name.
        db: Arc<str>,
        /// Database id.
        db_id: u32,
        /// Its triggers.
        triggers: Vec<Arc<str>>,
    },
}

/// Told about every trigger change (the processing engine). The catalog call that made the
/// change returns only after every observer has handled it.
#[async_trait::async_trait]
pub trait CatalogObserver: Send + Sync + fmt::Debug {
    /// Handle a persisted change.
    async fn changed(self: Arc<Self>, change: CatalogChange);
}

/// The catalog: in-memory state plus its persisted copy.
pub struct Catalog {
    state: RwLock<Arc<CatalogState>>,
    storage: Storage,
    dirty: AtomicBool,
    persist_lock: tokio::sync::Mutex<()>,
    observers: RwLock<Vec<std::sync::Weak<dyn CatalogObserver>>>,
    limits: RwLock<Limits>,
}

impl fmt::Debug for Catalog {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Catalog").field("sequence", &self.state.read().sequence).finish_non_exhaustive()
    }
}

impl Catalog {
    /// Load the catalog from storage, or start an empty one.
    pub async fn load(storage: Storage) -> Result<Self> {
        let path = storage.catalog_path();
        let state = match storage.get(&path).await? {
            Some(bytes) => CatalogState::decode(&bytes, path.as_ref())?,
            None => CatalogState::default(),
        };
        Ok(Self {
            state: RwLock::new(Arc::new(state)),
            storage,
            dirty: AtomicBool::new(false),
            persist_lock: tokio::sync::Mutex::new(()),
            observers: RwLock::new(Vec::new()),
            limits: RwLock::new(Limits::default()),
        })
    }

    /// Set the schema limits writes are checked against.
    pub fn set_limits(&self, limits: Limits) {
        *self.limits.write() = limits;
    }

    /// The schema limits writes are checked against.
    pub fn limits(&self) -> Limits {
        *self.limits.read()
    }

    /// Tables across all live databases.
    pub fn table_count(&self) -> usize {
        self.state.read().databases.values().filter(|d| !d.deleted).map(|d| d.tables.len()).sum()
    }

    /// Be told about every trigger change from now on.
    pub fn subscribe(&self, observer: std::sync::Weak<dyn CatalogObserver>) {
        self.observers.write().push(observer);
    }

    async fn announce(&self, change: CatalogChange) {
        let observers: Vec<_> = self.observers.read().iter().filter_map(std::sync::Weak::upgrade).collect();
        for o in observers {
            o.changed(change.clone()).await;
        }
    }

    async fn trigger_changed(&self, (db, db_id): (Arc<str>, u32), name: &str) {
        self.announce(CatalogChange::Trigger { db, db_id, name: Arc::from(name) }).await;
    }

    /// A consistent snapshot of the whole catalog.
    pub fn snapshot(&self) -> Arc<CatalogState> {
        Arc::clone(&self.state.read())
    }

    /// Live database by name.
    pub fn db(&self, name: &str) -> Option<Arc<DatabaseSchema>> {
        self.state.read().db(name).cloned()
    }

    /// Database (live or tombstone) by id.
    pub fn db_by_id(&self, id: u32) -> Option<Arc<DatabaseSchema>> {
        self.state.read().databases.get(&id).cloned()
    }

    /// The request trigger (any state) serving `path` below /api/v3/engine/, with its
    /// database.
    pub fn request_trigger(&self, path: &str) -> Option<(Arc<DatabaseSchema>, Arc<TriggerDef>)> {
        let state = self.state.read();
        state.request_trigger(path).map(|(db, t)| (Arc::clone(db), Arc::clone(t)))
    }

    /// Live databases, sorted by name.
    pub fn databases(&self) -> Vec<Arc<DatabaseSchema>> {
        let mut dbs: Vec<_> = self.state.read().databases.values().filter(|d| !d.deleted).cloned().collect();
        dbs.sort_by(|a, b| a.name.cmp(&b.name));
        dbs
    }

    fn mutate<R>(&self, f: impl FnOnce(&mut CatalogState) -> Result<R>) -> Result<R> {
        let mut guard = self.state.write();
        let mut next = CatalogState::clone(&guard);
        let r = f(&mut next)?;
        next.sequence += 1;
        *guard = Arc::new(next);
        self.dirty.store(true, Ordering::Release);
        Ok(r)
    }

    /// Get a live database by name, creating it when missing (writes auto-create).
    /// Returns the schema and whether it was created.
    pub fn db_or_create(&self, name: &str) -> Result<(Arc<DatabaseSchema>, bool)> {
        if let Some(db) = self.db(name) {
            return Ok((db, false));
        }
        validate_db_name(name)?;
        let limit = self.limits().databases;
        self.mutate(|s| {
            if let Some(db) = s.db(name) {
                return Ok((Arc::clone(db), false));
            }
            check_db_limit(s, limit)?;
            let db = Arc::new(DatabaseSchema::new(s.next_db_id, Arc::from(name)));
            s.next_db_id += 1;
            s.databases.insert(db.id, Arc::clone(&db));
            Ok((db, true))
        })
    }

    /// Re-create a database seen in the WAL under its original id, unless that id is a
    /// tombstone (then `None`: the data was deleted).
    pub fn db_for_replay(&self, id: u32, name: &str) -> Result<Option<Arc<DatabaseSchema>>> {
        if let Some(db) = self.db_by_id(id) {
            return Ok((!db.deleted).then_some(db));
        }
        self.mutate(|s| {
            if s.db(name).is_some() {
                // The name was reused after this id's data was written: the older id was
                // deleted before the catalog got persisted. Treat its WAL data as deleted.
                return Ok(None);
            }
            let db = Arc::new(DatabaseSchema::new(id, Arc::from(name)));
            s.next_db_id = s.next_db_id.max(id + 1);
            s.databases.insert(id, Arc::clone(&db));
            Ok(Some(db))
        })
    }

    /// Create a database explicitly and persist the catalog.
    pub async fn create_db(&self, name: &str) -> Result<Arc<DatabaseSchema>> {
        self.create_db_with_retention(name, None).await
    }

    /// [`Catalog::create_db`] with a retention period (ns, positive).
    pub async fn create_db_with_retention(&self, name: &str, retention_ns: Option<i64>) -> Result<Arc<DatabaseSchema>> {
        validate_db_name(name)?;
        let limit = self.limits().databases;
        let db = self.mutate(|s| {
            if s.db(name).is_some() {
                return Err(Error::DbExists(name.to_string()));
            }
            check_db_limit(s, limit)?;
            let mut db = DatabaseSchema::new(s.next_db_id, Arc::from(name));
            db.retention_period_ns = retention_ns;
            let db = Arc::new(db);
            s.next_db_id += 1;
            s.databases.insert(db.id, Arc::clone(&db));
            Ok(db)
        })?;
        self.persist().await?;
        Ok(db)
    }

    /// Delete a table: it leaves the database (its name is free again) and the rows of WAL
    /// files up to `wal_seq` are left out of replays. Returns its id.
    pub async fn delete_table(&self, db: &str, table: &str, wal_seq: u64) -> Result<u32> {
        let id = self.mutate(|s| {
            let db_id = s.db(db).map(|d| d.id).ok_or_else(|| Error::DbNotFound(db.to_string()))?;
            let d = Arc::make_mut(s.databases.get_mut(&db_id).expect("looked up above"));
            let not_found = || Error::TableNotFound { db: db.to_string(), table: table.to_string() };
            let id = d.table(table).map(|t| t.id).ok_or_else(not_found)?;
            d.tables.remove(&id);
            let name: Arc<str> = Arc::from(table);
            let seq = d.dropped_tables.get(&name).copied().unwrap_or(0).max(wal_seq);
            d.dropped_tables.insert(name, seq);
            d.reindex();
            Ok(id)
        })?;
        self.persist().await?;
        Ok(id)
    }

    /// Soft-delete a database and persist the catalog. Returns its id.
    pub async fn delete_db(&self, name: &str) -> Result<u32> {
        let (id, triggers) = self.mutate(|s| {
            let id = s.db(name).map(|d| d.id).ok_or_else(|| Error::DbNotFound(name.to_string()))?;
            let mut triggers = Vec::new();
            if let Some(db) = s.databases.get_mut(&id) {
                let db = Arc::make_mut(db);
                db.deleted = true;
                db.tables.clear();
                triggers = std::mem::take(&mut db.triggers).into_keys().collect();
                db.reindex();
            }
            Ok((id, triggers))
        })?;
        self.persist().await?;
        self.announce(CatalogChange::DatabaseDeleted { db: Arc::from(name), db_id: id, triggers }).await;
        Ok(id)
    }

    /// Add a trigger to a live database and persist the catalog.
    pub async fn create_trigger(&self, db: &str, def: TriggerDef) -> Result<Arc<DatabaseSchema>> {
        if def.name.is_empty() {
            return Err(crate::trigger::Error::EmptyName.into());
        }
        let schema = self.mutate(|s| {
            let id = s.db(db).map(|d| d.id).ok_or_else(|| Error::DbNotFound(db.to_string()))?;
            // A request path is served once, whatever the database.
            if let Some(path) = def.specification.request_path()
                && let Some((other_db, other)) = s.request_trigger(path)
            {
                return Err(Error::RequestPathTaken {
                    path: path.to_string(),
                    db: other_db.name.to_string(),
                    trigger: other.name.to_string(),
                });
            }
            let d = Arc::make_mut(s.databases.get_mut(&id).expect("looked up above"));
            if d.triggers.contains_key(def.name.as_ref()) {
                return Err(Error::TriggerExists { db: db.to_string(), name: def.name.to_string() });
            }
            let name = Arc::clone(&def.name);
            d.triggers.insert(Arc::clone(&name), Arc::new(def));
            Ok((Arc::new(d.clone()), name))
        })?;
        let (schema, name) = schema;
        self.persist().await?;
        self.trigger_changed((Arc::clone(&schema.name), schema.id), &name).await;
        Ok(schema)
    }

    /// Remove a trigger (an enabled one only with `force`) and persist the catalog.
    pub async fn delete_trigger(&self, db: &str, name: &str, force: bool) -> Result<Arc<TriggerDef>> {
        let removed = self.mutate(|s| {
            let id = s.db(db).map(|d| d.id).ok_or_else(|| Error::DbNotFound(db.to_string()))?;
            let d = Arc::make_mut(s.databases.get_mut(&id).expect("looked up above"));
            let not_found = || Error::TriggerNotFound { db: db.to_string(), name: name.to_string() };
            let t = d.triggers.get(name).ok_or_else(not_found)?;
            if !t.disabled && !force {
                return Err(Error::TriggerEnabled { db: db.to_string(), name: name.to_string() });
            }
            let removed = d.triggers.remove(name).ok_or_else(not_found)?;
            Ok((removed, (Arc::clone(&d.name), id)))
        })?;
        let (removed, db) = removed;
        self.persist().await?;
        self.trigger_changed(db, name).await;
        Ok(removed)
    }

    /// Change a trigger's arguments, error behaviour or enabled state in place (its WAL
    /// checkpoint is kept) and persist the catalog; the engine gets the new definition.
    pub async fn update_trigger(&self, db: &str, name: &str, update: TriggerUpdate) -> Result<Arc<TriggerDef>> {
        let t = self.mutate(|s| {
            let id = s.db(db).map(|d| d.id).ok_or_else(|| Error::DbNotFound(db.to_string()))?;
            let d = Arc::make_mut(s.databases.get_mut(&id).expect("looked up above"));
            let t = d
                .triggers
                .get_mut(name)
                .ok_or_else(|| Error::TriggerNotFound { db: db.to_string(), name: name.to_string() })?;
            let def = Arc::make_mut(t);
            if let Some(arguments) = update.arguments {
                def.arguments = arguments;
            }
            if let Some(behavior) = update.error_behavior {
                def.error_behavior = behavior;
            }
            if let Some(disabled) = update.disabled {
                def.disabled = disabled;
            }
            Ok((Arc::clone(t), (Arc::clone(&d.name), id)))
        })?;
        let (t, db) = t;
        self.persist().await?;
        self.trigger_changed(db, name).await;
        Ok(t)
    }

    /// Enable or disable a trigger (idempotent) and persist the catalog.
    pub async fn set_trigger_disabled(&self, db: &str, name: &str, disabled: bool) -> Result<Arc<TriggerDef>> {
        self.update_trigger(db, name, TriggerUpdate { disabled: Some(disabled), ..Default::default() }).await
    }

    /// Apply column additions to a database under the catalog lock. Tables are created as
    /// needed; an addition whose column already exists (a concurrent writer added it
    /// first, possibly with another type), or that `limits` does not allow, is skipped, so
    /// the caller must re-validate its lines against the returned schema. Each table's
    /// indexes are rebuilt once, however many columns it gains.
    pub fn add_columns(&self, db_id: u32, additions: &[ColumnAddition], limits: Limits) -> Result<Arc<DatabaseSchema>> {
        self.mutate(|s| {
            let mut tables_left = limits.tables.map(|max| {
                max.saturating_sub(s.databases.values().filter(|d| !d.deleted).map(|d| d.tables.len()).sum())
            });
            let db = s.databases.get_mut(&db_id).ok_or_else(|| Error::DbNotFound(format!("id {db_id}")))?;
            let db = Arc::make_mut(db);
            let mut touched: Vec<u32> = Vec::new();
            for add in additions {
                let table_id = match db.table(&add.table) {
                    Some(t) => t.id,
                    None => {
                        if tables_left == Some(0) {
                            continue;
                        }
                        tables_left = tables_left.map(|n| n - 1);
                        let id = db.next_table_id;
                        db.next_table_id += 1;
                        db.insert_table(TableDef::new(id, Arc::clone(&add.table)));
                        id
                    }
                };
                let Some(table) = db.tables.get_mut(&table_id) else {
                    continue;
                };
                // Someone else added it first (the caller re-validates), or the table is full.
                if table.column(&add.column).is_some() || table.columns.len() >= limits.columns_per_table {
                    continue;
                }
                let table = Arc::make_mut(table);
                table.columns.push(ColumnDef { name: Arc::clone(&add.column), kind: add.kind });
                // The name index is kept current (cheaply) so a repeated addition is seen;
                // the schema is rebuilt once per table below.
                table.by_name.insert(Arc::clone(&add.column), table.columns.len() - 1);
                if !touched.contains(&table_id) {
                    touched.push(table_id);
                }
            }
            for id in touched {
                if let Some(t) = db.tables.get_mut(&id) {
                    Arc::make_mut(t).reindex();
                }
            }
            Ok(Arc::clone(s.databases.get(&db_id).ok_or_else(|| Error::DbNotFound(format!("id {db_id}")))?))
        })
    }

    /// Add a token (its `id` is assigned here) and persist.
    pub async fn add_token(&self, mut info: TokenInfo) -> Result<TokenInfo> {
        let info = self.mutate(|s| {
            if s.tokens.iter().any(|t| t.name == info.name) {
                return Err(Error::TokenExists(info.name.clone()));
            }
            info.id = s.next_token_id;
            s.next_token_id += 1;
            s.tokens.push(info.clone());
            Ok(info)
        })?;
        self.persist().await?;
        Ok(info)
    }

    /// Remove a token by name and persist.
    pub async fn delete_token(&self, name: &str) -> Result<TokenInfo> {
        let info = self.mutate(|s| {
            let i =
                s.tokens.iter().position(|t| t.name == name).ok_or_else(|| Error::TokenNotFound(name.to_string()))?;
            Ok(s.tokens.remove(i))
        })?;
        self.persist().await?;
        Ok(info)
    }

    /// Give the token `name` a new secret (its salt and hash) and persist.
    pub async fn replace_token_secret(&self, name: &str, salt: String, hash: String) -> Result<TokenInfo> {
        let info = self.mutate(|s| {
            let t =
                s.tokens.iter_mut().find(|t| t.name == name).ok_or_else(|| Error::TokenNotFound(name.to_string()))?;
            t.salt = Some(salt);
            t.hash = hash;
            Ok(t.clone())
        })?;
        self.persist().await?;
        Ok(info)
    }

    /// Whether any admin token exists.
    pub fn has_admin_token(&self) -> bool {
        self.state.read().tokens.iter().any(|t| t.admin)
    }

    /// Every token.
    pub fn tokens(&self) -> Vec<TokenInfo> {
        self.state.read().tokens.clone()
    }

    /// Token by id.
    pub fn token_by_id(&self, id: u32) -> Option<TokenInfo> {
        self.state.read().tokens.iter().find(|t| t.id == id).cloned()
    }

    /// Whether there are changes not yet persisted.
    pub fn is_dirty(&self) -> bool {
        self.dirty.load(Ordering::Acquire)
    }

    /// Persist the current state durably.
    pub async fn persist(&self) -> Result<()> {
        let _guard = self.persist_lock.lock().await;
        self.dirty.store(false, Ordering::Release);
        let state = self.snapshot();
        let bytes = Bytes::from(state.encode());
        if let Err(e) = self.storage.put_durable(&self.storage.catalog_path(), bytes).await {
            self.dirty.store(true, Ordering::Release);
            return Err(e.into());
        }
        Ok(())
    }
}
