//! The `weir.admin.v1.Admin` gRPC service used by the `weir` CLI.
//!
//! Authentication: `authorization: Bearer <token>` metadata, same tokens as HTTP. The
//! first admin token may be created without one.

use std::{collections::HashMap, pin::Pin, sync::Arc, time::Duration};

use arrow::ipc::writer::StreamWriter;
use futures::{Stream, StreamExt};
use tonic::{Request, Response, Status};
use weir_proto::admin::v1::{
    self as pb,
    admin_server::{Admin, AdminServer},
};

use super::SharedState;
use crate::{
    auth::{self, ADMIN_TOKEN_NAME, Action, AuthError, NewToken, Principal},
    catalog,
    lp::Precision,
    query, write_buffer,
};

/// Build the tonic service.
pub fn service(state: SharedState) -> AdminServer<AdminService> {
    AdminServer::new(AdminService { state })
        .max_decoding_message_size(64 * 1024 * 1024)
        .max_encoding_message_size(64 * 1024 * 1024)
}

/// The admin service implementation.
#[derive(Debug, Clone)]
pub struct AdminService {
    state: SharedState,
}

/// Map errors to gRPC statuses in one place.
pub trait IntoStatus {
    /// The status for this error.
    fn into_status(self) -> Status;
}

impl IntoStatus for AuthError {
    fn into_status(self) -> Status {
        if self.is_forbidden() {
            Status::permission_denied(self.to_string())
        } else {
            Status::unauthenticated(self.to_string())
        }
    }
}

impl IntoStatus for catalog::Error {
    fn into_status(self) -> Status {
        match self {
            catalog::Error::InvalidDbName { .. } => Status::invalid_argument(self.to_string()),
            catalog::Error::DbExists(_)
            | catalog::Error::TokenExists(_)
            | catalog::Error::TriggerExists { .. }
            | catalog::Error::RequestPathTaken { .. } => Status::already_exists(self.to_string()),
            catalog::Error::TriggerEnabled { .. } => Status::failed_precondition(self.to_string()),
            catalog::Error::DbNotFound(_)
            | catalog::Error::TableNotFound { .. }
            | catalog::Error::TriggerNotFound { .. }
            | catalog::Error::TokenNotFound(_) => Status::not_found(self.to_string()),
            catalog::Error::InvalidToken(_) => Status::invalid_argument(self.to_string()),
            catalog::Error::InvalidTrigger(_) => Status::invalid_argument(self.to_string()),
            catalog::Error::TooManyColumns(_) | catalog::Error::TooManyTables(_) | catalog::Error::TooManyDbs(_) => {
                Status::resource_exhausted(self.to_string())
            }
            catalog::Error::Storage(_) | catalog::Error::Corrupt { .. } | catalog::Error::UnsupportedVersion { .. } => {
                Status::internal(self.to_string())
            }
        }
    }
}

impl IntoStatus for write_buffer::Error {
    fn into_status(self) -> Status {
        match self {
            write_buffer::Error::Catalog(c) => c.into_status(),
            write_buffer::Error::Rejected(errors) => Status::invalid_argument(format!(
                "write rejected, nothing written: {}",
                errors.first().map(|e| e.to_string()).unwrap_or_default()
            )),
            write_buffer::Error::Wal(w) => Status::unavailable(format!("write was not persisted: {w}")),
            write_buffer::Error::Persist(p) => Status::internal(p.to_string()),
        }
    }
}

impl IntoStatus for query::Error {
    fn into_status(self) -> Status {
        match self {
            query::Error::DbNotFound(_) => Status::not_found(self.to_string()),
            query::Error::Invalid(_) | query::Error::MissingParam(_) => Status::invalid_argument(self.to_string()),
            query::Error::Execution(_) => Status::internal(self.to_string()),
            query::Error::Timeout(_) => Status::deadline_exceeded(self.to_string()),
            query::Error::MemoryLimit(_) => Status::resource_exhausted(self.to_string()),
        }
    }
}

