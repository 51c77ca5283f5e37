//! A media relay on loopback for tests: the gRPC service and the UDP socket
//! on port 0, members as real UDP sockets, and bounded waits.
#![allow(dead_code, clippy::unwrap_used)]

use std::net::SocketAddr;
use std::time::Duration;

use relaymesh_media_relay::MediaRelayConfig;
use relaymesh_proto::media_relay::v1::media_relay_service_client::MediaRelayServiceClient;
use relaymesh_proto::media_relay::v1::{AddPeerRequest, GetStatsRequest, GetStatsResponse, SetFloorRequest};
use relaymesh_rpc::{RpcChannel, RpcError, connect_lazy};
use relaymesh_state::SharedState;
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest any single wait in a test may take before it fails.
pub const WAIT: Duration = Duration::from_secs(5);

pub struct Relay {
    pub client: MediaRelayServiceClient<RpcChannel>,
    pub state: SharedState,
    pub grpc_addr: SocketAddr,
    pub shutdown: CancellationToken,
    pub task: JoinHandle<Result<(), RpcError>>,
}

pub fn config(idle_timeout_ms: u64) -> MediaRelayConfig {
    MediaRelayConfig {
        media_udp_host: "127.0.0.1".into(),
        media_udp_port: 0,
        media_public_host: None,
        media_public_port: None,
        media_public_addr_dir: None,
        media_public_addr_key: None,
        media_drain_timeout_ms: 0,
        media_relay_id: None,
        media_grpc_advertise: None,
        media_peer_idle_timeout_ms: idle_timeout_ms,
        media_udp_sockets: 1,
        media_udp_recv_buffer: relaymesh_media_relay::DEFAULT_MEDIA_UDP_RECV_BUFFER,
    }
}

impl Relay {
    pub async fn start() -> Self {
        Self::start_with(config(30_000), SharedState::memory()).await
    }

    pub async fn start_with(config: MediaRelayConfig, state: SharedState) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(relaymesh_media_relay::serve(
            listener,
            config,
            state.clone(),
            shutdown.clone(),
        ));
        let channel = connect_lazy(&format!("http://{grpc_addr}"), WAIT).unwrap();
        Self {
            client: MediaRelayServiceClient::new(channel),
            state,
            grpc_addr,
            shutdown,
            task,
        }
    }

    /// AddPeer, then a fresh socket for the member to send and receive on.
    pub async fn join(&mut self, channel_id: &str, ssrc: u32, user_id: &str) -> Member {
        let media_addr = self.add_peer(channel_id, ssrc, user_id).await.unwrap();
        Member::bind(ssrc, media_addr.parse().unwrap()).await
    }

    pub async fn add_peer(&mut self, channel_id: &str, ssrc: u32, user_id: &str) -> Result<String, tonic::Status> {
        let req = AddPeerRequest {
            channel_id: channel_id.into(),
            ssrc,
            user_id: user_id.into(),
        };
        Ok(self.client.add_peer(req).await?.into_inner().media_addr)
    }

    pub async fn set_floor(&mut self, channel_id: &str, floor_controlled: bool, holder_ssrc: u32) {
        self.set_floor_version(channel_id, floor_controlled, holder_ssrc, 0)
            .await;
    }

    /// As [`Self::set_floor`], with the channel service's floor version.
    pub async fn set_floor_version(
        &mut self,
        channel_id: &str,
        floor_controlled: bool,
        holder_ssrc: u32,
        version: u64,
    ) {
        let req = SetFloorRequest {
            channel_id: channel_id.into(),
            floor_controlled,
            holder_ssrc,
            floor_version: version,
        };
        self.client.set_floor(req).await.unwrap();
    }

    pub async fn stats(&mut self) -> GetStatsResponse {
        self.client.get_stats(GetStatsRequest {}).await.unwrap().into_inner()
    }

    /// Polls GetStats until `done` holds; panics after [`WAIT`].
    pub async fn wait_stats(&mut self, what: &str, done: impl Fn(&GetStatsResponse) -> bool) -> GetStatsResponse {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let stats = self.stats().await;
            if done(&stats) {
                return stats;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "timed out waiting for {what}: {stats:?}"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Each member sends a keepalive so the relay latches its address, in
    /// order; returns once the relay has seen all of them.
    pub async fn latch(&mut self, members: &[&Member]) {
        let before = self.stats().await.packets_in;
        for m in members {
            m.keepalive().await;
        }
        let n = members.len() as u64;
        self.wait_stats("keepalives", |s| s.packets_in >= before + n).await;
    }

    /// Cancels the relay and waits for `serve` to return.
    pub async fn stop(self) {
        self.shutdown.cancel();
        tokio::time::timeout(WAIT, self.task).await.unwrap().unwrap().unwrap();
    }
}

/// An RTP packet: version 2, payload type 96, the given sequence number
/// (also used as timestamp) and SSRC, then `payload`.
pub fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(12 + payload.len());
    p.extend_from_slice(&[0x80, 96]);
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&u32::from(seq).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

/// A channel member's UDP endpoint.
pub struct Member {
    pub ssrc: u32,
    pub socket: UdpSocket,
    pub relay: SocketAddr,
}

impl Member {
    pub async fn bind(ssrc: u32, relay: SocketAddr) -> Self {
        Self {
            ssrc,
            socket: UdpSocket::bind("127.0.0.1:0").await.unwrap(),
            relay,
        }
    }

    /// Another socket sending with this member's SSRC (a NAT rebinding).
    pub async fn rebind(&self) -> Self {
        Self::bind(self.ssrc, self.relay).await
    }

    pub async fn send_raw(&self, packet: &[u8]) {
        self.socket.send_to(packet, self.relay).await.unwrap();
    }

    pub async fn send(&self, seq: u16, payload: &[u8]) -> Vec<u8> {
        let packet = rtp(self.ssrc, seq, payload);
        self.send_raw(&packet).await;
        packet
    }

    /// A header-only packet: latches the address; receivers skip it.
    pub async fn keepalive(&self) {
        self.send_raw(&rtp(self.ssrc, 0, &[])).await;
    }

    /// The next datagram that is not a keepalive, or None after `timeout`.
    pub async fn recv_within(&self, timeout: Duration) -> Option<Vec<u8>> {
        let mut buf = vec![0u8; 2048];
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let (len, _) = tokio::time::timeout_at(deadline, self.socket.recv_from(&mut buf))
                .await
                .ok()?
                .unwrap();
            if len > 12 {
                return Some(buf[..len].to_vec());
            }
        }
    }

    /// The next datagram that is not a keepalive; panics after [`WAIT`].
    pub async fn recv(&self) -> Vec<u8> {
        self.recv_within(WAIT).await.expect("no packet within the wait")
    }
}
