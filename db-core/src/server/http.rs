//! The HTTP API. One module per area: [`write`], [`query`], [`configure`]; this module holds
//! the router, authentication, body reading and the single error → response mapping.

pub mod configure;
pub mod engine;
pub mod query;
pub mod write;

use std::{collections::HashMap, io::Read};

use axum::{
    Extension, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::{any, get, post},
};
use bytes::Bytes;
use http_body_util::BodyExt;
use serde_json::json;

use super::SharedState;
use crate::{
    auth::{self, AuthError, Principal},
    catalog,
    lp::LineError,
    query as q, write_buffer,
};

#[cfg(test)]
mod tests;

/// Every way an HTTP request can fail, mapped to a status and a JSON body in one place.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed request.
    #[error("{0}")]
    BadRequest(String),
    /// Not found.
    #[error("{0}")]
    NotFound(String),
    /// The route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// Already exists.
    #[error("{0}")]
    Conflict(String),
    /// Authentication failed.
    #[error(transparent)]
    Unauthorized(#[from] AuthError),
    /// Authenticated but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Body over the limit.
    #[error("request body exceeds the limit of {0} bytes")]
    TooLarge(usize),
    /// Some lines of a write were rejected; the rest were written.
    #[error("partial write of line protocol occurred")]
    PartialWrite(Vec<LineError>),
    /// `accept_partial=false` and a line was rejected; nothing was written.
    #[error("parsing failed for write_lp endpoint")]
    WriteRejected(LineError),
    /// Not implemented.
    #[error("{0}")]
    NotImplemented(String),
    /// A component this request needs is not reachable (the plugin host).
    #[error("{0}")]
    Unavailable(String),
    /// Server-side failure.
    #[error("{0}")]
    Internal(String),
    /// A plugin did not answer in time.
    #[error("{0}")]
    Timeout(String),
    /// A content type this server does not speak.
    #[error("{0}")]
    UnsupportedMediaType(String),
}

fn line_json(e: &LineError) -> serde_json::Value {
    json!({
        "original_line": e.original_line,
        "line_number": e.line_number,
        "error_message": e.message,
    })
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::BadRequest(_) | Self::PartialWrite(_) | Self::WriteRejected(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthorized(e) if e.is_forbidden() => StatusCode::FORBIDDEN,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
            Self::TooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::NotImplemented(_) => StatusCode::NOT_IMPLEMENTED,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            Self::Timeout(_) => StatusCode::GATEWAY_TIMEOUT,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
        };
        if status.is_server_error() {
            tracing::error!(error = %self, "request failed");
        } else {
            tracing::info!(error = %self, status = status.as_u16(), "request rejected");
        }
        let body = match &self {
            Self::PartialWrite(errors) => json!({
                "error": self.to_string(),
                "data": errors.iter().map(line_json).collect::<Vec<_>>(),
            }),
            Self::WriteRejected(e) => json!({"error": self.to_string(), "data": line_json(e)}),
            _ => json!({"error": self.to_string()}),
        };
        (status, [(header::CONTENT_TYPE, "application/json")], body.to_string()).into_response()
    }
}

impl From<crate::engine::EngineError> for ApiError {
    fn from(e: crate::engine::EngineError) -> Self {
        use crate::engine::{EngineError, HostErrorKind};
        match e {
            EngineError::NotRunning | EngineError::Unavailable => Self::Unavailable(e.to_string()),
            EngineError::Timeout { .. } => Self::Timeout(e.to_string()),
            EngineError::Invalid(m) => Self::BadRequest(m),
            EngineError::Protocol { .. } => Self::Internal(e.to_string()),
            EngineError::Host { kind, message } => match kind {
                HostErrorKind::Invalid => Self::BadRequest(message),
                HostErrorKind::Exists => Self::Conflict(message),
                HostErrorKind::Missing => Self::NotFound(message),
                HostErrorKind::Refused => Self::Forbidden(message),
                HostErrorKind::Failed => Self::Internal(message),
            },
        }
    }
}

