//! `/api/v3/configure/processing_engine_trigger[/enable|/disable]`: trigger lifecycle, with
//! InfluxDB 3's request shapes.

use std::{collections::BTreeMap, sync::Arc};

use axum::{
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};
use serde::Deserialize;

use super::{ApiError, bool_param, json_body_or_default, query_map, read_body};
use crate::{
    catalog::{ErrorBehavior, TriggerDef},
    server::SharedState,
};

#[derive(Debug, Default, Deserialize)]
struct TriggerSettings {
    #[serde(default)]
    run_async: bool,
    #[serde(default)]
    error_behavior: Option<String>,
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
    let error_behavior: ErrorBehavior = match settings.error_behavior.as_deref() {
        None | Some("") => ErrorBehavior::default(),
        Some(s) => s.parse().map_err(ApiError::BadRequest)?,
    };
    let def = TriggerDef {
        name: Arc::from(req.trigger_name.as_str()),
        plugin_filename: req.plugin_filename,
        specification: req.trigger_specification,
        arguments: req.trigger_arguments.map(argument_strings).transpose()?,
        run_async: settings.run_async,
        error_behavior,
        disabled: req.disabled,
    };
    state.catalog.create_trigger(&req.db, def).await?;
    state.trigger_changed(&req.db, &req.trigger_name).await;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct TriggerRef {
    #[serde(default)]
    db: Option<String>,
    #[serde(default)]
    trigger_name: Option<String>,
    #[serde(default)]
    force: Option<bool>,
}

/// The trigger named by the query string, falling back to a JSON body.
async fn trigger_ref(state: &SharedState, raw: Option<&str>, headers: &HeaderMap, body: Body) -> Result<(String, String, bool), ApiError> {
    let q = query_map(raw);
    let bytes = read_body(headers, body, state.max_request_bytes).await?;
    let b: TriggerRef = json_body_or_default(&bytes)?;
    let db = q.get("db").cloned().or(b.db).filter(|s| !s.is_empty());
    let name = q.get("trigger_name").cloned().or(b.trigger_name).filter(|s| !s.is_empty());
    let force = bool_param(&q, "force", b.force.unwrap_or(false))?;
    match (db, name) {
        (Some(db), Some(name)) => Ok((db, name, force)),
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
    let (db, name, force) = trigger_ref(&state, raw.as_deref(), &headers, body).await?;
    state.catalog.delete_trigger(&db, &name, force).await?;
    state.trigger_changed(&db, &name).await;
    Ok(StatusCode::OK.into_response())
}

async fn set_disabled(state: SharedState, raw: Option<String>, headers: HeaderMap, body: Body, disabled: bool) -> Result<Response, ApiError> {
    let (db, name, _) = trigger_ref(&state, raw.as_deref(), &headers, body).await?;
    state.catalog.set_trigger_disabled(&db, &name, disabled).await?;
    state.trigger_changed(&db, &name).await;
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
/// (a file on the plugin host, relative to the plugin directory or absolute).
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
pub async fn test_wal(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
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
