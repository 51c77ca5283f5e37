//! The UDP RTP/SRTP media relay (seed 003).
//!
//! The channel service tells a relay instance, over gRPC, which SSRCs belong
//! to which channel; the relay latches each member's UDP address from its
//! own packets and forwards every packet, unchanged, to the other members.
//! It holds no media keys: SRTP is end to end.
//!
//! - [`rtp`]: the header check that yields a packet's SSRC;
//! - [`table`]: SSRC -> peer, channel -> members and floor;
//! - [`forward`]: the per-packet loop on the UDP socket;
//! - [`sweep`]: eviction of peers that went silent;
//! - [`registration`]: the record that lets the channel service find us;
//! - [`advertise`]: the address clients are told to send to;
//! - [`drain`]: keeping channels alive through a shutdown;
//! - [`service`]: the gRPC API.
//!
//! Talks to other services only through their gRPC contracts and shared
//! state.

mod advertise;
mod drain;
mod error;
mod forward;
mod registration;
mod rtp;
mod service;
mod stats;
mod sweep;
mod table;

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use relaymesh_config::join_host_port;
use relaymesh_proto::media_relay::v1::RelayRegistration;
use relaymesh_proto::media_relay::v1::media_relay_service_server::MediaRelayServiceServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use error::MediaRelayError;
pub use registration::{RELAYS_SET, registration_key};
pub use service::MediaRelayService;

/// The forwarding engine without the gRPC service around it, for the
/// allocation test and the benchmarks; not a stable API.
#[doc(hidden)]
pub mod engine {
    pub use crate::forward::Forwarder;
    pub use crate::rtp::Ssrc;
    pub use crate::stats::RelayCounters;
    pub use crate::table::RelayTable;
}

use crate::stats::RelayCounters;
use crate::table::RelayTable;

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

    /// Port announced to clients (default: the bound UDP port); for a
    /// NodePort or a load balancer that maps another port to it.
    #[arg(long, env = "MEDIA_PUBLIC_PORT")]
    pub media_public_port: Option<u16>,

    /// Directory of one file per key holding the address (`host` or
    /// `host:port`) clients are told, e.g. a ConfigMap mapping node names
    /// to their external addresses; read with MEDIA_PUBLIC_ADDR_KEY.
    /// Without a file for the key, MEDIA_PUBLIC_HOST applies.
    #[arg(long, env = "MEDIA_PUBLIC_ADDR_DIR", requires = "media_public_addr_key")]
    pub media_public_addr_dir: Option<PathBuf>,

    /// This instance's key in MEDIA_PUBLIC_ADDR_DIR (its node or pod name).
    #[arg(long, env = "MEDIA_PUBLIC_ADDR_KEY")]
    pub media_public_addr_key: Option<String>,

    /// On shutdown, keep forwarding for the channels served until they are
    /// empty or this long has passed (new channels go to other relays).
    #[arg(long, env = "MEDIA_DRAIN_TIMEOUT_MS", default_value_t = 25_000)]
    pub media_drain_timeout_ms: u64,

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

    /// UDP sockets bound to the media port with SO_REUSEPORT (Linux), each
    /// with its own forwarding thread; the kernel spreads senders over them
    /// by flow hash. Set it to the cores the relay may use; 1 (the default)
    /// binds one plain socket (see docs/media-relay-performance.md).
    #[arg(long, env = "MEDIA_UDP_SOCKETS", default_value_t = 1,
          value_parser = clap::value_parser!(u16).range(1..=64))]
    pub media_udp_sockets: u16,

    /// Receive buffer (SO_RCVBUF, bytes) asked for each media socket: what
    /// may queue while the forwarding thread is not running (a burst, or
    /// the core busy with something else) before datagrams are lost. The
    /// kernel caps it at `net.core.rmem_max` (a warning says so); 0 keeps
    /// the system default (`net.core.rmem_default`, typically 208 KiB: 256
    /// packets of 172 bytes on loopback).
    #[arg(long, env = "MEDIA_UDP_RECV_BUFFER", default_value_t = DEFAULT_MEDIA_UDP_RECV_BUFFER)]
    pub media_udp_recv_buffer: usize,
}

