//! `/api/v3/configure/...`: databases and tokens.

use std::{sync::Arc, time::Duration};

use arrow::{
    array::StringArray,
    datatypes::{DataType, Field, Schema},
    record_batch::RecordBatch,
};
use axum::{
    Extension, Json,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
};
use datafusion::physical_plan::memory::MemoryStream;
use serde::Deserialize;
use serde_json::json;

use super::{ApiError, json_body_or_default, presented_token, query_map, read_body};
use crate::{
    auth::{ADMIN_TOKEN_NAME, NewToken, Permission, Principal},
    catalog::TokenInfo,
    query::format::{self, Format},
    server::SharedState,
};

/// `GET /api/v3/configure/database?format=` lists databases as a table with the column
/// `iox::database`, in any query output format.
/// A resource token sees only the databases it holds a permission on.
pub async fn list_databases(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let fmt: Format = match p.get("format").map(|s| s.as_str()) {
        None | Some("") => Format::Json,
        Some(f) => f.parse().map_err(ApiError::BadRequest)?,
    };
    let names: Vec<String> =
        state.catalog.databases().iter().filter(|d| principal.sees_db(&d.name)).map(|d| d.name.to_string()).collect();
    let schema = Arc::new(Schema::new(vec![Field::new("iox::database", DataType::Utf8, false)]));
    let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(names))])
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let stream = MemoryStream::try_new(vec![batch], schema, None).map_err(|e| ApiError::Internal(e.to_string()))?;
    let body = Body::from_stream(format::encode(fmt, Box::pin(stream)));
    Ok(([(header::CONTENT_TYPE, fmt.content_type())], body).into_response())
}

#[derive(Debug, Deserialize)]
struct CreateDb {
    db: String,
    /// `30d`, `12h`, ...: rows older than this expire (not queryable, files removed).
    #[serde(default)]
    retention_period: Option<String>,
}

/// `POST /api/v3/configure/database {"db": "name", "retention_period"?: "30d"}`
pub async fn create_database(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateDb = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body, expected {{\"db\": \"name\"}}: {e}")))?;
    let retention = match req.retention_period.as_deref() {
        Some(text) => crate::catalog::parse_retention_period(text).map_err(ApiError::BadRequest)?,
        None => None,
    };
    state.catalog.create_db_with_retention(&req.db, retention).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/v3/configure/table?db=name&table=name`: the table and its data.
pub async fn delete_table(State(state): State<SharedState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let get = |k: &str| {
        p.get(k)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| ApiError::BadRequest(format!("missing required query parameter '{k}'")))
    };
    state.delete_table(get("db")?, get("table")?).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/v3/configure/database?db=name[&hard_delete=true|now]`
