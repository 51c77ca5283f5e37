//! The forwarding loop: every datagram validated, routed by SSRC and sent
//! unchanged to the other members of its channel.
//!
//! Each media socket gets its own OS thread, which blocks in the receive
//! call itself: no async runtime sits between the socket and the loop, so
//! a packet costs no reactor wakeup, no task poll and no readiness
//! bookkeeping (what made the relay no faster than a naive loop; see
//! `docs/media-relay-performance.md`). The async task that [`run`] is owns
//! the thread: it stops it on shutdown and waits for it.
//!
//! Per packet the loop must allocate nothing and lock nothing: buffers and
//! system-call headers are allocated once and reused, the routes are the
//! table's lock-free copy ([`RoutesReader`]), and counts are kept locally
//! and added to the shared counters when a read leaves the socket empty
//! (or every [`FLUSH_EVERY`] packets under sustained load).
//!
//! On Linux it uses batched system calls: `recvmmsg` (blocking for the
//! first datagram, then taking whatever else is queued, up to
//! [`batched::RECV_BATCH`]) and one `sendmmsg` for every copy of that
//! read, up to [`batched::SEND_BATCH`] messages per call. A run of one
//! sender's equal-sized datagrams goes to each destination as one UDP GSO
//! message, which the kernel builds and routes once and splits on
//! delivery. Messages go out in the order packets arrived, so every
//! receiver still sees its sender's packets in order. Elsewhere the loop is
//! one `recv_from` and one `send_to` per destination.
//!
//! Several SO_REUSEPORT sockets (`MEDIA_UDP_SOCKETS`) give several
//! threads; they share only the table's published routes (read-only) and
//! the counters (added to once per read).

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::rtp::{self, Ssrc};
use crate::stats::{DropReason, LocalCounts, RelayCounters};
use crate::table::{RelayTable, Route, RoutesReader};

#[cfg(target_os = "linux")]
pub use batched::Forwarder;
#[cfg(not(target_os = "linux"))]
pub use single::Forwarder;

/// Largest UDP payload; a smaller buffer would silently truncate.
const MAX_DATAGRAM: usize = 65_535;

/// Under sustained load the socket never runs dry, so counts are also
/// flushed after this many packets.
const FLUSH_EVERY: u64 = 256;

/// How long a receive blocks before the loop looks at its stop flag again
/// (shutdown also wakes it at once; this is the fallback).
const RECEIVE_TIMEOUT: Duration = Duration::from_millis(200);

/// Relays datagrams arriving on `socket` on a thread of its own until
/// `shutdown`; returns once that thread has stopped.
pub async fn run(
    socket: tokio::net::UdpSocket,
    table: Arc<RelayTable>,
    counters: Arc<RelayCounters>,
    shutdown: CancellationToken,
) {
    if let Err(e) = run_thread(socket, table, counters, shutdown).await {
        tracing::error!(error = %e, "media forwarding thread failed to start; forwarding stopped");
    }
}

