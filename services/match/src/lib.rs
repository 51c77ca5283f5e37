//! The lobby and the validated match state machine of the fighting game
//! (seed 004).
//!
//! Talks to other services only through their gRPC contracts.

mod service;

use relaymesh_proto::r#match::v1::match_server::MatchServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::MatchService;

/// Flags of the match role.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MatchConfig {}

/// Serves the match API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    _config: MatchConfig,
    _state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    GrpcServer::new()
        .add_service(MatchServer::new(MatchService))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
