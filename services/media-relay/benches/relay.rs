//! Relay throughput and added latency against a plain UDP forwarder.
//!
//! The system under test (the relay, or a "recv one, send one" UDP
//! forwarder as the baseline) runs on its own thread and single-threaded
//! runtime; the load generator (one sender, N receivers) runs on another,
//! so each side has one of the machine's cores.
//!
//! - throughput: the sender keeps at most `WINDOW` packets ahead of the
//!   slowest receiver (so no socket buffer overflows) for `RUN`; reported
//!   as packets out per second summed over receivers;
//! - latency: one packet in flight, stamped by the sender, timed at the
//!   last receiver in fan-out order (the worst placed one);
//! - cpu: on-CPU time of the forwarder's thread during the throughput run
//!   (from /proc schedstat, Linux) per packet out: what each packet costs
//!   the relay, which the shared machine's noise disturbs far less than
//!   the rate.
//!
//! Run: `cargo bench -p relaymesh-media-relay --bench relay`
//! (`BENCH_MEDIA_UDP_SOCKETS=2` to bind two SO_REUSEPORT sockets).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use relaymesh_media_relay::MediaRelayConfig;
use relaymesh_proto::media_relay::v1::media_relay_service_client::MediaRelayServiceClient;
use relaymesh_proto::media_relay::v1::{AddPeerRequest, GetStatsRequest};
use relaymesh_state::SharedState;
use tokio::net::{TcpListener, UdpSocket};
use tokio_util::sync::CancellationToken;

const RUN: Duration = Duration::from_secs(3);
const WINDOW: u64 = 64;
const LATENCY_SAMPLES: usize = 3_000;
/// A 20 ms G.711 frame.
const PAYLOAD: usize = 160;
const SENDER_SSRC: u32 = 1;

fn main() {
    let clock = Instant::now();
    let loadgen = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();

    let receiver = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    receiver.set_nonblocking(true).unwrap();
    let (echo_addr, echo_cpu, echo_stop) = start_echo(receiver.local_addr().unwrap());
    let baseline = loadgen.block_on(async {
        let receiver = UdpSocket::from_std(receiver).unwrap();
        measure(echo_addr, SENDER_SSRC, vec![receiver], &echo_cpu, clock).await
    });
    echo_stop.cancel();
    print_row("udp forwarder (baseline)", 1, &baseline, &baseline);

    let (grpc_addr, relay_cpu, relay_stop) = start_relay();
    for n in [1usize, 4, 16] {
        let result = loadgen.block_on(async {
            let (target, sender_ssrc, receivers) = relay_channel(grpc_addr, n).await;
            measure(target, sender_ssrc, receivers, &relay_cpu, clock).await
        });
        print_row("media relay", n, &result, &baseline);
    }
    relay_stop.cancel();
}

struct Figures {
    packets_out_per_s: f64,
    lost: u64,
    /// Forwarder thread CPU per packet out; NaN where unknown.
    cpu_ns_per_packet_out: f64,
    median: Duration,
    p99: Duration,
}

fn print_row(what: &str, n: usize, f: &Figures, base: &Figures) {
    println!(
        "{what:<26} N={n:<2}  {:>9.0} pkt out/s ({:>4.2}x)  lost {:<4}  cpu {:>6.0} ns/pkt out ({:>4.2}x)  latency median {:>6.1} us ({:>4.2}x)  p99 {:>6.1} us ({:>4.2}x)",
        f.packets_out_per_s,
        f.packets_out_per_s / base.packets_out_per_s,
        f.lost,
        f.cpu_ns_per_packet_out,
        f.cpu_ns_per_packet_out / base.cpu_ns_per_packet_out,
        micros(f.median),
        micros(f.median) / micros(base.median),
        micros(f.p99),
        micros(f.p99) / micros(base.p99),
    );
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The calling thread's schedstat file, whose first field is its
/// nanoseconds on CPU (Linux); `None` elsewhere.
fn thread_cpu_file() -> Option<String> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(format!("/proc/{}/schedstat", link.display()))
}

/// Nanoseconds on CPU of the thread whose schedstat file is `file`.
fn cpu_ns(file: &Option<String>) -> Option<u64> {
    let text = std::fs::read_to_string(file.as_ref()?).ok()?;
    text.split_whitespace().next()?.parse().ok()
}