async fn run_thread(
    socket: tokio::net::UdpSocket,
    table: Arc<RelayTable>,
    counters: Arc<RelayCounters>,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let socket = socket.into_std()?;
    socket.set_nonblocking(false)?;
    socket.set_read_timeout(Some(RECEIVE_TIMEOUT))?;
    let waker = socket.try_clone()?;
    let stop = Arc::new(AtomicBool::new(false));
    let (done_tx, done_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = {
        let stop = Arc::clone(&stop);
        std::thread::Builder::new()
            .name("media-forward".into())
            .spawn(move || {
                // Built here: the batch headers hold raw pointers (not `Send`).
                match Forwarder::new(socket, table, counters) {
                    Ok(mut forwarder) => forwarder.run(&stop),
                    Err(e) => tracing::error!(error = %e, "media forwarder failed to start"),
                }
                drop(done_tx);
            })?
    };
    let mut done_rx = done_rx;
    tokio::select! {
        () = shutdown.cancelled() => {}
        _ = &mut done_rx => {}
    }
    stop.store(true, Ordering::Relaxed);
    wake(&waker);
    // Resolves when the thread drops its sender, i.e. has finished.
    let _ = done_rx.await;
    if thread.join().is_err() {
        tracing::error!("media forwarding thread panicked");
    }
    Ok(())
}

/// Wakes a thread blocked receiving on `socket`: shutting down its read
/// side wakes every waiter even on an unconnected UDP socket (the call
/// reports "not connected" but does it), and later reads return at once.
fn wake(socket: &std::net::UdpSocket) {
    #[cfg(unix)]
    {
        let _ = rustix::net::shutdown(socket, rustix::net::Shutdown::Read);
    }
    #[cfg(not(unix))]
    let _ = socket;
}

/// What a receive error means for the loop.
fn receive_failed(e: &io::Error) {
    match e.kind() {
        // The read timeout: nothing arrived.
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted => {}
        // A per-datagram error (such as an ICMP error surfacing on some
        // platforms) must not stop the relay, nor spin if it persists.
        _ => {
            tracing::debug!(error = %e, "media receive failed");
            std::thread::sleep(Duration::from_millis(1));
        }
    }
}

/// Validates and routes one datagram: `dests` is cleared and filled with
/// where it goes (nothing when it is dropped, which is counted here).
/// Returns its SSRC when it is forwarded.
fn route_one(
    reader: &mut RoutesReader,
    table: &RelayTable,
    packet: &[u8],
    from: SocketAddr,
    now_ms: u64,
    counts: &mut LocalCounts,
    dests: &mut Vec<SocketAddr>,
) -> Option<Ssrc> {
    dests.clear();
    counts.received(packet.len());
    let ssrc = match rtp::parse_ssrc(packet) {
        Ok(ssrc) => ssrc,
        Err(e) => {
            tracing::trace!(%from, error = %e, "malformed rtp dropped");
            counts.dropped(DropReason::Malformed);
            return None;
        }
    };
    match reader.route(table, ssrc, from, now_ms, |dest| dests.push(*dest)) {
        Route::Forward => return Some(ssrc),
        Route::UnknownSsrc => counts.dropped(DropReason::UnknownSsrc),
        Route::NoFloor => counts.dropped(DropReason::NoFloor),
    }
    None
}

/// `recvmmsg` in, `sendmmsg` out.
///
/// `nix` provides `recvmmsg`; `sendmmsg` comes from `rustix`, which returns
/// the number of messages sent (nix only yields it by iterating results
/// that read address slots `sendmmsg` never initialised).
#[cfg(target_os = "linux")]
mod batched {
    use std::io::{self, IoSlice, IoSliceMut};
    use std::net::{SocketAddr, UdpSocket};
    use std::os::fd::AsRawFd;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use std::ops::Range;

    use nix::sys::socket::sockopt::UdpGsoSegment;
    use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg, setsockopt};
    use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};

    use super::{FLUSH_EVERY, MAX_DATAGRAM, receive_failed, route_one};
    use crate::rtp::{self, Ssrc};
    use crate::stats::{DropReason, LocalCounts, RelayCounters};
    use crate::table::{RelayTable, RoutesReader};

    /// Datagrams read per `recvmmsg`.
    pub const RECV_BATCH: usize = 32;
    /// Distance between receive slots: room for the largest datagram,
    /// rounded to 64 KiB, plus three cache lines (a small RTP packet). At a
    /// stride of 64 KiB every slot would start in the same L1 and L2 cache
    /// sets, so the small packets of a full read (written by the kernel,
    /// read for the SSRC, read again by the send) would evict each other.
    const SLOT_STRIDE: usize = (1 << 16) + 3 * 64;
    const _: () = assert!(SLOT_STRIDE >= MAX_DATAGRAM);
    /// GSO limits: segments per message (the kernel's UDP_MAX_SEGMENTS is
    /// at least 64), bytes per message (under the 64 KiB datagram), and a
    /// segment size that fits any route's MTU we expect (larger datagrams
    /// go one by one).
    const GSO_MAX_SEGMENTS: usize = 64;
    const GSO_MAX_BYTES: usize = 65_000;
    const GSO_MAX_SEGMENT: usize = 1_200;
    /// Messages written per `sendmmsg` (the kernel's UIO_MAXIOV): every
    /// copy of every packet of a full read at up to 32 destinations goes
    /// out in one call; a larger fan-out takes several.
    pub const SEND_BATCH: usize = 1024;

    /// One socket's forwarding loop and everything it reuses.
    pub struct Forwarder {
        socket: UdpSocket,
        table: Arc<RelayTable>,
        counters: Arc<RelayCounters>,
        routes: RoutesReader,
        recv: RecvBatch,
        send: SendBatch,
        /// One packet's destinations.
        dests: Vec<SocketAddr>,
        counts: LocalCounts,
    }

    impl Forwarder {
        /// A loop over `socket` (blocking, so reads wait for datagrams).
        pub fn new(socket: UdpSocket, table: Arc<RelayTable>, counters: Arc<RelayCounters>) -> io::Result<Self> {
            Self::with_batches(socket, table, counters, RECV_BATCH, SEND_BATCH)
        }

        /// A loop reading up to `recv_batch` and sending up to
        /// `send_batch` messages per call.
        pub fn with_batches(
            socket: UdpSocket,
            table: Arc<RelayTable>,
            counters: Arc<RelayCounters>,
            recv_batch: usize,
            send_batch: usize,
        ) -> io::Result<Self> {
            let routes = table.reader();
            Ok(Self {
                socket,
                table,
                counters,
                routes,
                recv: RecvBatch::new(recv_batch),
                send: SendBatch::new(send_batch),
                dests: Vec::with_capacity(64),
                counts: LocalCounts::default(),
            })
        }

        /// Relays until `stop` is set.
        pub(crate) fn run(&mut self, stop: &AtomicBool) {
            while !stop.load(Ordering::Relaxed) {
                match self.recv.recv(&self.socket) {
                    // Woken for shutdown: what was read is not relayed.
                    Ok(_) if stop.load(Ordering::Relaxed) => break,
                    Ok(read) => self.relay_read(read),
                    Err(e) => {
                        self.counts.flush(&self.counters);
                        receive_failed(&e);
                    }
                }
            }
            self.counts.flush(&self.counters);
        }

        /// Waits for datagrams (up to the socket's read timeout), relays
        /// them and returns how many were read.
        pub fn relay_once(&mut self) -> io::Result<usize> {
            let read = self.recv.recv(&self.socket)?;
            self.relay_read(read);
            Ok(read)
        }

        /// Adds the counts kept since the last flush to the shared counters.
        pub fn flush_counts(&mut self) {
            self.counts.flush(&self.counters);
        }

        /// Routes and sends the `read` datagrams of the last receive.
        fn relay_read(&mut self, read: usize) {
            let Self {
                socket,
                table,
                counters,
                routes,
                recv,
                send,
                dests,
                counts,
            } = self;
            table.refresh(routes);
            let now_ms = table.now_ms();
            let mut slot = 0;
            while slot < read {
                let (packet, from) = recv.datagram(slot);
                let Some(from) = from else {
                    counts.received(packet.len());
                    counts.dropped(DropReason::Malformed);
                    slot += 1;
                    continue;
                };
                let end = match route_one(routes, table, packet, from, now_ms, counts, dests) {
                    Some(ssrc) if send.gso => recv.run(slot, read, ssrc, from, counts),
                    _ => slot + 1,
                };
                for dest in dests.iter() {
                    send.push(socket, recv, counts, *dest, slot..end);
                }
                slot = end;
            }
            send.flush(socket, recv, counts);
            // A short read left the socket empty: a good moment to publish.
            if read < recv.capacity || counts.pending_packets() >= FLUSH_EVERY {
                counts.flush(counters);
            }
        }
    }

    /// Buffers and headers for `recvmmsg`, and what the last call read.
    struct RecvBatch {
        /// `capacity` slots of `MAX_DATAGRAM` bytes, `SLOT_STRIDE` apart.
        buf: Vec<u8>,
        capacity: usize,
        /// One family per socket, so the address lengths the kernel leaves
        /// in these headers always fit the next read.
        headers: MultiHeaders<SockaddrStorage>,
        /// (length, source) of each datagram read, by slot.
        meta: Vec<(usize, Option<SocketAddr>)>,
    }

    impl RecvBatch {
        fn new(capacity: usize) -> Self {
            let capacity = capacity.clamp(1, RECV_BATCH);
            Self {
                buf: vec![0u8; capacity * SLOT_STRIDE],
                capacity,
                headers: MultiHeaders::preallocate(capacity, None),
                meta: Vec::with_capacity(capacity),
            }
        }

        /// Blocks until a datagram is queued (or the read timeout passes),
        /// then reads it and whatever else is queued, up to the capacity.
        fn recv(&mut self, socket: &UdpSocket) -> io::Result<usize> {
            let Self {
                buf,
                capacity,
                headers,
                meta,
            } = self;
            meta.clear();
            let mut slots = buf.chunks_exact_mut(SLOT_STRIDE);
            let mut iovs: [[IoSliceMut<'_>; 1]; RECV_BATCH] = std::array::from_fn(|_| {
                let slot = slots.next().unwrap_or_default();
                let len = slot.len().min(MAX_DATAGRAM);
                [IoSliceMut::new(&mut slot[..len])]
            });
            let read = recvmmsg(
                socket.as_raw_fd(),
                headers,
                iovs[..*capacity].iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            )?;
            meta.extend(read.map(|msg| (msg.bytes, msg.address.and_then(|a| to_std(&a)))));
            Ok(meta.len())
        }

        /// The datagram read into `slot`, and its source.
        fn datagram(&self, slot: usize) -> (&[u8], Option<SocketAddr>) {
            match self.meta.get(slot) {
                Some(&(len, from)) => (&self.buf[slot * SLOT_STRIDE..][..len], from),
                None => (&[], None),
            }
        }

        fn packet(&self, slot: usize) -> &[u8] {
            self.datagram(slot).0
        }

        /// The end of the run of datagrams from `first` that can travel as
        /// one GSO message: the same sender (SSRC and address, so the same
        /// route), valid RTP, all of the first one's size but the last,
        /// which may be shorter. Counts the datagrams it adds as received.
        fn run(&self, first: usize, read: usize, ssrc: Ssrc, from: SocketAddr, counts: &mut LocalCounts) -> usize {
            let segment = self.packet(first).len();
            if segment > GSO_MAX_SEGMENT {
                return first + 1;
            }
            let longest = (GSO_MAX_BYTES / segment).min(GSO_MAX_SEGMENTS);
            let mut end = first + 1;
            while end < read && end - first < longest {
                let (next, next_from) = self.datagram(end);
                if next_from != Some(from) || next.len() > segment || rtp::parse_ssrc(next) != Ok(ssrc) {
                    break;
                }
                counts.received(next.len());
                end += 1;
                if next.len() < segment {
                    break;
                }
            }
            end
        }
    }

    fn to_std(addr: &SockaddrStorage) -> Option<SocketAddr> {
        if let Some(v4) = addr.as_sockaddr_in() {
            Some(SocketAddr::V4((*v4).into()))
        } else {
            addr.as_sockaddr_in6().map(|v6| SocketAddr::V6((*v6).into()))
        }
    }

    /// One message: the datagrams of receive slots `slots` to one
    /// destination; several only as UDP GSO segments of the first one's
    /// size (the kernel splits them back into datagrams).
    struct Message {
        dest: SocketAddr,
        slots: Range<usize>,
    }

    /// Messages waiting for one `sendmmsg`. The socket's UDP_SEGMENT size
    /// applies to every message of a call: a GSO message needs exactly its
    /// segment size, a single datagram needs a size it fits in (or none),
    /// so a message that fits neither starts a new call.
    struct SendBatch {
        capacity: usize,
        messages: Vec<Message>,
        /// `messages`' destinations as `sendmmsg` takes them.
        addrs: Vec<SocketAddrAny>,
        /// Empty, one per message: rustix wants each message's own.
        controls: Vec<SendAncillaryBuffer<'static, 'static, 'static>>,
        /// The message headers' storage, empty between calls (see
        /// [`recycle`]).
        headers: Vec<MMsgHdr<'static>>,
        /// Whether to send runs as GSO messages (off after the kernel
        /// refused it).
        gso: bool,
        /// The socket's UDP_SEGMENT size now (0: none).
        socket_segment: usize,
        /// The segment size the pending GSO messages need (0: none yet),
        /// and the longest pending single datagram.
        call_segment: usize,
        call_longest: usize,
    }

    impl SendBatch {
        fn new(capacity: usize) -> Self {
            let capacity = capacity.clamp(1, SEND_BATCH);
            Self {
                capacity,
                messages: Vec::with_capacity(capacity),
                addrs: Vec::with_capacity(capacity),
                controls: (0..capacity).map(|_| SendAncillaryBuffer::default()).collect(),
                headers: Vec::with_capacity(capacity),
                gso: true,
                socket_segment: 0,
                call_segment: 0,
                call_longest: 0,
            }
        }

        /// Queues the datagrams of `slots` to `dest`, sending what is
        /// pending first when this message cannot share its call.
        fn push(
            &mut self,
            socket: &UdpSocket,
            recv: &RecvBatch,
            counts: &mut LocalCounts,
            dest: SocketAddr,
            slots: Range<usize>,
        ) {
            let size = recv.packet(slots.start).len();
            let segmented = slots.len() > 1;
            let fits = if segmented {
                self.call_segment == size || (self.call_segment == 0 && self.call_longest <= size)
            } else {
                self.call_segment == 0 || size <= self.call_segment
            };
            if !fits || self.messages.len() >= self.capacity {
                self.flush(socket, recv, counts);
            }
            if segmented {
                self.call_segment = size;
            } else {
                self.call_longest = self.call_longest.max(size);
            }
            self.messages.push(Message { dest, slots });
            self.addrs.push(SocketAddrAny::from(dest));
        }

        /// Sends every pending message (the socket blocks while its buffer
        /// is full); a message the kernel refuses is counted as failed
        /// sends and skipped, like a failed `send_to`.
        fn flush(&mut self, socket: &UdpSocket, recv: &RecvBatch, counts: &mut LocalCounts) {
            if !self.messages.is_empty() && !self.set_segment(socket) {
                // No GSO after all: every datagram on its own.
                for m in &self.messages {
                    for slot in m.slots.clone() {
                        send_one(socket, recv.packet(slot), m.dest, counts);
                    }
                }
                self.messages.clear();
            }
            let mut start = 0;
            while start < self.messages.len() {
                match self.send_from(socket, recv, start) {
                    Ok(sent) if sent > 0 => {
                        for m in &self.messages[start..start + sent] {
                            for slot in m.slots.clone() {
                                counts.sent(recv.packet(slot).len());
                            }
                        }
                        start += sent;
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    failed => {
                        let m = &self.messages[start];
                        if m.slots.len() > 1 {
                            // The route refused GSO (an MTU below the
                            // segment, say): stop using it, resend plainly.
                            tracing::warn!(dest = %m.dest, result = ?failed, "udp gso refused; sending datagrams one by one");
                            self.gso = false;
                            let _ = setsockopt(socket, UdpGsoSegment, &0);
                            self.socket_segment = 0;
                            for slot in m.slots.clone() {
                                send_one(socket, recv.packet(slot), m.dest, counts);
                            }
                        } else {
                            if let Err(e) = failed {
                                tracing::debug!(dest = %m.dest, error = %e, "media send failed");
                            }
                            counts.send_failed();
                        }
                        start += 1;
                    }
                }
            }
            self.messages.clear();
            self.addrs.clear();
            self.call_segment = 0;
            self.call_longest = 0;
        }

        /// Gives the socket the UDP_SEGMENT size the pending call needs;
        /// false when the kernel has no GSO (then it is not tried again).
        fn set_segment(&mut self, socket: &UdpSocket) -> bool {
            let want = if self.call_segment != 0 {
                self.call_segment
            } else if self.socket_segment != 0 && self.call_longest > self.socket_segment {
                0
            } else {
                // Single datagrams that all fit the current size.
                return true;
            };
            if want == self.socket_segment {
                return true;
            }
            let value = i32::try_from(want).unwrap_or(0);
            match setsockopt(socket, UdpGsoSegment, &value) {
                Ok(()) => {
                    self.socket_segment = want;
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "udp gso unavailable; sending datagrams one by one");
                    self.gso = false;
                    self.socket_segment = 0;
                    want == 0
                }
            }
        }

        /// One `sendmmsg` of the pending messages from `start`.
        fn send_from(&mut self, socket: &UdpSocket, recv: &RecvBatch, start: usize) -> io::Result<usize> {
            let iovs: [IoSlice<'_>; RECV_BATCH] = std::array::from_fn(|slot| IoSlice::new(recv.packet(slot)));
            if start + 1 == self.messages.len() && self.messages[start].slots.len() == 1 {
                // One datagram (N=1 without a backlog): plain sendto is
                // cheaper than building a sendmmsg.
                let m = &self.messages[start];
                return socket.send_to(&iovs[m.slots.start], m.dest).map(|_| 1);
            }
            let mut headers = recycle(std::mem::take(&mut self.headers));
            headers.extend(
                self.messages[start..]
                    .iter()
                    .zip(&self.addrs[start..])
                    .zip(self.controls.iter_mut())
                    .map(|((m, addr), control)| MMsgHdr::new_with_addr(addr, &iovs[m.slots.clone()], control)),
            );
            let sent = sendmmsg(socket, &mut headers, SendFlags::empty());
            self.headers = recycle(headers);
            Ok(sent?)
        }
    }

    /// One datagram with `send_to`, counted.
    fn send_one(socket: &UdpSocket, packet: &[u8], dest: SocketAddr, counts: &mut LocalCounts) {
        match socket.send_to(packet, dest) {
            Ok(_) => counts.sent(packet.len()),
            Err(e) => {
                tracing::debug!(%dest, error = %e, "media send failed");
                counts.send_failed();
            }
        }
    }

    /// Empties `msgs` and hands back its allocation with another lifetime:
    /// the headers borrow this call's buffers, the storage outlives them.
    /// (An in-place collect of an empty vector keeps its allocation.)
    // `filter` could not change the element's lifetime, which is the point.
    #[allow(clippy::unnecessary_filter_map)]
    fn recycle<'a>(mut msgs: Vec<MMsgHdr<'_>>) -> Vec<MMsgHdr<'a>> {
        msgs.clear();
        msgs.into_iter().filter_map(|_| None).collect()
    }
}

