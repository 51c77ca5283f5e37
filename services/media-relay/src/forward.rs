//! The forwarding loop: every datagram validated, routed by SSRC and sent
//! unchanged to the other members of its channel.
//!
//! It must allocate nothing per packet: the receive buffers, the
//! destination list and the system-call headers are allocated once and
//! reused. It drains the socket with non-blocking receives and goes back to
//! the reactor only when the socket is empty, which is also when it
//! publishes its counts.
//!
//! On Linux ([`batched`]) it uses batched system calls: `recvmmsg` reads up
//! to [`batched::RECV_BATCH`] datagrams per call, and one `sendmmsg` sends
//! every (datagram, destination) pair of that read, up to
//! [`batched::SEND_BATCH`] per call. Messages go out in the order packets
//! arrived, so every receiver still sees its sender's packets in order.
//! Elsewhere the loop is one `recv_from` and one `send_to` per destination.
//!
//! Measured with `cargo bench -p relaymesh-media-relay --bench relay` on a
//! shared 2-core box (1 sender -> N receivers; three runs for the table,
//! two per step below; see the crate's `benches/relay.rs`):
//!
//! | N  | per-packet loop (before) | recvmmsg + sendmmsg (after) |
//! |----|--------------------------|-----------------------------|
//! | 1  | 10.3 / 9.6 / 10.4 µs CPU per packet out, 37-38k pkt/s | 11.1 / 11.1 / 9.8 µs (last with the `sendto` fast path), 31-37k pkt/s |
//! | 4  | 5.03 / 5.05 / 4.98 µs, 80-87k pkt/s | 4.61 / 4.80 / 4.24 µs, 80-94k pkt/s |
//! | 16 | 4.04 / 4.20 / 4.22 µs, 105-119k pkt/s | 3.66 / 3.44 / 3.58 µs, 125-131k pkt/s |
//!
//! (CPU is the relay thread's on-CPU time per packet out, the figure the
//! box's noise disturbs least; rates in its "slow" mode, the box flips
//! between about 40k and 150k pkt/s baseline with other load.)
//!
//! - `sendmmsg` alone (1 datagram per read, up to 64 messages per call) is
//!   what pays: N=16 3.5-4.3 µs vs 4.7-4.8 µs per packet out (two runs). Adopted.
//! - `recvmmsg` alone (32 per read, one message per send) did not pay
//!   measurably: this benchmark's sender rarely lets more than one
//!   datagram queue (N=16 5.0-5.4 µs vs 4.7-4.8 µs). Kept because with it
//!   one `sendmmsg` carries the whole read's fan-out, and together they
//!   were the best at N=4 (3.7-4.2 µs vs 4.8-5.7 µs) and N=16.
//! - N=1 gains nothing from either (one message per call); a lone message
//!   goes out with plain `sendto`, which brought the batched path back to
//!   the old cost (within noise).
//! - Two SO_REUSEPORT sockets (`--media-udp-sockets 2`) did not pay here:
//!   N=16 3.37 / 3.52 / 3.87 µs, the same as one socket. The benchmark is
//!   one flow (hashed to one socket) and the relay's single-threaded
//!   runtime shares the 2-core box with the load generator, so there is
//!   no core for a second loop. The default stays 1.
//!
//! `serve` can also bind several SO_REUSEPORT sockets to the media port
//! (`--media-udp-sockets`), each with its own loop; see [`crate::MediaRelayConfig`].

use std::io;
#[cfg(not(target_os = "linux"))]
use std::net::SocketAddr;

use tokio::net::UdpSocket;
use tokio_util::sync::CancellationToken;

#[cfg(not(target_os = "linux"))]
use crate::rtp;
#[cfg(not(target_os = "linux"))]
use crate::stats::DropReason;
use crate::stats::{LocalCounts, RelayCounters};
use crate::table::RelayTable;
#[cfg(not(target_os = "linux"))]
use crate::table::Route;

/// Largest UDP payload; a smaller buffer would silently truncate.
const MAX_DATAGRAM: usize = 65_535;

