//! The admin endpoint, over HTTP: `GET /healthz`, `GET /readyz`,
//! `GET /metrics` (Prometheus text exposition) and `POST /reload`.
//!
//! What changes state (`POST /reload`) needs the admin token, when the
//! operator gives one, as `Authorization: Bearer TOKEN`, compared in
//! constant time. Without a token it is allowed only on a loopback
//! address, where only this machine's users reach it; the host says which
//! at start. What only reads stays open.
//!
//! It steers the server through [`Control`], which the server implements,
//! so that this layer never names the server: ops stays the ground floor
//! that every other layer may use.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::{get, post};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::net::TcpListener;

use crate::ops::counters::Counters;
use crate::ops::metrics;

/// What the admin endpoint asks of the server.
pub trait Control: Send + Sync + 'static {
    /// Whether every service listens and no drain has started.
    fn is_ready(&self) -> bool;
    /// Every service's counters, by service name.
    fn counters(&self) -> Vec<(String, Arc<Counters>)>;
    /// Reads the configuration again and applies it: what changed, or the
    /// one-line error that left everything as it was.
    fn reload(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Result<String>> + Send>>;
    /// Starts the binary again and hands it the listeners: what happened,
    /// or why this process goes on serving.
    fn upgrade(self: Arc<Self>) -> Pin<Box<dyn Future<Output = Result<String>> + Send>>;
}

#[derive(Clone)]
struct Admin {
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
    changes: Changes,
}

/// Who may change state through the endpoint.
#[derive(Clone)]
enum Changes {
    /// Whoever presents the token.
    WithToken(Arc<Token>),
    /// Anyone: the endpoint is on a loopback address, and has no token.
    Local,
    /// No one: the endpoint is reachable from elsewhere, and has no token.
    Refused,
}

/// The admin token, read from its file once at start.
pub struct Token(Vec<u8>);

impl Token {
    /// Reads the token from `path`: its content, without surrounding
    /// whitespace. A missing, unreadable or empty file is an error.
    pub fn read(path: &Path) -> Result<Token> {
        let text = std::fs::read(path)
            .with_context(|| format!("admin token file {}: cannot read it", path.display()))?;
        let token = text.trim_ascii();
        if token.is_empty() {
            anyhow::bail!("admin token file {} is empty", path.display());
        }
        Ok(Token(token.to_vec()))
    }

    /// Whether `headers` carry this token as `Authorization: Bearer`,
    /// compared in constant time.
    fn presented_in(&self, headers: &HeaderMap) -> bool {
        use subtle::ConstantTimeEq;
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "))
            .unwrap_or_default();
        presented.ct_eq(&self.0).into()
    }
}

/// Starts serving the admin endpoint on `listener`; prints `admin on
/// ADDR` and returns the address. `token`, if given, is what `POST
/// /reload` and `POST /upgrade` must present.
pub fn serve(
    listener: std::net::TcpListener,
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
    token: Option<Token>,
) -> Result<SocketAddr> {
    listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(listener).context("admin endpoint")?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    crate::ops::log::announce(format_args!("admin on {local}"));
    tracing::info!(target: "portico_host::admin", %local, "admin endpoint listening");
    let changes = match token {
        Some(token) => Changes::WithToken(Arc::new(token)),
        None if local.ip().is_loopback() => {
            tracing::info!(target: "portico_host::admin", "no admin token: POST /reload is open to this machine's users (the endpoint is on a loopback address)");
            Changes::Local
        }
        None => {
            tracing::warn!(target: "portico_host::admin", %local, "no admin token: POST /reload is refused, the endpoint being reachable from other machines; give --admin-token-file (or [admin] token-file) to allow it");
            Changes::Refused
        }
    };
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .route("/reload", post(reload))
        .route("/upgrade", post(upgrade))
        .with_state(Admin {
            control,
            metrics,
            changes,
        });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(target: "portico_host::admin", "admin endpoint stopped: {error}");
        }
    });
    Ok(local)
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.control.is_ready() {
        true => (StatusCode::OK, "ready\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

async fn upgrade(State(admin): State<Admin>, headers: HeaderMap) -> axum::response::Response {
    if let Some(refusal) = admin.changes.refusal(&headers) {
        return refusal;
    }
    match admin.control.upgrade().await {
        Ok(done) => (StatusCode::OK, format!("{done}\n")).into_response(),
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}\n")).into_response(),
    }
}

async fn reload(State(admin): State<Admin>, headers: HeaderMap) -> axum::response::Response {
    if let Some(refusal) = admin.changes.refusal(&headers) {
        return refusal;
    }
    match admin.control.reload().await {
        Ok(changes) => (StatusCode::OK, format!("{changes}\n")).into_response(),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")).into_response(),
    }
}

impl Changes {
    /// The answer to a request with `headers` that may not change state,
    /// saying why; `None` if it may.
    fn refusal(&self, headers: &HeaderMap) -> Option<axum::response::Response> {
        match self {
            Changes::WithToken(token) if token.presented_in(headers) => None,
            Changes::WithToken(_) => Some(
                (
                    StatusCode::UNAUTHORIZED,
                    [(header::WWW_AUTHENTICATE, "Bearer")],
                    "unauthorized: send the admin token as `Authorization: Bearer TOKEN`\n",
                )
                    .into_response(),
            ),
            Changes::Local => None,
            Changes::Refused => Some(
                (
                    StatusCode::FORBIDDEN,
                    "forbidden: this endpoint has no admin token and is not on a loopback address; \
                 start the host with --admin-token-file\n",
                )
                    .into_response(),
            ),
        }
    }
}

async fn render(State(admin): State<Admin>) -> impl IntoResponse {
    for (service, counters) in &admin.control.counters() {
        metrics::record_counts(service, counters);
    }
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        admin.metrics.render(),
    )
}