/// One `recv_from` and one `send_to` per destination, where there is no
/// `recvmmsg`.
#[cfg(not(target_os = "linux"))]
mod single {
    use std::io;
    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::{MAX_DATAGRAM, receive_failed, route_one};
    use crate::stats::{LocalCounts, RelayCounters};
    use crate::table::{RelayTable, RoutesReader};

    pub struct Forwarder {
        socket: UdpSocket,
        table: Arc<RelayTable>,
        counters: Arc<RelayCounters>,
        routes: RoutesReader,
        buf: Vec<u8>,
        dests: Vec<SocketAddr>,
        counts: LocalCounts,
    }

    impl Forwarder {
        pub fn new(socket: UdpSocket, table: Arc<RelayTable>, counters: Arc<RelayCounters>) -> io::Result<Self> {
            let routes = table.reader();
            Ok(Self {
                socket,
                table,
                counters,
                routes,
                buf: vec![0u8; MAX_DATAGRAM],
                dests: Vec::with_capacity(64),
                counts: LocalCounts::default(),
            })
        }

        pub(crate) fn run(&mut self, stop: &AtomicBool) {
            while !stop.load(Ordering::Relaxed) {
                if let Err(e) = self.relay_once() {
                    self.counts.flush(&self.counters);
                    receive_failed(&e);
                }
            }
            self.counts.flush(&self.counters);
        }

