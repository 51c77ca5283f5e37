//! The UDP RTP/SRTP media relay (seed 003).
//!
//! Talks to other services only through their gRPC contracts.

mod service;

use relaymesh_proto::media_relay::v1::media_relay_server::MediaRelayServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::MediaRelayService;

/// Flags of the media-relay role.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MediaRelayConfig {}

/// Serves the media-relay API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    _config: MediaRelayConfig,
    _state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    GrpcServer::new()
        .add_service(MediaRelayServer::new(MediaRelayService))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
