//! The process's Prometheus recorder and its `/metrics` endpoint.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// The global recorder, installed on first use. Every role in a process
/// (all of them under `relaymesh up`) shares it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            // Fails only when another recorder was installed first, in which
            // case ours renders nothing but nothing breaks.
            let _ = metrics::set_global_recorder(recorder);
            handle
        })
        .clone()
}

/// Prometheus text for the process.
pub fn render() -> String {
    handle().render()
}

/// Serves `GET /metrics` on `listener` until `shutdown`.
pub async fn serve(listener: tokio::net::TcpListener, shutdown: CancellationToken) -> std::io::Result<()> {
    let app = Router::new().route("/metrics", get(|| async { render() }));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves metrics in a background task owned by `shutdown`.
pub async fn spawn_endpoint(
    addr: SocketAddr,
    shutdown: CancellationToken,
) -> std::io::Result<tokio::task::JoinHandle<std::io::Result<()>>> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "metrics endpoint listening");
    Ok(tokio::spawn(serve(listener, shutdown)))
}