/// A UDP forwarder on its own thread: receive one datagram, send it to
/// `dest`, repeat. What any relay costs at minimum.
fn start_echo(dest: SocketAddr) -> (SocketAddr, Option<String>, CancellationToken) {
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            tx.send((socket.local_addr().unwrap(), thread_cpu_file())).unwrap();
            let mut buf = vec![0u8; 2048];
            loop {
                tokio::select! {
                    r = socket.recv_from(&mut buf) => {
                        let (len, _) = r.unwrap();
                        socket.send_to(&buf[..len], dest).await.unwrap();
                    }
                    () = cancel.cancelled() => break,
                }
            }
        });
    });
    let (addr, cpu) = rx.recv().unwrap();
    (addr, cpu, stop)
}

/// The relay, served on its own thread; returns its gRPC address and
/// thread CPU file.
fn start_relay() -> (SocketAddr, Option<String>, CancellationToken) {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            tx.send((listener.local_addr().unwrap(), thread_cpu_file())).unwrap();
            let config = MediaRelayConfig {
                media_udp_host: "127.0.0.1".into(),
                media_udp_port: 0,
                media_public_host: None,
                media_public_port: None,
                media_public_addr_dir: None,
                media_public_addr_key: None,
                media_drain_timeout_ms: 0,
                media_relay_id: Some("bench".into()),
                media_grpc_advertise: None,
                media_peer_idle_timeout_ms: 60_000,
                // SO_REUSEPORT sockets; one sender is one flow, so only one
                // of them carries the load here.
                media_udp_sockets: std::env::var("BENCH_MEDIA_UDP_SOCKETS")
                    .ok()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(1),
                media_udp_recv_buffer: relaymesh_media_relay::DEFAULT_MEDIA_UDP_RECV_BUFFER,
            };
            relaymesh_media_relay::serve(listener, config, SharedState::memory(), shutdown)
                .await
                .unwrap();
        });
    });
    let (addr, cpu) = rx.recv().unwrap();
    (addr, cpu, stop)
}