        pub fn relay_once(&mut self) -> io::Result<usize> {
            let (len, from) = self.socket.recv_from(&mut self.buf)?;
            let Self {
                socket,
                table,
                counters,
                routes,
                buf,
                dests,
                counts,
            } = self;
            table.refresh(routes);
            route_one(routes, table, &buf[..len], from, table.now_ms(), counts, dests);
            for dest in dests.iter() {
                match socket.send_to(&buf[..len], dest) {
                    Ok(_) => counts.sent(len),
                    Err(e) => {
                        tracing::debug!(%dest, error = %e, "media send failed");
                        counts.send_failed();
                    }
                }
            }
            counts.flush(counters);
            Ok(1)
        }
    }
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::net::{SocketAddr, UdpSocket};
    use std::sync::Arc;
    use std::time::Duration;

    use super::Forwarder;
    use super::batched::{RECV_BATCH, SEND_BATCH};
    use crate::rtp::Ssrc;
    use crate::stats::RelayCounters;
    use crate::table::RelayTable;

    fn rtp(ssrc: u32, seq: u16) -> Vec<u8> {
        let mut p = vec![0x80, 96];
        p.extend_from_slice(&seq.to_be_bytes());
        p.extend_from_slice(&[0; 4]);
        p.extend_from_slice(&ssrc.to_be_bytes());
        p.extend_from_slice(&[seq as u8; 20]);
        p
    }

