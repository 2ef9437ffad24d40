//! `/api/v3/configure/processing_engine_trigger[/enable|/disable]`: trigger lifecycle, with
//! InfluxDB 3's request shapes.

use std::collections::BTreeMap;

use axum::{
    Extension,
    body::Body,
    extract::{Path, RawQuery, State},
    http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, bool_param, json_body_or_default, query_map, read_body};
use weir_proto::plugin::v1::{self as pb, put_plugin::Mode as PutMode};

use crate::{
    auth::{AuthError, Principal},
    engine::HttpCall,
    server::SharedState,
    trigger::NewTrigger,
};

#[derive(Debug, Default, Deserialize)]
struct TriggerSettings {
    #[serde(default)]
    run_async: bool,
    #[serde(default)]
    error_behavior: Option<String>,
    /// Weir: retries of one input under `retry`.
    #[serde(default)]
    max_retries: Option<u32>,
    /// Weir: worker processes of an asynchronous trigger.
    #[serde(default)]
    workers: Option<u32>,
}

#[derive(Debug, Deserialize)]
struct CreateTrigger {
    db: String,
    plugin_filename: String,
    trigger_name: String,
    trigger_specification: String,
    #[serde(default)]
    trigger_settings: Option<TriggerSettings>,
    #[serde(default)]
    trigger_arguments: Option<BTreeMap<String, serde_json::Value>>,
    #[serde(default)]
    disabled: bool,
}

fn argument_strings(args: BTreeMap<String, serde_json::Value>) -> Result<BTreeMap<String, String>, ApiError> {
    args.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            serde_json::Value::Number(n) => Ok((k, n.to_string())),
            serde_json::Value::Bool(b) => Ok((k, b.to_string())),
            other => Err(ApiError::BadRequest(format!("trigger argument {k:?} must be a string, got {other}"))),
        })
        .collect()
}

/// `POST /api/v3/configure/processing_engine_trigger`
pub async fn create_trigger(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateTrigger = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body (expected db, plugin_filename, trigger_name, trigger_specification, \
             and optionally trigger_settings, trigger_arguments, disabled): {e}"
        ))
    })?;
    let settings = req.trigger_settings.unwrap_or_default();
    let new = NewTrigger {
        name: req.trigger_name,
        plugin_filename: req.plugin_filename,
        specification: req.trigger_specification,
        arguments: req.trigger_arguments.map(argument_strings).transpose()?,
        run_async: settings.run_async,
        error_behavior: settings.error_behavior,
        max_retries: settings.max_retries,
        workers: settings.workers.unwrap_or(0),
        disabled: req.disabled,
    };
    match state.create_trigger(&req.db, new).await {
        Ok(()) => Ok(StatusCode::OK.into_response()),
        Err(crate::server::TriggerError::Catalog(e)) => Err(e.into()),
        Err(crate::server::TriggerError::Engine(e)) => Err(e.into()),
    }
}

#[derive(Debug, Default, Deserialize)]
struct TriggerRef {
    #[serde(default)]
    db: Option<String>,
    #[serde(default)]
    trigger_name: Option<String>,
    #[serde(default)]
    force: Option<bool>,
    /// Weir: `enable` of a trigger the retention policy stopped, from the newest data.
    #[serde(default)]
    skip_to_now: Option<bool>,
}

/// A trigger named in a request, with its flags.
#[derive(Debug)]
struct Named {
    db: String,
    name: String,
    force: bool,
    skip_to_now: bool,
}