impl IntoStatus for crate::engine::EngineError {
    fn into_status(self) -> Status {
        use crate::engine::{EngineError, HostErrorKind};
        match self {
            EngineError::NotRunning | EngineError::Unavailable => Status::unavailable(self.to_string()),
            EngineError::Timeout { .. } => Status::deadline_exceeded(self.to_string()),
            EngineError::Invalid(m) => Status::invalid_argument(m),
            EngineError::Protocol { .. } => Status::internal(self.to_string()),
            EngineError::Host { kind, message } => match kind {
                HostErrorKind::Invalid => Status::invalid_argument(message),
                HostErrorKind::Exists => Status::already_exists(message),
                HostErrorKind::Missing => Status::not_found(message),
                HostErrorKind::Refused => Status::permission_denied(message),
                HostErrorKind::Failed => Status::internal(message),
            },
        }
    }
}

/// The token in `authorization` metadata (`Bearer`, `Token` or `Basic`), if any.
pub(crate) fn metadata_token(md: &tonic::metadata::MetadataMap) -> Result<Option<String>, AuthError> {
    match md.get("authorization") {
        Some(v) => {
            let v = v.to_str().map_err(|_| AuthError::Malformed)?;
            auth::token_from_header(v).map(Some)
        }
        None => Ok(None),
    }
}

impl AdminService {
    /// Who is calling.
    fn authorize<T>(&self, req: &Request<T>) -> Result<Principal, Status> {
        if !self.state.auth.enabled() {
            return Ok(Principal::Open);
        }
        let token = metadata_token(req.metadata()).map_err(IntoStatus::into_status)?;
        self.state.auth.authenticate(token.as_deref()).map_err(IntoStatus::into_status)
    }

    /// Refuse unless the caller holds an admin token (or auth is off); `what` names the call.
    fn admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        self.authorize(req)?.require_admin(what).map_err(IntoStatus::into_status)
    }

    /// Token management: an admin token once one exists, even with auth off.
    fn token_admin<T>(&self, req: &Request<T>, what: &str) -> Result<(), Status> {
        let token = metadata_token(req.metadata()).map_err(IntoStatus::into_status)?;
        self.state.auth.require_token_admin(token.as_deref(), what).map_err(IntoStatus::into_status)
    }
}

/// A created token's answer (its secret is in this answer only).
fn created(info: &catalog::TokenInfo, token: String) -> pb::CreateAdminTokenResponse {
    pb::CreateAdminTokenResponse {
        name: info.name.clone(),
        token,
        id: info.id,
        expires_at: info.expires_at.unwrap_or_default(),
        admin: info.admin,
        permissions: info.permissions.iter().map(ToString::to_string).collect(),
    }
}

fn precision(p: i32) -> Precision {
    match pb::Precision::try_from(p).unwrap_or(pb::Precision::Auto) {
        pb::Precision::Auto => Precision::Auto,
        pb::Precision::Second => Precision::Second,
        pb::Precision::Millisecond => Precision::Millisecond,
        pb::Precision::Microsecond => Precision::Microsecond,
        pb::Precision::Nanosecond => Precision::Nanosecond,
    }
}

type QueryStream = Pin<Box<dyn Stream<Item = Result<pb::QueryResponse, Status>> + Send>>;