/// MEDIA_UDP_RECV_BUFFER's default: 4 MiB queues some 10,000 packets of
/// 172 bytes, 200 ms of a 50k packets/s ingress (see
/// docs/media-relay-performance.md).
pub const DEFAULT_MEDIA_UDP_RECV_BUFFER: usize = 4 << 20;

impl MediaRelayConfig {
    /// The host clients are told to send to: the configured public host,
    /// else the bind host, else loopback when bound to every interface
    /// (an unspecified address cannot be sent to).
    fn public_host(&self) -> String {
        if let Some(host) = &self.media_public_host {
            return host.clone();
        }
        let bind = self.media_udp_host.trim_start_matches('[').trim_end_matches(']');
        match bind.parse::<IpAddr>() {
            Ok(ip) if ip.is_unspecified() => "127.0.0.1".to_owned(),
            _ if bind.is_empty() => "127.0.0.1".to_owned(),
            _ => bind.to_owned(),
        }
    }

    /// `host:port` clients send RTP to, given the port the socket bound.
    fn media_addr(&self, bound_port: u16) -> std::io::Result<String> {
        let mapped = match (&self.media_public_addr_dir, &self.media_public_addr_key) {
            (Some(dir), Some(key)) => {
                let found = advertise::lookup(dir, key)?;
                if found.is_none() {
                    tracing::warn!(dir = %dir.display(), key = %key, "no media address for this key; using the public host");
                }
                found
            }
            _ => None,
        };
        Ok(advertise::media_addr(
            mapped.as_deref(),
            &self.public_host(),
            self.media_public_port,
            bound_port,
        ))
    }
}

/// Binds the media socket, then serves the media-relay API on `listener`
/// and relays RTP until `shutdown`; then drains (see [`drain`]) and
/// returns once every task has stopped and the registration is withdrawn.
pub async fn serve(
    listener: TcpListener,
    config: MediaRelayConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let sockets = bind_media_sockets(
        &join_host_port(&config.media_udp_host, config.media_udp_port),
        config.media_udp_sockets,
    )
    .await?;
    for socket in &sockets {
        set_recv_buffer(socket, config.media_udp_recv_buffer)?;
    }
    let socket = &sockets[0];
    let public_host = config.public_host();
    let media_addr = config.media_addr(socket.local_addr()?.port())?;
    let relay_id = config
        .media_relay_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().simple().to_string());
    let grpc_url = match &config.media_grpc_advertise {
        Some(url) => url.clone(),
        None => format!("http://{}", join_host_port(&public_host, listener.local_addr()?.port())),
    };
    tracing::info!(
        media_addr = %media_addr,
        udp_bind = %socket.local_addr()?,
        udp_sockets = sockets.len(),
        relay_id = %relay_id,
        grpc_url = %grpc_url,
        "media relay listening"
    );

    let table = Arc::new(RelayTable::new());
    let counters = Arc::new(RelayCounters::default());
    // The tasks stop with the server, also when it fails rather than drains;
    // the server stops once the drain after `shutdown` is over.
    let stop = CancellationToken::new();
    let drained = CancellationToken::new();
    let mut tasks = JoinSet::new();
    for socket in sockets {
        let (table, counters, stop) = (table.clone(), counters.clone(), stop.clone());
        tasks.spawn(forward::run(socket, table, counters, stop));
    }
    {
        let (table, stop, timeout) = (table.clone(), stop.clone(), config.media_peer_idle_timeout_ms);
        tasks.spawn(async move { sweep::evict_idle_peers(&table, timeout, stop).await });
    }
    {
        let (table, counters, stop) = (table.clone(), counters.clone(), stop.clone());
        tasks.spawn(async move { stats::publish_metrics(&counters, &table, stop).await });
    }
    {
        let registration = RelayRegistration {
            relay_id,
            grpc_url,
            media_addr: media_addr.clone(),
            refreshed_at_ms: 0,
            draining: false,
        };
        let (draining, stop) = (shutdown.clone(), stop.clone());
        tasks.spawn(async move { registration::keep_registered(&state, registration, draining, stop).await });
    }
    {
        let (table, stop, drained) = (table.clone(), stop.clone(), drained.clone());
        let timeout = Duration::from_millis(config.media_drain_timeout_ms);
        tasks.spawn(async move { drain::drain_then_stop(&table, timeout, shutdown, drained, stop).await });
    }

    let service = MediaRelayService::new(table, counters, media_addr, config.media_peer_idle_timeout_ms);
    let served = GrpcServer::new()
        .add_service(MediaRelayServiceServer::new(service))
        .serve(listener, ServeOptions::default(), drained)
        .await;
    stop.cancel();
    while let Some(joined) = tasks.join_next().await {
        if let Err(e) = joined {
            tracing::error!(error = %e, "media relay task failed");
        }
    }
    tracing::info!("media relay stopped");
    served
}