    fn bind() -> UdpSocket {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        socket
    }

    /// A relay socket and its forwarder over `table`.
    fn forwarder(
        table: &Arc<RelayTable>,
        recv_batch: usize,
        send_batch: usize,
    ) -> (SocketAddr, Forwarder, Arc<RelayCounters>) {
        let socket = bind();
        let addr = socket.local_addr().unwrap();
        let counters = Arc::new(RelayCounters::default());
        let f = Forwarder::with_batches(socket, table.clone(), counters.clone(), recv_batch, send_batch).unwrap();
        (addr, f, counters)
    }

    /// Sender SSRC 1 and `receivers` members in channel "c", each latched
    /// at its own socket.
    fn channel(table: &RelayTable, receivers: usize) -> (UdpSocket, Vec<UdpSocket>) {
        let mut dests = Vec::new();
        let sender = bind();
        table.add_peer("c", Ssrc(1), "u1", 0, 60_000).unwrap();
        table.route(Ssrc(1), sender.local_addr().unwrap(), 0, &mut dests);
        let mut sockets = Vec::new();
        for i in 0..receivers {
            let ssrc = Ssrc(2 + i as u32);
            let socket = bind();
            table.add_peer("c", ssrc, &format!("u{}", ssrc.0), 0, 60_000).unwrap();
            table.route(ssrc, socket.local_addr().unwrap(), 0, &mut dests);
            sockets.push(socket);
        }
        (sender, sockets)
    }

