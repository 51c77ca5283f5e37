//! Channel state for LiveChat / push-to-talk (seed 003): channels, members,
//! chat messages and server-arbitrated floor control.
//!
//! State lives in shared state (any replica serves any channel); events go to
//! members through the delivery envelopes of `relaymesh-state`. Talks to the
//! media relay only through its gRPC contract.

mod error;
mod fanout;
pub mod floor;
mod relays;
mod service;
mod store;

use relaymesh_proto::channel::v1::channel_service_server::{self, ChannelServiceServer};
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use error::ChannelError;
pub use fanout::Deliver;
pub use service::ChannelService;

/// Flags of the channel role.
#[derive(Debug, Clone, clap::Args)]
pub struct ChannelConfig {
    /// Largest channel (members); CHANNEL_CREATE may ask for fewer.
    #[arg(long, env = "MAX_CHANNEL_MEMBERS", default_value_t = 50)]
    pub max_channel_members: u32,

    /// Longest chat message, in characters.
    #[arg(long, env = "MAX_MESSAGE_LEN", default_value_t = 2000)]
    pub max_message_len: usize,

    /// Longest a member may hold the floor; a channel may ask for less.
    #[arg(long, env = "FLOOR_MAX_TALK_MS", default_value_t = 30_000)]
    pub floor_max_talk_ms: u64,

    /// Deliveries one channel may fan out per second, on average, over
    /// every replica (a message to n members is n). MESSAGE_CREATE beyond
    /// it is refused with RATE_LIMITED (LiveChat 4290). 0: no cap.
    #[arg(long, env = "CHANNEL_FANOUT_PER_SEC", default_value_t = DEFAULT_CHANNEL_FANOUT_PER_SEC)]
    pub channel_fanout_per_sec: f64,

    /// Deliveries one channel may fan out at once after a quiet spell.
    #[arg(long, env = "CHANNEL_FANOUT_BURST", default_value_t = DEFAULT_CHANNEL_FANOUT_BURST)]
    pub channel_fanout_burst: u32,
}

/// 100 messages a second to a channel of 1,000, or 2,000 a second to one of
/// 50 (MAX_CHANNEL_MEMBERS): far above a conversation, and a bound on what
/// one channel may ask of the gateways. A second's worth may go at once.
pub const DEFAULT_CHANNEL_FANOUT_PER_SEC: f64 = 100_000.0;
pub const DEFAULT_CHANNEL_FANOUT_BURST: u32 = 100_000;

impl ChannelConfig {
    /// The fan-out cap as a rate; None when off.
    pub fn fanout_rate(&self) -> Option<relaymesh_state::Rate> {
        relaymesh_state::Rate::new(self.channel_fanout_per_sec, self.channel_fanout_burst)
    }
}

/// Serves the channel API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: ChannelConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let service = ChannelService::new(state, config, shutdown.clone());
    let served = GrpcServer::new()
        .add_service(ChannelServiceServer::new(service.clone()))
        .handles_in_process::<dyn channel_service_server::ChannelService>(std::sync::Arc::new(service.clone()))
        .serve(listener, ServeOptions::default(), shutdown)
        .await;
    service.drained().await;
    served
}
