//! The media relay against the two forwarders it must beat, driven by one
//! load generator in the same run (the machines are shared and noisy, so
//! only same-run ratios mean anything):
//!
//! - `naive`: blocking `recv_from`, then one `send_to` per listener;
//! - `batched`: `recvmmsg`, then one `sendmmsg` with every copy of every
//!   packet read;
//! - `relay-process`: `relaymesh media-relay` as its own process (auth,
//!   channel and gateway beside it, sharing Redis);
//! - `relay-in-up`: the relay inside `relaymesh up`, the other roles idle.
//!
//! For the relay rows the talker and the listeners join through the
//! gateway (`/ws/livechat`: HELLO, IDENTIFY with a JWT, CHANNEL_CREATE,
//! CHANNEL_JOIN with their SSRC; the JOIN ACK names the relay) and latch
//! with one packet each. The forwarder runs pinned to one core, the load
//! generator to the other. For each forwarder the offered load (egress
//! packets per second: talker rate x listeners) is swept up until more
//! than 0.1 % of copies are lost or p99 latency passes 20 ms; the last
//! passing rate is its capacity. Then p99 latency is measured for every
//! forwarder at half the batched forwarder's capacity: the forwarders take
//! turns for `BENCH_LATENCY_ROUNDS` rounds (default 5), and each reports
//! the median of its p99s.
//!
//! `BENCH_SCALING=1` adds the many-channel run: 16 channels of 1 talker +
//! 4 listeners on a relay process with 1 socket on 1 core, then
//! `MEDIA_UDP_SOCKETS=2` on 2 cores.
//!
//! Run: `cargo bench --bench media_relay` (needs Redis at `REDIS_URL`,
//! default redis://127.0.0.1:6379, for the relay-process row).
//! `BENCH_LISTENERS=1,4,10` picks the fan-outs, `BENCH_STEP_MS` the length
//! of one load step, `BENCH_ONLY=naive,batched,...` the rows,
//! `BENCH_BASELINE_RCVBUF=<bytes>` the baselines' receive buffer (by
//! default the relay's `MEDIA_UDP_RECV_BUFFER`, 4 MiB; 0 the system default).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{IoSlice, IoSliceMut};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, recvmmsg};
use rustix::net::{MMsgHdr, SendAncillaryBuffer, SendFlags, SocketAddrAny, sendmmsg};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "media-bench-secret";
/// 12-byte RTP header + a 160-byte G.711 frame (20 ms).
const PACKET: usize = 172;
const MAX_LOSS: f64 = 0.001;
const MAX_P99: Duration = Duration::from_millis(20);
/// The share of the offered egress that must arrive for a step to count.
const MIN_ACHIEVED: f64 = 0.97;
/// Cores for the forwarder and the load generator.
const FORWARDER_CORE: usize = 0;
const LOAD_CORE: usize = 1;
const BATCH: usize = 32;
const TALKER_SSRC: u32 = 0x7a1c;

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_owned())
}

// ---------------------------------------------------------------- pinning

fn pin_current_thread(cores: &[usize]) {
    let mut set = nix::sched::CpuSet::new();
    for &c in cores {
        if set.set(c).is_err() {
            return;
        }
    }
    if let Err(e) = nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set) {
        eprintln!("(could not pin to cores {cores:?}: {e})");
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `relaymesh <args>` pinned to `cores` (with `taskset`, when present).
/// `BENCH_RELAYMESH_BIN` runs another build (say, main's) instead.
fn relaymesh(cores: &str, args: &[&str]) -> Command {
    let bin = std::env::var("BENCH_RELAYMESH_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_relaymesh").to_owned());
    let bin = bin.as_str();
    let has_taskset = Command::new("taskset").arg("-V").output().is_ok();
    let mut cmd = if has_taskset {
        let mut c = Command::new("taskset");
        c.args(["-c", cores, bin]);
        c
    } else {
        Command::new(bin)
    };
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("JWT_SECRET", SECRET)
        .env("MAX_CHANNEL_MEMBERS", "128")
        .env("HEARTBEAT_INTERVAL_MS", "600000")
        // Listeners only listen here; a real client's RTCP would keep
        // them from being evicted as silent during a long sweep.
        .env("MEDIA_PEER_IDLE_TIMEOUT_MS", "3600000")
        .stdin(Stdio::null());
    cmd
}

