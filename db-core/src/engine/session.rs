//! The `weir.plugin.v1` session with the plugin host, core side: connecting (with capped,
//! jittered backoff), the request/reply multiplexing, and serving the host's own requests
//! (plugin queries and writes, log lines, liveness pings).
//!
//! Each side numbers its own requests; a reply carries its request's `id`; events use 0.
//! [`HostLink::request`] sends a request on the current session and waits for a reply of
//! the expected type ([`Reply`]): a reply of another type is a protocol error, named once
//! here instead of at every call site.

use std::{collections::HashMap, sync::Arc, time::Duration};

use futures::{StreamExt, stream::BoxStream};
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::wrappers::ReceiverStream;
use weir_proto::plugin::v1::{self as pb, core_message, host_message, plugin_host_client::PluginHostClient};

use super::{Engine, EngineError, Result, state::LogLevel};

/// How long an admin call waits for a session before it fails as unavailable.
pub const SESSION_WAIT: Duration = Duration::from_secs(10);
/// Messages queued towards the host per session.
const OUTBOUND_QUEUE: usize = 1024;
/// First reconnect delay; it doubles per failure up to [`RECONNECT_CAP`], with jitter.
const RECONNECT_BASE: Duration = Duration::from_millis(100);
/// Longest reconnect delay.
pub const RECONNECT_CAP: Duration = Duration::from_secs(5);
/// While the host stays unreachable, a summary line this often (the first failure is
/// logged with its cause at once).
const FAILURE_SUMMARY_EVERY: Duration = Duration::from_secs(60);

type Pending = Arc<Mutex<HashMap<u64, oneshot::Sender<host_message::Body>>>>;

/// One live session.
#[derive(Debug)]
pub(super) struct Session {
    /// A new number after every reconnect.
    pub(super) number: u64,
    tx: mpsc::Sender<pb::CoreMessage>,
    pending: Pending,
}

/// A message stream opened to a plugin host.
pub struct HostStream {
    /// Messages to the host.
    pub tx: mpsc::Sender<pb::CoreMessage>,
    /// Messages from the host.
    pub inbound: BoxStream<'static, Result<pb::HostMessage, tonic::Status>>,
}

impl std::fmt::Debug for HostStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostStream").finish_non_exhaustive()
    }
}

/// Why a session could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// The host is not reachable (not started yet, network).
    #[error("cannot reach the plugin host: {0}")]
    Transport(String),
    /// The host refused the session token.
    #[error(
        "the plugin host refused the session token ({0}); set the same WEIR_PLUGIN_HOST_TOKEN (--plugin-host-token) on both sides"
    )]
    Token(String),
    /// The host refused the session for another reason (another core holds it).
    #[error("the plugin host refused the session: {0}")]
    Refused(String),
}

/// Opens sessions: gRPC to a real host, or an in-process fake in tests.
#[async_trait::async_trait]
pub trait HostConnector: Send + Sync + std::fmt::Debug {
    /// Open a session to the host at `url`, authenticated with `token`.
    async fn connect(&self, url: &str, token: Option<&str>) -> Result<HostStream, ConnectError>;
}

/// The real connector: `weir.plugin.v1.PluginHost/Session` over HTTP/2.
#[derive(Debug, Default)]
pub struct GrpcConnector;

fn status_error(s: tonic::Status) -> ConnectError {
    match s.code() {
        tonic::Code::Unauthenticated | tonic::Code::PermissionDenied => ConnectError::Token(s.message().to_string()),
        tonic::Code::Unavailable if s.message().contains("transport") || s.message().is_empty() => {
            ConnectError::Transport(s.to_string())
        }
        tonic::Code::AlreadyExists | tonic::Code::FailedPrecondition => ConnectError::Refused(s.message().to_string()),
        _ => ConnectError::Transport(s.to_string()),
    }
}

