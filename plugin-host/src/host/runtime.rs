//! A trigger's runtime: its worker processes, the order of its calls, the crash-loop
//! breaker, and how each kind of call (schedule tick, HTTP request) is run and answered.

use std::{
    sync::{Arc, atomic::Ordering},
    time::Duration,
};

use parking_lot::Mutex;
use weir_proto::plugin::v1::{self as pb, host_message};

use super::{Host, pool::WorkerSlot};
use crate::{
    marshal,
    worker::{Done, InvokeError, Level, TriggerId, Upstream, Worker, WorkerSpec},
};

/// A trigger and its worker processes.
#[derive(Debug)]
pub struct TriggerRuntime {
    pub(super) def: pb::Trigger,
    spec: WorkerSpec,
    /// One slot per worker process (`workers`, at least 1); a synchronous trigger only
    /// uses the first, so its calls share one trigger cache in strict order.
    workers: Vec<Arc<WorkerSlot>>,
    /// Held across an invocation of a synchronous trigger: strict order, one at a time.
    order: tokio::sync::Mutex<()>,
    /// Worker failures (could not start, or died during a call) in a row.
    crashes: std::sync::atomic::AtomicU32,
    /// Set by the crash-loop breaker: calls fail at once with this reason.
    stopped: Mutex<Option<String>>,
}

/// Worker failures in a row after which a trigger is stopped (until it is redefined,
/// disabled and enabled).
pub const CRASH_LIMIT: u32 = 5;

impl TriggerRuntime {
    pub(super) fn new(def: pb::Trigger, spec: WorkerSpec) -> Self {
        let n = if def.run_async { def.workers.clamp(1, 64) as usize } else { 1 };
        Self {
            def,
            spec,
            workers: (0..n).map(|_| Arc::new(WorkerSlot::default())).collect(),
            order: tokio::sync::Mutex::new(()),
            crashes: std::sync::atomic::AtomicU32::new(0),
            stopped: Mutex::new(None),
        }
    }

    pub(super) fn least_busy(&self) -> &Arc<WorkerSlot> {
        self.workers.iter().min_by_key(|w| w.busy.load(Ordering::Relaxed)).expect("at least one worker slot")
    }
}

/// A trigger invocation's outcome as the core gets it.
pub(super) fn done_message(done: Done) -> pb::Done {
    pb::Done {
        ok: done.ok,
        error: done.error.unwrap_or_default(),
        traceback: done.traceback.unwrap_or_default(),
        writes: done.writes.into_iter().map(|(database, lines)| pb::DatabaseWrites { database, lines }).collect(),
        duration_ns: done.duration.as_nanos() as u64,
        response: done.response.map(|r| pb::HttpResponse {
            status: u32::from(r.status),
            headers: r.headers.into_iter().collect(),
            body: r.body,
        }),
        timed_out: done.timed_out,
        stopped: done.stopped,
    }
}

pub(super) fn failed(error: String) -> Done {
    Done { ok: false, error: Some(error), ..Done::default() }
}

/// `error executing plugin: <error>` and the traceback, as the engine log shows it.
pub(super) fn error_text(done: &Done) -> String {
    let mut text = format!("error executing plugin: {}", done.error.as_deref().unwrap_or("unknown error"));
    if let Some(tb) = done.traceback.as_deref().filter(|t| !t.is_empty()) {
        text.push('\n');
        text.push_str(tb.trim_end());
    }
    text
}

/// An RFC 3339 rendering of a fire time in ns.
pub(super) fn fire_time(ns: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64);
    humantime::format_rfc3339_millis(t).to_string()
}

/// One invocation to run.
#[derive(Debug, Default)]
pub(super) struct Call<'a> {
    /// `process_writes`, `process_scheduled_call` or `process_request`.
    pub(super) entry: &'a str,
    /// marshal-encoded arguments.
    pub(super) args: &'a [u8],
    /// Logged before the call when given.
    pub(super) started: Option<String>,
    /// The caller stops waiting then: a call still queued is not run, a running one gets
    /// at most the time left.
    pub(super) deadline: Option<std::time::SystemTime>,
    /// This call's arguments were sent to the worker ahead, under this stage id.
    pub(super) staged: Option<u64>,
    /// A synchronous trigger's next arguments, sent to the worker right behind this call.
    pub(super) ahead: Option<&'a [u8]>,
}

impl Host {
    /// The slot's live worker, or a new one (under `--max-workers`: see [`super::pool`]).
    pub(super) async fn worker(&self, rt: &TriggerRuntime, slot: &Arc<WorkerSlot>) -> Result<Arc<Worker>, InvokeError> {
        let mut held = slot.worker.lock().await;
        self.pool.touch(slot);
        if let Some((w, _)) = held.as_ref().filter(|(w, _)| !w.is_dead()) {
            return Ok(Arc::clone(w));
        }
        // A dead worker's permit goes back before a new one is taken.
        *held = None;
        let mut spec = rt.spec.clone();
        spec.plugin_path =
            self.plugin_path(&rt.def.plugin_filename).await.map_err(|e| InvokeError::Plugin(e.to_string()))?;
        let permit = self.pool.acquire().await;
        let upstream: Arc<dyn Upstream> = Arc::clone(&self.link) as Arc<dyn Upstream>;
        let w = Worker::spawn(spec, upstream, Arc::clone(&self.cache)).await?;
        *held = Some((Arc::clone(&w), permit));
        self.pool.touch(slot);
        self.pool.register(slot);
        Ok(w)
    }

