//! Signaling: the copilot channel's server->client callbacks and rate limits
//! (seed 001) and the WebRTC SDP/ICE relay between match peers (seed 004).
//!
//! Talks to other services only through their gRPC contracts.

mod service;

use relaymesh_proto::signaling::v1::signaling_server::SignalingServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::SignalingService;

/// Flags of the signaling role.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SignalingConfig {}

/// Serves the signaling API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    _config: SignalingConfig,
    _state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    GrpcServer::new()
        .add_service(SignalingServer::new(SignalingService))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
