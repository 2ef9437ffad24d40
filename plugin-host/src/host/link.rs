//! The link to the connected core: the session's sender, requests to the core (plugin
//! queries and writes) and their replies, and log lines; the dry-run variant that collects
//! logs and refuses writes.

use std::{
    collections::{BTreeMap, HashMap},
    io::Cursor,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use arrow::{ipc::reader::StreamReader, record_batch::RecordBatch};
use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::{mpsc, oneshot};
use tonic::Status;
use weir_proto::plugin::v1::{self as pb, core_message, host_message};

use crate::{
    marshal,
    worker::{Level, TriggerId, Upstream, UpstreamError},
};

/// How long a plugin's query or write may wait for the core.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(60);

/// The link to the connected core: where host messages go, and the replies we wait for.
#[derive(Debug, Default)]
pub struct CoreLink {
    tx: Mutex<Option<mpsc::Sender<Result<pb::HostMessage, Status>>>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<core_message::Body>>>,
    next_id: AtomicU64,
}

/// An answer that does not decode.
fn bad(e: impl std::fmt::Display) -> UpstreamError {
    UpstreamError::Protocol(e.to_string())
}

fn level(l: Level) -> pb::LogLevel {
    match l {
        Level::Info => pb::LogLevel::Info,
        Level::Warn => pb::LogLevel::Warn,
        Level::Error => pb::LogLevel::Error,
    }
}

fn now_ns() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

impl CoreLink {
    fn sender(&self) -> Option<mpsc::Sender<Result<pb::HostMessage, Status>>> {
        self.tx.lock().clone()
    }

    /// Whether a session is open.
    pub(super) fn is_attached(&self) -> bool {
        self.tx.lock().is_some()
    }

    /// Make `tx` the open session. Requests of a previous session would never get their
    /// replies: they fail now.
    pub(super) fn attach(&self, tx: mpsc::Sender<Result<pb::HostMessage, Status>>) {
        *self.tx.lock() = Some(tx);
        self.pending.lock().clear();
    }

    /// The session `ours` ended: clear it, unless a newer one replaced it already.
    pub(super) fn detach(&self, ours: &mpsc::Sender<Result<pb::HostMessage, Status>>) {
        let mut tx = self.tx.lock();
        if tx.as_ref().is_some_and(|t| t.same_channel(ours)) {
            *tx = None;
            drop(tx);
            // Requests waiting on this session get "connection closed" now.
            self.pending.lock().clear();
        }
    }

    /// Whether the open session's core answers a ping within `timeout`.
    pub(super) async fn ping(&self, timeout: Duration) -> bool {
        let nonce = self.next_id.load(Ordering::Relaxed);
        let body = host_message::Body::Ping(pb::Ping { nonce });
        matches!(self.request_within(body, timeout).await, Ok(core_message::Body::Pong(p)) if p.nonce == nonce)
    }

    /// Send a request to the core and wait for its reply.
    async fn request(&self, body: host_message::Body) -> Result<core_message::Body, UpstreamError> {
        self.request_within(body, UPSTREAM_TIMEOUT).await
    }

    async fn request_within(
        &self,
        body: host_message::Body,
        timeout: Duration,
    ) -> Result<core_message::Body, UpstreamError> {
        let tx = self.sender().ok_or(UpstreamError::NotConnected)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let (reply_tx, reply_rx) = oneshot::channel();
        self.pending.lock().insert(id, reply_tx);
        let msg = pb::HostMessage { id, body: Some(body) };
        if tx.send(Ok(msg)).await.is_err() {
            self.pending.lock().remove(&id);
            return Err(UpstreamError::Closed);
        }
        match tokio::time::timeout(timeout, reply_rx).await {
            Ok(Ok(body)) => Ok(body),
            Ok(Err(_)) => Err(UpstreamError::Closed),
            Err(_) => {
                self.pending.lock().remove(&id);
                Err(UpstreamError::NoAnswer(timeout))
            }
        }
    }

    pub(super) fn resolve(&self, id: u64, body: core_message::Body) {
        if let Some(tx) = self.pending.lock().remove(&id) {
            let _ = tx.send(body);
        }
    }

    /// Send without waiting (events, replies). A reply over the session's message limit
    /// is replaced by that call's failure (a larger message would end the session).
    pub(super) async fn send(&self, id: u64, body: host_message::Body) {
        let Some(tx) = self.sender() else { return };
        let mut msg = pb::HostMessage { id, body: Some(body) };
        let size = prost::Message::encoded_len(&msg);
        if size > weir_proto::MAX_MESSAGE_BYTES {
            let error = format!(
                "the answer is {size} bytes, over the {}-byte limit of the session with weir serve",
                weir_proto::MAX_MESSAGE_BYTES
            );
            tracing::warn!(id, "{error}");
            msg.body = Some(match msg.body {
                Some(host_message::Body::Done(_)) => {
                    host_message::Body::Done(pb::Done { ok: false, error, ..Default::default() })
                }
                Some(host_message::Body::TestResult(_)) => {
                    host_message::Body::TestResult(pb::TestResult { errors: vec![error], ..Default::default() })
                }
                _ => host_message::Body::AdminResult(pb::AdminResult {
                    ok: false,
                    error,
                    error_kind: pb::ErrorKind::Failed as i32,
                    ..Default::default()
                }),
            });
        }
        let _ = tx.send(Ok(msg)).await;
    }
}

#[async_trait]
impl Upstream for CoreLink {
    async fn query(
        &self,
        trigger: &TriggerId,
        database: &str,
        sql: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, UpstreamError> {
        let body = host_message::Body::Query(pb::Query {
            database: database.to_string(),
            sql: sql.to_string(),
            params: params.into_iter().collect(),
            trigger: trigger.name.clone(),
        });
        match self.request(body).await? {
            core_message::Body::QueryResult(r) if r.error.is_empty() && r.arrow_ipc.is_empty() => {
                marshal::query_rows(&[]).map_err(bad)
            }
            core_message::Body::QueryResult(r) if r.error.is_empty() => {
                let reader = StreamReader::try_new(Cursor::new(r.arrow_ipc), None).map_err(bad)?;
                let batches: Vec<RecordBatch> = reader.collect::<Result<_, _>>().map_err(bad)?;
                marshal::query_rows(&batches).map_err(bad)
            }
            core_message::Body::QueryResult(r) => Err(UpstreamError::Refused(r.error)),
            other => Err(UpstreamError::Protocol(format!("unexpected reply to a query: {other:?}"))),
        }
    }

    async fn write(
        &self,
        trigger: &TriggerId,
        database: &str,
        lines: Vec<String>,
        no_sync: bool,
    ) -> Result<(), UpstreamError> {
        let body = host_message::Body::Write(pb::Write {
            database: database.to_string(),
            lines,
            no_sync,
            trigger: trigger.name.clone(),
        });
        match self.request(body).await? {
            core_message::Body::WriteResult(r) if r.error.is_empty() => Ok(()),
            core_message::Body::WriteResult(r) => Err(UpstreamError::Refused(r.error)),
            other => Err(UpstreamError::Protocol(format!("unexpected reply to a write: {other:?}"))),
        }
    }

    fn log(&self, trigger: &TriggerId, l: Level, text: String) {
        let Some(tx) = self.sender() else {
            tracing::info!(trigger = %trigger.name, database = %trigger.database, "{text}");
            return;
        };
        let msg = pb::HostMessage {
            id: 0,
            body: Some(host_message::Body::Log(pb::Log {
                database: trigger.database.clone(),
                trigger: trigger.name.clone(),
                level: level(l) as i32,
                text,
                time_ns: now_ns(),
            })),
        };
        // Logs never block a worker: a full queue drops the line (and says so here).
        if tx.try_send(Ok(msg)).is_err() {
            tracing::warn!(trigger = %trigger.name, "log line dropped: the queue to weir serve is full");
        }
    }
}

/// The upstream of a dry-run worker: queries go to the core, logs are collected.
#[derive(Debug)]
pub(super) struct TestUpstream {
    pub(super) link: Arc<CoreLink>,
    pub(super) logs: Mutex<Vec<String>>,
}

#[async_trait]
impl Upstream for TestUpstream {
    async fn query(
        &self,
        trigger: &TriggerId,
        database: &str,
        sql: &str,
        params: BTreeMap<String, String>,
    ) -> Result<Vec<u8>, UpstreamError> {
        self.link.query(trigger, database, sql, params).await
    }

    async fn write(
        &self,
        _trigger: &TriggerId,
        _database: &str,
        _lines: Vec<String>,
        _no_sync: bool,
    ) -> Result<(), UpstreamError> {
        Err(UpstreamError::DryRun)
    }

    fn log(&self, _trigger: &TriggerId, l: Level, text: String) {
        self.logs.lock().push(format!("{}: {text}", l.as_str()));
    }
}
