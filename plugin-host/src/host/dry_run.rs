//! Dry runs: a plugin run once in a fresh worker whose writes are captured, for
//! `/api/v3/plugin_test/*` and `weir test`.

use std::sync::Arc;

use parking_lot::Mutex;
use weir_proto::plugin::v1::{self as pb};

use super::{Host, link::TestUpstream, pipeline::encode_wal, runtime::done_message};
use crate::{
    marshal,
    worker::{TriggerId, Upstream, Worker},
};

impl Host {
    /// Dry-run a plugin in a fresh worker that captures writes: `entry` with `args`
    /// (built once the plugin path is known to be valid); logs are returned, not recorded.
    pub(super) async fn dry_run(
        &self,
        database: &str,
        plugin_filename: &str,
        arguments: Option<&pb::Arguments>,
        entry: &str,
        args: impl FnOnce() -> Result<Vec<u8>, String>,
    ) -> pb::TestResult {
        let upstream = Arc::new(TestUpstream { link: Arc::clone(&self.link), logs: Mutex::new(Vec::new()) });
        let mut result = pb::TestResult::default();
        let outcome = async {
            let plugin_path = self.plugin_path(plugin_filename).await.map_err(|e| e.to_string())?;
            let args = args()?;
            let trigger = TriggerId { database: database.to_string(), name: "plugin_test".into() };
            let trigger_args = arguments.map(|a| a.values.clone().into_iter().collect());
            let spec = self.worker_spec(trigger, plugin_path, trigger_args, false, true);
            let worker = Worker::spawn(spec, Arc::clone(&upstream) as Arc<dyn Upstream>, Arc::clone(&self.cache))
                .await
                .map_err(|e| e.to_string())?;
            let done = worker.invoke(entry, &args, self.config.plugin_timeout).await;
            worker.kill();
            done.map_err(|e| e.to_string())
        }
        .await;
        match outcome {
            Ok(done) => {
                let done = done_message(done);
                if !done.ok {
                    result.errors.push(done.error);
                }
                result.writes = done.writes;
                result.response = done.response;
            }
            Err(e) => result.errors.push(e),
        }
        result.log_lines = std::mem::take(&mut *upstream.logs.lock());
        result
    }

    pub(super) async fn test_wal(&self, req: pb::TestWal) -> pb::TestResult {
        let batch =
            pb::WalBatch { database: req.database.clone(), trigger: "test".into(), wal_seq: 0, tables: req.tables };
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_writes", || {
            encode_wal(&batch, self.venv.native).map(|e| e.args)
        })
        .await
    }

    pub(super) async fn test_schedule(&self, req: pb::TestSchedule) -> pb::TestResult {
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_scheduled_call", || {
            Ok(marshal::schedule_call_args(req.call_time_s))
        })
        .await
    }

    pub(super) async fn test_request(&self, req: pb::TestRequest) -> pb::TestResult {
        let r = req.request.unwrap_or_default();
        self.dry_run(&req.database, &req.plugin_filename, req.arguments.as_ref(), "process_request", || {
            Ok(marshal::request_call_args(r.query.iter(), r.headers.iter(), &r.body))
        })
        .await
    }
}