    /// Run one invocation of a trigger: a synchronous trigger's calls one at a time in
    /// arrival order, an asynchronous trigger's on its least busy worker (see [`Call`] and
    /// [`Worker::invoke_staged`]).
    pub(super) async fn invoke(&self, rt: &TriggerRuntime, call: &Call<'_>) -> Result<Done, InvokeError> {
        let _order = if rt.def.run_async { None } else { Some(rt.order.lock().await) };
        let slot = rt.least_busy();
        slot.busy.fetch_add(1, Ordering::Relaxed);
        let result = async {
            let worker = self.worker(rt, slot).await?;
            let mut timeout = self.config.plugin_timeout;
            if let Some(d) = call.deadline {
                let left = d.duration_since(std::time::SystemTime::now()).unwrap_or(Duration::ZERO);
                if left.is_zero() {
                    return Err(InvokeError::Timeout(timeout));
                }
                timeout = timeout.min(left);
            }
            let ahead = call.ahead.filter(|_| !rt.def.run_async);
            worker.invoke_staged(call.entry, call.args, call.staged, timeout, ahead).await
        }
        .await;
        slot.busy.fetch_sub(1, Ordering::Relaxed);
        result
    }

    pub(super) fn runtime(&self, tid: &TriggerId) -> Result<Arc<TriggerRuntime>, String> {
        self.triggers.lock().get(tid).cloned().ok_or_else(|| {
            format!("trigger {} in database {} is not running in the plugin host", tid.name, tid.database)
        })
    }

    /// Run a schedule tick and answer with `Done`.
    pub(super) fn schedule_tick(self: &Arc<Self>, id: u64, tick: pb::ScheduleTick) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let tid = TriggerId { database: tick.database, name: tick.trigger };
            let args = marshal::schedule_call_args(tick.call_time_s);
            let started = format!("starting execution for scheduled time {}", fire_time(tick.scheduled_ns));
            let call = Call { entry: "process_scheduled_call", args: &args, started: Some(started), ..Call::default() };
            let done = host.run_call(&tid, call).await;
            host.link.send(id, host_message::Body::Done(done_message(done))).await;
        });
    }

    /// Run a request trigger for one HTTP request and answer with `Done` (with the HTTP
    /// answer when the plugin succeeded).
    pub(super) fn http_request(self: &Arc<Self>, id: u64, req: pb::HttpRequest) {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let tid = TriggerId { database: req.database, name: req.trigger };
            let args = marshal::request_call_args(req.query.iter(), req.headers.iter(), &req.body);
            let deadline =
                (req.deadline_ns > 0).then(|| std::time::UNIX_EPOCH + Duration::from_nanos(req.deadline_ns as u64));
            let done =
                host.run_call(&tid, Call { entry: "process_request", args: &args, deadline, ..Call::default() }).await;
            host.link.send(id, host_message::Body::Done(done_message(done))).await;
        });
    }

    /// Run a call for a trigger and log the outcome (errors with their traceback).
    pub(super) async fn run_call(&self, tid: &TriggerId, mut call: Call<'_>) -> Done {
        let rt = match self.runtime(tid) {
            Ok(rt) => rt,
            Err(e) => {
                self.log(tid, Level::Error, e.clone());
                return failed(e);
            }
        };
        if let Some(reason) = rt.stopped.lock().clone() {
            return Done { stopped: true, ..failed(reason) };
        }
        if let Some(text) = call.started.take() {
            self.log(tid, Level::Info, text);
        }
        match self.invoke(&rt, &call).await {
            Ok(done) => {
                rt.crashes.store(0, Ordering::Relaxed);
                if done.ok {
                    // Request triggers log only failures: a line per request would flood the log.
                    if call.entry != "process_request" {
                        self.log(tid, Level::Info, format!("finished execution in {:?}", done.duration));
                    }
                } else {
                    self.log(tid, Level::Error, error_text(&done));
                }
                done
            }
            Err(e) => {
                let timed_out = matches!(e, InvokeError::Timeout(_));
                let mut text = e.to_string();
                self.log(tid, Level::Error, format!("error executing plugin: {text}"));
                let crashes = match e {
                    InvokeError::Crashed(_) | InvokeError::Spawn(_) => rt.crashes.fetch_add(1, Ordering::Relaxed) + 1,
                    InvokeError::Timeout(_)
                    | InvokeError::Plugin(_)
                    | InvokeError::Lost(_)
                    | InvokeError::TooLarge(_) => 0,
                };
                let stopped = crashes >= CRASH_LIMIT;
                if stopped {
                    text = format!(
                        "trigger stopped: its worker failed {crashes} times in a row (last: {text}); \
                         fix the plugin, then disable and enable the trigger"
                    );
                    self.log(tid, Level::Error, text.clone());
                    *rt.stopped.lock() = Some(text.clone());
                }
                Done { timed_out, stopped, ..failed(text) }
            }
        }
    }
}
