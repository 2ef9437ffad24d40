//! The network front: HTTP (axum) and gRPC (tonic) on one port.
//!
//! Requests whose `content-type` starts with `application/grpc` go to the gRPC services
//! (the `weir.admin.v1.Admin` service and Arrow Flight / Flight SQL); everything else goes
//! to the HTTP API. Both
//! HTTP/1.1 and HTTP/2 (cleartext, as gRPC clients use) are accepted on the same socket.

pub mod admin;
pub mod flight;
pub mod http;

use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use axum::body::Body;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
    service::TowerToHyperService,
};
use tokio::net::TcpListener;
use tower::Service;

use crate::{
    auth::Authenticator, catalog::Catalog, query::QueryExecutor, telemetry::Metrics, write_buffer::WriteBuffer,
};

/// Everything request handlers need.
#[derive(Debug)]
pub struct ServerState {
    /// Catalog.
    pub catalog: Arc<Catalog>,
    /// Write path.
    pub buffer: Arc<WriteBuffer>,
    /// Query path.
    pub query: Arc<dyn QueryExecutor>,
    /// Token checks.
    pub auth: Authenticator,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// Largest request body accepted, after decompression, in bytes.
    pub max_request_bytes: usize,
    /// The processing engine (absent in tests that do not need it).
    pub engine: Option<Arc<crate::engine::Engine>>,
}

impl ServerState {
    /// The processing engine, or [`EngineError::NotRunning`].
    pub fn engine(&self) -> Result<&Arc<crate::engine::Engine>, crate::engine::EngineError> {
        self.engine.as_ref().ok_or(crate::engine::EngineError::NotRunning)
    }

    /// Create a trigger, the one way every API does it: the definition is checked, the
    /// plugin host confirms the plugin is there (a `gh:` plugin is fetched), then the
    /// catalog stores it and tells the engine before this returns.
    pub async fn create_trigger(&self, db: &str, new: crate::trigger::NewTrigger) -> Result<(), TriggerError> {
        let def = new.validate().map_err(crate::catalog::Error::from)?;
        if self.catalog.db(db).is_none() {
            return Err(crate::catalog::Error::DbNotFound(db.to_string()).into());
        }
        if let Some(engine) = &self.engine {
            engine.prepare_plugin(&def.plugin_filename).await?;
        }
        self.catalog.create_trigger(db, def).await?;
        Ok(())
    }

    /// Delete a table: the catalog (its name is free again and WAL replay leaves its rows
    /// out), its buffered rows, then its Parquet files.
    pub async fn delete_table(&self, db: &str, table: &str) -> crate::catalog::Result<()> {
        let db_id =
            self.catalog.db(db).map(|d| d.id).ok_or_else(|| crate::catalog::Error::DbNotFound(db.to_string()))?;
        let table_id = self.catalog.delete_table(db, table, self.buffer.last_wal_seq()).await?;
        self.buffer.drop_table(db_id, table_id);
        self.buffer.expire_files_now().await;
        Ok(())
    }

    /// Delete a database: catalog (which stops its triggers), then buffered data; its
    /// Parquet files go with the next snapshot, or at once with `hard`.
    pub async fn delete_database(&self, name: &str, hard: bool) -> crate::catalog::Result<()> {
        let id = self.catalog.delete_db(name).await?;
        self.buffer.drop_db(id);
        if hard {
            self.buffer.expire_files_now().await;
        }
        Ok(())
    }
}

/// Why a trigger could not be created.
#[derive(Debug, thiserror::Error)]
pub enum TriggerError {
    /// Rejected by the catalog (or its checks).
    #[error(transparent)]
    Catalog(#[from] crate::catalog::Error),
    /// The plugin host refused the plugin, or could not be asked.
    #[error(transparent)]
    Engine(#[from] crate::engine::EngineError),
}

/// Shared handle to the server state.
pub type SharedState = Arc<ServerState>;

/// Routes a request to gRPC or HTTP by content type.
#[derive(Clone)]
pub struct Hybrid {
    http: axum::Router,
    grpc: tonic::service::Routes,
}

impl std::fmt::Debug for Hybrid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hybrid").finish_non_exhaustive()
    }
}

impl Hybrid {
    /// Build the combined service.
    pub fn new(state: SharedState) -> Self {
        Self {
            http: http::router(Arc::clone(&state)),
            grpc: tonic::service::Routes::new(admin::service(Arc::clone(&state))).add_service(flight::service(state)),
        }
    }
}