#[async_trait::async_trait]
impl HostConnector for GrpcConnector {
    async fn connect(&self, url: &str, token: Option<&str>) -> Result<HostStream, ConnectError> {
        let transport = |e: &dyn std::fmt::Display| ConnectError::Transport(e.to_string());
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| transport(&e))?
            .connect_timeout(Duration::from_secs(5))
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = endpoint.connect().await.map_err(|e| {
            // The transport error's own text is only "transport error": add its cause.
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            ConnectError::Transport(text)
        })?;
        let mut client = PluginHostClient::new(channel)
            .max_decoding_message_size(weir_proto::MAX_MESSAGE_BYTES)
            .max_encoding_message_size(weir_proto::MAX_MESSAGE_BYTES);
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        let mut request = tonic::Request::new(ReceiverStream::new(rx));
        if let Some(token) = token {
            let value = format!("Bearer {token}")
                .parse()
                .map_err(|_| ConnectError::Token("not a valid header value".into()))?;
            request.metadata_mut().insert("authorization", value);
        }
        let inbound = client.session(request).await.map_err(status_error)?.into_inner();
        Ok(HostStream { tx, inbound: inbound.boxed() })
    }
}

/// A reply type of a host request.
pub(super) trait Reply: Sized {
    /// The reply, or the debug text of a reply of another type.
    fn from_body(body: host_message::Body) -> Result<Self, String>;
}

macro_rules! reply {
    ($($variant:ident => $ty:ty),* $(,)?) => {$(
        impl Reply for $ty {
            fn from_body(body: host_message::Body) -> Result<Self, String> {
                match body {
                    host_message::Body::$variant(r) => Ok(r),
                    other => Err(format!("{other:?}")),
                }
            }
        }
    )*};
}

reply!(Done => pb::Done, AdminResult => pb::AdminResult, TestResult => pb::TestResult, PluginFiles => pb::PluginFiles);

/// A request sent on a session, waiting for its reply.
#[derive(Debug)]
pub(super) struct Waiting {
    rx: oneshot::Receiver<host_message::Body>,
}

impl Waiting {
    /// The reply, `what` naming the call in errors; [`EngineError::Unavailable`] when the
    /// session ended first.
    pub(super) async fn reply<R: Reply>(self, what: &'static str) -> Result<R> {
        let body = self.rx.await.map_err(|_| EngineError::Unavailable)?;
        R::from_body(body).map_err(|reply| EngineError::Protocol { what, reply })
    }
}

/// The current session, if any, and request numbering.
#[derive(Debug)]
pub(super) struct HostLink {
    session: watch::Sender<Option<Arc<Session>>>,
    next_id: std::sync::atomic::AtomicU64,
}

impl HostLink {
    pub(super) fn new() -> Self {
        let (session, _) = watch::channel(None);
        // Random start: a host that outlived a previous core never matches a late reply of
        // the old session to a request of this one.
        let mut b = [0u8; 8];
        let _ = getrandom::fill(&mut b);
        Self { session, next_id: std::sync::atomic::AtomicU64::new(u64::from_le_bytes(b) >> 2) }
    }

    pub(super) fn id(&self) -> u64 {
        self.next_id.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1
    }

    pub(super) fn current(&self) -> Option<Arc<Session>> {
        self.session.borrow().clone()
    }

    pub(super) fn is_connected(&self) -> bool {
        self.session.borrow().is_some()
    }

    /// Send a request on the current session (`None`: no session).
    pub(super) async fn send(&self, body: core_message::Body) -> Option<Waiting> {
        let session = self.current()?;
        let id = self.id();
        let (tx, rx) = oneshot::channel();
        session.pending.lock().insert(id, tx);
        if session.tx.send(pb::CoreMessage { id, body: Some(body) }).await.is_err() {
            session.pending.lock().remove(&id);
            return None;
        }
        Some(Waiting { rx })
    }

    /// Send a request and wait up to `deadline` for its reply of type `R`.
    pub(super) async fn request<R: Reply>(
        &self,
        body: core_message::Body,
        deadline: Duration,
        what: &'static str,
    ) -> Result<R> {
        // A host that is starting or reconnecting gets a moment to open its session.
        if !self.is_connected() {
            self.wait_for_session(SESSION_WAIT).await;
        }
        let waiting = self.send(body).await.ok_or(EngineError::Unavailable)?;
        match tokio::time::timeout(deadline, waiting.reply(what)).await {
            Ok(r) => r,
            Err(_) => Err(EngineError::Timeout { what, verb: "finish", after: deadline }),
        }
    }

    /// Send an event (no reply) on the current session, if there is one.
    pub(super) async fn notify(&self, body: core_message::Body) {
        if let Some(s) = self.current() {
            let _ = s.tx.send(pb::CoreMessage { id: 0, body: Some(body) }).await;
        }
    }

