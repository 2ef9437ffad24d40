//! Schedule and request triggers, dry runs of them, and what happens when a plugin fails.
//!
//! - **Schedules.** Each enabled schedule trigger has a task here that sleeps until its
//!   next fire time and sends a `ScheduleTick`. A synchronous trigger runs one tick at a
//!   time; an asynchronous one up to [`ASYNC_TICKS`] at once. Ticks that pass while no run
//!   can start are coalesced into one catch-up run for the latest of them and counted in
//!   `missed_ticks` (no burst after a long run).
//! - **Requests.** `/api/v3/engine/<path>` becomes an `HttpRequest` to the trigger serving
//!   the path; its `Done` carries the HTTP answer. No session: 503 at once; past the
//!   plugin timeout: 504.
//! - **Failures.** Every outcome updates the trigger's state (`system.processing_engine_triggers`).
//!   `error_behavior` `log` moves on, `retry` runs the same input again after an
//!   exponential backoff with jitter (at most `max_retries` times), `disable` disables the
//!   trigger in the catalog.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use tokio::sync::Semaphore;
use weir_proto::plugin::v1::{self as pb, core_message};

use super::{Engine, EngineError, Result, rfc3339, state::LogLevel};
use crate::catalog::{DatabaseSchema, ErrorBehavior, TriggerDef, TriggerSpec};

/// Ticks of one asynchronous schedule trigger running at once; more are coalesced.
pub const ASYNC_TICKS: usize = 8;
/// First `retry` delay; it doubles per attempt up to [`RETRY_CAP`].
const RETRY_BASE: Duration = Duration::from_millis(200);
const RETRY_CAP: Duration = Duration::from_secs(30);

/// An HTTP request for a request trigger.
#[derive(Debug, Clone, Default)]
pub struct HttpCall {
    /// `GET`, `POST`, ...
    pub method: String,
    /// The path below `/api/v3/engine/`.
    pub path: String,
    /// Query parameters (last value wins).
    pub query: BTreeMap<String, String>,
    /// Headers with lower-case names, without `authorization`.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Vec<u8>,
}

/// A request plugin's answer (serialized for dry runs with the body as text, invalid
/// UTF-8 replaced).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct HttpAnswer {
    /// Status code.
    pub status: u16,
    /// Headers, including the content type.
    pub headers: BTreeMap<String, String>,
    /// Body.
    #[serde(serialize_with = "lossy_text")]
    pub body: Vec<u8>,
}

fn lossy_text<S: serde::Serializer>(body: &[u8], s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&String::from_utf8_lossy(body))
}

impl From<pb::HttpResponse> for HttpAnswer {
    fn from(r: pb::HttpResponse) -> Self {
        Self {
            // A 1xx cannot be a final answer.
            status: u16::try_from(r.status).ok().filter(|s| (200..=599).contains(s)).unwrap_or(500),
            headers: r.headers.into_iter().collect(),
            body: r.body,
        }
    }
}

/// What a trigger does after an invocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Go on with the next input.
    Continue,
    /// Run the same input again after this delay.
    Retry(Duration),
    /// The trigger is being disabled: deliver nothing more.
    Stop,
    /// The host's crash-loop breaker stopped a WAL trigger: this input is not done (it is
    /// kept, with the WAL after it), and nothing more is sent until the trigger is
    /// disabled and enabled.
    Halt,
}

/// The delay before retry `attempt` (1-based): doubling from [`RETRY_BASE`], capped at
/// [`RETRY_CAP`], then a random point in its upper half so retrying triggers spread out.
pub fn backoff(attempt: u32, entropy: u64) -> Duration {
    let full = RETRY_BASE.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(RETRY_CAP);
    let half = full / 2;
    let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
    half + Duration::from_micros(entropy % spread)
}