/// A dry run's log lines, captured writes, errors and (schedule runs) call time.
fn dry_run_response(o: crate::engine::TestOutcome) -> pb::TestWalPluginResponse {
    pb::TestWalPluginResponse {
        log_lines: o.log_lines,
        database_writes: o
            .database_writes
            .into_iter()
            .map(|(database, lines)| pb::PluginWrites { database, lines })
            .collect(),
        errors: o.errors,
        trigger_time: o.trigger_time.unwrap_or_default(),
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    async fn create_database(
        &self,
        req: Request<pb::CreateDatabaseRequest>,
    ) -> Result<Response<pb::CreateDatabaseResponse>, Status> {
        self.admin(&req, "create a database")?;
        let r = req.into_inner();
        let retention = match r.retention_period.trim() {
            "" => None,
            text => catalog::parse_retention_period(text).map_err(Status::invalid_argument)?,
        };
        self.state.catalog.create_db_with_retention(&r.name, retention).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::CreateDatabaseResponse {}))
    }

    async fn list_databases(
        &self,
        req: Request<pb::ListDatabasesRequest>,
    ) -> Result<Response<pb::ListDatabasesResponse>, Status> {
        let principal = self.authorize(&req)?;
        let include_deleted = req.into_inner().include_deleted;
        let snapshot = self.state.catalog.snapshot();
        let mut databases: Vec<pb::DatabaseInfo> = snapshot
            .databases
            .values()
            .filter(|d| include_deleted || !d.deleted)
            .filter(|d| principal.sees_db(&d.name))
            .map(|d| pb::DatabaseInfo {
                name: d.name.to_string(),
                id: d.id,
                deleted: d.deleted,
                table_count: d.tables.len() as u32,
                retention_period_s: d.retention_period_ns.map_or(0, |ns| (ns / 1_000_000_000) as u64),
            })
            .collect();
        databases.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Response::new(pb::ListDatabasesResponse { databases }))
    }

    async fn delete_database(
        &self,
        req: Request<pb::DeleteDatabaseRequest>,
    ) -> Result<Response<pb::DeleteDatabaseResponse>, Status> {
        self.admin(&req, "delete a database")?;
        let r = req.into_inner();
        self.state.delete_database(&r.name, r.hard_delete).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::DeleteDatabaseResponse {}))
    }

    async fn delete_table(
        &self,
        req: Request<pb::DeleteTableRequest>,
    ) -> Result<Response<pb::DeleteTableResponse>, Status> {
        self.admin(&req, "delete a table")?;
        let r = req.into_inner();
        self.state.delete_table(&r.database, &r.table).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::DeleteTableResponse {}))
    }

    async fn create_admin_token(
        &self,
        req: Request<pb::CreateAdminTokenRequest>,
    ) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
        if self.state.auth.has_admin_token() {
            self.token_admin(&req, "create tokens")?;
        }
        let name = match req.into_inner().name {
            n if n.is_empty() => ADMIN_TOKEN_NAME.to_string(),
            n => n,
        };
        let (info, token) = self
            .state
            .auth
            .create_token(NewToken { name, admin: true, ..NewToken::default() })
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(created(&info, token)))
    }

    async fn create_token(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
        self.token_admin(&req, "create tokens")?;
        let r = req.into_inner();
        let permissions = r
            .permissions
            .iter()
            .map(|p| p.parse::<auth::Permission>())
            .collect::<Result<Vec<_>, _>>()
            .map_err(Status::invalid_argument)?;
        let (info, token) = self
            .state
            .auth
            .create_token(NewToken {
                name: r.name,
                admin: false,
                permissions,
                expiry: (r.expiry_secs > 0).then(|| Duration::from_secs(r.expiry_secs)),
            })
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(created(&info, token)))
    }

    async fn list_tokens(
        &self,
        req: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        self.token_admin(&req, "list tokens")?;
        let tokens = self
            .state
            .auth
            .list_tokens()
            .into_iter()
            .map(|t| pb::TokenSummary {
                id: t.id,
                name: t.name,
                admin: t.admin,
                permissions: t.permissions,
                created_at: t.created_at,
                expiry: t.expiry.unwrap_or_default(),
                expired: t.expired,
            })
            .collect();
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn delete_token(
        &self,
        req: Request<pb::DeleteTokenRequest>,
    ) -> Result<Response<pb::DeleteTokenResponse>, Status> {
        self.token_admin(&req, "delete tokens")?;
        self.state.auth.delete_token(&req.into_inner().name).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::DeleteTokenResponse {}))
    }

    async fn regenerate_admin_token(
        &self,
        req: Request<pb::RegenerateAdminTokenRequest>,
    ) -> Result<Response<pb::CreateAdminTokenResponse>, Status> {
        let secret = req.get_ref().recovery_secret.clone();
        if secret.is_empty() {
            self.token_admin(&req, "regenerate the admin token")?;
        } else if !self.state.auth.check_recovery_secret(&secret) {
            return Err(Status::permission_denied(
                "the recovery secret does not match: read it from the server's current recovery file \
                 (it changes at every start)",
            ));
        }
        let (info, token) = self.state.auth.regenerate_admin_token().await.map_err(IntoStatus::into_status)?;
        tracing::warn!(name = %info.name, by_recovery = !secret.is_empty(), "admin token regenerated");
        Ok(Response::new(created(&info, token)))
    }

    async fn write(&self, req: Request<pb::WriteRequest>) -> Result<Response<pb::WriteResponse>, Status> {
        let principal = self.authorize(&req)?;
        let r = req.into_inner();
        principal.require_db(&r.database, Action::Write).map_err(IntoStatus::into_status)?;
        let outcome = self
            .state
            .buffer
            .write_lp(&r.database, &r.lines, precision(r.precision), !r.reject_partial, r.no_sync)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::WriteResponse {
            accepted_lines: outcome.accepted_lines as u64,
            rejected: outcome
                .errors
                .into_iter()
                .map(|e| pb::LineError {
                    line_number: e.line_number as u64,
                    original_line: e.original_line,
                    error_message: e.message,
                })
                .collect(),
        }))
    }

    async fn create_trigger(
        &self,
        req: Request<pb::CreateTriggerRequest>,
    ) -> Result<Response<pb::CreateTriggerResponse>, Status> {
        self.admin(&req, "create a trigger")?;
        let r = req.into_inner();
        let t = r.trigger.ok_or_else(|| Status::invalid_argument("missing trigger"))?;
        let new = crate::trigger::NewTrigger {
            name: t.name,
            plugin_filename: t.plugin_filename,
            specification: t.specification,
            arguments: t.arguments.map(|a| a.values.into_iter().collect()),
            run_async: t.run_async,
            error_behavior: Some(t.error_behavior),
            disabled: t.disabled,
            max_retries: (t.max_retries > 0).then_some(t.max_retries),
            workers: t.workers,
        };
        match self.state.create_trigger(&r.database, new).await {
            Ok(()) => {}
            Err(crate::server::TriggerError::Catalog(e)) => return Err(e.into_status()),
            Err(crate::server::TriggerError::Engine(e)) => return Err(e.into_status()),
        }
        Ok(Response::new(pb::CreateTriggerResponse {}))
    }

    async fn delete_trigger(
        &self,
        req: Request<pb::DeleteTriggerRequest>,
    ) -> Result<Response<pb::DeleteTriggerResponse>, Status> {
        self.admin(&req, "delete a trigger")?;
        let r = req.into_inner();
        self.state.catalog.delete_trigger(&r.database, &r.name, r.force).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::DeleteTriggerResponse {}))
    }

    async fn set_trigger_disabled(
        &self,
        req: Request<pb::SetTriggerDisabledRequest>,
    ) -> Result<Response<pb::SetTriggerDisabledResponse>, Status> {
        self.admin(&req, "enable or disable a trigger")?;
        let r = req.into_inner();
        if r.skip_to_now && !r.disabled {
            let engine = self.state.engine().map_err(IntoStatus::into_status)?;
            engine.check_skip_to_now(&r.database, &r.name).map_err(IntoStatus::into_status)?;
        }
        self.state
            .catalog
            .set_trigger_disabled(&r.database, &r.name, r.disabled)
            .await
            .map_err(IntoStatus::into_status)?;
        if r.skip_to_now && !r.disabled {
            let engine = self.state.engine().map_err(IntoStatus::into_status)?;
            engine.skip_trigger_to_now(&r.database, &r.name).await.map_err(IntoStatus::into_status)?;
        }
        Ok(Response::new(pb::SetTriggerDisabledResponse {}))
    }

    async fn list_triggers(
        &self,
        req: Request<pb::ListTriggersRequest>,
    ) -> Result<Response<pb::ListTriggersResponse>, Status> {
        self.admin(&req, "list triggers")?;
        let r = req.into_inner();
        let db = self
            .state
            .catalog
            .db(&r.database)
            .ok_or_else(|| catalog::Error::DbNotFound(r.database.clone()).into_status())?;
        let triggers = db.triggers.values().map(|t| trigger_info(t)).collect();
        Ok(Response::new(pb::ListTriggersResponse { triggers }))
    }

    async fn update_trigger(
        &self,
        req: Request<pb::UpdateTriggerRequest>,
    ) -> Result<Response<pb::UpdateTriggerResponse>, Status> {
        self.admin(&req, "update a trigger")?;
        let r = req.into_inner();
        let mut update = catalog::TriggerUpdate::default();
        if r.clear_arguments {
            update.arguments = Some(None);
        } else if let Some(a) = r.arguments {
            update.arguments = Some(Some(a.values.into_iter().collect()));
        }
        if !r.error_behavior.is_empty() {
            let behavior =
                r.error_behavior.parse().map_err(|e: crate::trigger::Error| Status::invalid_argument(e.to_string()))?;
            update.error_behavior = Some(behavior);
        }
        update.disabled = match r.state.as_str() {
            "" => None,
            "enabled" => Some(false),
            "disabled" => Some(true),
            other => {
                return Err(Status::invalid_argument(format!("state {other:?}: expected \"enabled\" or \"disabled\"")));
            }
        };
        if update.arguments.is_none() && update.error_behavior.is_none() && update.disabled.is_none() {
            return Err(Status::invalid_argument(
                "nothing to change: give new arguments, an error behaviour or a state",
            ));
        }
        let t =
            self.state.catalog.update_trigger(&r.database, &r.name, update).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::UpdateTriggerResponse { trigger: Some(trigger_info(&t)) }))
    }

    async fn install_packages(
        &self,
        req: Request<pb::InstallPackagesRequest>,
    ) -> Result<Response<pb::InstallPackagesResponse>, Status> {
        self.admin(&req, "install packages")?;
        let r = req.into_inner();
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        let output = engine.install(r.packages, r.requirements_location).await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::InstallPackagesResponse { output }))
    }

    async fn test_wal_plugin(
        &self,
        req: Request<pb::TestWalPluginRequest>,
    ) -> Result<Response<pb::TestWalPluginResponse>, Status> {
        self.admin(&req, "test a plugin")?;
        let r = req.into_inner();
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        let args = r.arguments.map(|a| a.values.into_iter().collect());
        let o = engine
            .test_wal(&r.database, &r.plugin_filename, &r.input_lp, args)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(dry_run_response(o)))
    }

    async fn test_schedule_plugin(
        &self,
        req: Request<pb::TestSchedulePluginRequest>,
    ) -> Result<Response<pb::TestWalPluginResponse>, Status> {
        self.admin(&req, "test a plugin")?;
        let r = req.into_inner();
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        let args = r.arguments.map(|a| a.values.into_iter().collect());
        let o = engine
            .test_schedule(&r.database, &r.plugin_filename, Some(r.schedule.as_str()), args)
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(dry_run_response(o)))
    }

    async fn put_plugin(&self, req: Request<pb::PutPluginRequest>) -> Result<Response<pb::PutPluginResponse>, Status> {
        use weir_proto::plugin::v1 as host;
        self.admin(&req, "write plugin files")?;
        let r = req.into_inner();
        let mode = match r.mode.as_str() {
            "" => host::put_plugin::Mode::CreateOrReplace,
            "create" => host::put_plugin::Mode::Create,
            "replace" => host::put_plugin::Mode::Replace,
            other => {
                return Err(Status::invalid_argument(format!("unknown mode {other:?}: expected create or replace")));
            }
        };
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        engine
            .put_plugin(host::PutPlugin {
                plugin_name: r.plugin_name,
                files: r
                    .files
                    .into_iter()
                    .map(|f| host::FileContent { relative_path: f.relative_path, content: f.content })
                    .collect(),
                directory: r.directory,
                mode: mode as i32,
            })
            .await
            .map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::PutPluginResponse {}))
    }

    async fn list_plugin_files(
        &self,
        req: Request<pb::ListPluginFilesRequest>,
    ) -> Result<Response<pb::ListPluginFilesResponse>, Status> {
        self.admin(&req, "list plugin files")?;
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        let files = engine.plugin_files().await.map_err(IntoStatus::into_status)?;
        Ok(Response::new(pb::ListPluginFilesResponse {
            files: files
                .into_iter()
                .map(|f| pb::PluginFileInfo {
                    plugin_name: f.plugin_name,
                    file_name: f.file_name,
                    file_path: f.file_path,
                    size_bytes: f.size_bytes,
                    last_modified_ms: f.last_modified_ms,
                })
                .collect(),
        }))
    }

    async fn test_request_plugin(
        &self,
        req: Request<pb::TestRequestPluginRequest>,
    ) -> Result<Response<pb::TestRequestPluginResponse>, Status> {
        self.admin(&req, "test a plugin")?;
        let r = req.into_inner();
        let engine = self.state.engine().map_err(IntoStatus::into_status)?;
        let args = r.arguments.map(|a| a.values.into_iter().collect());
        let call = crate::engine::HttpCall {
            method: r.method,
            path: String::new(),
            query: r.query.into_iter().collect(),
            headers: r.headers.into_iter().collect(),
            body: r.body,
        };
        let mut o =
            engine.test_request(&r.database, &r.plugin_filename, args, call).await.map_err(IntoStatus::into_status)?;
        let response = o.response.take().unwrap_or_default();
        let o = dry_run_response(o);
        Ok(Response::new(pb::TestRequestPluginResponse {
            log_lines: o.log_lines,
            database_writes: o.database_writes,
            errors: o.errors,
            status: u32::from(response.status),
            headers: response.headers.into_iter().collect(),
            body: response.body,
        }))
    }

    type QueryStream = QueryStream;

    async fn query(&self, req: Request<pb::QueryRequest>) -> Result<Response<Self::QueryStream>, Status> {
        let principal = self.authorize(&req)?;
        let r = req.into_inner();
        principal.require_db(&r.database, Action::Read).map_err(IntoStatus::into_status)?;
        let params: HashMap<String, String> = r.params.into_iter().map(|p| (p.name, p.value)).collect();
        let stream = self
            .state
            .query
            .query_sql(&r.database, &r.sql, query::QueryParams::Named(params))
            .await
            .map_err(IntoStatus::into_status)?;
        let schema = stream.schema();
        let mut writer = StreamWriter::try_new(Vec::new(), &schema).map_err(|e| Status::internal(e.to_string()))?;
        let header = std::mem::take(writer.get_mut());
        let writer = Arc::new(parking_lot::Mutex::new(writer));
        let first = futures::stream::once(async move { Ok(pb::QueryResponse { arrow_ipc: header }) });
        let batches = stream.map(move |batch| {
            let batch = batch.map_err(|e| query::Error::from(e).into_status())?;
            let mut w = writer.lock();
            w.write(&batch).map_err(|e| Status::internal(e.to_string()))?;
            Ok(pb::QueryResponse { arrow_ipc: std::mem::take(w.get_mut()) })
        });
        Ok(Response::new(Box::pin(first.chain(batches))))
    }
}