/// The trigger named by the query string, falling back to a JSON body.
async fn trigger_ref(
    state: &SharedState,
    raw: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Named, ApiError> {
    let q = query_map(raw);
    let bytes = read_body(headers, body, state.max_request_bytes).await?;
    let b: TriggerRef = json_body_or_default(&bytes)?;
    let db = q.get("db").cloned().or(b.db).filter(|s| !s.is_empty());
    let name = q.get("trigger_name").cloned().or(b.trigger_name).filter(|s| !s.is_empty());
    let force = bool_param(&q, "force", b.force.unwrap_or(false))?;
    let skip_to_now = bool_param(&q, "skip_to_now", b.skip_to_now.unwrap_or(false))?;
    match (db, name) {
        (Some(db), Some(name)) => Ok(Named { db, name, force, skip_to_now }),
        (None, _) => Err(ApiError::BadRequest("missing required parameter 'db'".to_string())),
        (_, None) => Err(ApiError::BadRequest("missing required parameter 'trigger_name'".to_string())),
    }
}

/// `DELETE /api/v3/configure/processing_engine_trigger?db=&trigger_name=&force=`
pub async fn delete_trigger(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let t = trigger_ref(&state, raw.as_deref(), &headers, body).await?;
    state.catalog.delete_trigger(&t.db, &t.name, t.force).await?;
    Ok(StatusCode::OK.into_response())
}

async fn set_disabled(
    state: SharedState,
    raw: Option<String>,
    headers: HeaderMap,
    body: Body,
    disabled: bool,
) -> Result<Response, ApiError> {
    let t = trigger_ref(&state, raw.as_deref(), &headers, body).await?;
    if t.skip_to_now && !disabled {
        state.engine()?.check_skip_to_now(&t.db, &t.name)?;
    }
    state.catalog.set_trigger_disabled(&t.db, &t.name, disabled).await?;
    if t.skip_to_now && !disabled {
        state.engine()?.skip_trigger_to_now(&t.db, &t.name).await?;
    }
    Ok(StatusCode::OK.into_response())
}

/// `POST /api/v3/configure/processing_engine_trigger/enable?db=&trigger_name=`
pub async fn enable_trigger(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    set_disabled(state, raw, headers, body, false).await
}

/// `POST /api/v3/configure/processing_engine_trigger/disable?db=&trigger_name=`
pub async fn disable_trigger(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    set_disabled(state, raw, headers, body, true).await
}

#[derive(Debug, Deserialize)]
struct InstallPackages {
    packages: Vec<String>,
}

/// `POST /api/v3/configure/plugin_environment/install_packages {"packages": [...]}`
pub async fn install_packages(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: InstallPackages = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body, expected {{\"packages\": [...]}}: {e}")))?;
    state.engine()?.install(req.packages, String::new()).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Deserialize)]
struct InstallRequirements {
    requirements_location: String,
}

/// `POST /api/v3/configure/plugin_environment/install_requirements {"requirements_location": "..."}`
/// (a file on the plugin host, named relative to the plugin directory; it must resolve
/// inside it).
pub async fn install_requirements(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: InstallRequirements = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!("invalid JSON body, expected {{\"requirements_location\": \"...\"}}: {e}"))
    })?;
    state.engine()?.install(Vec::new(), req.requirements_location).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Deserialize)]
struct TestWal {
    filename: String,
    database: String,
    input_lp: String,
    #[serde(default)]
    input_arguments: Option<BTreeMap<String, serde_json::Value>>,
    /// Accepted for compatibility; each dry run gets a fresh cache.
    #[serde(default)]
    #[allow(dead_code)]
    cache_name: Option<String>,
}

/// `POST /api/v3/plugin_test/wal {filename, database, input_lp, input_arguments?}` →
/// `{log_lines, database_writes, errors}`; the plugin's writes are captured, not applied.
pub async fn test_wal(State(state): State<SharedState>, headers: HeaderMap, body: Body) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: TestWal = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body (expected filename, database, input_lp, and optionally input_arguments, cache_name): {e}"
        ))
    })?;
    let args = req.input_arguments.map(argument_strings).transpose()?;
    let outcome = state.engine()?.test_wal(&req.database, &req.filename, &req.input_lp, args).await?;
    Ok(axum::Json(outcome).into_response())
}

#[derive(Debug, Deserialize)]
struct TestSchedule {
    filename: String,
    database: String,
    #[serde(default)]
    schedule: Option<String>,
    #[serde(default)]
    input_arguments: Option<BTreeMap<String, serde_json::Value>>,
    /// Accepted for compatibility; each dry run gets a fresh cache.
    #[serde(default)]
    #[allow(dead_code)]
    cache_name: Option<String>,
}

/// `POST /api/v3/plugin_test/schedule {filename, database, schedule?, input_arguments?}` →
/// `{trigger_time, log_lines, database_writes, errors}`.
pub async fn test_schedule(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: TestSchedule = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body (expected filename, database, and optionally schedule, input_arguments, cache_name): {e}"
        ))
    })?;
    let args = req.input_arguments.map(argument_strings).transpose()?;
    let outcome = state.engine()?.test_schedule(&req.database, &req.filename, req.schedule.as_deref(), args).await?;
    Ok(axum::Json(outcome).into_response())
}

#[derive(Debug, Deserialize)]
struct TestRequest {
    filename: String,
    database: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    query_parameters: BTreeMap<String, String>,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    /// The request body, as text.
    #[serde(default)]
    body: String,
    #[serde(default)]
    input_arguments: Option<BTreeMap<String, serde_json::Value>>,
}

/// `POST /api/v3/plugin_test/request {filename, database, method?, query_parameters?,
/// headers?, body?, input_arguments?}` → `{response: {status, headers, body}, log_lines,
/// database_writes, errors}` (Weir's addition).
pub async fn test_request(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: TestRequest = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body (expected filename, database, and optionally method, query_parameters, headers, body, input_arguments): {e}"
        ))
    })?;
    let args = req.input_arguments.map(argument_strings).transpose()?;
    let call = HttpCall {
        method: req.method.unwrap_or_else(|| "POST".to_string()),
        path: String::new(),
        query: req.query_parameters,
        headers: req
            .headers
            .into_iter()
            .map(|(k, v)| (k.to_ascii_lowercase(), v))
            .filter(|(k, _)| k != "authorization")
            .collect(),
        body: req.body.into_bytes(),
    };
    let outcome = state.engine()?.test_request(&req.database, &req.filename, args, call).await?;
    Ok(axum::Json(outcome).into_response())
}