impl Engine {
    /// Record an invocation's outcome in the trigger's state and apply its error
    /// behaviour. `attempt` counts tries of this input (1 for the first); `failure` is the
    /// error and whether the host stopped the trigger.
    pub(super) fn after_call(
        self: &Arc<Self>,
        db_id: u32,
        db: &str,
        def: &TriggerDef,
        attempt: u32,
        failure: Option<(String, bool)>,
    ) -> Next {
        let Some((error, stopped)) = failure else {
            self.state.update(db_id, &def.name, |s| {
                s.runs += 1;
                s.attempts = u64::from(attempt);
                // It runs again (the host's breaker was reset, by a host restart say).
                s.stopped = None;
            });
            return Next::Continue;
        };
        let at = self.now();
        self.state.update(db_id, &def.name, |s| {
            s.runs += 1;
            s.failures += 1;
            s.attempts = u64::from(attempt);
            s.last_error = Some(error.clone());
            s.last_error_at = Some(at);
            if stopped {
                s.stopped = Some(error.clone());
            }
        });
        // A stopped trigger's inputs fail at once until it is enabled again: a WAL trigger
        // keeps its input (never skipped unasked); a tick or a request is simply missed.
        if stopped {
            return if def.spec().is_wal() { Next::Halt } else { Next::Continue };
        }
        match def.error_behavior {
            ErrorBehavior::Log => Next::Continue,
            // Requests are answered at once: the caller retries, not the engine.
            _ if matches!(def.spec(), TriggerSpec::Request(_)) && def.error_behavior == ErrorBehavior::Retry => {
                Next::Continue
            }
            ErrorBehavior::Retry if attempt <= def.max_retries() => {
                let delay = backoff(attempt, at.unsigned_abs());
                self.record(
                    db,
                    &def.name,
                    LogLevel::Warn,
                    format!(
                        "attempt {attempt} failed; retrying in {} (at most {} retries)",
                        humantime::format_duration(Duration::from_millis(delay.as_millis() as u64)),
                        def.max_retries()
                    ),
                );
                Next::Retry(delay)
            }
            ErrorBehavior::Retry => {
                self.record(db, &def.name, LogLevel::Error, format!("giving up after {attempt} attempts; moving on"));
                Next::Continue
            }
            ErrorBehavior::Disable => {
                self.record(
                    db,
                    &def.name,
                    LogLevel::Error,
                    "error_behavior is disable: disabling the trigger".to_string(),
                );
                // On its own task: disabling stops the caller's task too.
                let engine = Arc::clone(self);
                let (db, name) = (db.to_string(), def.name.to_string());
                self.tasks.spawn(async move {
                    // The catalog tells the engine (and so stops this trigger's tasks).
                    if let Err(e) = engine.catalog.set_trigger_disabled(&db, &name, true).await {
                        tracing::error!(%db, trigger = %name, error = %e, "cannot disable the trigger");
                    }
                });
                Next::Stop
            }
        }
    }

    /// Start, restart or stop schedule tasks so that exactly the enabled schedule
    /// triggers have one (a changed definition gets a new task).
    pub(super) fn sync_schedules(self: &Arc<Self>) {
        // Held while reading the catalog, so two concurrent calls cannot apply an older
        // snapshot after a newer one.
        let _order = self.sync_lock.lock();
        if self.is_stopping() {
            return;
        }
        let mut tasks = self.schedules.lock();
        let mut wanted: Vec<(u32, Arc<TriggerDef>)> = Vec::new();
        for db in self.catalog.databases() {
            for t in db.triggers.values() {
                if !t.disabled && matches!(t.spec(), TriggerSpec::Schedule(_)) {
                    wanted.push((db.id, Arc::clone(t)));
                }
            }
        }
        tasks.retain(|key, (def, handle)| {
            let keep = wanted.iter().any(|(id, t)| (*id, &t.name) == (key.0, &key.1) && t.as_ref() == def.as_ref());
            if !keep {
                handle.abort();
            }
            keep
        });
        for (db_id, def) in wanted {
            let key = (db_id, Arc::clone(&def.name));
            if tasks.contains_key(&key) {
                continue;
            }
            let task = tokio::spawn(Arc::clone(self).schedule_loop(db_id, Arc::clone(&def)));
            tasks.insert(key, (def, task.abort_handle()));
        }
    }

    /// Fire one schedule trigger until its task is aborted.
    async fn schedule_loop(self: Arc<Self>, db_id: u32, def: Arc<TriggerDef>) {
        let Some(schedule) = def.spec().schedule().cloned() else { return };
        let permits = Arc::new(Semaphore::new(if def.run_async { ASYNC_TICKS } else { 1 }));
        let mut last = self.now();
        let mut announced = None;
        loop {
            let Some(next) = schedule.next_after(last) else { return };
            let wait = next.saturating_sub(self.now());
            if wait > 0 {
                tokio::time::sleep(Duration::from_nanos(wait as u64)).await;
            }
            let Ok(permit) = Arc::clone(&permits).acquire_owned().await else { return };
            // Ticks that passed while the previous run (or runs) went on: one catch-up run
            // for the latest, the others counted.
            let (missed, latest) = schedule.due(next, self.now());
            let fire = latest.unwrap_or(next);
            if missed > 0 {
                self.state.update(db_id, &def.name, |s| s.missed_ticks += missed);
            }
            last = fire;
            // Defined on this session before its tick (the creation's own TriggerSet may
            // still be on its way).
            if let Some(db) = self.catalog.db_by_id(db_id) {
                let message = super::trigger_message(&db.name, &def);
                self.link
                    .announce(&mut announced, || {
                        core_message::Body::TriggerSet(pb::TriggerSet { trigger: Some(message) })
                    })
                    .await;
            }
            let engine = Arc::clone(&self);
            let tick_def = Arc::clone(&def);
            let run = async move {
                engine.run_tick(db_id, &tick_def, fire).await;
                drop(permit);
            };
            if def.run_async {
                self.tasks.spawn(run);
            } else {
                run.await;
            }
        }
    }

