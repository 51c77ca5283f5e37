//! The forwarding loop: one UDP socket, every datagram validated, routed by
//! SSRC and sent unchanged to the other members of its channel.
//!
//! It must allocate nothing per packet: the receive buffer and the
//! destination list are allocated once and reused. It drains the socket
//! with non-blocking receives and goes back to the reactor only when the
//! socket is empty, which is also when it publishes its counts.

use std::io;
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

use crate::rtp;
use crate::stats::{DropReason, LocalCounts, RelayCounters};
use crate::table::{RelayTable, Route};

/// Largest UDP payload; a smaller buffer would silently truncate.
const MAX_DATAGRAM: usize = 65_535;

/// Under sustained load the socket never runs dry, so counts are also
/// flushed (and shutdown checked) after this many packets.
const FLUSH_EVERY: u64 = 256;

/// Relays datagrams arriving on `socket` until `shutdown`.
pub async fn run(socket: &UdpSocket, table: &RelayTable, counters: &RelayCounters, shutdown: &CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(64);
    let mut counts = LocalCounts::default();
    loop {
        match socket.try_recv_from(&mut buf) {
            Ok((len, from)) => {
                let packet = &buf[..len];
                relay_one(socket, table, packet, from, &mut dests, &mut counts).await;
                if counts.pending_packets() >= FLUSH_EVERY {
                    counts.flush(counters);
                    if shutdown.is_cancelled() {
                        break;
                    }
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                counts.flush(counters);
                tokio::select! {
                    ready = socket.readable() => {
                        if let Err(e) = ready {
                            tracing::error!(error = %e, "media socket failed; forwarding stopped");
                            break;
                        }
                    }
                    () = shutdown.cancelled() => break,
                }
            }
            Err(e) => {
                // Per-datagram errors (an ICMP error surfacing on some
                // platforms) must not stop the relay; yield so a persistent
                // one cannot starve the runtime.
                tracing::debug!(error = %e, "media receive failed");
                tokio::task::yield_now().await;
            }
        }
    }
    counts.flush(counters);
}

async fn relay_one(
    socket: &UdpSocket,
    table: &RelayTable,
    packet: &[u8],
    from: SocketAddr,
    dests: &mut Vec<SocketAddr>,
    counts: &mut LocalCounts,
) {
    counts.received(packet.len());
    let ssrc = match rtp::parse_ssrc(packet) {
        Ok(ssrc) => ssrc,
        Err(e) => {
            tracing::trace!(%from, error = %e, "malformed rtp dropped");
            counts.dropped(DropReason::Malformed);
            return;
        }
    };
    match table.route(ssrc, from, table.now_ms(), dests) {
        Route::Forward => {}
        Route::UnknownSsrc => {
            counts.dropped(DropReason::UnknownSsrc);
            return;
        }
        Route::NoFloor => {
            counts.dropped(DropReason::NoFloor);
            return;
        }
    }
    // The table lock was released inside `route`; only the copied
    // addresses cross these awaits.
    for dest in dests.iter() {
        match socket.send_to(packet, *dest).await {
            Ok(_) => counts.sent(packet.len()),
            Err(e) => {
                tracing::debug!(%dest, error = %e, "media send failed");
                counts.send_failed();
            }
        }
    }
}
