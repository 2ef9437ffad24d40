//! The engine's live state: its log lines (`system.processing_engine_logs`) and what each
//! trigger has been doing (`system.processing_engine_triggers`). In memory; it starts over
//! at a restart.
//!
//! **Log flood control.** A line whose text, with its digits masked, repeats within
//! [`LOG_WINDOW`] more than [`LOG_REPEATS`] times for the same trigger is counted instead
//! of stored; the next line of that kind after the window (or the engine's periodic sweep)
//! records `N similar log lines were suppressed in the last ...`. A lagging or failing
//! trigger cannot push everything else out of the table or flood the server log.

use std::{
    collections::{HashMap, VecDeque},
    sync::Arc,
    time::Duration,
};

use parking_lot::Mutex;

use crate::query::system::EngineLogRow;

/// How many log lines are kept (all databases together).
pub const ENGINE_LOG_SIZE: usize = 10_000;
/// The window of the flood control.
pub const LOG_WINDOW: Duration = Duration::from_secs(10);
/// Lines of one kind (per trigger) stored per window.
pub const LOG_REPEATS: u32 = 100;

/// Log levels of `system.processing_engine_logs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LogLevel {
    /// INFO
    Info,
    /// WARN
    Warn,
    /// ERROR
    Error,
}

impl LogLevel {
    /// As the table spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Info => "INFO",
            Self::Warn => "WARN",
            Self::Error => "ERROR",
        }
    }
}

/// What the engine knows about one enabled trigger beyond its definition.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TriggerState {
    /// The latest failure, with its traceback.
    pub last_error: Option<String>,
    /// When it happened, ns since the epoch.
    pub last_error_at: Option<i64>,
    /// Tries of the latest input (1: it ran once; more under `retry`).
    pub attempts: u64,
    /// Invocations that finished.
    pub runs: u64,
    /// Failed invocations.
    pub failures: u64,
    /// Schedule ticks that got no run of their own (coalesced into a catch-up run).
    pub missed_ticks: u64,
    /// Why the trigger is stopped although enabled (its worker crash-looped).
    pub stopped: Option<String>,
}

#[derive(Debug)]
struct Row {
    database: Arc<str>,
    line: EngineLogRow,
}

/// Flood-control bookkeeping of one kind of line.
#[derive(Debug)]
struct Repeats {
    database: Arc<str>,
    trigger: String,
    level: LogLevel,
    window_start: i64,
    stored: u32,
    suppressed: u64,
}

type RepeatKey = (Arc<str>, String, LogLevel, String);

/// Log lines and trigger states.
#[derive(Debug, Default)]
pub struct EngineState {
    rows: Mutex<VecDeque<Row>>,
    repeats: Mutex<HashMap<RepeatKey, Repeats>>,
    triggers: Mutex<HashMap<(u32, Arc<str>), TriggerState>>,
}

/// `text` with every run of digits replaced by `#`: lines that differ only in counts,
/// sequence numbers or times are of one kind.
fn kind_of(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(200));
    let mut in_digits = false;
    for c in text.chars().take(200) {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('#');
            }
            in_digits = true;
        } else {
            out.push(c);
            in_digits = false;
        }
    }
    out
}

impl EngineState {
    /// Record a line at `now` (ns), also in the server log, unless flood control counts it.
    pub fn push(&self, database: &str, trigger: &str, level: LogLevel, text: String, now: i64) {
        let window = LOG_WINDOW.as_nanos() as i64;
        let database: Arc<str> = Arc::from(database);
        let summary = {
            let mut repeats = self.repeats.lock();
            let key = (Arc::clone(&database), trigger.to_string(), level, kind_of(&text));
            let r = repeats.entry(key).or_insert_with(|| Repeats {
                database: Arc::clone(&database),
                trigger: trigger.to_string(),
                level,
                window_start: now,
                stored: 0,
                suppressed: 0,
            });
            let mut summary = None;
            if now.saturating_sub(r.window_start) >= window {
                summary = (r.suppressed > 0).then(|| suppressed_text(r.suppressed));
                r.window_start = now;
                r.stored = 0;
                r.suppressed = 0;
            }
            // (A window that just started has stored nothing, so no summary is dropped here.)
            if r.stored >= LOG_REPEATS {
                r.suppressed += 1;
                return;
            }
            r.stored += 1;
            summary
        };
        if let Some(s) = summary {
            self.store(&database, trigger, level, s, now);
        }
        self.store(&database, trigger, level, text, now);
    }

