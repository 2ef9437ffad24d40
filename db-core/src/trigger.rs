//! Triggers: what fires one ([`TriggerSpec`]), how it runs ([`TriggerDef`]), and the checks
//! a new one must pass ([`NewTrigger`]). The catalog stores validated definitions; the
//! engine runs them.
//!
//! Specifications: `table:<name>` and `all_tables` (WAL flushes), `every:<duration>` and
//! `cron:<expr>` (schedules, [`schedule`]), `request:<path>` (HTTP requests to
//! `/api/v3/engine/<path>`). A persisted specification keeps its exact text (the catalog
//! file is unchanged by a load and save); one that no longer parses stops the catalog from
//! loading with the reason, instead of turning into something else.

pub mod schedule;

use std::{collections::BTreeMap, fmt, sync::Arc};

use serde::{Deserialize, Serialize};

pub use schedule::Schedule;

#[cfg(test)]
mod tests;

/// Why a trigger definition is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// The name is empty.
    #[error("the trigger name is empty")]
    EmptyName,
    /// Not one of the specification forms.
    #[error(
        "trigger specification {0:?} is not one of table:<name>, all_tables, every:<duration>, cron:<expr>, request:<path>"
    )]
    UnknownSpec(String),
    /// A schedule that does not parse or never fires.
    #[error("{0}")]
    Schedule(String),
    /// A bad `request:` path.
    #[error("invalid request path {path:?}: {reason}")]
    RequestPath {
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// An error behaviour other than log, retry, disable.
    #[error("unknown error behavior {0:?}: expected log, retry or disable")]
    ErrorBehavior(String),
    /// Several worker processes need `run_async`.
    #[error("trigger_settings.workers > 1 needs run_async: true")]
    WorkersNeedAsync,
    /// More worker processes than a trigger may have.
    #[error("trigger_settings.workers is {0}; at most {MAX_WORKERS} worker processes per trigger")]
    TooManyWorkers(u32),
    /// The plugin name is not a plain relative path (or `gh:` path).
    #[error("{0}")]
    PluginPath(String),
}

/// Result type of this module.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Most worker processes of one asynchronous trigger.
pub const MAX_WORKERS: u32 = 64;

/// Retries of a `retry` trigger when it names none.
pub const DEFAULT_MAX_RETRIES: u32 = 5;

/// What a trigger does when its plugin fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorBehavior {
    /// Record the error and move on.
    #[default]
    Log,
    /// Try again with backoff.
    Retry,
    /// Disable the trigger.
    Disable,
}

impl ErrorBehavior {
    /// The name used in APIs and system tables.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Log => "log",
            Self::Retry => "retry",
            Self::Disable => "disable",
        }
    }
}

impl std::str::FromStr for ErrorBehavior {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s.to_ascii_lowercase().as_str() {
            "log" => Ok(Self::Log),
            "retry" => Ok(Self::Retry),
            "disable" => Ok(Self::Disable),
            other => Err(Error::ErrorBehavior(other.to_string())),
        }
    }
}

/// What fires a trigger. Serialized as its specification text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum TriggerSpec {
    /// `table:<name>`: WAL flushes with rows for that table.
    Table(String),
    /// `all_tables`: every WAL flush with rows for the database.
    AllTables,
    /// `every:<duration>`, `cron:<expr>`: a schedule.
    Schedule(Schedule),
    /// `request:<path>`: HTTP requests to `/api/v3/engine/<path>`.
    Request(RequestPath),
}

/// The path of a `request:` trigger: normalized (no surrounding slashes) for routing, and
/// as written (for the catalog and the system tables).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestPath {
    path: String,
    written: String,
}

impl RequestPath {
    /// The path below `/api/v3/engine/`, without surrounding slashes.
    pub fn as_str(&self) -> &str {
        &self.path
    }
}

impl TriggerSpec {
    /// Parse a specification (syntax, durations and cron fields).
    pub fn parse(s: &str) -> Result<Self> {
        if s == "all_tables" {
            return Ok(Self::AllTables);
        }
        match s.split_once(':') {
            Some(("table", t)) if !t.is_empty() => Ok(Self::Table(t.to_string())),
            Some(("every" | "cron", v)) if !v.is_empty() => {
                Schedule::parse(s).map(Self::Schedule).map_err(Error::Schedule)
            }
            Some(("request", p)) if !p.is_empty() => {
                Ok(Self::Request(RequestPath { path: request_path(p)?, written: p.to_string() }))
            }
            _ => Err(Error::UnknownSpec(s.to_string())),
        }
    }

    /// Whether WAL flushes fire it.
    pub fn is_wal(&self) -> bool {
        matches!(self, Self::Table(_) | Self::AllTables)
    }

    /// Whether a WAL trigger with this specification is called for rows of `table`.
    pub fn wants_table(&self, table: &str) -> bool {
        match self {
            Self::Table(t) => t == table,
            Self::AllTables => true,
            Self::Schedule(_) | Self::Request(_) => false,
        }
    }

    /// The schedule of a schedule trigger.
    pub fn schedule(&self) -> Option<&Schedule> {
        match self {
            Self::Schedule(s) => Some(s),
            _ => None,
        }
    }