/// Under sustained load the socket never runs dry, so counts are also
/// flushed (and shutdown checked) after this many packets.
const FLUSH_EVERY: u64 = 256;

/// Relays datagrams arriving on `socket` until `shutdown`.
pub async fn run(socket: &UdpSocket, table: &RelayTable, counters: &RelayCounters, shutdown: &CancellationToken) {
    #[cfg(target_os = "linux")]
    batched::run(socket, table, counters, shutdown).await;
    #[cfg(not(target_os = "linux"))]
    run_single(socket, table, counters, shutdown).await;
}

/// After relaying a read: publish counts every `FLUSH_EVERY` packets (the
/// socket may never run dry under load) and stop when shutting down.
/// Returns whether to keep forwarding.
fn after_relay(counts: &mut LocalCounts, counters: &RelayCounters, shutdown: &CancellationToken) -> bool {
    if counts.pending_packets() >= FLUSH_EVERY {
        counts.flush(counters);
        return !shutdown.is_cancelled();
    }
    true
}

/// After a receive that returned no datagram: on "would block", publish
/// counts and wait for the socket or shutdown; on any other error, yield
/// and go on (a per-datagram error, such as an ICMP error surfacing on some
/// platforms, must not stop the relay, nor starve the runtime if it
/// persists). Returns whether to keep forwarding.
async fn after_receive_error(
    e: io::Error,
    socket: &UdpSocket,
    counts: &mut LocalCounts,
    counters: &RelayCounters,
    shutdown: &CancellationToken,
) -> bool {
    if e.kind() != io::ErrorKind::WouldBlock {
        tracing::debug!(error = %e, "media receive failed");
        tokio::task::yield_now().await;
        return true;
    }
    counts.flush(counters);
    tokio::select! {
        ready = socket.readable() => match ready {
            Ok(()) => true,
            Err(e) => {
                tracing::error!(error = %e, "media socket failed; forwarding stopped");
                false
            }
        },
        () = shutdown.cancelled() => false,
    }
}

/// One datagram per receive, one `send_to` per destination.
#[cfg(not(target_os = "linux"))]
async fn run_single(socket: &UdpSocket, table: &RelayTable, counters: &RelayCounters, shutdown: &CancellationToken) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let mut dests: Vec<SocketAddr> = Vec::with_capacity(64);
    let mut counts = LocalCounts::default();
    loop {
        let go_on = match socket.try_recv_from(&mut buf) {
            Ok((len, from)) => {
                let packet = &buf[..len];
                relay_one(socket, table, packet, from, &mut dests, &mut counts).await;
                after_relay(&mut counts, counters, shutdown)
            }
            Err(e) => after_receive_error(e, socket, &mut counts, counters, shutdown).await,
        };
        if !go_on {
            break;
        }
    }
    counts.flush(counters);
}

#[cfg(not(target_os = "linux"))]
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

/// `recvmmsg` in, `sendmmsg` out.
///
/// `nix` provides `recvmmsg`; `sendmmsg` comes from `rustix`, which returns
/// the number of messages sent (nix only yields it by iterating results
/// that read address slots `sendmmsg` never initialised).
#[cfg(target_os = "linux")]
pub(crate) mod batched {
    use std::cell::RefCell;
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::SocketAddr;
    use std::os::fd::{AsFd, AsRawFd};

    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
    use smallvec::SmallVec;
    use tokio::io::Interest;
    use tokio::net::UdpSocket;
    use tokio_util::sync::CancellationToken;

    use super::{MAX_DATAGRAM, after_receive_error, after_relay};
    use crate::rtp;
    use crate::stats::{DropReason, LocalCounts, RelayCounters};
    use crate::table::{RelayTable, Route};

    /// Datagrams read per `recvmmsg`.
    pub const RECV_BATCH: usize = 32;
    /// Messages written per `sendmmsg`; a read whose fan-out exceeds this
    /// takes several calls.
    pub const SEND_BATCH: usize = 64;