/// Query-string parameters as a map (a repeated key keeps its last value).
pub fn query_map(raw: Option<&str>) -> HashMap<String, String> {
    url_params(raw.unwrap_or("")).into_iter().collect()
}

impl From<catalog::Error> for ApiError {
    fn from(e: catalog::Error) -> Self {
        match e {
            catalog::Error::InvalidDbName { .. } => Self::BadRequest(e.to_string()),
            catalog::Error::DbExists(_)
            | catalog::Error::TokenExists(_)
            | catalog::Error::TriggerExists { .. }
            | catalog::Error::RequestPathTaken { .. }
            | catalog::Error::TriggerEnabled { .. } => Self::Conflict(e.to_string()),
            catalog::Error::DbNotFound(_)
            | catalog::Error::TableNotFound { .. }
            | catalog::Error::TriggerNotFound { .. }
            | catalog::Error::TokenNotFound(_) => Self::NotFound(e.to_string()),
            catalog::Error::InvalidTrigger(_)
            | catalog::Error::InvalidToken(_)
            | catalog::Error::TooManyColumns(_)
            | catalog::Error::TooManyTables(_)
            | catalog::Error::TooManyDbs(_) => Self::BadRequest(e.to_string()),
            catalog::Error::Storage(_) | catalog::Error::Corrupt { .. } | catalog::Error::UnsupportedVersion { .. } => {
                Self::Internal(e.to_string())
            }
        }
    }
}

impl From<write_buffer::Error> for ApiError {
    fn from(e: write_buffer::Error) -> Self {
        match e {
            write_buffer::Error::Catalog(c) => c.into(),
            write_buffer::Error::Rejected(mut errors) => {
                if errors.is_empty() {
                    Self::BadRequest("write rejected".to_string())
                } else {
                    Self::WriteRejected(errors.swap_remove(0))
                }
            }
            write_buffer::Error::Wal(w @ crate::wal::Error::Backlog { .. }) => Self::Unavailable(w.to_string()),
            write_buffer::Error::Wal(w) => Self::Internal(format!("write was not persisted: {w}")),
            write_buffer::Error::Persist(p) => Self::Internal(p.to_string()),
        }
    }
}

impl From<q::Error> for ApiError {
    fn from(e: q::Error) -> Self {
        match e {
            q::Error::DbNotFound(_) => Self::NotFound(e.to_string()),
            q::Error::Invalid(_) | q::Error::MissingParam(_) => Self::BadRequest(e.to_string()),
            q::Error::Execution(_) | q::Error::MemoryLimit(_) => Self::Internal(e.to_string()),
            q::Error::Timeout(_) => Self::Timeout(e.to_string()),
        }
    }
}