// ------------------------------------------------------------ baselines

/// A forwarder under test: where the talker sends, and how to stop it.
struct Forwarder {
    target: SocketAddr,
    stop: Option<Arc<AtomicBool>>,
    thread: Option<JoinHandle<()>>,
    children: Vec<Child>,
    /// The relay process, for its CPU time.
    relay_pid: Option<u32>,
    /// Keeps the relay rows' WebSocket sessions (and so their membership).
    _sessions: Vec<Ws>,
}

impl Drop for Forwarder {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn baseline(dests: Vec<SocketAddr>, batched: bool) -> Forwarder {
    let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
    socket.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    // The baselines get the receive buffer the relay asks for
    // (MEDIA_UDP_RECV_BUFFER, 4 MiB by default), so the rows compare loops,
    // not buffers; BENCH_BASELINE_RCVBUF overrides it, 0 keeps the system
    // default (to see what the buffer alone buys).
    let rcvbuf: usize = std::env::var("BENCH_BASELINE_RCVBUF")
        .or_else(|_| std::env::var("MEDIA_UDP_RECV_BUFFER"))
        .map_or(4 << 20, |v| v.parse().unwrap());
    if rcvbuf > 0 {
        socket2::SockRef::from(&socket).set_recv_buffer_size(rcvbuf).unwrap();
    }
    let target = socket.local_addr().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    let thread = std::thread::spawn(move || {
        pin_current_thread(&[FORWARDER_CORE]);
        if batched {
            batched_forwarder(&socket, &dests, &s);
        } else {
            naive_forwarder(&socket, &dests, &s);
        }
    });
    Forwarder {
        target,
        stop: Some(stop),
        thread: Some(thread),
        children: Vec::new(),
        relay_pid: None,
        _sessions: Vec::new(),
    }
}

/// Receive one datagram, send it to every listener.
fn naive_forwarder(socket: &UdpSocket, dests: &[SocketAddr], stop: &AtomicBool) {
    let mut buf = [0u8; 2048];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((len, _)) = socket.recv_from(&mut buf) {
            for dest in dests {
                let _ = socket.send_to(&buf[..len], dest);
            }
        }
    }
}