    /// Relays datagrams arriving on `socket` until `shutdown`.
    pub async fn run(socket: &UdpSocket, table: &RelayTable, counters: &RelayCounters, shutdown: &CancellationToken) {
        let ipv6 = socket.local_addr().is_ok_and(|a| a.is_ipv6());
        let mut relay = Relay::new(ipv6, RECV_BATCH, SEND_BATCH);
        let mut counts = LocalCounts::default();
        loop {
            let go_on = match relay.recv.recv(socket) {
                Ok(_) => {
                    relay.route_and_send(socket, table, &mut counts).await;
                    after_relay(&mut counts, counters, shutdown)
                }
                Err(e) => after_receive_error(e, socket, &mut counts, counters, shutdown).await,
            };
            if !go_on {
                break;
            }
        }
        counts.flush(counters);
    }

    /// The reused state of one forwarding loop.
    pub(crate) struct Relay {
        pub(crate) recv: RecvBatch,
        send: SendBatch,
        dests: Vec<SocketAddr>,
    }

    impl Relay {
        /// A loop for a socket of the given family reading up to
        /// `recv_batch` and sending up to `send_batch` messages per call.
        pub(crate) fn new(ipv6: bool, recv_batch: usize, send_batch: usize) -> Self {
            Self {
                recv: RecvBatch::new(ipv6, recv_batch),
                send: SendBatch::new(send_batch),
                dests: Vec::with_capacity(64),
            }
        }

        /// Routes every datagram of the last read and sends it on, in
        /// arrival order.
        pub(crate) async fn route_and_send(
            &mut self,
            socket: &UdpSocket,
            table: &RelayTable,
            counts: &mut LocalCounts,
        ) {
            let Self { recv, send, dests } = self;
            let now_ms = table.now_ms();
            for (slot, &(len, from)) in recv.meta.iter().enumerate() {
                counts.received(len);
                let Some(from) = from else {
                    counts.dropped(DropReason::Malformed);
                    continue;
                };
                let ssrc = match rtp::parse_ssrc(recv.packet(slot)) {
                    Ok(ssrc) => ssrc,
                    Err(e) => {
                        tracing::trace!(%from, error = %e, "malformed rtp dropped");
                        counts.dropped(DropReason::Malformed);
                        continue;
                    }
                };
                match table.route(ssrc, from, now_ms, dests) {
                    Route::Forward => {}
                    Route::UnknownSsrc => {
                        counts.dropped(DropReason::UnknownSsrc);
                        continue;
                    }
                    Route::NoFloor => {
                        counts.dropped(DropReason::NoFloor);
                        continue;
                    }
                }
                // The table lock was released inside `route`; only the
                // copied addresses cross the awaits in `flush`.
                for dest in dests.iter() {
                    if send.is_full() {
                        send.flush(socket, recv, counts).await;
                    }
                    send.push(slot, *dest);
                }
            }
            send.flush(socket, recv, counts).await;
        }
    }

    thread_local! {
        /// `recvmmsg` headers, by address family (IPv4, IPv6). `MultiHeaders`
        /// holds raw pointers, so it is not `Send` and cannot live in the
        /// forwarding task across an await; it is used only inside the
        /// synchronous receive, so one set per thread serves every loop the
        /// thread runs. By family, because the kernel leaves each header's
        /// address length at the last source's size.
        static RECV_HEADERS: RefCell<[Option<MultiHeaders<SockaddrStorage>>; 2]> = const { RefCell::new([None, None]) };
    }

    /// Buffers for `recvmmsg`, and what the last call read.
    pub(crate) struct RecvBatch {
        /// `capacity` slots of `MAX_DATAGRAM` bytes.
        buf: Vec<u8>,
        capacity: usize,
        /// Index into `RECV_HEADERS`.
        family: usize,
        /// (length, source) of each datagram read, by slot.
        meta: Vec<(usize, Option<SocketAddr>)>,
    }

    impl RecvBatch {
        fn new(ipv6: bool, capacity: usize) -> Self {
            let capacity = capacity.clamp(1, RECV_BATCH);
            Self {
                buf: vec![0u8; capacity * MAX_DATAGRAM],
                capacity,
                family: usize::from(ipv6),
                meta: Vec::with_capacity(capacity),
            }
        }