/// Build the HTTP router.
///
/// Every route but health, readiness, ping and token management needs a valid token (or
/// `--without-auth`). Routes that change the server (databases, triggers, plugins,
/// packages, dry runs) need an admin token; data routes (writes, queries, request
/// triggers, the database list, `/metrics`) check the token's permission on the database
/// or system resource they touch, in their handler.
pub fn router(state: SharedState) -> Router {
    let admin = Router::new()
        .route("/api/v3/configure/database", post(configure::create_database).delete(configure::delete_database))
        .route("/api/v3/configure/table", axum::routing::delete(configure::delete_table))
        .route(
            "/api/v3/configure/processing_engine_trigger",
            post(engine::create_trigger).delete(engine::delete_trigger),
        )
        .route("/api/v3/configure/processing_engine_trigger/enable", post(engine::enable_trigger))
        .route("/api/v3/configure/processing_engine_trigger/disable", post(engine::disable_trigger))
        .route("/api/v3/configure/plugin_environment/install_packages", post(engine::install_packages))
        .route("/api/v3/configure/plugin_environment/install_requirements", post(engine::install_requirements))
        .route("/api/v3/plugin_test/wal", post(engine::test_wal))
        .route("/api/v3/plugin_test/schedule", post(engine::test_schedule))
        .route("/api/v3/plugin_test/request", post(engine::test_request))
        .route("/api/v3/plugins/files", post(engine::upload_file).put(engine::update_file))
        .route("/api/v3/plugins/directory", axum::routing::put(engine::update_directory))
        .route_layer(middleware::from_fn(require_admin));
    let data = Router::new()
        .route("/api/v3/write_lp", post(write::write_lp))
        .route("/api/v2/write", post(write::write_v2))
        .route("/write", post(write::write_v1))
        .route("/api/v3/query_sql", get(query::query_sql_get).post(query::query_sql_post))
        .route("/api/v3/query_influxql", get(query::query_influxql).post(query::query_influxql))
        .route("/api/v3/configure/database", get(configure::list_databases))
        .route("/api/v3/engine/{*path}", any(engine::engine_request))
        .route("/metrics", get(metrics));
    let protected = admin.merge(data).route_layer(middleware::from_fn_with_state(state.clone(), require_auth));
    Router::new()
        .merge(protected)
        // Token management checks its own token: the first admin token needs none, and the
        // rest need an admin token even with --without-auth.
        .route("/api/v3/configure/token/admin", post(configure::create_admin_token))
        .route("/api/v3/configure/token/admin/regenerate", post(configure::regenerate_admin_token))
        .route(
            "/api/v3/configure/token",
            post(configure::create_token).get(configure::list_tokens).delete(configure::delete_token),
        )
        .route("/api/v3/enterprise/configure/token", post(configure::create_token))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/ping", get(ping).head(ping))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

/// The token a request presents: `Authorization` header, or the v1 `p` query parameter.
pub fn presented_token(headers: &HeaderMap, query: Option<&str>) -> Result<Option<String>, AuthError> {
    if let Some(h) = headers.get(header::AUTHORIZATION) {
        let h = h.to_str().map_err(|_| AuthError::Malformed)?;
        return auth::token_from_header(h).map(Some);
    }
    let from_query = query.and_then(|q| url_params(q).into_iter().find(|(k, _)| k == "p").map(|(_, v)| v));
    Ok(from_query)
}

/// Decode a query string (application/x-www-form-urlencoded).
pub fn url_params(q: &str) -> Vec<(String, String)> {
    q.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k), percent_decode(v))
        })
        .collect()
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = (b[i] == b'%')
            .then(|| b.get(i + 1..i + 3))
            .flatten()
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (b[i], hex) {
            (_, Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', None) => {
                out.push(b' ');
                i += 1;
            }
            (c, None) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Authenticate, and hand the handler who is asking ([`Principal`]).
async fn require_auth(State(state): State<SharedState>, mut req: Request, next: Next) -> Response {
    let principal = if state.auth.enabled() {
        let token = match presented_token(req.headers(), req.uri().query()) {
            Ok(t) => t,
            Err(e) => return ApiError::Unauthorized(e).into_response(),
        };
        match state.auth.authenticate(token.as_deref()) {
            Ok(p) => p,
            Err(e) => return ApiError::Unauthorized(e).into_response(),
        }
    } else {
        Principal::Open
    };
    req.extensions_mut().insert(principal);
    next.run(req).await
}

/// Refuse a non-admin token (runs after [`require_auth`]).
async fn require_admin(req: Request, next: Next) -> Response {
    let what = format!("{} {}", req.method(), req.uri().path());
    let allowed = match req.extensions().get::<Principal>() {
        Some(p) => p.require_admin(&what),
        None => Err(AuthError::Missing),
    };
    match allowed {
        Ok(()) => next.run(req).await,
        Err(e) => ApiError::Unauthorized(e).into_response(),
    }
}

/// How much of an over-limit body is read and discarded so the client, still sending, gets
/// the 413 answer instead of a reset connection. Beyond this the connection is dropped.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

/// Read a request body up to `limit` bytes, gunzipping it when `Content-Encoding: gzip`.
/// The limit applies to the decompressed size too, and decompression stops as soon as it
/// is exceeded, so a gzip bomb costs at most `limit` bytes of memory. An over-limit body
/// is drained (not stored, at most [`DRAIN_LIMIT`] more bytes) before the 413 is sent.
pub async fn read_body(headers: &HeaderMap, mut body: Body, limit: usize) -> Result<Bytes, ApiError> {
    let mut raw: Vec<u8> = Vec::new();
    let mut over = false;
    let mut drained = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| ApiError::BadRequest(format!("cannot read request body: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        if over {
            drained += data.len();
            if drained > DRAIN_LIMIT {
                break;
            }
        } else if raw.len() + data.len() > limit {
            over = true;
            drained = raw.len() + data.len();
            raw = Vec::new();
        } else {
            raw.extend_from_slice(&data);
        }
    }
    if over {
        return Err(ApiError::TooLarge(limit));
    }
    let raw = Bytes::from(raw);
    let encoding =
        headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(raw),
        Some("gzip") | Some("x-gzip") => {
            let decoder = flate2::read::MultiGzDecoder::new(raw.as_ref());
            let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(limit));
            decoder
                .take(limit as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| ApiError::BadRequest(format!("invalid gzip body: {e}")))?;
            if out.len() > limit {
                return Err(ApiError::TooLarge(limit));
            }
            Ok(Bytes::from(out))
        }
        Some(other) => {
            Err(ApiError::BadRequest(format!("unsupported Content-Encoding {other:?}: use gzip or identity")))
        }
    }
}

