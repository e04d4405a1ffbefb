//! The admin endpoint, over HTTP: `GET /healthz`, `GET /readyz`,
//! `GET /metrics` (Prometheus text exposition) and `POST /reload`.
//!
//! It steers the server through [`Control`], which the server implements,
//! so that this layer never names the server: ops stays the ground floor
//! that every other layer may use.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
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
}

#[derive(Clone)]
struct Admin {
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
}

/// Starts serving the admin endpoint on `addr`; prints `admin on ADDR`.
pub async fn serve(
    addr: SocketAddr,
    control: Arc<dyn Control>,
    metrics: PrometheusHandle,
) -> Result<()> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("admin endpoint: cannot listen on {addr}"))?;
    let local = listener
        .local_addr()
        .context("cannot read the bound address")?;
    println!("admin on {local}");
    tracing::info!(target: "portico_host::admin", %local, "admin endpoint listening");
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(render))
        .route("/reload", post(reload))
        .with_state(Admin { control, metrics });
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            tracing::error!(target: "portico_host::admin", "admin endpoint stopped: {error}");
        }
    });
    Ok(())
}

async fn readyz(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.control.is_ready() {
        true => (StatusCode::OK, "ready\n"),
        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
    }
}

async fn reload(State(admin): State<Admin>) -> impl IntoResponse {
    match admin.control.reload().await {
        Ok(changes) => (StatusCode::OK, format!("{changes}\n")),
        Err(error) => (StatusCode::BAD_REQUEST, format!("{error}\n")),
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