        /// Reads what is queued on `socket`, up to the batch capacity;
        /// "would block" when nothing is.
        pub(crate) fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            let Self {
                buf,
                capacity,
                family,
                meta,
            } = self;
            meta.clear();
            socket.try_io(Interest::READABLE, || {
                RECV_HEADERS.with_borrow_mut(|headers| {
                    let headers = headers[*family].get_or_insert_with(|| MultiHeaders::preallocate(RECV_BATCH, None));
                    let mut slots = buf.chunks_exact_mut(MAX_DATAGRAM);
                    let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] =
                        std::array::from_fn(|_| [IoSliceMut::new(slots.next().unwrap_or_default())]);
                    let read = recvmmsg(
                        socket.as_raw_fd(),
                        headers,
                        iovs[..*capacity].iter_mut(),
                        MsgFlags::empty(),
                        None,
                    )?;
                    meta.extend(read.map(|msg| (msg.bytes, msg.address.and_then(|a| to_std(&a)))));
                    Ok(meta.len())
                })
            })
        }

        /// The datagram read into `slot`.
        pub(crate) fn packet(&self, slot: usize) -> &[u8] {
            match self.meta.get(slot) {
                Some(&(len, _)) => &self.buf[slot * MAX_DATAGRAM..][..len],
                None => &[],
            }
        }
    }

    fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            addr.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
        }
    }

    /// (datagram, destination) pairs waiting for one `sendmmsg`.
    struct SendBatch {
        capacity: usize,
        /// The receive slot each message carries.
        slots: Vec<usize>,
        dests: Vec<SocketAddr>,
        /// `dests` as `sendmmsg` takes them.
        addrs: Vec<SocketAddrAny>,
        /// Empty, one per message: rustix wants each message's own.
        controls: Vec<SendAncillaryBuffer<'static, 'static, 'static>>,
    }

    impl SendBatch {
        fn new(capacity: usize) -> Self {
            let capacity = capacity.clamp(1, SEND_BATCH);
            Self {
                capacity,
                slots: Vec::with_capacity(capacity),
                dests: Vec::with_capacity(capacity),
                addrs: Vec::with_capacity(capacity),
                controls: (0..capacity).map(|_| SendAncillaryBuffer::default()).collect(),
            }
        }

        fn is_full(&self) -> bool {
            self.slots.len() >= self.capacity
        }

        fn push(&mut self, slot: usize, dest: SocketAddr) {
            self.slots.push(slot);
            self.dests.push(dest);
            self.addrs.push(SocketAddrAny::from(dest));
        }

        /// Sends every pending message, waiting for the socket when its
        /// buffer is full; a message the kernel refuses is counted as a
        /// failed send and skipped, like a failed `send_to`.
        async fn flush(&mut self, socket: &UdpSocket, recv: &RecvBatch, counts: &mut LocalCounts) {
            let mut start = 0;
            while start < self.slots.len() {
                match socket.try_io(Interest::WRITABLE, || self.send_from(socket, recv, start)) {
                    Ok(sent) if sent > 0 => {
                        for &slot in &self.slots[start..start + sent] {
                            counts.sent(recv.packet(slot).len());
                        }
                        start += sent;
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        if let Err(e) = socket.writable().await {
                            tracing::debug!(error = %e, "media socket not writable");
                            for _ in start..self.slots.len() {
                                counts.send_failed();
                            }
                            break;
                        }
                    }
                    failed => {
                        if let Err(e) = failed {
                            tracing::debug!(dest = %self.dests[start], error = %e, "media send failed");
                        }
                        counts.send_failed();
                        start += 1;
                    }
                }
            }
            self.slots.clear();
            self.dests.clear();
            self.addrs.clear();
        }

        /// One `sendmmsg` of the pending messages from `start`.
        fn send_from(&mut self, socket: &UdpSocket, recv: &RecvBatch, start: usize) -> io::Result<usize> {
            if start + 1 == self.slots.len() {
                // One message (N=1 without a backlog): plain sendto is
                // cheaper than building a sendmmsg.
                let (slot, dest) = (self.slots[start], self.dests[start]);
                return socket.try_send_to(recv.packet(slot), dest).map(|_| 1);
            }
            let iovs: [[IoSlice<'_>; 1]; RECV_BATCH] = std::array::from_fn(|slot| [IoSlice::new(recv.packet(slot))]);
            let mut msgs: SmallVec<[MMsgHdr<'_>; SEND_BATCH]> = self.slots[start..]
                .iter()
                .zip(&self.addrs[start..])
                .zip(self.controls.iter_mut())
                .map(|((&slot, addr), control)| MMsgHdr::new_with_addr(addr, &iovs[slot], control))
                .collect();
            Ok(sendmmsg(socket.as_fd(), &mut msgs, SendFlags::empty())?)
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::net::UdpSocket;

    use super::batched::{Relay, SEND_BATCH};
    use crate::rtp::Ssrc;
    use crate::stats::{LocalCounts, RelayCounters};
    use crate::table::RelayTable;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[seq as u8; 20]);
        p
    }

    async fn bind() -> UdpSocket {
        UdpSocket::bind("127.0.0.1:0").await.unwrap()
    }

    /// Sender SSRC 1 and `receivers` members in channel "c", each latched
    /// at its own socket.
    async fn channel(table: &RelayTable, receivers: usize) -> (UdpSocket, Vec<UdpSocket>) {
        let mut dests = Vec::new();
        let sender = bind().await;
        table.add_peer("c", Ssrc(1), "u1", 0, 60_000).unwrap();
        table.route(Ssrc(1), sender.local_addr().unwrap(), 0, &mut dests);
        let mut sockets = Vec::new();
        for i in 0..receivers {
            let ssrc = Ssrc(2 + i as u32);
            let socket = bind().await;
            table.add_peer("c", ssrc, &format!("u{}", ssrc.0), 0, 60_000).unwrap();
            table.route(ssrc, socket.local_addr().unwrap(), 0, &mut dests);
            sockets.push(socket);
        }
        (sender, sockets)
    }

    /// Reads what is queued on `relay_socket` in one batch (waiting for the
    /// first `expect` datagrams) and relays it.
    async fn relay_once(relay: &mut Relay, socket: &UdpSocket, table: &RelayTable, expect: usize) -> LocalCounts {
        let mut counts = LocalCounts::default();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        loop {
            socket.readable().await.unwrap();
            // Loopback delivers synchronously, but give stragglers a moment.
            tokio::time::sleep(Duration::from_millis(20)).await;
            match relay.recv.recv(socket) {
                Ok(n) => {
                    assert_eq!(n, expect, "one read takes the whole queue");
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(tokio::time::Instant::now() < deadline);
                }
                Err(e) => panic!("{e}"),
            }
        }
        relay.route_and_send(socket, table, &mut counts).await;
        counts
    }

    async fn expect_in_order(receiver: &UdpSocket, packets: &[Vec<u8>]) {
        let mut buf = [0u8; 2048];
        for (i, want) in packets.iter().enumerate() {
            let (len, _) = tokio::time::timeout(Duration::from_secs(5), receiver.recv_from(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert_eq!(&buf[..len], want.as_slice(), "packet {i}");
        }
        assert!(receiver.try_recv_from(&mut buf).is_err(), "nothing more");
    }

    fn totals(mut counts: LocalCounts, table: &RelayTable) -> (u64, u64, u64, u64) {
        let shared = RelayCounters::default();
        counts.flush(&shared);
        let s = shared.snapshot(table);
        (s.packets_in, s.packets_out, s.dropped_malformed, s.dropped_unknown_ssrc)
    }

    #[tokio::test]
    async fn a_read_whose_fan_out_exceeds_the_send_batch_takes_several_calls_in_order() {
        let table = RelayTable::new();
        let relay_socket = bind().await;
        let (sender, receivers) = channel(&table, 5).await;
        // Room for 2 messages per sendmmsg: 3 packets x 5 receivers = 15
        // messages, sent in 8 calls, split mid-packet.
        let mut relay = Relay::new(false, 4, 2);
        let packets: Vec<_> = (0..3).map(|seq| rtp(1, seq)).collect();
        for p in &packets {
            sender.send_to(p, relay_socket.local_addr().unwrap()).await.unwrap();
        }
        let counts = relay_once(&mut relay, &relay_socket, &table, 3).await;
        assert_eq!(totals(counts, &table), (3, 15, 0, 0));
        for r in &receivers {
            expect_in_order(r, &packets).await;
        }
    }

    #[tokio::test]
    async fn one_packet_to_more_receivers_than_the_send_batch_reaches_all() {
        let table = RelayTable::new();
        let relay_socket = bind().await;
        let (sender, receivers) = channel(&table, SEND_BATCH + 3).await;
        let mut relay = Relay::new(false, super::batched::RECV_BATCH, SEND_BATCH);
        let packet = rtp(1, 7);
        sender
            .send_to(&packet, relay_socket.local_addr().unwrap())
            .await
            .unwrap();
        let counts = relay_once(&mut relay, &relay_socket, &table, 1).await;
        assert_eq!(totals(counts, &table), (1, SEND_BATCH as u64 + 3, 0, 0));
        for r in &receivers {
            expect_in_order(r, std::slice::from_ref(&packet)).await;
        }
    }

    #[tokio::test]
    async fn dropped_datagrams_in_a_read_do_not_disturb_the_others() {
        let table = RelayTable::new();
        let relay_socket = bind().await;
        let (sender, receivers) = channel(&table, 2).await;
        let mut relay = Relay::new(false, 8, 8);
        let to = relay_socket.local_addr().unwrap();
        sender.send_to(&rtp(1, 0), to).await.unwrap();
        sender.send_to(b"not rtp", to).await.unwrap();
        sender.send_to(&rtp(99, 1), to).await.unwrap();
        sender.send_to(&rtp(1, 2), to).await.unwrap();
        let counts = relay_once(&mut relay, &relay_socket, &table, 4).await;
        assert_eq!(totals(counts, &table), (4, 4, 1, 1));
        for r in &receivers {
            expect_in_order(r, &[rtp(1, 0), rtp(1, 2)]).await;
        }
    }

    #[tokio::test]
    async fn a_read_larger_than_the_batch_is_finished_by_the_next_read() {
        let table = RelayTable::new();
        let relay_socket = bind().await;
        let (sender, receivers) = channel(&table, 1).await;
        let mut relay = Relay::new(false, 2, 8);
        let packets: Vec<_> = (0..5).map(|seq| rtp(1, seq)).collect();
        for p in &packets {
            sender.send_to(p, relay_socket.local_addr().unwrap()).await.unwrap();
        }
        let mut out = 0;
        for expect in [2, 2, 1] {
            out += totals(relay_once(&mut relay, &relay_socket, &table, expect).await, &table).1;
        }
        assert_eq!(out, 5);
        expect_in_order(&receivers[0], &packets).await;
    }

    #[tokio::test]
    async fn sources_are_read_with_their_addresses() {
        let table = RelayTable::new();
        let relay_socket = bind().await;
        let (sender, _receivers) = channel(&table, 1).await;
        let mut relay = Relay::new(false, 4, 4);
        // A new source address for SSRC 1 is latched from the batch.
        let moved = bind().await;
        let moved_addr: SocketAddr = moved.local_addr().unwrap();
        moved
            .send_to(&rtp(1, 0), relay_socket.local_addr().unwrap())
            .await
            .unwrap();
        relay_once(&mut relay, &relay_socket, &table, 1).await;
        let mut dests = Vec::new();
        table.route(Ssrc(2), "127.0.0.1:9".parse().unwrap(), 0, &mut dests);
        assert_eq!(dests, vec![moved_addr]);
        drop(sender);
    }
}