/// Parse a JSON request body; an empty (or all-whitespace) body is `T::default()`.
pub fn json_body_or_default<T: serde::de::DeserializeOwned + Default>(bytes: &[u8]) -> Result<T, ApiError> {
    if bytes.iter().all(|b| b.is_ascii_whitespace()) {
        return Ok(T::default());
    }
    serde_json::from_slice(bytes).map_err(|e| ApiError::BadRequest(format!("invalid JSON body: {e}")))
}

/// Parse a boolean query parameter (`true`/`false`, `1`/`0`).
pub fn bool_param(params: &HashMap<String, String>, name: &str, default: bool) -> Result<bool, ApiError> {
    match params.get(name).map(|s| s.as_str()) {
        None | Some("") => Ok(default),
        Some("true") | Some("1") => Ok(true),
        Some("false") | Some("0") => Ok(false),
        Some(other) => Err(ApiError::BadRequest(format!("invalid value {other:?} for {name}: expected true or false"))),
    }
}

async fn health() -> &'static str {
    "OK"
}

/// `GET /ready`: 200 once the server is ready for everything, the processing engine
/// included (its plugin host connected); 503 until then. `/health` says only that the
/// server is up (writes and queries work while the plugin host is starting).
async fn ready(State(state): State<SharedState>) -> Response {
    let plugin_host = match &state.engine {
        None => "none",
        Some(e) if e.connected() => "connected",
        Some(_) => "not connected",
    };
    let status = if plugin_host == "not connected" { StatusCode::SERVICE_UNAVAILABLE } else { StatusCode::OK };
    let body =
        json!({"status": if status == StatusCode::OK { "ready" } else { "starting" }, "plugin_host": plugin_host});
    (status, axum::Json(body)).into_response()
}

async fn ping() -> Response {
    (
        StatusCode::OK,
        [("x-influxdb-version", env!("CARGO_PKG_VERSION")), ("x-influxdb-build", "Weir")],
        axum::Json(json!({"version": env!("CARGO_PKG_VERSION"), "revision": "weir"})),
    )
        .into_response()
}

/// `GET /metrics`: Prometheus text; an admin token or `system:metrics:read`.
async fn metrics(State(state): State<SharedState>, Extension(principal): Extension<Principal>) -> Response {
    if let Err(e) = principal.require_system("metrics") {
        return ApiError::Unauthorized(e).into_response();
    }
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], state.metrics.render()).into_response()
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed(format!("method {} is not allowed for {}", req.method(), req.uri().path()))
}

async fn not_found(req: Request) -> ApiError {
    let content_type = req.headers().get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if content_type.starts_with("application/grpc-web") {
        return ApiError::UnsupportedMediaType(format!(
            "{content_type} is gRPC-Web, which this server does not speak: use gRPC over HTTP/2 \
             (content-type application/grpc) on the same port"
        ));
    }
    ApiError::NotFound(format!("no route for {} {}", req.method(), req.uri().path()))
}
