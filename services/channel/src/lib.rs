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

use relaymesh_proto::channel::v1::channel_service_server::ChannelServiceServer;
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
        .serve(listener, ServeOptions::default(), shutdown)
        .await;
    service.drained().await;
    served
}
