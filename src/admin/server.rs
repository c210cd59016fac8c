//! The admin endpoint's HTTP server (axum): [`AdminServer`] is the handle a node keeps, an [`HttpServer`] (which
//! also serves CoS's HTTP/JSON API) running [`router`] until it is shut down.

use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::AdminContext;
use super::actors::{self, DEFAULT_MAX_ENTITIES};
use crate::metrics::ReadSideView;

/// How long [`HttpServer::shutdown`] waits for requests in flight.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// A running axum router on its own port.
pub struct HttpServer {
    local_addr: SocketAddr,
    stop: oneshot::Sender<()>,
    server: JoinHandle<io::Result<()>>,
}

/// A running admin endpoint.
pub type AdminServer = HttpServer;

impl HttpServer {
    /// Binds `addr` (`host:port`, port 0 picks one) and serves the admin endpoint on it.
    pub async fn start(addr: &str, ctx: AdminContext) -> io::Result<AdminServer> {
        Self::serve_router(addr, router(ctx), "admin endpoint").await
    }

    /// Binds `addr` and serves `router` on it; `what` names it in logs.
    pub async fn serve_router(addr: &str, router: Router, what: &'static str) -> io::Result<HttpServer> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await
        });
        info!(address = %local_addr, "{what} started");
        Ok(HttpServer { local_addr, stop, server })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting connections and lets the requests in flight finish (for a few seconds at most).
    pub async fn shutdown(self) {
        let _ = self.stop.send(());
        let mut server = self.server;
        match tokio::time::timeout(DRAIN_TIMEOUT, &mut server).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, address = %self.local_addr, "HTTP server failed"),
            Ok(Err(e)) => warn!(error = %e, address = %self.local_addr, "HTTP server task failed"),
            Err(_) => {
                warn!(address = %self.local_addr, "HTTP server still busy after {DRAIN_TIMEOUT:?}: closing its connections");
                server.abort();
            }
        }
    }
}

/// The admin routes.
pub fn router(ctx: AdminContext) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/ready", get(ready))
        .route("/cluster", get(cluster))
        .route("/actors", get(actor_tree))
        .route("/readsides", get(read_sides))
        .route("/metrics", get(metrics))
        .route("/", get(super::page::index))
        .route("/admin.css", get(super::page::stylesheet))
        .route("/admin.js", get(super::page::script))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(ctx.clone(), require_token))
        .with_state(ctx)
}

/// The routes served without the token: the probes, and the page's static files (the page asks for the token and
/// sends it with its own requests).
const OPEN_PATHS: &[&str] = &["/health", "/ready", "/", "/admin.css", "/admin.js"];

/// With a token configured, answers `401` to a request for any other path that lacks `Authorization: Bearer
/// <token>`.
async fn require_token(State(ctx): State<AdminContext>, request: Request, next: Next) -> Response {
    let expected = ctx.token.expose();
    if expected.is_empty() || OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let given = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim());
    match given {
        Some(token) if same_secret(token.as_bytes(), expected.as_bytes()) => next.run(request).await,
        _ => (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer realm=\"regent-admin\"")],
            Json(json!({ "error": "this admin endpoint needs its token: Authorization: Bearer <REGENT_ADMIN_TOKEN>" })),
        )
            .into_response(),
    }
}

/// Compares two secrets in a time that depends on their lengths only, not on where they differ.
fn same_secret(given: &[u8], expected: &[u8]) -> bool {
    let mut difference = given.len() ^ expected.len();
    for i in 0..given.len().max(expected.len()) {
        let a = given.get(i).copied().unwrap_or(0);
        let b = expected.get(i).copied().unwrap_or(0);
        difference |= usize::from(a ^ b);
    }
    std::hint::black_box(difference) == 0
}

async fn health() -> impl IntoResponse {
    Json(json!({ "status": "ok" }))
}

async fn ready(State(ctx): State<AdminContext>) -> impl IntoResponse {
    let readiness = ctx.readiness.borrow().clone();
    let code = if readiness.ready { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, Json(readiness))
}

