//! The process's Prometheus recorder and its `/metrics` endpoint.
//!
//! Naming (checked by the integration test `metric_names_follow_prometheus_rules`):
//! every series starts with `relaymesh_`, counters end in `_total`, and a
//! quantity with a unit ends in it (`_seconds`, `_bytes`). Histograms are
//! exported as Prometheus histograms with the buckets below (not summaries),
//! so they aggregate across replicas.

use std::net::SocketAddr;
use std::sync::OnceLock;

use axum::{Router, routing::get};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio_util::sync::CancellationToken;

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Buckets of every `_seconds` histogram: 100 µs (an in-memory RPC) to 10 s
/// (a request timing out).
pub const SECONDS_BUCKETS: [f64; 16] = [
    0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Buckets of every `_bytes` histogram: 64 B to 16 MiB, by powers of four.
pub const BYTES_BUCKETS: [f64; 10] = [
    64.0,
    256.0,
    1024.0,
    4096.0,
    16_384.0,
    65_536.0,
    262_144.0,
    1_048_576.0,
    4_194_304.0,
    16_777_216.0,
];

fn builder() -> PrometheusBuilder {
    let plain = PrometheusBuilder::new();
    // Fails only on empty bucket lists, which these constants are not.
    match plain
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &BYTES_BUCKETS))
    {
        Ok(b) => b,
        Err(err) => {
            tracing::error!(error = %err, "histogram buckets refused; histograms render as summaries");
            PrometheusBuilder::new()
        }
    }
}

/// The global recorder, installed on first use. Every role in a process
/// (all of them under `relaymesh up`) shares it.
pub fn handle() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let recorder = builder().build_recorder();
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
