//! The WebSocket gateway: HTTP and WebSocket on one port, turning each
//! protocol's JSON frames into gRPC calls on the services, and delivering
//! events from any replica to the sockets this replica holds.
//!
//! It keeps no state a restart would lose: sessions live in the shared
//! registry, everything else in the services.

mod api;
mod config;
mod grpc_api;
mod http;
mod identity;
mod limits;
mod protocols;
mod reaper;
mod upstream;
pub mod ws;

use std::sync::Arc;

use relaymesh_state::{Delivery, GatewayId, GatewayLiveness, SessionRegistry, SharedState};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use config::{GatewayConfig, UpstreamArgs};
pub use limits::RateLimitArgs;
pub use upstream::{UpstreamHealth, Upstreams};

use ws::ConnectionTable;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("upstream: {0}")]
    Upstream(#[from] relaymesh_rpc::RpcError),
    #[error("shared state: {0}")]
    State(#[from] relaymesh_state::StateError),
}

/// What every request handler and connection task of one replica shares.
pub struct Shared {
    pub config: GatewayConfig,
    pub gateway_id: GatewayId,
    pub upstreams: Upstreams,
    pub state: SharedState,
    pub delivery: Delivery,
    pub table: Arc<ConnectionTable>,
    pub shutdown: CancellationToken,
    /// Counts live connection tasks, so shutdown can wait for them to close.
    pub tracker: TaskTracker,
    pub slots: Arc<Semaphore>,
}

/// Serves HTTP and WebSocket on `listener` until `shutdown`; then closes
/// every connection with 1001 and waits for them (up to the drain timeout).
pub async fn serve(
    listener: TcpListener,
    config: GatewayConfig,
    state: SharedState,
    shutdown: CancellationToken,
) -> Result<(), GatewayError> {
    // Install the recorder before anything records, or early metrics are lost.
    relaymesh_telemetry::metrics::handle();
    // Resolvers outlive the HTTP server: draining connections still call
    // the services. They stop once the drain is over.
    let resolve_stop = CancellationToken::new();
    let mut resolvers = tokio::task::JoinSet::new();
    let upstreams = Upstreams::connect(&config.upstreams, &mut resolvers, &resolve_stop)?;
    let gateway_id = config.gateway_id.clone().map_or_else(GatewayId::random, GatewayId::new);
    let registry = SessionRegistry::new(state.clone(), config.session_ttl());
    let delivery = Delivery::new(state.clone(), registry.clone());
    // Envelopes for this replica go straight to its sockets' queues: in
    // memory, in the publisher's own task.
    let table = Arc::new(ConnectionTable::default());
    let inbox = {
        let table = table.clone();
        delivery.serve_inbox(&gateway_id, move |env| table.deliver(env)).await?
    };
    // This replica's liveness, renewed until its sockets are drained; after a
    // shared-state reconnect it also registers every live session again.
    let liveness = GatewayLiveness::new(registry, gateway_id.clone());
    liveness.heartbeat().await?;
    let upkeep_stop = CancellationToken::new();
    let upkeep = tokio::spawn(liveness.clone().run(upkeep_stop.clone()));
    let reaper_stop = upkeep_stop.clone();
    // Stops it on every way out of this function, errors included.
    let upkeep_guard = upkeep_stop.drop_guard();
    let gw = Arc::new(Shared {
        slots: Arc::new(Semaphore::new(config.max_connections)),
        config,
        gateway_id,
        upstreams,
        state,
        delivery,
        table,
        shutdown: shutdown.clone(),
        tracker: TaskTracker::new(),
    });
    tracing::info!(
        gateway_id = %gw.gateway_id,
        addr = %listener.local_addr()?,
        backend = gw.state.backend_name(),
        "gateway listening"
    );
    let inbox_task = tokio::spawn(inbox.run());
    let reaper = tokio::spawn(reaper::run(gw.clone(), liveness, reaper_stop));

    let (grpc, grpc_health) = grpc_routes(gw.clone()).await?;
    let app = http::router(gw.clone()).merge(grpc);
    // Without TCP_NODELAY a second small frame written before the client
    // ACKs the first waits for its delayed ACK (40 ms on Linux): measured
    // as 44 ms from run creation to COMMAND before this line.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp: &mut tokio::net::TcpStream| {
        if let Err(err) = tcp.set_nodelay(true) {
            tracing::debug!(error = %err, "TCP_NODELAY not set");
        }
    });
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<std::net::SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown.clone().cancelled_owned())
    .await?;

    grpc_health
        .set_not_serving::<relaymesh_proto::client::v1::gateway_service_server::GatewayServiceServer<grpc_api::GatewayApi>>()
        .await;
    // Upgraded sockets outlive the HTTP server: each sees `shutdown` and
    // closes with 1001; wait for them, bounded.
    gw.tracker.close();
    if tokio::time::timeout(gw.config.drain_timeout(), gw.tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(open = gw.table.len(), "drain timeout: connections still open");
    }
    inbox_task.abort();
    resolve_stop.cancel();
    resolvers.join_all().await;
    drop(upkeep_guard);
    let _ = reaper.await;
    if let Err(err) = upkeep.await {
        tracing::warn!(error = %err, "liveness task failed");
    }
    tracing::info!(gateway_id = %gw.gateway_id, "gateway stopped");
    Ok(())
}

/// The gRPC client API with health checking and reflection, gRPC-Web
/// enabled, as routes served on the gateway's HTTP port.
async fn grpc_routes(gw: Arc<Shared>) -> Result<(axum::Router, tonic_health::server::HealthReporter), GatewayError> {
    let api = grpc_api::GatewayApi::server(gw);
    let (health, health_service) = tonic_health::server::health_reporter();
    health
        .set_service_status("", tonic_health::ServingStatus::Serving)
        .await;
    health
        .set_serving::<relaymesh_proto::client::v1::gateway_service_server::GatewayServiceServer<grpc_api::GatewayApi>>(
        )
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(relaymesh_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(relaymesh_rpc::RpcError::from)?;
    let routes = tonic::service::Routes::new(api)
        .add_service(health_service)
        .add_service(reflection)
        .into_axum_router()
        .layer(tonic_web::GrpcWebLayer::new());
    Ok((routes, health))
}