pub async fn delete_database(State(state): State<SharedState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let db = p
        .get("db")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required query parameter 'db'".to_string()))?;
    let hard = p.get("hard_delete").is_some_and(|v| matches!(v.as_str(), "true" | "now" | "1"));
    state.delete_database(db, hard).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct CreateAdminToken {
    #[serde(default)]
    token_name: Option<String>,
}

/// The token a request presents, if any.
fn request_token(headers: &HeaderMap, raw: Option<&str>) -> Result<Option<String>, ApiError> {
    Ok(presented_token(headers, raw)?)
}

/// A created token as InfluxDB 3 answers it (the secret is in this answer only).
fn created(info: &TokenInfo, token: &str) -> Response {
    (
        StatusCode::CREATED,
        Json(json!({
            "id": info.id,
            "name": info.name,
            "token": token,
            "hash": info.hash,
            "created_at": crate::time::format_rfc3339(info.created_at),
            "expiry": info.expires_at.map(crate::time::format_rfc3339),
            "admin": info.admin,
            "permissions": info.permissions.iter().map(ToString::to_string).collect::<Vec<_>>(),
        })),
    )
        .into_response()
}

/// `POST /api/v3/configure/token/admin {"token_name"?}`: the first admin token can be
/// created without authentication; after that an admin token is required and a new name
/// must be given.
pub async fn create_admin_token(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateAdminToken = json_body_or_default(&bytes)?;
    if state.auth.has_admin_token() {
        let token = request_token(&headers, raw.as_deref())?;
        state.auth.require_token_admin(token.as_deref(), "create tokens")?;
    }
    let name = req.token_name.unwrap_or_else(|| ADMIN_TOKEN_NAME.to_string());
    let (info, token) = state.auth.create_token(NewToken { name, admin: true, ..NewToken::default() }).await?;
    Ok(created(&info, &token))
}

/// The header carrying the admin recovery secret (the content of the server's recovery
/// file) to `POST /api/v3/configure/token/admin/regenerate`.
pub const RECOVERY_HEADER: &str = "x-weir-recovery-secret";

/// `POST /api/v3/configure/token/admin/regenerate`: a new secret for the admin token
/// `_admin`, the old one refused at once. Needs the current admin token, or, when that is
/// lost, the recovery secret the server keeps in a file only its user can read (sent as
/// `X-Weir-Recovery-Secret`), so regenerating needs access to the server's files.
pub async fn regenerate_admin_token(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let recovery = headers.get(RECOVERY_HEADER).and_then(|v| v.to_str().ok());
    match recovery {
        Some(secret) if state.auth.check_recovery_secret(secret) => {}
        Some(_) => {
            return Err(ApiError::Forbidden(
                "the recovery secret does not match: read it from the server's current recovery file \
                 (it changes at every start)"
                    .to_string(),
            ));
        }
        None => {
            let token = request_token(&headers, raw.as_deref())?;
            state.auth.require_token_admin(token.as_deref(), "regenerate the admin token")?;
        }
    }
    let (info, token) = state.auth.regenerate_admin_token().await?;
    tracing::warn!(name = %info.name, by_recovery = recovery.is_some(), "admin token regenerated");
    Ok(created(&info, &token))
}

/// A permission in a request: InfluxDB 3's object, or Weir's text form.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum PermissionBody {
    Text(String),
    Object { resource_type: String, resource_identifier: Vec<String>, actions: Vec<String> },
}

impl PermissionBody {
    fn parse(self) -> Result<Permission, ApiError> {
        let text = match self {
            Self::Text(t) => t,
            Self::Object { resource_type, resource_identifier, actions } => {
                format!("{resource_type}:{}:{}", resource_identifier.join(","), actions.join(","))
            }
        };
        text.parse().map_err(ApiError::BadRequest)
    }
}

#[derive(Debug, Deserialize)]
struct CreateToken {
    token_name: String,
    #[serde(default)]
    permissions: Vec<PermissionBody>,
    #[serde(default)]
    expiry_secs: Option<u64>,
}

/// `POST /api/v3/configure/token` (also `/api/v3/enterprise/configure/token`):
/// `{"token_name", "permissions": [{"resource_type": "db", "resource_identifier": ["a"],
/// "actions": ["read"]}] or ["db:a:read"], "expiry_secs"?}` creates a resource token.
pub async fn create_token(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let token = request_token(&headers, raw.as_deref())?;
    state.auth.require_token_admin(token.as_deref(), "create tokens")?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateToken = serde_json::from_slice(&bytes).map_err(|e| {
        ApiError::BadRequest(format!(
            "invalid JSON body, expected {{\"token_name\": \"name\", \"permissions\": [\"db:NAME:read,write\"], \
             \"expiry_secs\": 3600}}: {e}"
        ))
    })?;
    let permissions = req.permissions.into_iter().map(PermissionBody::parse).collect::<Result<Vec<_>, _>>()?;
    let (info, token) = state
        .auth
        .create_token(NewToken {
            name: req.token_name,
            admin: false,
            permissions,
            expiry: req.expiry_secs.map(Duration::from_secs),
        })
        .await?;
    Ok(created(&info, &token))
}

/// `GET /api/v3/configure/token`: every token (never a secret or hash), admin only.
pub async fn list_tokens(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = request_token(&headers, raw.as_deref())?;
    state.auth.require_token_admin(token.as_deref(), "list tokens")?;
    Ok(Json(state.auth.list_tokens()).into_response())
}

/// `DELETE /api/v3/configure/token?token_name=NAME`: the token is refused from its next
/// request on.
pub async fn delete_token(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let token = request_token(&headers, raw.as_deref())?;
    state.auth.require_token_admin(token.as_deref(), "delete tokens")?;
    let p = query_map(raw.as_deref());
    let name = p
        .get("token_name")
        .filter(|n| !n.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required query parameter 'token_name'".to_string()))?;
    state.auth.delete_token(name).await?;
    Ok(StatusCode::OK.into_response())
}