async fn cluster(State(ctx): State<AdminContext>) -> impl IntoResponse {
    Json(ctx.cluster.status().await)
}

#[derive(Debug, Deserialize)]
struct ActorsQuery {
    max_entities: Option<usize>,
}

async fn actor_tree(State(ctx): State<AdminContext>, Query(query): Query<ActorsQuery>) -> impl IntoResponse {
    let max_entities = query.max_entities.unwrap_or(DEFAULT_MAX_ENTITIES);
    Json(actors::walk(&ctx.node, ctx.actors.cells(), max_entities).await)
}

async fn read_sides(State(ctx): State<AdminContext>) -> axum::response::Response {
    match read_side_views(&ctx).await {
        Ok(views) => Json(views).into_response(),
        Err(status) => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({ "error": status.message() }))).into_response(),
    }
}

async fn read_side_views(ctx: &AdminContext) -> Result<Vec<ReadSideView>, tonic::Status> {
    match &ctx.read_sides {
        Some(manager) => manager.views(None).await,
        None => Ok(Vec::new()),
    }
}

/// Refreshes the gauges read at scrape time (cluster view, read sides), then encodes every family.
async fn metrics(State(ctx): State<AdminContext>) -> impl IntoResponse {
    let metrics = crate::metrics::get();
    metrics.observe_cluster(&ctx.cluster.status().await);
    match read_side_views(&ctx).await {
        Ok(views) => metrics.observe_read_sides(&views),
        Err(status) => warn!(error = %status.message(), "metrics: cannot read the read-side processors"),
    }
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], metrics.encode())
}

async fn not_found() -> impl IntoResponse {
    (
        StatusCode::NOT_FOUND,
        Json(json!({ "error": "no such endpoint: try /, /health, /ready, /cluster, /actors, /readsides or /metrics" })),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use serde_json::Value;
    use tokio::sync::watch;

    use super::*;
    use crate::admin::actors::ActorTree;
    use crate::admin::{ActorRoots, Readiness, SingleNode, client};

    #[tokio::test]
    async fn ready_follows_the_watch_until_the_server_stops() {
        let (readiness, watch) = watch::channel(Readiness::not_ready("joining the cluster"));
        let single = SingleNode { node: "n1".into(), address: "127.0.0.1:9000".into(), num_shards: 4 };
        let ctx = AdminContext {
            node: "n1".into(),
            readiness: watch,
            cluster: Arc::new(single),
            actors: ActorRoots::default(),
            read_sides: None,
            token: Default::default(),
        };
        let server = AdminServer::start("127.0.0.1:0", ctx).await.unwrap();
        let addr = server.local_addr().to_string();

        let answer = client::get(&addr, "/ready").await.unwrap();
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE);
        let body: Value = serde_json::from_slice(&answer.body).unwrap();
        assert_eq!(body, json!({"ready": false, "reason": "joining the cluster"}));
        assert!(
            client::get_json::<Readiness>(&addr, "/ready", &[]).await.is_err(),
            "503 is not accepted unless listed"
        );

        readiness.send_replace(Readiness::ready());
        let ready: Readiness = client::get_json(&addr, "/ready", &[]).await.unwrap();
        assert!(ready.ready);

        let tree: ActorTree = client::get_json(&addr, "/actors", &[]).await.unwrap();
        assert!(tree.roots.is_empty() && tree.counts.is_empty());
        assert_eq!(tree.max_entities, DEFAULT_MAX_ENTITIES);

        server.shutdown().await;
        assert!(matches!(client::get(&addr, "/health").await, Err(client::Error::Connect { .. })));
    }

    #[test]
    fn secrets_compare_whole() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(same_secret(b"", b""));
        for (a, b) in [(&b"abc"[..], &b"abd"[..]), (b"abc", b"ab"), (b"ab", b"abc"), (b"", b"a"), (b"abc\0", b"abc")] {
            assert!(!same_secret(a, b), "{a:?} = {b:?}");
        }
    }
}
