//! Signaling: the copilot channel's server->client callbacks, rate limits
//! and built-in query service (seed 001), and the WebRTC SDP/ICE relay
//! between match peers (seed 004).
//!
//! Talks to other services only through their gRPC contracts and shared
//! state; clients are reached through delivery envelopes.

mod callbacks;
mod error;
mod query;
mod relay;
mod service;

use std::time::Duration;

use relaymesh_proto::r#match::v1::match_service_client::MatchServiceClient;
use relaymesh_proto::r#match::v1::match_service_server;
use relaymesh_proto::query::v1::query_service_server::QueryServiceServer;
use relaymesh_proto::signaling::v1::signaling_service_server::{self, SignalingServiceServer};
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use relaymesh_state::{Delivery, SessionRegistry};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use callbacks::{CallbackBroker, MAX_TIMEOUT};
pub use error::SignalingError;
pub use query::BuiltinQueryService;
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

    /// How long a copilot callback waits for the client's answer when the
    /// caller does not say (the built-in query service never does).
    #[arg(long, env = "CALLBACK_TIMEOUT_MS", default_value_t = 10_000)]
    pub callback_timeout_ms: u64,

    /// Copilot queries allowed per rate-limit window.
    #[arg(long, env = "RATE_LIMIT_REQUESTS", default_value_t = 10)]
    pub rate_limit_requests: u32,

    /// The sliding rate-limit window, in milliseconds.
    #[arg(long, env = "RATE_LIMIT_WINDOW_MS", default_value_t = 60_000)]
    pub rate_limit_window_ms: u64,

    /// Count copilot queries per user across all their connections (true),
    /// or per connection (false).
    #[arg(long, env = "SHARE_RATE_LIMIT", default_value_t = true, action = clap::ArgAction::Set)]
    pub share_rate_limit: bool,
}

impl Default for SignalingConfig {
    fn default() -> Self {
        Self {
            match_service_url: "http://match:50051".to_owned(),
            signaling_rpc_timeout_ms: 5_000,
            callback_timeout_ms: 10_000,
            rate_limit_requests: 10,
            rate_limit_window_ms: 60_000,
            share_rate_limit: true,
        }
    }
}

impl SignalingConfig {
    pub fn callback_timeout(&self) -> Duration {
        Duration::from_millis(self.callback_timeout_ms.max(1))
    }
    pub fn rate_limit_window(&self) -> Duration {
        Duration::from_millis(self.rate_limit_window_ms.max(1))
    }
}

/// Failures that stop the signaling role.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Rpc(#[from] RpcError),
    #[error("shared state: {0}")]
    State(#[from] relaymesh_state::StateError),
}

/// Serves the signaling API and the built-in query service on `listener`
/// until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: SignalingConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), ServeError> {
    let (broker, settlements) = CallbackBroker::start(state.clone(), config.callback_timeout()).await?;
    // Stopped when serving ends, for whatever reason.
    let stop_settling = shutdown.child_token();
    let settling = tokio::spawn(broker.clone().run_settlements(settlements, stop_settling.clone()));
    let timeout = Duration::from_millis(config.signaling_rpc_timeout_ms);
    let matches = relaymesh_rpc::connect_lazy(&config.match_service_url, timeout)?;
    let matches = relaymesh_rpc::LocalOrRemote::new(
        MatchServiceClient::new(matches),
        &config.match_service_url,
        match_service_server::SERVICE_NAME,
        timeout,
    );
    let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
    let relay = relay::SignalRelay::new(matches, Delivery::new(state.clone(), registry));
    let signaling = std::sync::Arc::new(SignalingService::new(broker.clone(), state, config, relay));
    let served = GrpcServer::new()
        .add_service(SignalingServiceServer::from_arc(signaling.clone()))
        .handles_in_process::<dyn signaling_service_server::SignalingService>(signaling)
        .add_service(QueryServiceServer::new(BuiltinQueryService::new(broker)))
        .serve(listener, ServeOptions::default(), shutdown)
        .await;
    stop_settling.cancel();
    let _ = settling.await;
    Ok(served?)
}