/// Binds the media socket, or `count` SO_REUSEPORT sockets on one port:
/// the first picks the port (when `addr` asks for any), the rest join it.
async fn bind_media_sockets(addr: &str, count: u16) -> std::io::Result<Vec<UdpSocket>> {
    if count <= 1 {
        return Ok(vec![UdpSocket::bind(addr).await?]);
    }
    #[cfg(target_os = "linux")]
    {
        let Some(mut addr) = tokio::net::lookup_host(addr).await?.next() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!("{addr} resolves to nothing"),
            ));
        };
        let mut sockets = Vec::with_capacity(usize::from(count));
        for _ in 0..count {
            let socket = bind_reuse_port(addr)?;
            addr = socket.local_addr()?;
            sockets.push(socket);
        }
        Ok(sockets)
    }
    #[cfg(not(target_os = "linux"))]
    {
        tracing::warn!(count, "several media sockets need SO_REUSEPORT on Linux; binding one");
        Ok(vec![UdpSocket::bind(addr).await?])
    }
}

/// Asks for a receive buffer of `bytes` on `socket` (0: the system
/// default) and warns when the kernel grants less.
fn set_recv_buffer(socket: &UdpSocket, bytes: usize) -> std::io::Result<()> {
    if bytes == 0 {
        return Ok(());
    }
    let socket = socket2::SockRef::from(socket);
    socket.set_recv_buffer_size(bytes)?;
    let granted = socket.recv_buffer_size()?;
    // Linux reports twice what it keeps for data (the rest is bookkeeping).
    let usable = if cfg!(target_os = "linux") {
        granted / 2
    } else {
        granted
    };
    if usable < bytes {
        tracing::warn!(
            asked = bytes,
            granted = usable,
            "media socket receive buffer capped by the system (net.core.rmem_max on Linux); bursts may be lost"
        );
    }
    Ok(())
}

#[cfg(target_os = "linux")]
fn bind_reuse_port(addr: std::net::SocketAddr) -> std::io::Result<UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    UdpSocket::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(host: &str, public: Option<&str>) -> MediaRelayConfig {
        MediaRelayConfig {
            media_udp_host: host.to_owned(),
            media_udp_port: 0,
            media_public_host: public.map(str::to_owned),
            media_public_port: None,
            media_public_addr_dir: None,
            media_public_addr_key: None,
            media_drain_timeout_ms: 0,
            media_relay_id: None,
            media_grpc_advertise: None,
            media_peer_idle_timeout_ms: 30_000,
            media_udp_sockets: 1,
            media_udp_recv_buffer: DEFAULT_MEDIA_UDP_RECV_BUFFER,
        }
    }

    #[test]
    fn public_host_prefers_the_configured_one() {
        assert_eq!(config("0.0.0.0", Some("media.example")).public_host(), "media.example");
    }

    #[test]
    fn public_host_is_the_bind_host_when_specific() {
        assert_eq!(config("10.1.2.3", None).public_host(), "10.1.2.3");
        assert_eq!(config("::1", None).public_host(), "::1");
    }

    #[test]
    fn public_host_is_loopback_when_bound_to_every_interface() {
        assert_eq!(config("0.0.0.0", None).public_host(), "127.0.0.1");
        assert_eq!(config("::", None).public_host(), "127.0.0.1");
        assert_eq!(config("[::]", None).public_host(), "127.0.0.1");
    }
}
