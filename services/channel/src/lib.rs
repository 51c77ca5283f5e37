//! Channel state for LiveChat / push-to-talk (seed 003): channels, members,
//! chat messages and floor control.
//!
//! Talks to other services only through their gRPC contracts.

mod service;

use relaymesh_proto::channel::v1::channel_server::ChannelServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::ChannelService;

/// Flags of the channel role.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ChannelConfig {}

/// Serves the channel API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    _config: ChannelConfig,
    _state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    GrpcServer::new()
        .add_service(ChannelServer::new(ChannelService))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
