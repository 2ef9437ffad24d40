//! `GET|POST /api/v3/query_sql`: SQL with `db`, `q`, `format` and `params`.
//!
//! GET takes query parameters (`params` as a JSON object string); POST takes a JSON body
//! `{"db", "q", "format", "params": {"name": value}}`. Parameter values bind `$name`
//! placeholders as strings (numbers and booleans are sent as their text).

use std::collections::HashMap;

use axum::{
    Extension,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, header},
    response::{IntoResponse, Response},
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use serde::Deserialize;

use super::{ApiError, json_body_or_default, query_map, read_body};
use crate::{
    auth::{Action, Principal},
    query::{
        QueryParams,
        format::{self, Format},
    },
    server::SharedState,
};

/// A query request, from either method.
#[derive(Debug, Default, Deserialize)]
pub struct QueryRequest {
    /// Database.
    #[serde(default)]
    pub db: Option<String>,
    /// SQL text.
    #[serde(default)]
    pub q: Option<String>,
    /// Output format.
    #[serde(default)]
    pub format: Option<String>,
    /// `$name` parameters.
    #[serde(default)]
    pub params: Option<HashMap<String, serde_json::Value>>,
}

async fn run(state: SharedState, principal: &Principal, req: QueryRequest) -> Result<Response, ApiError> {
    let db = req
        .db
        .filter(|d| !d.is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required parameter 'db'".to_string()))?;
    principal.require_db(&db, Action::Read)?;
    let sql = req
        .q
        .filter(|q| !q.trim().is_empty())
        .ok_or_else(|| ApiError::BadRequest("missing required parameter 'q'".to_string()))?;
    let fmt: Format = match req.format.as_deref() {
        None | Some("") => Format::Json,
        Some(f) => f.parse().map_err(ApiError::BadRequest)?,
    };
    let params = QueryParams::from_json(req.params.unwrap_or_default()).map_err(ApiError::BadRequest)?;
    let mut stream = state.query.query_sql(&db, &sql, params).await?;
    if fmt == Format::Pretty {
        // A table for people: bounded, assembled before the answer starts.
        let text = format::pretty(stream, format::PRETTY_MAX_ROWS).await.map_err(|e| match e {
            format::PrettyError::TooLong(_) => ApiError::BadRequest(e.to_string()),
            format::PrettyError::Query(q) => ApiError::from(crate::query::Error::from(q)),
        })?;
        return Ok(([(header::CONTENT_TYPE, fmt.content_type())], text).into_response());
    }
    // A failure known before the first batch (a bad file, an unreachable object store, a
    // limit) is the answer's status, not a cut-off 200.
    let schema = stream.schema();
    let first = match stream.next().await {
        Some(Err(e)) => return Err(crate::query::Error::from(e).into()),
        first => first,
    };
    let stream = Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(first).chain(stream)));
    // A failure after that ends the body abruptly (no final chunk): clients see an incomplete
    // answer, never a complete-looking one; the server log and weir_query_errors record it.
    let body = Body::from_stream(format::encode(fmt, stream));
    Ok(([(header::CONTENT_TYPE, fmt.content_type())], body).into_response())
}

/// `GET /api/v3/query_sql?db=&q=&format=&params=`
pub async fn query_sql_get(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let params = match p.get("params") {
        Some(s) if !s.is_empty() => Some(
            serde_json::from_str(s)
                .map_err(|e| ApiError::BadRequest(format!("'params' must be a JSON object: {e}")))?,
        ),
        _ => None,
    };
    let req =
        QueryRequest { db: p.get("db").cloned(), q: p.get("q").cloned(), format: p.get("format").cloned(), params };
    run(state, &principal, req).await
}

/// `POST /api/v3/query_sql` with a JSON body.
pub async fn query_sql_post(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let mut req: QueryRequest = json_body_or_default(&bytes)?;
    // Query-string values fill in what the body leaves out.
    let p = query_map(raw.as_deref());
    if req.db.is_none() {
        req.db = p.get("db").cloned();
    }
    if req.format.is_none() {
        req.format = p.get("format").cloned();
    }
    run(state, &principal, req).await
}

/// `/api/v3/query_influxql`: not supported yet.
pub async fn query_influxql() -> ApiError {
    ApiError::NotImplemented("InfluxQL is not supported by Weir yet; use /api/v3/query_sql".to_string())
}