/// gRPC proper: `application/grpc`, or with a `+format` or parameters. Not gRPC-Web
/// (`application/grpc-web...`), which this server does not speak: that goes to the HTTP
/// side and gets a JSON error there.
fn is_grpc<B>(req: &hyper::Request<B>) -> bool {
    req.headers()
        .get(hyper::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|ct| ct.strip_prefix("application/grpc"))
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('+') || rest.starts_with(';'))
}

type BoxFuture = Pin<Box<dyn Future<Output = Result<hyper::Response<Body>, Infallible>> + Send>>;

impl<B> Service<hyper::Request<B>> for Hybrid
where
    B: hyper::body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = hyper::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: hyper::Request<B>) -> Self::Future {
        if is_grpc(&req) {
            let mut grpc = self.grpc.clone();
            Box::pin(async move {
                let resp = grpc.call(req.map(Body::new)).await?;
                Ok(resp.map(Body::new))
            })
        } else {
            let mut http = self.http.clone();
            Box::pin(async move { http.call(req.map(Body::new)).await })
        }
    }
}

/// Connection limits of [`serve`].
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// An HTTP/1 client must send a request's headers within this, and an idle keep-alive
    /// connection is closed after it (`--http-header-read-timeout`).
    pub header_read_timeout: Duration,
    /// Most open connections; more are answered 503 and closed at once (`--max-connections`).
    pub max_connections: usize,
}

impl Default for ConnectionLimits {
    fn default() -> Self {
        Self { header_read_timeout: Duration::from_secs(30), max_connections: 2048 }
    }
}

/// The answer to a connection over the limit (it is closed right after).
fn too_many_connections() -> Vec<u8> {
    let body = r#"{"error":"too many open connections (--max-connections); close idle ones and try again"}"#;
    format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nconnection: close\r\n\
         content-length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve until `shutdown` resolves, then stop accepting and drain open connections.
pub async fn serve(
    listener: TcpListener,
    state: SharedState,
    limits: ConnectionLimits,
    shutdown: impl Future<Output = ()> + Send,
) -> std::io::Result<()> {
    let service = Hybrid::new(state);
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(20));
    let graceful = GracefulShutdown::new();
    let permits = Arc::new(tokio::sync::Semaphore::new(limits.max_connections));
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (mut stream, peer): (tokio::net::TcpStream, SocketAddr) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = Arc::clone(&permits).try_acquire_owned() else {
                    tracing::warn!(%peer, max = limits.max_connections, "connection refused: too many open connections");
                    tokio::spawn(async move {
                        use tokio::io::AsyncWriteExt as _;
                        let _ = tokio::time::timeout(Duration::from_secs(2), stream.write_all(&too_many_connections())).await;
                    });
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let svc = TowerToHyperService::new(service.clone());
                let builder = builder.clone();
                let watcher = graceful.watcher();
                let first_byte = limits.header_read_timeout;
                tokio::spawn(async move {
                    // Until its first byte a connection is in no protocol's timer (HTTP/1 or
                    // HTTP/2 is told from it): one that stays silent is closed here.
                    let mut probe = [0u8; 1];
                    match tokio::time::timeout(first_byte, stream.peek(&mut probe)).await {
                        Ok(Ok(n)) if n > 0 => {}
                        _ => return,
                    }
                    let conn = builder.serve_connection_with_upgrades(TokioIo::new(stream), svc);
                    if let Err(e) = watcher.watch(conn.into_owned()).await {
                        tracing::debug!(%peer, error = %e, "connection ended with error");
                    }
                    // The connection's slot frees when this task ends.
                    drop(permit);
                });
            }
            _ = &mut shutdown => break,
        }
    }
    drop(listener);
    tokio::select! {
        _ = graceful.shutdown() => {}
        _ = tokio::time::sleep(std::time::Duration::from_secs(10)) => {
            tracing::warn!("connections still open after 10s; closing");
        }
    }
    Ok(())
}

/// Raise this process's open-file limit to its hard limit and return the connection cap
/// that fits in it (`wanted`, or less, leaving room for files), so new connections never
/// hang at the descriptor limit.
pub fn fit_connection_limit(wanted: usize) -> usize {
    // SAFETY: getrlimit/setrlimit on our own process with valid pointers.
    let soft = unsafe {
        let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return wanted;
        }
        if lim.rlim_cur < lim.rlim_max {
            let raised = libc::rlimit { rlim_cur: lim.rlim_max, rlim_max: lim.rlim_max };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                lim.rlim_cur = lim.rlim_max;
            }
        }
        lim.rlim_cur
    };
    let room = usize::try_from(soft).unwrap_or(usize::MAX).saturating_sub(256).max(16);
    if wanted > room {
        tracing::warn!(
            wanted,
            open_file_limit = soft,
            using = room,
            "--max-connections lowered to fit the open-file limit"
        );
        return room;
    }
    wanted
}
