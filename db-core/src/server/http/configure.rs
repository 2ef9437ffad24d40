//! `/api/v3/configure/...`: databases and admin tokens.

use std::sync::Arc;

use arrow::{
    array::StringArray,
    datatypes::{DataType, Field, Schema},
    record_batch::RecordBatch,
};
use axum::{
    Json,
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
    auth::ADMIN_TOKEN_NAME,
    query::format::{self, Format},
    server::SharedState,
};

/// `GET /api/v3/configure/database?format=` lists databases as a table with the column
/// `iox::database`, in any query output format.
pub async fn list_databases(State(state): State<SharedState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let fmt: Format = match p.get("format").map(|s| s.as_str()) {
        None | Some("") => Format::Json,
        Some(f) => f.parse().map_err(ApiError::BadRequest)?,
    };
    let names: Vec<String> = state.catalog.databases().iter().map(|d| d.name.to_string()).collect();
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
}

/// `POST /api/v3/configure/database {"db": "name"}`
pub async fn create_database(
    State(state): State<SharedState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateDb = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("invalid JSON body, expected {{\"db\": \"name\"}}: {e}")))?;
    state.catalog.create_db(&req.db).await?;
    Ok(StatusCode::OK.into_response())
}

/// `DELETE /api/v3/configure/database?db=name`
pub async fn delete_database(State(state): State<SharedState>, RawQuery(raw): RawQuery) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let db = p
        .get("db")
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required query parameter 'db'".to_string()))?;
    state.delete_database(db).await?;
    Ok(StatusCode::OK.into_response())
}

#[derive(Debug, Default, Deserialize)]
struct CreateToken {
    #[serde(default)]
    token_name: Option<String>,
}

/// `POST /api/v3/configure/token/admin`: the first admin token can be created without
/// authentication; after that an admin token is required and a new name must be given.
pub async fn create_admin_token(
    State(state): State<SharedState>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let req: CreateToken = json_body_or_default(&bytes)?;
    if state.auth.has_admin_token() {
        // Token management always needs an admin token once one exists, even with
        // --without-auth, so a dev server cannot mint credentials for anyone.
        let token = presented_token(&headers, raw.as_deref())?;
        let info = state
            .catalog
            .token_by_hash(&crate::auth::hash_token(token.as_deref().ok_or(crate::auth::AuthError::Missing)?))
            .ok_or(crate::auth::AuthError::Invalid)?;
        if !info.admin {
            return Err(ApiError::Forbidden("creating tokens requires an admin token".to_string()));
        }
    }
    let name = req.token_name.unwrap_or_else(|| ADMIN_TOKEN_NAME.to_string());
    let token = state.auth.create_admin_token(&name).await?;
    let info = state
        .catalog
        .token_by_hash(&crate::auth::hash_token(&token))
        .ok_or_else(|| ApiError::Internal("token vanished after creation".to_string()))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "id": info.id,
            "name": info.name,
            "token": token,
            "hash": info.hash,
            "created_at": crate::time::format_rfc3339(info.created_at),
            "expiry": null,
        })),
    )
        .into_response())
}