    /// Relays one read, which must take exactly the `expect` queued datagrams.
    fn relay_once(forwarder: &mut Forwarder, expect: usize) {
        // Loopback delivers synchronously, but give stragglers a moment.
        std::thread::sleep(Duration::from_millis(20));
        assert_eq!(
            forwarder.relay_once().unwrap(),
            expect,
            "one read takes the whole queue"
        );
    }

    fn expect_in_order(receiver: &UdpSocket, packets: &[Vec<u8>]) {
        let mut buf = [0u8; 2048];
        for (i, want) in packets.iter().enumerate() {
            let (len, _) = receiver.recv_from(&mut buf).unwrap();
            assert_eq!(&buf[..len], want.as_slice(), "packet {i}");
        }
        receiver.set_nonblocking(true).unwrap();
        assert!(receiver.recv_from(&mut buf).is_err(), "nothing more");
    }

    fn totals(counters: &RelayCounters, table: &RelayTable) -> (u64, u64, u64, u64) {
        let s = counters.snapshot(table);
        (s.packets_in, s.packets_out, s.dropped_malformed, s.dropped_unknown_ssrc)
    }

    #[test]
    fn a_read_whose_fan_out_exceeds_the_send_batch_takes_several_calls_in_order() {
        let table = Arc::new(RelayTable::new());
        // Room for 2 messages per sendmmsg: 3 packets x 5 receivers, as 5
        // GSO messages of 3 segments, sent in 3 calls.
        let (relay, mut forwarder, counters) = forwarder(&table, 4, 2);
        let (sender, receivers) = channel(&table, 5);
        let packets: Vec<_> = (0..3).map(|seq| rtp(1, seq)).collect();
        for p in &packets {
            sender.send_to(p, relay).unwrap();
        }
        relay_once(&mut forwarder, 3);
        assert_eq!(totals(&counters, &table), (3, 15, 0, 0));
        for r in &receivers {
            expect_in_order(r, &packets);
        }
    }