/// A trigger as the admin service reports it.
fn trigger_info(t: &crate::trigger::TriggerDef) -> pb::TriggerInfo {
    pb::TriggerInfo {
        name: t.name.to_string(),
        plugin_filename: t.plugin_filename.clone(),
        specification: t.specification.to_string(),
        arguments: t.arguments.as_ref().map(|a| pb::TriggerArguments { values: a.clone().into_iter().collect() }),
        run_async: t.run_async,
        error_behavior: t.error_behavior.as_str().to_string(),
        disabled: t.disabled,
        max_retries: t.max_retries(),
        workers: t.workers.max(1),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{storage::Storage, test_util::TestDb};

    /// The gRPC service refuses what HTTP refuses: one check for both.
    #[tokio::test]
    async fn create_trigger_checks_like_http() {
        let state = TestDb::open(&Storage::in_memory()).await.unwrap().into_server(false, None, 1 << 20).await;
        state.catalog.create_db("db").await.unwrap();
        let svc = AdminService { state: Arc::clone(&state) };
        let trigger = |plugin: &str, workers: u32, run_async: bool| pb::CreateTriggerRequest {
            database: "db".into(),
            trigger: Some(pb::TriggerInfo {
                name: "t".into(),
                plugin_filename: plugin.into(),
                specification: "request:x".into(),
                workers,
                run_async,
                ..Default::default()
            }),
        };
        for (req, want) in [
            (trigger("a.py", 2, false), "needs run_async"),
            (trigger("../../etc/passwd", 0, false), "Path traversal detected"),
            (trigger("/etc/passwd", 0, false), "Path traversal detected"),
        ] {
            let e = svc.create_trigger(Request::new(req)).await.unwrap_err();
            assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
            assert!(e.message().contains(want), "{e:?}");
        }
        assert!(state.catalog.db("db").unwrap().triggers.is_empty());
        svc.create_trigger(Request::new(trigger("a.py", 2, true))).await.unwrap();
        assert_eq!(state.catalog.db("db").unwrap().triggers["t"].worker_count(), 2);
    }
}