    /// Send `body` as an event on `session` unless `announced` says it was (messages on one
    /// session arrive in order, so what follows never overtakes it); true when it is.
    pub(super) async fn announce(
        &self,
        announced: &mut Option<u64>,
        body: impl FnOnce() -> core_message::Body,
    ) -> bool {
        let Some(s) = self.current() else { return false };
        if *announced == Some(s.number) {
            return true;
        }
        if s.tx.send(pb::CoreMessage { id: 0, body: Some(body()) }).await.is_ok() {
            *announced = Some(s.number);
            return true;
        }
        false
    }

    /// Wait until a session is open (at most `max`).
    pub(super) async fn wait_for_session(&self, max: Duration) {
        let mut rx = self.session.subscribe();
        let _ = tokio::time::timeout(max, rx.wait_for(Option::is_some)).await;
    }

    fn open(&self, session: Arc<Session>) {
        self.session.send_replace(Some(session));
    }

    /// The session ended: calls still waiting on it fail now (and are sent again later).
    fn close(&self) {
        if let Some(old) = self.session.send_replace(None) {
            old.pending.lock().clear();
        }
    }
}

/// Reconnect delays: doubling from [`RECONNECT_BASE`] to [`RECONNECT_CAP`], each a random
/// point in the upper half of its step so many cores do not retry in lockstep.
#[derive(Debug)]
struct Backoff {
    failures: u32,
}

impl Backoff {
    fn next(&mut self, entropy: u64) -> Duration {
        self.failures = self.failures.saturating_add(1);
        let full = RECONNECT_BASE.saturating_mul(1u32 << (self.failures - 1).min(16)).min(RECONNECT_CAP);
        let half = full / 2;
        let spread = u64::try_from(half.as_micros()).unwrap_or(u64::MAX).max(1);
        half + Duration::from_micros(entropy % spread)
    }
}

/// The first failure of a run of failures is logged with its cause; after that a summary
/// at most every [`FAILURE_SUMMARY_EVERY`].
#[derive(Debug, Default)]
struct FailureLog {
    since: Option<tokio::time::Instant>,
    last_summary: Option<tokio::time::Instant>,
    count: u64,
}

impl FailureLog {
    fn failed(&mut self, url: &str, e: &ConnectError) {
        let now = tokio::time::Instant::now();
        self.count += 1;
        let Some(since) = self.since else {
            self.since = Some(now);
            self.last_summary = Some(now);
            match e {
                ConnectError::Token(_) | ConnectError::Refused(_) => {
                    tracing::error!(url, error = %e, "plugin host session refused; retrying with backoff")
                }
                ConnectError::Transport(_) => {
                    tracing::warn!(url, error = %e, "plugin host session failed; retrying with backoff")
                }
            }
            return;
        };
        if self.last_summary.is_none_or(|t| now.duration_since(t) >= FAILURE_SUMMARY_EVERY) {
            self.last_summary = Some(now);
            tracing::warn!(
                url,
                attempts = self.count,
                for_s = now.duration_since(since).as_secs(),
                last_error = %e,
                "still no session with the plugin host"
            );
        } else {
            tracing::debug!(url, error = %e, "plugin host session failed");
        }
    }

    fn connected(&mut self, url: &str) {
        match self.since.take() {
            Some(since) => tracing::info!(
                url,
                failed_attempts = self.count,
                after_s = since.elapsed().as_secs(),
                "connected to the plugin host"
            ),
            None => tracing::info!(url, "connected to the plugin host"),
        }
        self.count = 0;
        self.last_summary = None;
    }
}

