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
#[derive(Debug, Clone, clap::Args)]
pub struct MediaRelayConfig {
    /// Address the RTP socket binds.
    #[arg(long, env = "MEDIA_UDP_HOST", default_value = "0.0.0.0")]
    pub media_udp_host: String,

    /// UDP port clients send RTP to (0: any free port).
    #[arg(long, env = "MEDIA_UDP_PORT", default_value_t = 5004)]
    pub media_udp_port: u16,

    /// Host announced to clients in CHANNEL_JOIN acknowledgements (default:
    /// the bind address, or 127.0.0.1 when bound to all interfaces).
    #[arg(long, env = "MEDIA_PUBLIC_HOST")]
    pub media_public_host: Option<String>,

    /// This instance's id in shared state (random when unset).
    #[arg(long, env = "MEDIA_RELAY_ID")]
    pub media_relay_id: Option<String>,

    /// gRPC URL the channel service uses to reach this instance (default:
    /// http://<public host>:<gRPC port>).
    #[arg(long, env = "MEDIA_GRPC_ADVERTISE")]
    pub media_grpc_advertise: Option<String>,

    /// A peer that sends nothing for this long is evicted.
    #[arg(long, env = "MEDIA_PEER_IDLE_TIMEOUT_MS", default_value_t = 30_000)]
    pub media_peer_idle_timeout_ms: u64,
}

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