/// A channel of one sender and `n` receivers on the relay, every receiver
/// latched; returns where the sender sends, its SSRC, and the receivers.
async fn relay_channel(grpc_addr: SocketAddr, n: usize) -> (SocketAddr, u32, Vec<UdpSocket>) {
    let channel = relaymesh_rpc::connect_lazy(&format!("http://{grpc_addr}"), Duration::from_secs(5)).unwrap();
    let client = MediaRelayServiceClient::new(channel);
    let channel_id = format!("bench-{n}");
    let add = |ssrc: u32| {
        let req = AddPeerRequest {
            channel_id: channel_id.clone(),
            ssrc: ssrc + 1000 * n as u32,
            user_id: format!("user-{ssrc}"),
        };
        let mut client = client.clone();
        async move { client.add_peer(req).await.unwrap().into_inner().media_addr }
    };
    let media_addr: SocketAddr = add(SENDER_SSRC).await.parse().unwrap();
    let packets_in = |mut client: MediaRelayServiceClient<_>| async move {
        client
            .get_stats(GetStatsRequest {})
            .await
            .unwrap()
            .into_inner()
            .packets_in
    };
    let before = packets_in(client.clone()).await;
    let mut receivers = Vec::new();
    for i in 0..n {
        let ssrc = 2 + i as u32;
        add(ssrc).await;
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket
            .send_to(&rtp_header(ssrc + 1000 * n as u32), media_addr)
            .await
            .unwrap();
        receivers.push(socket);
    }
    // Wait until the relay has latched every receiver.
    let deadline = Instant::now() + Duration::from_secs(5);
    while packets_in(client.clone()).await < before + n as u64 {
        assert!(Instant::now() < deadline, "relay never saw the keepalives");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Drain keepalives forwarded among receivers.
    for r in &receivers {
        let mut buf = [0u8; 64];
        while r.try_recv_from(&mut buf).is_ok() {}
    }
    (media_addr, SENDER_SSRC + 1000 * n as u32, receivers)
}

fn rtp_header(ssrc: u32) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 96;
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

/// A packet stamped with its sequence number and send time.
fn stamped(packet: &mut [u8], seq: u64, clock: Instant) {
    packet[12..20].copy_from_slice(&seq.to_be_bytes());
    let now = clock.elapsed().as_nanos() as u64;
    packet[20..28].copy_from_slice(&now.to_be_bytes());
}

fn stamp_of(packet: &[u8]) -> Option<u64> {
    (packet.len() >= 28).then(|| u64::from_be_bytes(packet[20..28].try_into().unwrap()))
}

async fn measure(
    target: SocketAddr,
    sender_ssrc: u32,
    receivers: Vec<UdpSocket>,
    forwarder_cpu: &Option<String>,
    clock: Instant,
) -> Figures {
    let sender = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut packet = vec![0u8; 12 + PAYLOAD];
    packet[..12].copy_from_slice(&rtp_header(sender_ssrc));
    let receivers: Vec<Arc<UdpSocket>> = receivers.into_iter().map(Arc::new).collect();

    // Throughput.
    let stop = Arc::new(AtomicBool::new(false));
    let counts: Vec<Arc<AtomicU64>> = receivers.iter().map(|_| Arc::new(AtomicU64::new(0))).collect();
    let tasks: Vec<_> = receivers
        .iter()
        .zip(&counts)
        .map(|(r, c)| tokio::spawn(count_until(r.clone(), c.clone(), stop.clone())))
        .collect();
    let cpu_before = cpu_ns(forwarder_cpu);
    let start = Instant::now();
    let mut sent = 0u64;
    while start.elapsed() < RUN {
        let stalled = Instant::now();
        while sent >= WINDOW + counts.iter().map(|c| c.load(Ordering::Relaxed)).min().unwrap_or(0) {
            // A lost packet would hold the window forever; move on.
            if stalled.elapsed() > Duration::from_millis(20) {
                break;
            }
            tokio::task::yield_now().await;
        }
        stamped(&mut packet, sent, clock);
        sender.send_to(&packet, target).await.unwrap();
        sent += 1;
    }
    // Let the last window arrive.
    let settle = Instant::now();
    while counts.iter().any(|c| c.load(Ordering::Relaxed) < sent) && settle.elapsed() < Duration::from_millis(200) {
        tokio::task::yield_now().await;
    }
    let elapsed = start.elapsed();
    let cpu_used = cpu_ns(forwarder_cpu)
        .zip(cpu_before)
        .map(|(after, before)| after - before);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    let received: u64 = counts.iter().map(|c| c.load(Ordering::Relaxed)).sum();
    let lost = sent * receivers.len() as u64 - received;
    let packets_out_per_s = received as f64 / elapsed.as_secs_f64();
    let cpu_ns_per_packet_out = cpu_used.map_or(f64::NAN, |ns| ns as f64 / received as f64);

    // Latency: one packet in flight, timed at the last receiver.
    let (timed, others) = receivers.split_last().unwrap();
    let drains: Vec<_> = others
        .iter()
        .map(|r| tokio::spawn(count_until(r.clone(), Arc::new(AtomicU64::new(0)), stop.clone())))
        .collect();
    let mut buf = vec![0u8; 2048];
    while timed.try_recv_from(&mut buf).is_ok() {}
    let mut samples = Vec::with_capacity(LATENCY_SAMPLES);
    for seq in 0..LATENCY_SAMPLES as u64 {
        stamped(&mut packet, seq, clock);
        sender.send_to(&packet, target).await.unwrap();
        let Ok(Ok((len, _))) = tokio::time::timeout(Duration::from_millis(100), timed.recv_from(&mut buf)).await else {
            continue;
        };
        let arrived = clock.elapsed().as_nanos() as u64;
        if let Some(sent_at) = stamp_of(&buf[..len]) {
            samples.push(Duration::from_nanos(arrived.saturating_sub(sent_at)));
        }
    }
    for d in drains {
        d.abort();
    }
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q) as usize];
    Figures {
        packets_out_per_s,
        lost,
        cpu_ns_per_packet_out,
        median: pick(0.5),
        p99: pick(0.99),
    }
}

async fn count_until(socket: Arc<UdpSocket>, count: Arc<AtomicU64>, stop: Arc<AtomicBool>) {
    let mut buf = vec![0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, _)) = socket.recv_from(&mut buf).await
            && len > 12
        {
            count.fetch_add(1, Ordering::Relaxed);
        }
    }
}
