//! Device scheduling (seeds 000 and 002): workflows, runs, per-device FIFO
//! queues, slots per node, round-robin refill, timeouts and fail-soft.
//!
//! Talks to other services only through their gRPC contracts.

pub mod dispatch;
mod service;

use relaymesh_proto::scheduler::v1::scheduler_server::SchedulerServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::SchedulerService;

/// Flags of the scheduler role.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SchedulerConfig {}

/// Serves the scheduler API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    _config: SchedulerConfig,
    _state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    GrpcServer::new()
        .add_service(SchedulerServer::new(SchedulerService))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
