//! Signaling: the copilot channel's server->client callbacks and rate limits
//! (seed 001) and the WebRTC SDP/ICE relay between match peers (seed 004).
//!
//! Talks to other services only through their gRPC contracts.

mod relay;
mod service;

use std::time::Duration;

use relaymesh_proto::r#match::v1::match_service_client::MatchServiceClient;
use relaymesh_proto::signaling::v1::signaling_service_server::SignalingServiceServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use relaymesh_state::{Delivery, SessionRegistry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use service::SignalingService;

/// Flags of the signaling role.
#[derive(Debug, Clone, clap::Args)]
pub struct SignalingConfig {
    /// The match service, which vets every relayed SDP/ICE message.
    #[arg(
        long = "signaling-match-url",
        env = "MATCH_URL",
        default_value = "http://match:50051"
    )]
    pub match_service_url: String,

    /// Deadline of one call to the match service, in milliseconds.
    #[arg(long, env = "SIGNALING_RPC_TIMEOUT_MS", default_value_t = 5_000)]
    pub signaling_rpc_timeout_ms: u64,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            match_service_url: "http://match:50051".to_owned(),
            signaling_rpc_timeout_ms: 5_000,
        }
    }
}

/// Serves the signaling API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: SignalingConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let matches = relaymesh_rpc::connect_lazy(
        &config.match_service_url,
        Duration::from_millis(config.signaling_rpc_timeout_ms),
    )?;
    let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
    let relay = relay::SignalRelay::new(MatchServiceClient::new(matches), Delivery::new(state, registry));
    GrpcServer::new()
        .add_service(SignalingServiceServer::new(SignalingService::new(relay)))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