    /// The normalized path of a request trigger.
    pub fn request_path(&self) -> Option<&str> {
        match self {
            Self::Request(p) => Some(p.as_str()),
            _ => None,
        }
    }
}

impl fmt::Display for TriggerSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Table(t) => write!(f, "table:{t}"),
            Self::AllTables => f.write_str("all_tables"),
            Self::Schedule(s) => f.write_str(s.text()),
            Self::Request(p) => write!(f, "request:{}", p.written),
        }
    }
}

impl TryFrom<String> for TriggerSpec {
    type Error = Error;

    fn try_from(s: String) -> Result<Self> {
        Self::parse(&s)
    }
}

impl From<TriggerSpec> for String {
    fn from(spec: TriggerSpec) -> Self {
        spec.to_string()
    }
}

/// The path of a `request:` trigger below `/api/v3/engine/`, without surrounding slashes.
/// Segments are non-empty, printable, and neither `.` nor `..`; no query or fragment.
pub fn request_path(p: &str) -> Result<String> {
    let path = p.trim_matches('/');
    let bad = |reason| Err(Error::RequestPath { path: p.to_string(), reason });
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.len() > 1024 {
        return bad("longer than 1024 bytes");
    }
    if path.chars().any(|c| c.is_whitespace() || c.is_control() || matches!(c, '?' | '#' | '%' | '\\')) {
        return bad("spaces, control characters, '?', '#', '%' and '\\' are not allowed");
    }
    if path.split('/').any(|seg| seg.is_empty() || seg == "." || seg == "..") {
        return bad("empty, '.' and '..' segments are not allowed");
    }
    Ok(path.to_string())
}

/// A processing-engine trigger, as the catalog stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TriggerDef {
    /// Name, unique within the database.
    pub name: Arc<str>,
    /// Plugin path relative to the plugin directory, or `gh:<path>`.
    pub plugin_filename: String,
    /// What fires it.
    pub specification: TriggerSpec,
    /// `trigger_arguments` (`None` is not the same as empty: the plugin gets `None`).
    #[serde(default)]
    pub arguments: Option<BTreeMap<String, String>>,
    /// Run invocations concurrently.
    #[serde(default)]
    pub run_async: bool,
    /// What happens when the plugin fails.
    #[serde(default)]
    pub error_behavior: ErrorBehavior,
    /// `retry`: attempts after the first failure before giving up (default
    /// [`DEFAULT_MAX_RETRIES`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// Worker processes of an asynchronous trigger (0 or 1: one).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub workers: u32,
    /// Disabled triggers do not run.
    #[serde(default)]
    pub disabled: bool,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl TriggerDef {
    /// Retries before a `retry` trigger gives up on one invocation.
    pub fn max_retries(&self) -> u32 {
        self.max_retries.unwrap_or(DEFAULT_MAX_RETRIES)
    }

    /// The specification.
    pub fn spec(&self) -> &TriggerSpec {
        &self.specification
    }

    /// Worker processes the plugin host runs for it (at least one).
    pub fn worker_count(&self) -> u32 {
        if self.run_async { self.workers.max(1) } else { 1 }
    }
}

/// A trigger as a client asks for it (HTTP or gRPC), before any check.
#[derive(Debug, Clone, Default)]
pub struct NewTrigger {
    /// Name.
    pub name: String,
    /// Plugin name.
    pub plugin_filename: String,
    /// Specification text.
    pub specification: String,
    /// Arguments.
    pub arguments: Option<BTreeMap<String, String>>,
    /// `run_async`.
    pub run_async: bool,
    /// `log`, `retry` or `disable`; empty or absent: `log`.
    pub error_behavior: Option<String>,
    /// Retries under `retry` (`None`: the default).
    pub max_retries: Option<u32>,
    /// Worker processes (0 or 1: one).
    pub workers: u32,
    /// Created disabled.
    pub disabled: bool,
}

impl NewTrigger {
    /// Check everything that can be checked without the plugin host (the plugin file's
    /// existence is the host's to tell) and build the definition.
    pub fn validate(self) -> Result<TriggerDef> {
        if self.name.is_empty() {
            return Err(Error::EmptyName);
        }
        let specification = TriggerSpec::parse(&self.specification)?;
        if let TriggerSpec::Schedule(s) = &specification {
            s.check_fires().map_err(Error::Schedule)?;
        }
        weir_proto::plugin_name::check_plugin_filename(&self.plugin_filename).map_err(Error::PluginPath)?;
        let error_behavior = match self.error_behavior.as_deref() {
            None | Some("") => ErrorBehavior::default(),
            Some(s) => s.parse()?,
        };
        if self.workers > 1 && !self.run_async {
            return Err(Error::WorkersNeedAsync);
        }
        if self.workers > MAX_WORKERS {
            return Err(Error::TooManyWorkers(self.workers));
        }
        Ok(TriggerDef {
            name: Arc::from(self.name),
            plugin_filename: self.plugin_filename,
            specification,
            arguments: self.arguments,
            run_async: self.run_async,
            error_behavior,
            max_retries: self.max_retries,
            workers: self.workers,
            disabled: self.disabled,
        })
    }
}