    /// One tick: the plugin runs for `fire`, again after failures per the trigger's
    /// error behaviour.
    async fn run_tick(self: &Arc<Self>, db_id: u32, def: &TriggerDef, fire: i64) {
        let Some(db) = self.catalog.db_by_id(db_id) else { return };
        let tick = pb::ScheduleTick {
            database: db.name.to_string(),
            trigger: def.name.to_string(),
            call_time_s: fire.div_euclid(1_000_000_000),
            scheduled_ns: fire,
        };
        let mut attempt = 1;
        loop {
            // A retry only while the trigger still exists unchanged and enabled.
            if attempt > 1
                && !self.catalog.db_by_id(db_id).is_some_and(|d| {
                    d.triggers.get(def.name.as_ref()).is_some_and(|t| t.as_ref() == def && !t.disabled)
                })
            {
                return;
            }
            // The host may be starting or restarting: give it a moment before missing the tick.
            if !self.link.is_connected() {
                self.link.wait_for_session(Duration::from_secs(5)).await;
            }
            let deadline = self.config.plugin_timeout + Duration::from_secs(60);
            let body = core_message::Body::ScheduleTick(tick.clone());
            let failure = match self.link.request::<pb::Done>(body, deadline, "the scheduled call").await {
                Ok(done) if done.ok => {
                    self.commit_writes(&db.name, &def.name, done.writes).await.err().map(|e| (e, false))
                }
                Ok(done) => Some((done.error, done.stopped)),
                // Not the plugin's failure: the tick is missed, the error behaviour not applied.
                Err(e @ EngineError::Unavailable) => {
                    let text = format!("scheduled call at {} missed: {e}", rfc3339(fire));
                    self.record(&db.name, &def.name, LogLevel::Warn, text);
                    self.state.update(db_id, &def.name, |s| s.missed_ticks += 1);
                    return;
                }
                Err(e) => {
                    let e = format!("scheduled call at {} failed: {e}", rfc3339(fire));
                    self.record(&db.name, &def.name, LogLevel::Error, e.clone());
                    Some((e, false))
                }
            };
            match self.after_call(db_id, &db.name, def, attempt, failure) {
                Next::Retry(delay) => {
                    tokio::time::sleep(delay).await;
                    attempt += 1;
                }
                Next::Continue | Next::Stop | Next::Halt => return,
            }
        }
    }

    /// Run the request trigger `def` of database `db` for one HTTP request.
    pub async fn http_request(
        self: &Arc<Self>,
        db: &DatabaseSchema,
        def: &TriggerDef,
        call: HttpCall,
    ) -> Result<HttpAnswer> {
        let db_id = db.id;
        let timeout = self.config.plugin_timeout;
        let req = pb::HttpRequest {
            database: db.name.to_string(),
            trigger: def.name.to_string(),
            method: call.method,
            path: call.path,
            query: call.query.into_iter().collect(),
            headers: call.headers.into_iter().collect(),
            body: call.body,
            // The host does not start a call that is still queued when we stop waiting.
            deadline_ns: self.now().saturating_add(i64::try_from(timeout.as_nanos()).unwrap_or(i64::MAX)),
        };
        let timed_out = || EngineError::Timeout { what: "the request plugin", verb: "answer", after: timeout };
        // No session: 503 at once, not after a timeout.
        let waiting = self.link.send(core_message::Body::HttpRequest(req)).await.ok_or(EngineError::Unavailable)?;
        let done = match tokio::time::timeout(
            timeout + Duration::from_secs(1),
            waiting.reply::<pb::Done>("the request"),
        )
        .await
        {
            Ok(r) => r?,
            // The host did not answer in time (it enforces the deadline itself, so this is
            // a lost reply, not the plugin's failure).
            Err(_) => return Err(timed_out()),
        };
        if !done.ok {
            self.after_call(db_id, &db.name, def, 1, Some((done.error.clone(), done.stopped)));
            return Err(if done.timed_out {
                timed_out()
            } else {
                EngineError::host(super::HostErrorKind::Failed, done.error)
            });
        }
        // Buffered writes land before the answer: a client that reads next sees them.
        if let Err(e) = self.commit_writes(&db.name, &def.name, done.writes).await {
            self.after_call(db_id, &db.name, def, 1, Some((e.clone(), false)));
            return Err(EngineError::host(super::HostErrorKind::Failed, e));
        }
        self.after_call(db_id, &db.name, def, 1, None);
        Ok(done.response.map(HttpAnswer::from).unwrap_or(HttpAnswer { status: 200, ..HttpAnswer::default() }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        for attempt in 1..=20 {
            let full = RETRY_BASE.saturating_mul(1 << (attempt - 1).min(16)).min(RETRY_CAP);
            for entropy in [0, 1, 12_345, u64::MAX] {
                let d = backoff(attempt, entropy);
                assert!(d >= full / 2 && d <= full, "attempt {attempt}: {d:?} vs {full:?}");
            }
        }
        assert!(backoff(1, 0) >= Duration::from_millis(100));
        assert_eq!(backoff(30, 0), RETRY_CAP / 2);
    }
}