    /// Record the counts of lines suppressed in windows that have ended (called
    /// periodically, so a flood that stopped still reports what it dropped).
    pub fn sweep(&self, now: i64) {
        let window = LOG_WINDOW.as_nanos() as i64;
        let mut due = Vec::new();
        self.repeats.lock().retain(|_, r| {
            if now.saturating_sub(r.window_start) < window {
                return true;
            }
            if r.suppressed > 0 {
                due.push((Arc::clone(&r.database), r.trigger.clone(), r.level, suppressed_text(r.suppressed)));
            }
            false
        });
        for (db, trigger, level, text) in due {
            self.store(&db, &trigger, level, text, now);
        }
    }

    fn store(&self, database: &Arc<str>, trigger: &str, level: LogLevel, text: String, event_time: i64) {
        match level {
            LogLevel::Error => tracing::warn!(database = %database, trigger, "{text}"),
            _ => tracing::info!(database = %database, trigger, "{text}"),
        }
        let mut rows = self.rows.lock();
        if rows.len() >= ENGINE_LOG_SIZE {
            rows.pop_front();
        }
        rows.push_back(Row {
            database: Arc::clone(database),
            line: EngineLogRow { event_time, trigger: trigger.to_string(), level: level.as_str(), text },
        });
    }

    /// The lines of `database`, oldest first.
    /// `_internal` ([`crate::query::INTERNAL_DB`]) sees every database's rows, as in InfluxDB 3.
    pub fn log_rows(&self, database: &str) -> Vec<EngineLogRow> {
        let all = database == crate::query::INTERNAL_DB;
        self.rows.lock().iter().filter(|r| all || r.database.as_ref() == database).map(|r| r.line.clone()).collect()
    }

    /// Change a trigger's state (created as default when new).
    pub fn update(&self, db_id: u32, trigger: &Arc<str>, f: impl FnOnce(&mut TriggerState)) {
        f(self.triggers.lock().entry((db_id, Arc::clone(trigger))).or_default());
    }

    /// A trigger's state, if it has one.
    pub fn trigger(&self, db_id: u32, trigger: &str) -> Option<TriggerState> {
        self.triggers.lock().get(&(db_id, Arc::from(trigger))).cloned()
    }

    /// Forget a trigger's state (deleted, or enabled again from scratch).
    pub fn clear(&self, db_id: u32, trigger: &str) {
        self.triggers.lock().remove(&(db_id, Arc::from(trigger)));
    }
}

fn suppressed_text(n: u64) -> String {
    format!("{n} similar log lines were suppressed in the last {}s", LOG_WINDOW.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;

    #[test]
    fn repeated_lines_are_counted_not_stored() {
        let s = EngineState::default();
        for i in 0..1_000 {
            s.push("db", "slow", LogLevel::Error, format!("trigger is behind: WAL file {i} waits"), 5 * S);
        }
        s.push("db", "slow", LogLevel::Info, "another kind".into(), 5 * S);
        s.push("db", "other", LogLevel::Error, "trigger is behind: WAL file 1 waits".into(), 5 * S);
        let rows = s.log_rows("db");
        assert_eq!(rows.len(), LOG_REPEATS as usize + 2);
        // The next line of that kind after the window reports the count first.
        s.push("db", "slow", LogLevel::Error, "trigger is behind: WAL file 2000 waits".into(), 16 * S);
        let rows = s.log_rows("db");
        let texts: Vec<&str> = rows.iter().rev().take(2).map(|r| r.text.as_str()).collect();
        assert_eq!(
            texts,
            ["trigger is behind: WAL file 2000 waits", "900 similar log lines were suppressed in the last 10s"]
        );
        // A flood that stopped is reported by the sweep.
        for i in 0..150 {
            s.push("db", "quiet", LogLevel::Warn, format!("x {i}"), 20 * S);
        }
        s.sweep(25 * S);
        assert!(!s.log_rows("db").iter().any(|r| r.text.starts_with("50 similar")));
        s.sweep(31 * S);
        assert_eq!(
            s.log_rows("db").last().map(|r| (r.trigger.as_str(), r.text.as_str())),
            Some(("quiet", "50 similar log lines were suppressed in the last 10s"))
        );
        assert!(s.log_rows("elsewhere").is_empty());
    }
}
