//! Calls the plugin host answers for the APIs: package installs, plugin files and uploads,
//! checking a trigger's plugin before it is stored, and dry runs of plugins.

use std::{collections::BTreeMap, time::Duration};

use weir_proto::plugin::v1::{self as pb, core_message};

use super::{Engine, EngineError, HttpAnswer, HttpCall, Result, ipc, lp_arrow, rfc3339};
use crate::trigger::Schedule;

/// How long an install may run.
const INSTALL_DEADLINE: Duration = Duration::from_secs(900);

/// The answer of a dry run (`/api/v3/plugin_test/*`).
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TestOutcome {
    /// `LEVEL: text` lines the plugin logged.
    pub log_lines: Vec<String>,
    /// Lines it wrote (captured, not applied), by database.
    pub database_writes: BTreeMap<String, Vec<String>>,
    /// Input lines that could not be used, and the plugin's error.
    pub errors: Vec<String>,
    /// Schedule dry runs: the call time used (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub trigger_time: Option<String>,
    /// Request dry runs: the HTTP answer, when the plugin succeeded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub response: Option<HttpAnswer>,
}

fn admin_ok(r: pb::AdminResult) -> Result<pb::AdminResult> {
    if r.ok { Ok(r) } else { Err(EngineError::from_admin(r)) }
}

fn arguments(a: Option<BTreeMap<String, String>>) -> Option<pb::Arguments> {
    a.map(|a| pb::Arguments { values: a.into_iter().collect() })
}

impl Engine {
    /// Install packages (or a requirements file on the host) into the plugin venv; the
    /// package manager's output.
    pub async fn install(&self, packages: Vec<String>, requirements_file: String) -> Result<String> {
        let body = core_message::Body::InstallPackages(pb::InstallPackages { packages, requirements_file });
        let r = self.link.request::<pb::AdminResult>(body, INSTALL_DEADLINE, "the install").await?;
        admin_ok(r).map(|r| r.output)
    }

    /// The files of the plugin directory, as the host sees them.
    pub async fn plugin_files(&self) -> Result<Vec<pb::PluginFile>> {
        let body = core_message::Body::ListPluginFiles(pb::ListPluginFiles {});
        let f = self.link.request::<pb::PluginFiles>(body, Duration::from_secs(30), "listing plugin files").await?;
        if f.error.is_empty() { Ok(f.files) } else { Err(EngineError::host(super::HostErrorKind::Failed, f.error)) }
    }

    /// Make sure a trigger's plugin is on the host before the trigger is stored: a `gh:`
    /// plugin is fetched into its cache, a local one must exist.
    pub async fn prepare_plugin(&self, name: &str) -> Result<()> {
        let body = core_message::Body::PreparePlugin(pb::PreparePlugin { name: name.to_string() });
        let r = self.link.request::<pb::AdminResult>(body, Duration::from_secs(90), "checking the plugin").await?;
        admin_ok(r).map(|_| ())
    }

    /// Write a plugin file or replace a plugin directory on the host (atomically).
    pub async fn put_plugin(&self, req: pb::PutPlugin) -> Result<()> {
        let body = core_message::Body::PutPlugin(req);
        let r = self.link.request::<pb::AdminResult>(body, Duration::from_secs(120), "the upload").await?;
        admin_ok(r).map(|_| ())
    }

    /// Send a dry-run request (`TestWal`, `TestSchedule`, `TestRequest`) and shape its answer.
    async fn dry_run(&self, body: core_message::Body) -> Result<TestOutcome> {
        let deadline = self.config.plugin_timeout + Duration::from_secs(60);
        let r = self.link.request::<pb::TestResult>(body, deadline, "the dry run").await?;
        Ok(TestOutcome {
            log_lines: r.log_lines,
            database_writes: r.writes.into_iter().map(|w| (w.database, w.lines)).collect(),
            errors: r.errors,
            trigger_time: None,
            response: r.response.map(HttpAnswer::from),
        })
    }

    /// Dry-run a WAL plugin on `lp` (parsed without the catalog; nothing is written): the
    /// `/api/v3/plugin_test/wal` answer.
    pub async fn test_wal(
        &self,
        database: &str,
        plugin_filename: &str,
        lp: &str,
        arguments: Option<BTreeMap<String, String>>,
    ) -> Result<TestOutcome> {
        let (tables, mut errors) = lp_arrow::tables(lp, self.now()).map_err(|e| EngineError::Invalid(e.to_string()))?;
        let mut rows = Vec::with_capacity(tables.len());
        for (name, batch) in tables {
            let arrow_ipc = ipc(&[batch]).map_err(|e| EngineError::Invalid(e.to_string()))?;
            rows.push(pb::TableRows { table_name: name, arrow_ipc });
        }
        let body = core_message::Body::TestWal(pb::TestWal {
            database: database.to_string(),
            plugin_filename: plugin_filename.to_string(),
            tables: rows,
            arguments: self::arguments(arguments),
        });
        let mut outcome = self.dry_run(body).await?;
        errors.append(&mut outcome.errors);
        outcome.errors = errors;
        Ok(outcome)
    }

    /// Dry-run a schedule plugin for the next fire time of `schedule` (now without one):
    /// the outcome and the call time used.
    pub async fn test_schedule(
        &self,
        database: &str,
        plugin_filename: &str,
        schedule: Option<&str>,
        arguments: Option<BTreeMap<String, String>>,
    ) -> Result<TestOutcome> {
        let at = match schedule.filter(|s| !s.is_empty()) {
            Some(spec) => {
                // influxdb3 takes a bare cron expression here (`0 0 * * *`); so do we.
                let spec = if spec.starts_with("every:") || spec.starts_with("cron:") {
                    spec.to_string()
                } else {
                    format!("cron:{}", spec.trim())
                };
                let spec = spec.as_str();
                let parsed = Schedule::parse(spec).map_err(EngineError::Invalid)?;
                parsed.check_fires().map_err(EngineError::Invalid)?;
                parsed.next_after(self.now()).ok_or_else(|| EngineError::Invalid(format!("{spec:?} never fires")))?
            }
            None => self.now(),
        };
        let body = core_message::Body::TestSchedule(pb::TestSchedule {
            database: database.to_string(),
            plugin_filename: plugin_filename.to_string(),
            arguments: self::arguments(arguments),
            call_time_s: at.div_euclid(1_000_000_000),
        });
        let mut outcome = self.dry_run(body).await?;
        outcome.trigger_time = Some(rfc3339(at.div_euclid(1_000_000_000) * 1_000_000_000));
        Ok(outcome)
    }

    /// Dry-run a request plugin on one request: the outcome, with the HTTP answer when
    /// the plugin succeeded.
    pub async fn test_request(
        &self,
        database: &str,
        plugin_filename: &str,
        arguments: Option<BTreeMap<String, String>>,
        call: HttpCall,
    ) -> Result<TestOutcome> {
        let body = core_message::Body::TestRequest(pb::TestRequest {
            database: database.to_string(),
            plugin_filename: plugin_filename.to_string(),
            arguments: self::arguments(arguments),
            request: Some(pb::HttpRequest {
                database: database.to_string(),
                trigger: "plugin_test".to_string(),
                method: call.method,
                path: call.path,
                query: call.query.into_iter().collect(),
                headers: call.headers.into_iter().collect(),
                body: call.body,
                deadline_ns: 0,
            }),
        });
        self.dry_run(body).await
    }
}
