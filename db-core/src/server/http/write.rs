//! Write endpoints: `/api/v3/write_lp`, `/api/v2/write`, `/write` (v1).
//!
//! All three accept line protocol (optionally gzipped), auto-create databases and tables,
//! answer 204 when every line was written, and 400 with the rejected lines (1-based line
//! numbers) otherwise. With `accept_partial=false` (v3 only) one bad line rejects the lot.

use std::collections::HashMap;

use axum::{
    Extension,
    body::Body,
    extract::{RawQuery, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Response},
};

use super::{ApiError, bool_param, query_map, read_body};
use crate::{
    auth::{Action, Principal},
    lp::Precision,
    server::SharedState,
};

struct WriteParams {
    db: String,
    precision: Precision,
    accept_partial: bool,
    no_sync: bool,
}

fn required(p: &HashMap<String, String>, name: &str) -> Result<String, ApiError> {
    match p.get(name) {
        Some(v) if !v.is_empty() => Ok(v.clone()),
        _ => Err(ApiError::BadRequest(format!("missing required query parameter '{name}'"))),
    }
}

fn precision(p: &HashMap<String, String>, default: Precision) -> Result<Precision, ApiError> {
    match p.get("precision").map(|s| s.as_str()) {
        None | Some("") => Ok(default),
        Some(s) => s.parse().map_err(|e: String| ApiError::BadRequest(e)),
    }
}

async fn write(
    state: SharedState,
    principal: &Principal,
    headers: HeaderMap,
    body: Body,
    p: WriteParams,
) -> Result<Response, ApiError> {
    principal.require_db(&p.db, Action::Write)?;
    let bytes = read_body(&headers, body, state.max_request_bytes).await?;
    let text = std::str::from_utf8(&bytes).map_err(|e| {
        ApiError::BadRequest(format!("request body is not valid UTF-8 (first bad byte at offset {})", e.valid_up_to()))
    })?;
    let outcome = state.buffer.write_lp(&p.db, text, p.precision, p.accept_partial, p.no_sync).await?;
    if outcome.errors.is_empty() {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::PartialWrite(outcome.errors))
    }
}

/// `POST /api/v3/write_lp?db=&precision=&accept_partial=&no_sync=`
pub async fn write_lp(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let wp = WriteParams {
        db: required(&p, "db")?,
        precision: precision(&p, Precision::Auto)?,
        accept_partial: bool_param(&p, "accept_partial", true)?,
        no_sync: bool_param(&p, "no_sync", false)?,
    };
    write(state, &principal, headers, body, wp).await
}

/// The v1 and v2 endpoints: the database comes from `db_param`, precision defaults to ns
/// (as in those APIs), partial writes are always accepted and writes are always durable.
async fn write_compat(
    state: SharedState,
    principal: Principal,
    raw: Option<String>,
    headers: HeaderMap,
    body: Body,
    db_param: &str,
) -> Result<Response, ApiError> {
    let p = query_map(raw.as_deref());
    let wp = WriteParams {
        db: required(&p, db_param)?,
        precision: precision(&p, Precision::Nanosecond)?,
        accept_partial: true,
        no_sync: false,
    };
    write(state, &principal, headers, body, wp).await
}

/// `POST /api/v2/write?bucket=&org=&precision=`
pub async fn write_v2(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    write_compat(state, principal, raw, headers, body, "bucket").await
}

/// `POST /write?db=&precision=` (v1; `rp` is ignored).
pub async fn write_v1(
    State(state): State<SharedState>,
    Extension(principal): Extension<Principal>,
    RawQuery(raw): RawQuery,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    write_compat(state, principal, raw, headers, body, "db").await
}