impl Engine {
    /// Keep a session open to the current host URL (`None`: no host yet).
    pub(super) async fn connect_loop(self: Arc<Self>, mut url: watch::Receiver<Option<String>>) {
        let mut backoff = Backoff { failures: 0 };
        let mut log = FailureLog::default();
        loop {
            let Some(target) = url.borrow_and_update().clone() else {
                if url.changed().await.is_err() {
                    return;
                }
                continue;
            };
            match self.connector.connect(&target, self.config.host_token.as_deref()).await {
                Ok(stream) => {
                    log.connected(&target);
                    backoff.failures = 0;
                    if let Err(e) = self.run_session(stream).await {
                        tracing::warn!(url = %target, error = %e, "the session with the plugin host ended");
                    }
                    self.link.close();
                }
                Err(e) => log.failed(&target, &e),
            }
            let delay = backoff.next(self.time.now_ns().unsigned_abs());
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = url.changed() => {}
            }
        }
    }

    /// Greet the host, define every enabled trigger, then serve the session until it ends.
    async fn run_session(self: &Arc<Self>, stream: HostStream) -> std::result::Result<(), tonic::Status> {
        let HostStream { tx, mut inbound } = stream;
        let session = Arc::new(Session { number: self.link.id(), tx, pending: Arc::new(Mutex::new(HashMap::new())) });
        let closed = |_| tonic::Status::unavailable("the stream to the plugin host closed");
        let hello = core_message::Body::Hello(pb::Hello {
            core_version: env!("CARGO_PKG_VERSION").to_string(),
            node_id: String::new(),
        });
        session.tx.send(pb::CoreMessage { id: self.link.id(), body: Some(hello) }).await.map_err(closed)?;
        let triggers = self
            .catalog
            .databases()
            .iter()
            .flat_map(|db| {
                db.triggers
                    .values()
                    .filter(|t| !t.disabled)
                    .map(|t| super::trigger_message(&db.name, t))
                    .collect::<Vec<_>>()
            })
            .collect();
        let sync = core_message::Body::TriggerSync(pb::TriggerSync { triggers });
        session.tx.send(pb::CoreMessage { id: 0, body: Some(sync) }).await.map_err(closed)?;
        self.link.open(Arc::clone(&session));
        while let Some(msg) = inbound.next().await {
            let msg = msg?;
            let Some(body) = msg.body else { continue };
            match body {
                host_message::Body::Log(l) => {
                    let level = match pb::LogLevel::try_from(l.level).unwrap_or(pb::LogLevel::Info) {
                        pb::LogLevel::Warn => LogLevel::Warn,
                        pb::LogLevel::Error => LogLevel::Error,
                        _ => LogLevel::Info,
                    };
                    let at = if l.time_ns > 0 { l.time_ns } else { self.time.now_ns() };
                    self.state.push(&l.database, &l.trigger, level, l.text, at);
                }
                host_message::Body::Query(q) => {
                    let engine = Arc::clone(self);
                    let tx = session.tx.clone();
                    self.tasks.spawn(async move {
                        let body = engine.plugin_query(q).await;
                        let _ = tx
                            .send(pb::CoreMessage { id: msg.id, body: Some(core_message::Body::QueryResult(body)) })
                            .await;
                    });
                }
                host_message::Body::Write(w) => {
                    let engine = Arc::clone(self);
                    let tx = session.tx.clone();
                    self.tasks.spawn(async move {
                        let error = engine
                            .plugin_write(&w.database, &w.lines, w.no_sync)
                            .await
                            .err()
                            .map(|e| e.to_string())
                            .unwrap_or_default();
                        let reply = core_message::Body::WriteResult(pb::WriteResult { error });
                        let _ = tx.send(pb::CoreMessage { id: msg.id, body: Some(reply) }).await;
                    });
                }
                host_message::Body::Ping(p) => {
                    let _ = session
                        .tx
                        .send(pb::CoreMessage {
                            id: msg.id,
                            body: Some(core_message::Body::Pong(pb::Pong { nonce: p.nonce })),
                        })
                        .await;
                }
                reply @ (host_message::Body::Done(_)
                | host_message::Body::Hello(_)
                | host_message::Body::Pong(_)
                | host_message::Body::AdminResult(_)
                | host_message::Body::TestResult(_)
                | host_message::Body::PluginFiles(_)) => {
                    if let Some(tx) = session.pending.lock().remove(&msg.id) {
                        let _ = tx.send(reply);
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconnect_backoff_doubles_with_jitter_up_to_the_cap() {
        let mut b = Backoff { failures: 0 };
        let mut last_full = Duration::ZERO;
        for n in 1..=30u32 {
            let full = RECONNECT_BASE.saturating_mul(1 << (n - 1).min(16)).min(RECONNECT_CAP);
            let d = b.next(u64::from(n) * 7_919);
            assert!(d >= full / 2 && d <= full, "failure {n}: {d:?} vs {full:?}");
            assert!(full >= last_full);
            last_full = full;
        }
        assert_eq!(last_full, RECONNECT_CAP);
    }
}
