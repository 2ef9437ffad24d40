//! Serving one core session: admission (one live session at a time) and the dispatcher of
//! the core's messages.
//!
//! **Admission.** A second session does not silently replace a live one: while a session
//! is open, a new one is accepted only if the open one fails to answer a ping within
//! [`ADMISSION_PING`] (its core is gone without closing the stream, as after a network
//! cut). Otherwise it is refused with `ALREADY_EXISTS`, and both sides log it.

use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::mpsc;
use tonic::{Status, Streaming};
use weir_proto::plugin::v1::{self as pb, core_message, host_message};

use super::Host;

/// How long an open session has to prove it is alive when another core asks for one.
pub(super) const ADMISSION_PING: Duration = Duration::from_secs(3);

/// Messages queued towards the core per session.
const OUTBOUND_QUEUE: usize = 1024;

impl Host {
    /// Open a session for a core: refused while another live session is open.
    pub async fn open_session(
        self: &Arc<Self>,
        inbound: Streaming<pb::CoreMessage>,
    ) -> Result<mpsc::Receiver<Result<pb::HostMessage, Status>>, Status> {
        let _admission = self.admission.lock().await;
        if self.link.is_attached() {
            if self.link.ping(ADMISSION_PING).await {
                tracing::error!(
                    "refused a second weir serve session: the current session is alive (another core, or \
                     someone holding the session token, tried to take over this plugin host)"
                );
                return Err(Status::already_exists(
                    "this plugin host already serves a live weir serve session; a second session is refused",
                ));
            }
            tracing::warn!("the open session did not answer a ping; a new session replaces it");
        }
        let (tx, rx) = mpsc::channel(OUTBOUND_QUEUE);
        self.begin_session(tx.clone());
        tokio::spawn(Arc::clone(self).session(inbound, tx));
        Ok(rx)
    }

    /// Make `tx` the link's session; batches queued by an older session are not run (the
    /// core sends them again on this one, in order).
    pub(super) fn begin_session(&self, tx: mpsc::Sender<Result<pb::HostMessage, Status>>) {
        self.epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        self.link.attach(tx);
    }

    /// Run `work` on its own task and send its reply to request `id`.
    pub(super) fn answer<F, Fut>(self: &Arc<Self>, id: u64, work: F)
    where
        F: FnOnce(Arc<Host>) -> Fut + Send + 'static,
        Fut: Future<Output = host_message::Body> + Send + 'static,
    {
        let host = Arc::clone(self);
        tokio::spawn(async move {
            let reply = work(Arc::clone(&host)).await;
            host.link.send(id, reply).await;
        });
    }

    /// Serve one core session until its stream ends.
    pub(super) async fn session(
        self: Arc<Self>,
        mut inbound: Streaming<pb::CoreMessage>,
        ours: mpsc::Sender<Result<pb::HostMessage, Status>>,
    ) {
        loop {
            let msg = match inbound.message().await {
                Ok(Some(m)) => m,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "session with weir serve ended");
                    break;
                }
            };
            let Some(body) = msg.body else { continue };
            let id = msg.id;
            match body {
                core_message::Body::Hello(h) => {
                    tracing::info!(core = %h.core_version, node = %h.node_id, "weir serve connected");
                    let reply = pb::HelloReply {
                        host_version: env!("CARGO_PKG_VERSION").to_string(),
                        python_version: self.venv.version.clone(),
                        plugin_dir: self.config.plugin_dir.display().to_string(),
                    };
                    self.link.send(id, host_message::Body::Hello(reply)).await;
                }
                core_message::Body::TriggerSet(t) => {
                    if let Some(def) = t.trigger {
                        self.set_trigger(def);
                    }
                }
                core_message::Body::TriggerDrop(t) => self.drop_trigger(&t.database, &t.name),
                core_message::Body::TriggerSync(sync) => self.sync_triggers(sync.triggers),
                core_message::Body::WalBatch(b) => self.wal_batch(id, b),
                core_message::Body::ScheduleTick(tick) => self.schedule_tick(id, tick),
                core_message::Body::HttpRequest(req) => self.http_request(id, req),
                core_message::Body::TestWal(req) => {
                    self.answer(id, |h| async move { host_message::Body::TestResult(h.test_wal(req).await) })
                }
                core_message::Body::TestSchedule(req) => {
                    self.answer(id, |h| async move { host_message::Body::TestResult(h.test_schedule(req).await) })
                }
                core_message::Body::TestRequest(req) => {
                    self.answer(id, |h| async move { host_message::Body::TestResult(h.test_request(req).await) })
                }
                core_message::Body::ListPluginFiles(_) => {
                    self.answer(id, |h| async move { host_message::Body::PluginFiles(h.list_files().await) })
                }
                core_message::Body::PutPlugin(req) => {
                    self.answer(id, |h| async move { host_message::Body::AdminResult(h.put_plugin(req).await) })
                }
                core_message::Body::PreparePlugin(req) => self
                    .answer(id, |h| async move { host_message::Body::AdminResult(h.prepare_plugin(&req.name).await) }),
                core_message::Body::InstallPackages(req) => {
                    self.answer(id, |h| async move { host_message::Body::AdminResult(h.install(req).await) })
                }
                core_message::Body::Ping(p) => {
                    self.link.send(id, host_message::Body::Pong(pb::Pong { nonce: p.nonce })).await;
                }
                reply @ (core_message::Body::QueryResult(_)
                | core_message::Body::WriteResult(_)
                | core_message::Body::Pong(_)) => self.link.resolve(id, reply),
            }
        }
        self.link.detach(&ours);
    }
}