    #[test]
    fn one_packet_to_more_receivers_than_the_send_batch_reaches_all() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, counters) = forwarder(&table, RECV_BATCH, 8);
        let (sender, receivers) = channel(&table, 8 + 3);
        let packet = rtp(1, 7);
        sender.send_to(&packet, relay).unwrap();
        relay_once(&mut forwarder, 1);
        assert_eq!(totals(&counters, &table), (1, 8 + 3, 0, 0));
        for r in &receivers {
            expect_in_order(r, std::slice::from_ref(&packet));
        }
    }

    #[test]
    fn a_full_read_to_many_receivers_goes_out_whole() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, counters) = forwarder(&table, RECV_BATCH, SEND_BATCH);
        let (sender, receivers) = channel(&table, 40);
        let packets: Vec<_> = (0..RECV_BATCH as u16).map(|seq| rtp(1, seq)).collect();
        for p in &packets {
            sender.send_to(p, relay).unwrap();
        }
        relay_once(&mut forwarder, RECV_BATCH);
        forwarder.flush_counts();
        assert_eq!(
            totals(&counters, &table),
            (RECV_BATCH as u64, 40 * RECV_BATCH as u64, 0, 0)
        );
        for r in &receivers {
            expect_in_order(r, &packets);
        }
    }

    #[test]
    fn a_read_of_mixed_sizes_and_senders_arrives_whole_and_in_order() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, counters) = forwarder(&table, RECV_BATCH, SEND_BATCH);
        let (sender, receivers) = channel(&table, 3);
        let sized = |seq: u16, len: usize| {
            let mut p = rtp(1, seq);
            p.resize(len, seq as u8);
            p
        };
        // Runs end at a longer datagram, after a shorter one, and at
        // another sender (receiver 0 talks back in the middle).
        let lens = [172, 172, 172, 100, 172, 300, 300, 12, 172];
        let mut packets: Vec<Vec<u8>> = Vec::new();
        for (seq, len) in lens.into_iter().enumerate() {
            let p = sized(seq as u16, len);
            sender.send_to(&p, relay).unwrap();
            packets.push(p);
            if seq == 4 {
                receivers[0].send_to(&rtp(2, 99), relay).unwrap();
            }
        }
        relay_once(&mut forwarder, lens.len() + 1);
        assert_eq!(totals(&counters, &table), (10, 3 * 9 + 3, 0, 0));
        let mut buf = [0u8; 2048];
        // The sender hears receiver 0; receiver 1 hears both, in order.
        let (len, _) = sender.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..len], rtp(2, 99).as_slice());
        let mut to_1 = packets.clone();
        to_1.insert(5, rtp(2, 99));
        expect_in_order(&receivers[0], &packets);
        expect_in_order(&receivers[1], &to_1);
        expect_in_order(&receivers[2], &to_1);
    }

    #[test]
    fn dropped_datagrams_in_a_read_do_not_disturb_the_others() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, counters) = forwarder(&table, 8, 8);
        let (sender, receivers) = channel(&table, 2);
        sender.send_to(&rtp(1, 0), relay).unwrap();
        sender.send_to(b"not rtp", relay).unwrap();
        sender.send_to(&rtp(99, 1), relay).unwrap();
        sender.send_to(&rtp(1, 2), relay).unwrap();
        relay_once(&mut forwarder, 4);
        assert_eq!(totals(&counters, &table), (4, 4, 1, 1));
        for r in &receivers {
            expect_in_order(r, &[rtp(1, 0), rtp(1, 2)]);
        }
    }

    #[test]
    fn a_read_larger_than_the_batch_is_finished_by_the_next_read() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, counters) = forwarder(&table, 2, 8);
        let (sender, receivers) = channel(&table, 1);
        let packets: Vec<_> = (0..5).map(|seq| rtp(1, seq)).collect();
        for p in &packets {
            sender.send_to(p, relay).unwrap();
        }
        for expect in [2, 2, 1] {
            relay_once(&mut forwarder, expect);
        }
        assert_eq!(totals(&counters, &table).1, 5);
        expect_in_order(&receivers[0], &packets);
    }

    #[test]
    fn sources_are_read_with_their_addresses() {
        let table = Arc::new(RelayTable::new());
        let (relay, mut forwarder, _counters) = forwarder(&table, 4, 4);
        let (_sender, _receivers) = channel(&table, 1);
        // A new source address for SSRC 1 is latched from the batch.
        let moved = bind();
        moved.send_to(&rtp(1, 0), relay).unwrap();
        relay_once(&mut forwarder, 1);
        let mut dests = Vec::new();
        table.route(Ssrc(2), "127.0.0.1:9".parse().unwrap(), 0, &mut dests);
        assert_eq!(dests, vec![moved.local_addr().unwrap()]);
    }
}
