//! The lobby and the validated match state machine of the fighting game
//! (seed 004).
//!
//! Lobby members and match sessions live in shared state, so any replica
//! serves any call; a session changes only by compare-and-set through the
//! one transition table (`fsm`). Players hear about changes through typed
//! `SignalResponse` delivery envelopes; lobby snapshots are coalesced
//! (`lobby`). Talks to other services only through their gRPC contracts.

mod error;
pub mod fsm;
mod lobby;
mod service;
mod sessions;
pub mod turn;

use std::time::Duration;

use relaymesh_proto::r#match::v1::match_service_server::{self, MatchServiceServer};
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::MatchError;
pub use service::MatchService;

/// Flags of the match role.
#[derive(Debug, Clone, clap::Args)]
pub struct MatchConfig {
    /// How long a match request waits for the target's answer.
    #[arg(long, env = "MATCH_REQUEST_TIMEOUT_MS", default_value_t = 30_000)]
    pub match_request_timeout_ms: u64,

    /// How long an accepted match may negotiate (SDP/ICE) before it fails.
    #[arg(long, env = "MATCH_NEGOTIATION_TIMEOUT_MS", default_value_t = 30_000)]
    pub match_negotiation_timeout_ms: u64,

    /// Most lobby snapshots sent per second (per match replica); changes in
    /// between are coalesced into the next snapshot.
    #[arg(long, env = "LOBBY_UPDATES_PER_SEC", default_value_t = 4)]
    pub lobby_updates_per_sec: u32,

    /// How often deadlines (expiry, negotiation timeout) are checked.
    #[arg(long, env = "MATCH_SWEEP_INTERVAL_MS", default_value_t = 250)]
    pub match_sweep_interval_ms: u64,

    #[command(flatten)]
    pub ice: IceConfig,
}

impl Default for MatchConfig {
    fn default() -> Self {
        Self {
            match_request_timeout_ms: 30_000,
            match_negotiation_timeout_ms: 30_000,
            lobby_updates_per_sec: 4,
            match_sweep_interval_ms: 250,
            ice: IceConfig::default(),
        }
    }
}

impl MatchConfig {
    fn lobby_gap(&self) -> Duration {
        Duration::from_secs(1) / self.lobby_updates_per_sec.max(1)
    }
}

/// ICE servers handed to players in `lobby_joined`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct IceConfig {
    /// STUN URLs (`stun:host:port`), comma-separated.
    #[arg(long, env = "ICE_STUN_URLS", value_delimiter = ',')]
    pub stun_urls: Vec<String>,

    /// TURN URLs (`turn:host:port?transport=udp`), comma-separated.
    #[arg(long, env = "TURN_URLS", value_delimiter = ',')]
    pub turn_urls: Vec<String>,

    /// coturn's `static-auth-secret`: TURN credentials are minted from it.
    #[arg(long, env = "TURN_SECRET", hide_env_values = true)]
    pub turn_secret: Option<String>,

    /// How long minted TURN credentials stay valid, in seconds.
    #[arg(long, env = "TURN_TTL_SECS", default_value_t = 3600)]
    pub turn_ttl_secs: u64,
}

/// Serves the match API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: MatchConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let service = MatchService::start(state, config, shutdown.clone());
    let served = GrpcServer::new()
        .add_service(MatchServiceServer::new(service.clone()))
        .handles_in_process::<dyn match_service_server::MatchService>(std::sync::Arc::new(service.clone()))
        .serve(listener, ServeOptions::default(), shutdown)
        .await;
    service.stopped().await;
    served
}