/// `/api/v3/engine/<path>`, every method: the request trigger serving `<path>` answers.
pub async fn engine_request(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    Path(path): Path<String>,
    method: Method,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let path = path.trim_matches('/').to_string();
    let Some((db, def)) = state.catalog.request_trigger(&path) else {
        return Err(ApiError::NotFound(format!("no request trigger serves /api/v3/engine/{path}")));
    };
    // A request trigger answers for its database: any permission on it will do (a
    // read-only dashboard token and a write-only ingest token both call plugins).
    if !principal.sees_db(&db.name) {
        return Err(AuthError::Forbidden(format!(
            "this token has no permission on database {:?}, whose trigger {} serves /api/v3/engine/{path}",
            db.name, def.name
        ))
        .into());
    }
    if def.disabled {
        return Err(ApiError::NotFound(format!(
            "the request trigger {} serving /api/v3/engine/{path} in database {} is disabled",
            def.name, db.name
        )));
    }
    let engine = state.engine()?;
    let body = read_body(&headers, body, state.max_request_bytes).await?;
    let mut request_headers = BTreeMap::new();
    for (name, value) in &headers {
        if name == axum::http::header::AUTHORIZATION {
            continue;
        }
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        request_headers
            .entry(name.as_str().to_string())
            .and_modify(|v: &mut String| {
                v.push_str(", ");
                v.push_str(&value);
            })
            .or_insert(value);
    }
    let call = HttpCall {
        method: method.to_string(),
        path: path.clone(),
        query: query_map(raw.as_deref()).into_iter().collect(),
        headers: request_headers,
        body: body.to_vec(),
    };
    let answer = engine.http_request(&db, &def, call).await?;
    let mut response =
        Response::builder().status(StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR));
    for (k, v) in &answer.headers {
        match (HeaderName::try_from(k.as_str()), HeaderValue::try_from(v.as_str())) {
            (Ok(name), Ok(value)) => {
                response = response.header(name, value);
            }
            _ => tracing::warn!(trigger = %def.name, header = %k, "the plugin returned an invalid header; dropped"),
        }
    }
    response
        .body(Body::from(answer.body))
        .map_err(|e| ApiError::Internal(format!("cannot build the plugin's response: {e}")))
}

#[derive(Debug, Deserialize)]
struct UploadFile {
    plugin_name: String,
    content: String,
}

async fn put_file(state: SharedState, headers: HeaderMap, body: Body, mode: PutMode) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: UploadFile = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body, expected {{\"plugin_name\": \"x.py\", \"content\": \"...\"}}: {e}"
        ))
    })?;
    state
        .engine()?
        .put_plugin(pb::PutPlugin {
            plugin_name: req.plugin_name,
            files: vec![pb::FileContent { relative_path: String::new(), content: req.content.into_bytes() }],
            directory: false,
            mode: mode as i32,
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}

/// `POST /api/v3/plugins/files {plugin_name, content}`: create a plugin file (409 if it exists).
pub async fn upload_file(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put_file(state, headers, body, PutMode::Create).await
}

/// `PUT /api/v3/plugins/files {plugin_name, content}`: replace a plugin file (404 if it does
/// not exist), atomically; the trigger using it reloads it on its next call.
pub async fn update_file(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    put_file(state, headers, body, PutMode::Replace).await
}

#[derive(Debug, Deserialize)]
struct UploadDirectory {
    plugin_name: String,
    files: Vec<UploadDirectoryFile>,
}

#[derive(Debug, Deserialize)]
struct UploadDirectoryFile {
    relative_path: String,
    content: String,
}

/// `PUT /api/v3/plugins/directory {plugin_name, files: [{relative_path, content}]}`: create
/// or replace a package directory as a whole (the new tree is written aside, then swapped in).
pub async fn update_directory(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: UploadDirectory = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body, expected {{\"plugin_name\": \"pkg\", \"files\": [{{\"relative_path\": \"__init__.py\", \"content\": \"...\"}}]}}: {e}"
        ))
    })?;
    state
        .engine()?
        .put_plugin(pb::PutPlugin {
            plugin_name: req.plugin_name,
            files: req
                .files
                .into_iter()
                .map(|f| pb::FileContent { relative_path: f.relative_path, content: f.content.into_bytes() })
                .collect(),
            directory: true,
            mode: PutMode::CreateOrReplace as i32,
        })
        .await?;
    Ok(StatusCode::OK.into_response())
}