/// Receive what is queued (up to 32), send every copy in one `sendmmsg`.
fn batched_forwarder(socket: &UdpSocket, dests: &[SocketAddr], stop: &AtomicBool) {
    let mut bufs = vec![[0u8; 2048]; BATCH];
    let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(BATCH, None);
    let addrs: Vec<SocketAddrAny> = dests.iter().map(|&d| SocketAddrAny::from(d)).collect();
    let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> = (0..BATCH * dests.len())
        .map(|_| SendAncillaryBuffer::default())
        .collect();
    let mut lens = [0usize; BATCH];
    while !stop.load(Ordering::Relaxed) {
        let read = {
            let mut iovs: Vec<[IoSliceMut<'_>; 1]> = bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
            match recvmmsg(
                socket.as_raw_fd(),
                &mut headers,
                iovs.iter_mut(),
                MsgFlags::MSG_WAITFORONE,
                None,
            ) {
                Ok(msgs) => {
                    let mut n = 0;
                    for (i, m) in msgs.enumerate() {
                        lens[i] = m.bytes;
                        n += 1;
                    }
                    n
                }
                Err(_) => continue,
            }
        };
        let iovs: Vec<[IoSlice<'_>; 1]> = (0..read).map(|i| [IoSlice::new(&bufs[i][..lens[i]])]).collect();
        let mut msgs: Vec<MMsgHdr<'_>> = Vec::with_capacity(read * dests.len());
        let mut controls = controls.iter_mut();
        for iov in &iovs {
            for addr in &addrs {
                msgs.push(MMsgHdr::new_with_addr(addr, iov, controls.next().unwrap()));
            }
        }
        let mut start = 0;
        while start < msgs.len() {
            let end = msgs.len().min(start + 1024);
            match sendmmsg(socket, &mut msgs[start..end], SendFlags::empty()) {
                Ok(n) => start += n.max(1),
                Err(_) => start += 1,
            }
        }
    }
}

// ------------------------------------------------------------ the mesh

type WsStream = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An identified `/ws/livechat` session.
struct Ws {
    ws: WsStream,
    nonce: u64,
}

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

impl Ws {
    async fn recv(&mut self) -> Value {
        loop {
            match self.ws.next().await.expect("gateway closed").expect("ws error") {
                Message::Text(t) => return serde_json::from_str(&t).unwrap(),
                _ => continue,
            }
        }
    }

    async fn send(&mut self, v: Value) {
        self.ws.send(Message::Text(v.to_string().into())).await.unwrap();
    }

    async fn identify(gateway: SocketAddr, user: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{gateway}/ws/livechat"))
            .await
            .unwrap();
        let mut s = Self { ws, nonce: 0 };
        assert_eq!(s.recv().await["op"], 0, "HELLO");
        s.send(json!({"op": 3, "d": {"user_id": user, "token": token(user)}}))
            .await;
        let ready = s.recv().await;
        assert_eq!(ready["op"], 4, "READY: {ready}");
        s
    }

    /// The ACK (200) or ERROR (201) of one request.
    async fn call(&mut self, op: u16, mut d: Value) -> Value {
        self.nonce += 1;
        let nonce = format!("n{}", self.nonce);
        d["nonce"] = json!(nonce);
        self.send(json!({"op": op, "d": d})).await;
        loop {
            let v = self.recv().await;
            if (v["op"] == 200 || v["op"] == 201) && v["d"]["nonce"] == nonce.as_str() {
                return v;
            }
        }
    }
}

/// Joins `channel` as `user` with `ssrc`, retrying while the relay has
/// not registered yet; returns the session and the relay's address.
async fn join(gateway: SocketAddr, user: &str, channel: &str, ssrc: u32) -> (Ws, SocketAddr) {
    let mut ws = Ws::identify(gateway, user).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ack = ws.call(11, json!({"channel_id": channel, "ssrc": ssrc})).await;
        if let Some(addr) = ack["d"]["media_addr"].as_str().and_then(|a| a.parse().ok()) {
            return (ws, addr);
        }
        assert!(Instant::now() < deadline, "JOIN never named a relay: {ack}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Creates `channels` channels, each with a talker and its share of
/// `listeners`, all joined through the gateway; latches every member.
/// Returns the sessions and the relay address.
fn join_all(rt: &tokio::runtime::Runtime, gateway: SocketAddr, load: &Load, tag: &str) -> (Vec<Ws>, SocketAddr) {
    rt.block_on(async {
        let mut sessions = Vec::new();
        let mut relay = None;
        let per_channel = load.listeners.len() / load.talkers.len();
        for (c, talker) in load.talkers.iter().enumerate() {
            let channel = format!("{tag}-{c}");
            let mut creator = Ws::identify(gateway, &format!("{channel}-owner")).await;
            let ack = creator.call(10, json!({"channel_id": channel})).await;
            assert_eq!(ack["op"], 200, "CHANNEL_CREATE: {ack}");
            sessions.push(creator);
            let (ws, addr) = join(gateway, &format!("{channel}-talker"), &channel, talker.ssrc).await;
            sessions.push(ws);
            relay = Some(addr);
            for l in 0..per_channel {
                let i = c * per_channel + l;
                let ssrc = 0x1000 + i as u32;
                let (ws, _) = join(gateway, &format!("{channel}-l{l}"), &channel, ssrc).await;
                sessions.push(ws);
                // Latch the listener: one packet from its own socket.
                load.listeners[i].send_to(&rtp_header(ssrc, 0), addr).unwrap();
            }
        }
        let relay = relay.unwrap();
        for t in &load.talkers {
            t.socket.send_to(&rtp_header(t.ssrc, 0), relay).unwrap();
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        load.drain();
        (sessions, relay)
    })
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_tcp(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "{addr} never listened");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// auth, channel and gateway processes sharing Redis with a relay process
/// pinned to `relay_cores` with `sockets` media sockets.
fn relay_process(rt: &tokio::runtime::Runtime, load: &Load, relay_cores: &str, sockets: usize) -> Option<Forwarder> {
    let redis = env_or("REDIS_URL", "redis://127.0.0.1:6379");
    if std::net::TcpStream::connect(redis.trim_start_matches("redis://").trim_end_matches('/')).is_err() {
        println!("(relay-process row skipped: no Redis at {redis})");
        return None;
    }
    let prefix = format!("bench-{}:", uuid::Uuid::new_v4().simple());
    let (auth, channel, media, gw) = (free_port(), free_port(), free_port(), free_port());
    let spawn = |role: &str, cores: &str, env: &[(&str, String)]| {
        let mut cmd = relaymesh(cores, &[role]);
        cmd.env("REDIS_URL", &redis)
            .env("REDIS_KEY_PREFIX", &prefix)
            .env("HOST", "127.0.0.1")
            .env("METRICS_PORT", free_port().to_string())
            .stdout(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.spawn().unwrap()
    };
    let all = (0..cores()).map(|c| c.to_string()).collect::<Vec<_>>().join(",");
    let relay = spawn(
        "media-relay",
        relay_cores,
        &[
            ("GRPC_PORT", media.to_string()),
            ("MEDIA_UDP_PORT", "0".into()),
            ("MEDIA_UDP_HOST", "127.0.0.1".into()),
            ("MEDIA_UDP_SOCKETS", sockets.to_string()),
        ],
    );
    let relay_pid = relay.id();
    let children = vec![
        relay,
        spawn("auth", &all, &[("GRPC_PORT", auth.to_string())]),
        spawn("channel", &all, &[("GRPC_PORT", channel.to_string())]),
        spawn(
            "gateway",
            &all,
            &[
                ("PORT", gw.to_string()),
                ("AUTH_URL", format!("http://127.0.0.1:{auth}")),
                ("CHANNEL_URL", format!("http://127.0.0.1:{channel}")),
                ("MEDIA_RELAY_URL", format!("http://127.0.0.1:{media}")),
            ],
        ),
    ];
    let gateway: SocketAddr = format!("127.0.0.1:{gw}").parse().unwrap();
    wait_tcp(gateway);
    let (sessions, target) = join_all(rt, gateway, load, "proc");
    Some(Forwarder {
        target,
        stop: None,
        thread: None,
        children,
        relay_pid: Some(relay_pid),
        _sessions: sessions,
    })
}

/// `relaymesh up` pinned to the forwarder's core.
fn relay_in_up(rt: &tokio::runtime::Runtime, load: &Load) -> Forwarder {
    let mut cmd = relaymesh(&FORWARDER_CORE.to_string(), &["up"]);
    cmd.env("PORT", "0")
        .env("MEDIA_UDP_PORT", "0")
        .env("DATABASE_URL", "sqlite::memory:")
        .env_remove("REDIS_URL")
        .stdout(Stdio::piped());
    let mut child = cmd.spawn().unwrap();
    let out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut gateway = None;
    for line in std::io::BufRead::lines(out) {
        let line = line.unwrap();
        if let Some(rest) = line.trim().strip_prefix("gateway") {
            let addr = rest.trim().trim_start_matches("http://");
            gateway = addr
                .split_whitespace()
                .next()
                .and_then(|a| a.parse::<SocketAddr>().ok());
            break;
        }
    }
    let gateway = gateway.expect("relaymesh up printed its gateway");
    let pid = child.id();
    let (sessions, target) = join_all(rt, gateway, load, "up");
    Forwarder {
        target,
        stop: None,
        thread: None,
        children: vec![child],
        relay_pid: Some(pid),
        _sessions: sessions,
    }
}

// ---------------------------------------------------------- load generator

fn rtp_header(ssrc: u32, seq: u16) -> [u8; 12] {
    let mut h = [0u8; 12];
    h[0] = 0x80;
    h[1] = 96;
    h[2..4].copy_from_slice(&seq.to_be_bytes());
    h[4..8].copy_from_slice(&u32::from(seq).to_be_bytes());
    h[8..12].copy_from_slice(&ssrc.to_be_bytes());
    h
}

struct Talker {
    socket: UdpSocket,
    ssrc: u32,
}

/// Talkers (one per channel) and listeners, all on loopback.
struct Load {
    talkers: Vec<Talker>,
    listeners: Vec<UdpSocket>,
    clock: Instant,
    latencies: Vec<u32>,
    bufs: Vec<[u8; 2048]>,
    headers: MultiHeaders<SockaddrStorage>,
    /// The packets of one send burst.
    out: Vec<[u8; PACKET]>,
}

/// Most packets the talkers send at once (one `sendmmsg` per talker).
const SEND_BURST: usize = 256;

/// One load step's outcome.
struct Step {
    offered: f64,
    achieved: f64,
    loss: f64,
    p50: Duration,
    p99: Duration,
}

impl Step {
    /// Within the loss and p99 limits, and the load generator really
    /// offered the load: a generator that falls behind sends fewer packets,
    /// loses none of them, and would otherwise "pass" any rate.
    fn passed(&self) -> bool {
        self.loss <= MAX_LOSS && self.p99 <= MAX_P99 && self.achieved >= MIN_ACHIEVED * self.offered
    }
}

fn bind_udp() -> UdpSocket {
    let s = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None).unwrap();
    let _ = s.set_recv_buffer_size(4 << 20);
    let _ = s.set_send_buffer_size(4 << 20);
    s.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
    let s: UdpSocket = s.into();
    s.set_nonblocking(true).unwrap();
    s
}

impl Load {
    fn new(channels: usize, listeners_per_channel: usize) -> Self {
        Self {
            talkers: (0..channels)
                .map(|c| Talker {
                    socket: bind_udp(),
                    ssrc: TALKER_SSRC + c as u32,
                })
                .collect(),
            listeners: (0..channels * listeners_per_channel).map(|_| bind_udp()).collect(),
            clock: Instant::now(),
            latencies: Vec::with_capacity(8 << 20),
            bufs: vec![[0u8; 2048]; BATCH],
            headers: MultiHeaders::preallocate(BATCH, None),
            out: vec![[0u8; PACKET]; SEND_BURST],
        }
    }

    fn copies(&self) -> usize {
        self.listeners.len() / self.talkers.len()
    }

    fn drain(&self) {
        let mut buf = [0u8; 2048];
        for l in &self.listeners {
            while l.recv_from(&mut buf).is_ok() {}
        }
    }

    /// Reads what is queued on every listener; counts copies of step `tag`.
    fn receive(&mut self, tag: u32) -> u64 {
        let mut got = 0;
        let now = self.clock.elapsed().as_nanos() as u64;
        for l in &self.listeners {
            loop {
                let lens: Vec<usize> = {
                    let mut iovs: Vec<[IoSliceMut<'_>; 1]> =
                        self.bufs.iter_mut().map(|b| [IoSliceMut::new(b)]).collect();
                    match recvmmsg(
                        l.as_raw_fd(),
                        &mut self.headers,
                        iovs.iter_mut(),
                        MsgFlags::MSG_DONTWAIT,
                        None,
                    ) {
                        Ok(msgs) => msgs.map(|m| m.bytes).collect(),
                        Err(_) => break,
                    }
                };
                for (i, &len) in lens.iter().enumerate() {
                    let p = &self.bufs[i][..len];
                    if len < 24 || u32::from_be_bytes([p[12], p[13], p[14], p[15]]) != tag {
                        continue;
                    }
                    got += 1;
                    let sent = u64::from_be_bytes(p[16..24].try_into().unwrap());
                    self.latencies.push((now.saturating_sub(sent) / 1000) as u32);
                }
                if lens.len() < BATCH {
                    break;
                }
            }
        }
        got
    }

    /// Sends packets `first..first + want` (numbered across the talkers,
    /// who take turns) stamped now: one `sendmmsg` per talker, so the load
    /// generator pays a system call per burst, not per packet, and at
    /// N = 1 (one copy out per packet in) measures the forwarder, not its
    /// own sends. Returns how many went out.
    fn send_burst(&mut self, target: &SocketAddrAny, first: u64, want: usize, tag: u32) -> u64 {
        let now = self.clock.elapsed().as_nanos() as u64;
        let talkers = self.talkers.len();
        for (k, p) in self.out[..want].iter_mut().enumerate() {
            let n = first + k as u64;
            let t = &self.talkers[(n % talkers as u64) as usize];
            p[..12].copy_from_slice(&rtp_header(t.ssrc, n as u16));
            p[12..16].copy_from_slice(&tag.to_be_bytes());
            p[16..24].copy_from_slice(&now.to_be_bytes());
        }
        let mut sent = 0;
        for (j, t) in self.talkers.iter().enumerate() {
            // Packet k is talker (first + k) % talkers's.
            let k0 = (j + talkers - (first % talkers as u64) as usize) % talkers;
            let iovs: Vec<[IoSlice<'_>; 1]> = (k0..want)
                .step_by(talkers)
                .map(|k| [IoSlice::new(&self.out[k])])
                .collect();
            let mut controls: Vec<SendAncillaryBuffer<'_, '_, '_>> =
                iovs.iter().map(|_| SendAncillaryBuffer::default()).collect();
            let mut msgs: Vec<MMsgHdr<'_>> = iovs
                .iter()
                .zip(controls.iter_mut())
                .map(|(iov, control)| MMsgHdr::new_with_addr(target, iov, control))
                .collect();
            let mut done = 0;
            while done < msgs.len() {
                match sendmmsg(&t.socket, &mut msgs[done..], SendFlags::empty()) {
                    Ok(n) if n > 0 => done += n,
                    Ok(_) => break,
                    Err(e) if e == rustix::io::Errno::AGAIN => break,
                    Err(e) => panic!("talker: {e}"),
                }
            }
            sent += done as u64;
        }
        sent
    }

    /// Offers `egress` copies per second to `target` for `length`.
    fn step(&mut self, target: SocketAddr, egress: f64, length: Duration, tag: u32) -> Step {
        self.latencies.clear();
        let rate = egress / self.copies() as f64;
        let target = SocketAddrAny::from(target);
        let start = Instant::now();
        let (mut sent, mut seq, mut got) = (0u64, 0u64, 0u64);
        loop {
            let elapsed = start.elapsed();
            if elapsed >= length {
                break;
            }
            let due = (elapsed.as_secs_f64() * rate) as u64;
            if due > sent {
                let want = ((due - sent) as usize).min(SEND_BURST);
                sent += self.send_burst(&target, seq, want, tag);
                seq += want as u64;
            }
            got += self.receive(tag);
        }
        let settle = Instant::now();
        while settle.elapsed() < Duration::from_millis(100) {
            got += self.receive(tag);
        }
        let expected = sent * self.copies() as u64;
        self.latencies.sort_unstable();
        let at = |q: f64| {
            let us = self
                .latencies
                .get(((self.latencies.len() as f64) * q) as usize)
                .copied();
            Duration::from_micros(u64::from(us.unwrap_or(u32::MAX)))
        };
        let (p50, p99) = (at(0.5), at(0.99));
        Step {
            offered: egress,
            achieved: got as f64 / length.as_secs_f64(),
            loss: 1.0 - got as f64 / expected.max(1) as f64,
            p50,
            p99,
        }
    }
}

/// Raises the offered load until a step fails (twice), then bisects;
/// returns the highest passing rate.
fn sweep(load: &mut Load, target: SocketAddr, length: Duration, tag: &mut u32) -> f64 {
    let mut run = |rate: f64| {
        *tag += 1;
        let s = load.step(target, rate, length, *tag);
        if std::env::var_os("BENCH_VERBOSE").is_some() {
            eprintln!(
                "    offered {:>9.0} achieved {:>9.0} loss {:>7.4}% p50 {:>8.1} us p99 {:>8.1} us {}",
                s.offered,
                s.achieved,
                s.loss * 100.0,
                s.p50.as_secs_f64() * 1e6,
                s.p99.as_secs_f64() * 1e6,
                if s.passed() { "ok" } else { "FAIL" }
            );
        }
        s.passed()
    };
    let (mut pass, mut fail) = (0.0, f64::INFINITY);
    let mut rate = 20_000.0;
    while rate < 5e6 {
        if run(rate) || run(rate) {
            pass = rate;
            rate *= 1.4;
        } else {
            fail = rate;
            break;
        }
    }
    if fail.is_finite() {
        for _ in 0..4 {
            let mid = (pass.max(10_000.0) + fail) / 2.0;
            if run(mid) || run(mid) {
                pass = mid;
            } else {
                fail = mid;
            }
        }
    }
    pass
}

/// Utime + stime of process `pid`, in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = after.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // Fields 14 and 15 of stat; `after` starts at field 3 (state, not numeric).
    let ticks = f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0);
    ticks as f64 / 100.0
}

struct Row {
    name: &'static str,
    capacity: f64,
    p99_at_half: Duration,
}

fn main() {
    let length = Duration::from_millis(env_or("BENCH_STEP_MS", "1000").parse().unwrap());
    let fanouts: Vec<usize> = env_or("BENCH_LISTENERS", "1,4,10,16,50")
        .split(',')
        .map(|n| n.trim().parse().unwrap())
        .collect();
    let only = env_or("BENCH_ONLY", "naive,batched,relay-process,relay-in-up");
    let latency_rounds: usize = env_or("BENCH_LATENCY_ROUNDS", "5").parse().unwrap();
    let latency_rounds = latency_rounds.max(1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut tag = 0;
    println!(
        "media relay benchmark: 1 talker -> N listeners, {PACKET}-byte RTP, forwarder on core {FORWARDER_CORE}, load on core {LOAD_CORE} ({} cores), {} ms steps",
        cores(),
        length.as_millis()
    );
    // On a shared box, other sessions' builds would otherwise decide the
    // latency: with autogroup scheduling `nice` alone does not help, so
    // raise this session's group (root only; harmless when refused).
    let raised = std::fs::write("/proc/self/autogroup", "-20").is_ok();
    println!("(scheduling priority raised: {raised})");
    pin_current_thread(&[LOAD_CORE]);
    let mut summary = Vec::new();
    for &n in &fanouts {
        let mut load = Load::new(1, n);
        let dests: Vec<SocketAddr> = load.listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let mut rows: Vec<(Row, Forwarder)> = Vec::new();
        for name in ["naive", "batched", "relay-process", "relay-in-up"] {
            if !only.split(',').any(|o| o == name) {
                continue;
            }
            let f = match name {
                "naive" => Some(baseline(dests.clone(), false)),
                "batched" => Some(baseline(dests.clone(), true)),
                "relay-process" => relay_process(&rt, &load, &FORWARDER_CORE.to_string(), 1),
                _ => Some(relay_in_up(&rt, &load)),
            };
            let Some(f) = f else { continue };
            eprintln!("  N={n} {name}: sweeping (relay pid {:?})", f.relay_pid);
            let capacity = match std::env::var("BENCH_FIXED_PPS") {
                // One long step at a fixed load (to attach perf or strace).
                Ok(rate) => {
                    std::thread::sleep(Duration::from_secs(2));
                    tag += 1;
                    let s = load.step(f.target, rate.parse().unwrap(), length, tag);
                    eprintln!(
                        "    fixed {:.0}: achieved {:.0}, loss {:.4}%, p50 {:?}, p99 {:?}",
                        s.offered,
                        s.achieved,
                        s.loss * 100.0,
                        s.p50,
                        s.p99
                    );
                    s.achieved
                }
                Err(_) => sweep(&mut load, f.target, length, &mut tag),
            };
            load.drain();
            // Every forwarder stays up for the latency steps below; idle,
            // each blocks in a receive and costs nothing.
            rows.push((
                Row {
                    name,
                    capacity,
                    p99_at_half: Duration::ZERO,
                },
                f,
            ));
        }
        let batched_cap = rows.iter().find(|(r, _)| r.name == "batched").map_or_else(
            || rows.iter().map(|(r, _)| r.capacity).fold(0.0, f64::max),
            |(r, _)| r.capacity,
        );
        let half = batched_cap / 2.0;
        // One step's p99 is one noisy second (another process's wakeup
        // moves it by hundreds of µs): the forwarders take turns for
        // several rounds, so drift hits all alike, and each keeps the
        // median of its p99s.
        let mut p99s: Vec<Vec<Duration>> = vec![Vec::new(); rows.len()];
        for _ in 0..latency_rounds {
            for ((_, f), samples) in rows.iter().zip(&mut p99s) {
                tag += 1;
                samples.push(load.step(f.target, half, length, tag).p99);
                load.drain();
            }
        }
        for ((row, _), mut samples) in rows.iter_mut().zip(p99s) {
            samples.sort();
            row.p99_at_half = samples[samples.len() / 2];
        }
        let base_cap = batched_cap.max(1.0);
        let naive_p99 = rows
            .iter()
            .find(|(r, _)| r.name == "naive")
            .map_or(Duration::from_micros(1), |(r, _)| r.p99_at_half);
        println!();
        println!("N = {n} listeners");
        println!(
            "| forwarder | max sustained egress (pkt/s) | vs batched | p99 at {:.0} pkt/s (median of {latency_rounds}) | vs naive |",
            half
        );
        println!("|---|---|---|---|---|");
        for (r, _) in &rows {
            println!(
                "| {} | {:.0} | {:.2}x | {:.0} µs | {:.2}x |",
                r.name,
                r.capacity,
                r.capacity / base_cap,
                r.p99_at_half.as_secs_f64() * 1e6,
                r.p99_at_half.as_secs_f64() / naive_p99.as_secs_f64().max(1e-6)
            );
        }
        for (r, _) in &rows {
            summary.push((n, r.name, r.capacity / base_cap));
        }
        drop(rows);
    }
    println!();
    println!("capacity / batched forwarder's, by N:");
    for name in ["naive", "relay-process", "relay-in-up"] {
        let line: Vec<String> = summary
            .iter()
            .filter(|(_, r, _)| *r == name)
            .map(|(n, _, x)| format!("N={n}: {x:.2}x"))
            .collect();
        if !line.is_empty() {
            println!("  {name:<14} {}", line.join("  "));
        }
    }
    if std::env::var_os("BENCH_SCALING").is_some() {
        scaling(&rt, length, &mut tag);
    }
}

/// 16 channels of 1 talker + 4 listeners: a relay process with one socket
/// on one core, then two sockets on two cores.
fn scaling(rt: &tokio::runtime::Runtime, length: Duration, tag: &mut u32) {
    println!();
    println!("many channels (16 x (1 talker -> 4 listeners)), relay process, MEDIA_UDP_SOCKETS = cores");
    println!(
        "| relay cores | load generator cores | max egress (pkt/s) | relay CPU s per 1M egress | egress per relay core-second |"
    );
    println!("|---|---|---|---|---|");
    let mut first = None;
    for (relay_cores, sockets, load_cores) in [("0", 1usize, vec![LOAD_CORE]), ("0,1", 2, vec![0, 1])] {
        let mut load = Load::new(16, 4);
        pin_current_thread(&load_cores);
        let Some(f) = relay_process(rt, &load, relay_cores, sockets) else {
            return;
        };
        let pid = f.relay_pid.unwrap_or(0);
        let capacity = sweep(&mut load, f.target, length, tag);
        load.drain();
        // CPU per packet at the capacity: one more step, timed.
        let before = cpu_seconds(pid);
        *tag += 1;
        let s = load.step(f.target, capacity, length, *tag);
        let cpu = cpu_seconds(pid) - before;
        let out = s.achieved * length.as_secs_f64();
        println!(
            "| {relay_cores} | {:?} | {capacity:.0} | {:.2} | {:.0} |",
            load_cores,
            cpu / out * 1e6,
            out / cpu.max(1e-3)
        );
        match first {
            None => first = Some(capacity),
            Some(one) => println!("2 cores / 1 core egress: {:.2}x", capacity / one),
        }
        drop(f);
    }
    pin_current_thread(&[LOAD_CORE]);
}
