//! Mesh benchmarks, each reported as a ratio to a baseline measured in the
//! same run (the machines are shared and noisy):
//!
//! - `rpc`: the gateway->service unary round trip (a tonic client exactly as
//!   the gateway builds it, to the auth service over loopback, and in
//!   process as inside `relaymesh up`) against the same handler called
//!   directly, and a raw loopback TCP echo;
//! - `copilot`: a server->client callback (`SignalingService.CallClient`
//!   from a service, `request_api` to the socket, `api_result` back through
//!   the gateway and signaling) and a whole query with two callbacks,
//!   against a `ping` the gateway answers itself; plus callbacks per second;
//! - `idle-sockets`: resident memory per idle authenticated WebSocket of a
//!   real `relaymesh up` process;
//! - `farm`: a run created through the HTTP API until its COMMAND is on the
//!   node's socket, against an HTTP `GET /healthz` round trip.
//!
//! - `livechat`: a LiveChat MESSAGE_CREATE answered through the channel
//!   service against a HEARTBEAT the gateway answers itself, on one
//!   connection and on 16 at once (round trip and throughput); then the
//!   same against a bare WebSocket server that writes the protocol's frames
//!   and nothing else (the floor: what the second frame of a message costs).
//!   With two cores or more it runs both again as their own processes,
//!   the server on core 0 and the clients on core 1 (the issue's setup).
//!   The two kinds alternate in rounds (`BENCH_LIVECHAT_ROUNDS`, 10), so
//!   the machine changing speed mid-run does not read as one kind's cost;
//! - `fanout`: one chat message to a 1,000-member channel whose members are
//!   split over two gateway replicas on Redis (needs `REDIS_URL`): time from
//!   send to the last member's delivery, with the mesh in this process and
//!   then as processes (`relaymesh up` plus a `relaymesh gateway`, as
//!   deployed); then its floor, a bare WebSocket server writing one frame
//!   to 1,000 connections read the same way.
//! - `signal`: seed 004 matches negotiated per second (join, request,
//!   accept, offer, answer, 4 ICE candidates each way; players on two
//!   gateway replicas), and one relayed SDP offer (sender's socket to the
//!   receiver's) against a WebSocket ping answered by the gateway itself, on
//!   the same sockets.
//!
//! `livechat`, `copilot` and `rpc` run twice: with the roles calling each
//! other in process (`relaymesh up`'s default) and over loopback gRPC
//! (`--in-process-calls false`, as separate processes do).
//!
//! `cargo bench --bench mesh` runs all; `cargo bench --bench mesh -- rpc`
//! runs one. `BENCH_ITERS` and `BENCH_SOCKETS` scale them;
//! `BENCH_LIVECHAT_MODES` (`process`, `network`, `floor`, `separate`,
//! `separate-floor`) and `BENCH_LIVECHAT_CONNS` (say `16`) narrow `livechat`
//! to one case, to attach a profiler; `BENCH_FANOUT_MODES` (`in-process`,
//! `processes`, `floor`) narrows `fanout`. The modes that run `relaymesh`
//! as processes (`livechat`'s `separate`, `fanout`'s `processes`,
//! `idle-sockets`) run a
//! second build first when `BENCH_BASELINE_RELAYMESH` names its binary (say
//! main's `target/release/relaymesh`, copied aside), so a change is read
//! against its baseline in the same run; `BENCH_REPEAT=3` alternates them
//! three times.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use relaymesh_auth::{AuthConfig, AuthService};
use relaymesh_proto::auth::v1::VerifyTokenRequest;
use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::auth::v1::auth_service_server::AuthService as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret";

fn token(user: &str) -> String {
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": user, "exp": exp}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap()
}

/// A bench client's WebSocket. Its read buffer is small: tungstenite's
/// default (128 KiB) is zero-filled on every read, which cost the in-process
/// client more CPU than the server spent on a frame and so measured the
/// client, not the mesh (perf: 11-13 % of all samples in `memset` under
/// `BytesMut::resize` of the client's reads).
async fn ws_connect(
    url: impl tokio_tungstenite::tungstenite::client::IntoClientRequest + Unpin,
) -> tokio_tungstenite::tungstenite::Result<(Ws, tokio_tungstenite::tungstenite::handshake::client::Response)> {
    tokio_tungstenite::connect_async_with_config(url, Some(small_reads()), false).await
}

/// A WebSocket configuration with a 4 KiB read buffer, for the bench's
/// clients and its bare floor servers alike (see [`ws_connect`]).
fn small_reads() -> tokio_tungstenite::tungstenite::protocol::WebSocketConfig {
    tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default().read_buffer_size(4096)
}

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Stats {
    median: Duration,
    p99: Duration,
}

fn stats(mut samples: Vec<Duration>) -> Stats {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        median: at(0.5),
        p99: at(0.99),
    }
}

async fn measure(iters: usize, mut f: impl AsyncFnMut()) -> Stats {
    for _ in 0..iters / 10 {
        f().await; // warm-up
    }
    let mut samples = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        f().await;
        samples.push(t.elapsed());
    }
    stats(samples)
}

fn row(name: &str, s: &Stats, base: &Stats) {
    println!(
        "{name:<44} median {:>9.1?}  p99 {:>9.1?}  ({:>6.2}x / {:>6.2}x baseline)",
        s.median,
        s.p99,
        s.median.as_secs_f64() / base.median.as_secs_f64(),
        s.p99.as_secs_f64() / base.p99.as_secs_f64()
    );
}

/// `up`'s flag that sends calls between its roles over loopback gRPC, as
/// between processes (the default calls them in process).
const NETWORK: &[&str] = &["--in-process-calls", "false"];

/// The whole mesh in this process on port 0, plus `extra` flags of `up`.
/// Frame rate limits are off: these measure how fast frames go, thousands
/// a second on one connection, which the limits would mostly refuse.
async fn start_mesh(extra: &[&str]) -> relaymesh::Mesh {
    let mut args = vec![
        "--jwt-secret",
        SECRET,
        "--rate-limit-conn-per-sec",
        "0",
        "--rate-limit-user-per-sec",
        "0",
    ];
    args.extend_from_slice(extra);
    relaymesh::Mesh::start(relaymesh::MeshOptions::loopback(&args).unwrap())
        .await
        .unwrap()
}

/// A server of the bench running as its own process (`relaymesh up`, a
/// `relaymesh gateway`, or this bench serving a floor), stopped on drop.
struct ServerProcess {
    child: tokio::process::Child,
    /// Its standard output, read a line at a time.
    out: tokio::io::BufReader<tokio::process::ChildStdout>,
}

impl ServerProcess {
    /// Starts `program`, set up by `configure`, pinned to `cores` with
    /// `taskset` when given.
    fn spawn(
        cores: Option<&str>,
        program: &std::path::Path,
        configure: impl FnOnce(&mut tokio::process::Command),
    ) -> Self {
        let mut cmd = match cores {
            Some(cores) => {
                let mut c = tokio::process::Command::new("taskset");
                c.args(["-c", cores]).arg(program);
                c
            }
            None => tokio::process::Command::new(program),
        };
        cmd.env("RUST_LOG", "warn")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true);
        configure(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let out = tokio::io::BufReader::new(child.stdout.take().unwrap());
        Self { child, out }
    }

    /// Lines of the process's standard output up to (and including) the
    /// first that starts with `last`.
    async fn read_until(&mut self, last: &str) -> Vec<String> {
        use tokio::io::AsyncBufReadExt;
        let mut lines = Vec::new();
        loop {
            let mut line = String::new();
            assert!(
                self.out.read_line(&mut line).await.unwrap() > 0,
                "server process exited"
            );
            let done = line.trim().starts_with(last);
            lines.push(line.trim().to_owned());
            if done {
                return lines;
            }
        }
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// The `relaymesh` binary built with this bench.
fn this_build() -> std::path::PathBuf {
    env!("CARGO_BIN_EXE_relaymesh").into()
}

/// The builds the process modes run, in order: a baseline build named by
/// `BENCH_BASELINE_RELAYMESH` (another commit's `target/release/relaymesh`,
/// copied aside) first when set, then this one; each with its label.
fn builds() -> Vec<(&'static str, std::path::PathBuf)> {
    let mut out = Vec::new();
    if let Some(base) = std::env::var_os("BENCH_BASELINE_RELAYMESH") {
        out.push(("baseline build", base.into()));
    }
    out.push(("this build", this_build()));
    out
}

/// `builds` BENCH_REPEAT times (default once), interleaved (A, B, A, B),
/// so a baseline and this build see the machine's same hour.
fn repeated<T: Clone>(builds: Vec<T>) -> Vec<T> {
    let times = std::env::var("BENCH_REPEAT")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1usize);
    (0..times).flat_map(|_| builds.clone()).collect()
}

/// `relaymesh up` of the binary `exe` as its own process, pinned to
/// `cores` when given; `env` adds to its environment. Returns it with the
/// gateway's address and each role's gRPC address as it printed them.
async fn up_process(
    exe: &std::path::Path,
    cores: Option<&str>,
    env: &[(&str, &str)],
) -> (ServerProcess, std::net::SocketAddr, Vec<(String, String)>) {
    let mut up = ServerProcess::spawn(cores, exe, |c| {
        c.arg("up")
            .env("PORT", "0")
            .env("MEDIA_UDP_PORT", "0")
            .env("DATABASE_URL", "sqlite::memory:")
            .env("JWT_SECRET", SECRET)
            .env("RATE_LIMIT_CONN_PER_SEC", "0")
            .env("RATE_LIMIT_USER_PER_SEC", "0")
            .env_remove("REDIS_URL")
            .env_remove("REDIS_CLUSTER_URLS")
            .envs(env.iter().copied());
    });
    let mut gateway = None;
    let mut services = Vec::new();
    for line in up.read_until("ready:").await {
        let mut words = line.split_whitespace();
        match (words.next(), words.next()) {
            (Some("gateway"), Some(url)) => gateway = Some(url.trim_start_matches("http://").parse().unwrap()),
            (Some(role), Some(url)) if url.starts_with("grpc://") => {
                services.push((role.to_owned(), url.replacen("grpc://", "http://", 1)));
            }
            _ => {}
        }
    }
    (up, gateway.unwrap(), services)
}

/// A `relaymesh gateway` process on the roles `services` of an
/// [`up_process`] and on `redis` (a second replica, as in Kubernetes).
async fn gateway_process(
    exe: &std::path::Path,
    services: &[(String, String)],
    redis: &str,
    prefix: &str,
) -> (ServerProcess, std::net::SocketAddr) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let gateway = ServerProcess::spawn(None, exe, |c| {
        c.arg("gateway")
            .env("HOST", "127.0.0.1")
            .env("PORT", port.to_string())
            .env("JWT_SECRET", SECRET)
            .env("REDIS_URL", redis)
            .env_remove("REDIS_CLUSTER_URLS")
            .env("REDIS_KEY_PREFIX", prefix);
        for (role, url) in services {
            let var = format!("{}_URL", role.to_uppercase().replace('-', "_"));
            c.env(var, url);
        }
    });
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !gateway_ready(addr).await {
        assert!(Instant::now() < deadline, "the gateway process never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (gateway, addr)
}

/// True when the gateway at `addr` listens and its `/readyz` says ready.
async fn gateway_ready(addr: std::net::SocketAddr) -> bool {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return false;
    }
    http(addr, "GET", "/readyz", None, "").await.contains("\"ready\":true")
}

/// Pins every thread of this process (the bench's clients) to `cores`
/// (`taskset -a -p`); threads started later inherit it.
fn pin_bench(cores: &str) {
    let pinned = std::process::Command::new("taskset")
        .args(["-a", "-p", "-c", cores, &std::process::id().to_string()])
        .stdout(std::process::Stdio::null())
        .status();
    if !pinned.is_ok_and(|s| s.success()) {
        eprintln!("(could not pin the bench to cores {cores})");
    }
}

/// Whether `taskset` (util-linux) can pin processes here.
fn has_taskset() -> bool {
    std::process::Command::new("taskset")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Cores of this machine, as `taskset` lists them (`0-N`).
fn all_cores() -> String {
    let n = std::thread::available_parallelism().map_or(1, |n| n.get());
    format!("0-{}", n - 1)
}

/// Raw loopback TCP: one 64-byte write, one 64-byte read back.
async fn tcp_echo(iters: usize) -> Stats {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        s.set_nodelay(true).unwrap();
        let mut buf = [0u8; 64];
        while s.read_exact(&mut buf).await.is_ok() {
            if s.write_all(&buf).await.is_err() {
                break;
            }
        }
    });
    let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
    c.set_nodelay(true).unwrap();
    measure(iters, async || {
        let mut buf = [7u8; 64];
        c.write_all(&buf).await.unwrap();
        c.read_exact(&mut buf).await.unwrap();
    })
    .await
}

async fn bench_rpc(iters: usize) {
    println!("== rpc: gateway->service unary round trip ({iters} sequential calls)");
    let t = token("bench-user");
    let config = AuthConfig {
        jwt_secret: Some(SECRET.into()),
        verify_signature: true,
        ..AuthConfig::default()
    };
    let direct = AuthService::new(&config).unwrap();
    let in_process = measure(iters, async || {
        let req = tonic::Request::new(VerifyTokenRequest { token: t.clone() });
        direct.verify_token(req).await.unwrap();
    })
    .await;

    // The same client, as the gateway builds it, to a mesh whose roles
    // call each other over loopback and to one whose roles call in process.
    let mut rows = Vec::new();
    for (mode, flags) in [("over loopback", NETWORK), ("in process (`up`)", &[][..])] {
        let mesh = start_mesh(flags).await;
        let auth_addr = mesh.services.iter().find(|(r, _)| *r == "auth").unwrap().1;
        let channel = relaymesh_rpc::connect_lazy(&format!("http://{auth_addr}"), Duration::from_secs(5)).unwrap();
        let mut client = AuthServiceClient::new(channel);
        let stats = measure(iters, async || {
            client
                .verify_token(VerifyTokenRequest { token: t.clone() })
                .await
                .unwrap();
        })
        .await;
        rows.push((mode, stats));
        mesh.shutdown().await.unwrap();
    }
    let echo = tcp_echo(iters).await;

    row("handler called directly (baseline)", &in_process, &in_process);
    for (mode, stats) in &rows {
        row(&format!("gRPC client, {mode}"), stats, &in_process);
    }
    row("raw TCP echo, 64 B (network floor)", &echo, &in_process);
    println!(
        "gRPC over loopback above the raw socket: median {:.1}x the TCP echo",
        rows[0].1.median.as_secs_f64() / echo.median.as_secs_f64()
    );
}

async fn bench_copilot(iters: usize) {
    for (mode, flags) in [("in process (`up`)", &[][..]), ("over loopback gRPC", NETWORK)] {
        copilot_mode(iters, mode, flags).await;
    }
}

/// The caller of `CallClient` is a client of the signaling service in this
/// process, as the built-in query handler is in `up`: with in-process calls
/// it calls in process, otherwise over loopback like another pod would.
async fn copilot_mode(iters: usize, mode: &str, flags: &[&str]) {
    use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
    use relaymesh_proto::signaling::v1::{CallClientRequest, CallbackKind};

    println!(
        "== copilot: callbacks through the mesh vs the gateway's own ping->pong ({iters} sequential round trips); roles call {mode}"
    );
    let mut args = vec![
        "--rate-limit-requests",
        "1000000000",
        "--heartbeat-interval-ms",
        "600000",
    ];
    args.extend_from_slice(flags);
    let mesh = start_mesh(&args).await;
    let url = format!("ws://{}/ws/copilot?token={}", mesh.gateway_addr, token("ws-user"));
    let (mut ws, _) = ws_connect(url).await.unwrap();
    let Message::Text(hello) = ws.next().await.unwrap().unwrap() else {
        panic!("connected first")
    };
    let hello: serde_json::Value = serde_json::from_str(&hello).unwrap();
    let conn = hello["connectionId"].as_str().unwrap().to_owned();

    let ping = measure(iters, async || {
        ws.send(Message::Text(r#"{"type":"ping"}"#.into())).await.unwrap();
        while let Message::Text(t) = ws.next().await.unwrap().unwrap()
            && !t.contains("\"pong\"")
        {}
    })
    .await;

    // From here a client task answers every callback at once, as the
    // browser client does, and reports each query's end.
    let (query_tx, mut query_rx) = tokio::sync::mpsc::channel::<()>(1);
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<()>(1);
    let client = tokio::spawn(async move {
        loop {
            tokio::select! {
                q = query_rx.recv() => {
                    if q.is_none() { return; }
                    let frame = r#"{"type":"query","requestId":"b","data":{"text":"bench"}}"#;
                    ws.send(Message::Text(frame.into())).await.unwrap();
                }
                msg = ws.next() => {
                    let Some(Ok(Message::Text(t))) = msg else { return };
                    let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                    let answer = match v["type"].as_str() {
                        Some("request_available_data") => ("available_data", serde_json::json!(["ds"])),
                        Some("request_api") => ("api_result", serde_json::json!({"rows": 1})),
                        Some("clarification_request") => ("human_response", serde_json::json!("yes")),
                        Some("response" | "error") => {
                            done_tx.send(()).await.unwrap();
                            continue;
                        }
                        _ => continue,
                    };
                    let frame = serde_json::json!({"type": answer.0, "requestId": v["requestId"], "data": answer.1});
                    ws.send(Message::Text(frame.to_string().into())).await.unwrap();
                }
            }
        }
    });

    let signaling_addr = mesh.services.iter().find(|(r, _)| *r == "signaling").unwrap().1;
    let channel = relaymesh_rpc::connect_lazy(&format!("http://{signaling_addr}"), Duration::from_secs(30)).unwrap();
    let signaling = SignalingServiceClient::new(channel);
    let request = CallClientRequest {
        connection_id: conn,
        kind: CallbackKind::Api as i32,
        data: None,
        timeout: None,
    };
    let mut caller = signaling.clone();
    let started = Instant::now();
    let callback = measure(iters, async || {
        caller.call_client(request.clone()).await.unwrap();
    })
    .await;
    let sequential_rate = (iters + iters / 10) as f64 / started.elapsed().as_secs_f64();

    let callers = 16;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..callers {
        let (mut caller, request) = (signaling.clone(), request.clone());
        tasks.spawn(async move {
            for _ in 0..iters / callers {
                caller.call_client(request.clone()).await.unwrap();
            }
        });
    }
    tasks.join_all().await;
    let concurrent_rate = (iters / callers * callers) as f64 / started.elapsed().as_secs_f64();

    let query = measure(iters.min(2000), async || {
        query_tx.send(()).await.unwrap();
        done_rx.recv().await.unwrap();
    })
    .await;
    drop(query_tx);
    client.await.unwrap();

    row("ping -> pong (gateway only, baseline)", &ping, &ping);
    row("callback: CallClient -> answer -> return", &callback, &ping);
    row("query, 2 callbacks (basic chain)", &query, &ping);
    println!("callbacks/s: {sequential_rate:.0} sequential, {concurrent_rate:.0} with {callers} concurrent callers");
    mesh.shutdown().await.unwrap();
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn bench_idle_sockets(n: usize) {
    for (label, exe) in repeated(builds()) {
        println!("== idle-sockets: resident memory per idle authenticated socket ({n} copilot sockets; {label})");
        idle_sockets_of(&exe, n).await;
    }
}

async fn idle_sockets_of(exe: &std::path::Path, n: usize) {
    let (up, addr, _) = up_process(exe, None, &[]).await;
    let pid = up.child.id().unwrap();
    // Warm the process (first connections allocate lazily-grown tables).
    let mut sockets = Vec::with_capacity(n + 50);
    let t = token("idle");
    for _ in 0..50 {
        let (mut ws, _) = ws_connect(format!("ws://{addr}/ws/copilot?token={t}")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    for i in 0..n {
        let t = token(&format!("idle-{i}"));
        let (mut ws, _) = ws_connect(format!("ws://{addr}/ws/copilot?token={t}")).await.unwrap();
        ws.next().await.unwrap().unwrap();
        sockets.push(ws);
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before)) as f64 * 1024.0 / n as f64;
    println!("gateway process RSS {before} KiB -> {after} KiB: {per:.0} bytes per idle authenticated socket");
    println!("(includes the socket's session-registry entry, in-memory backend; kernel socket buffers excluded)");
    println!("goal: <= 8192 bytes; tungstenite's default buffers alone would be > 131072 bytes");
    drop(sockets);
    drop(up);
}

const NODE_SECRET: &str = "YmVuY2gtbm9kZS1zZWNyZXQ=";

async fn http(addr: std::net::SocketAddr, method: &str, path: &str, auth: Option<&str>, body: &str) -> String {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(t) = auth {
        req.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default()
}

fn signed(frame: serde_json::Value) -> String {
    let key = relaymesh_wire::node::NodeKey::from_secret(NODE_SECRET);
    relaymesh_wire::node::signature::signed_frame(&frame.to_string(), &key).unwrap()
}

fn node_frame(kind: &str, payload: serde_json::Value) -> String {
    signed(serde_json::json!({
        "version": "1.0",
        "timestamp": relaymesh_wire::node::rfc3339_millis_now(),
        "message_id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "node_id": "bench-node",
        "payload": payload,
    }))
}

async fn bench_farm(iters: usize) {
    println!("== farm: run created (HTTP API) -> COMMAND on the node socket ({iters} runs)");
    let mesh = start_mesh(&["--node-shared-secret", NODE_SECRET]).await;
    let gw = mesh.gateway_addr;
    let exp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let operator = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &serde_json::json!({"sub": "ops", "exp": exp, "roles": ["operator"]}),
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .unwrap();
    let (mut node, _) = ws_connect(format!("ws://{gw}/ws/node")).await.unwrap();
    node.send(Message::Text(
        node_frame("HELLO", serde_json::json!({"devices": ["D1"], "slots": 20})).into(),
    ))
    .await
    .unwrap();
    let next_of = async |node: &mut tokio_tungstenite::WebSocketStream<_>, kind: &str| -> serde_json::Value {
        loop {
            if let Message::Text(t) = node.next().await.unwrap().unwrap() {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v;
                }
            }
        }
    };
    next_of(&mut node, "HELLO_ACK").await;
    let wf = r#"{"workflow_id":"bench","recipe":{"command_type":"SYNC_STATE"}}"#;
    http(gw, "POST", "/api/v1/workflows", Some(&operator), wf).await;

    let healthz = measure(iters, async || {
        http(gw, "GET", "/healthz", None, "").await;
    })
    .await;
    let run_body = r#"{"workflow_id":"bench","devices":["D1"]}"#;
    let to_command = measure(iters, async || {
        let t0 = Instant::now();
        http(gw, "POST", "/api/v1/runs", Some(&operator), run_body).await;
        let cmd = next_of(&mut node, "COMMAND").await;
        let took = t0.elapsed();
        let id = cmd["payload"]["command_id"].clone();
        let result = node_frame("RESULT", serde_json::json!({"command_id": id, "status": "SUCCESS"}));
        node.send(Message::Text(result.into())).await.unwrap();
        next_of(&mut node, "ACK").await;
        std::hint::black_box(took);
    })
    .await;
    row("GET /healthz over HTTP (baseline)", &healthz, &healthz);
    row("run created -> COMMAND (+ RESULT/ACK)", &to_command, &healthz);
    mesh.shutdown().await.unwrap();
}

/// A LiveChat socket that has identified; `nonce` numbers its requests.
struct Chat {
    ws: tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    nonce: u64,
}

impl Chat {
    async fn connect(addr: std::net::SocketAddr, user: &str) -> Self {
        let (mut ws, _) = ws_connect(format!("ws://{addr}/ws/livechat")).await.unwrap();
        ws.next().await.unwrap().unwrap(); // HELLO
        let identify = serde_json::json!({"op": 3, "d": {"user_id": user, "token": token(user)}});
        ws.send(Message::Text(identify.to_string().into())).await.unwrap();
        ws.next().await.unwrap().unwrap(); // READY
        Self { ws, nonce: 0 }
    }

    /// Sends `{op, d}` with a fresh nonce; returns when its answer arrives
    /// (events in between are skipped).
    async fn call(&mut self, op: u16, d: serde_json::Value) {
        let request = ChatRequest::new(op, &d);
        self.send(&request).await;
    }

    /// Sends a prepared request with a fresh nonce and waits for its
    /// answer: no JSON is built or parsed on the client's side, so the
    /// client's core is spent on the sockets and the server is what is
    /// measured.
    async fn send(&mut self, request: &ChatRequest) {
        self.nonce += 1;
        let nonce = self.nonce.to_string();
        let frame = format!("{}{nonce}\"}}}}", request.head);
        self.ws.send(Message::Text(frame.into())).await.unwrap();
        let needle = format!("\"nonce\":\"{nonce}\"");
        loop {
            if let Message::Text(t) = self.ws.next().await.unwrap().unwrap()
                && t.contains(&needle)
            {
                return;
            }
        }
    }
}

/// A LiveChat request rendered once, up to its nonce: `{"op":..,"d":{..,"nonce":"`.
#[derive(Clone)]
struct ChatRequest {
    head: String,
}

impl ChatRequest {
    fn new(op: u16, d: &serde_json::Value) -> Self {
        let d = d.to_string();
        // `{...}` without its closing brace, then the nonce field.
        let body = d.strip_suffix('}').unwrap_or("{");
        let sep = if body.len() > 1 { "," } else { "" };
        Self {
            head: format!("{{\"op\":{op},\"d\":{body}{sep}\"nonce\":\""),
        }
    }
}

/// `conns` connections, each doing sequential round trips of `op` for
/// `iters` iterations, each connection on its own task (so a frame wakes
/// only its own connection); returns the connections, every round trip's
/// latency, and the time the whole took.
async fn livechat_load(
    chats: Vec<Chat>,
    iters: usize,
    op: u16,
    d: &impl Fn(usize) -> serde_json::Value,
) -> (Vec<Chat>, Vec<Duration>, Duration) {
    let started = Instant::now();
    let mut runs = tokio::task::JoinSet::new();
    for (i, mut c) in chats.into_iter().enumerate() {
        let request = ChatRequest::new(op, &d(i));
        runs.spawn(async move {
            let mut samples = Vec::with_capacity(iters);
            for _ in 0..iters {
                let t = Instant::now();
                c.send(&request).await;
                samples.push(t.elapsed());
            }
            (i, c, samples)
        });
    }
    let mut done: Vec<(usize, Chat, Vec<Duration>)> = runs.join_all().await;
    let took = started.elapsed();
    done.sort_by_key(|(i, _, _)| *i);
    let mut all = Vec::new();
    let chats = done
        .into_iter()
        .map(|(_, c, samples)| {
            all.extend(samples);
            c
        })
        .collect();
    (chats, all, took)
}

/// The round trips of one request kind, gathered over the rounds of a run.
#[derive(Default)]
struct Phase {
    samples: Vec<Duration>,
    took: Duration,
}

impl Phase {
    /// Runs one round of `iters` round trips of `op` a connection, and
    /// adds them.
    async fn round(
        &mut self,
        chats: Vec<Chat>,
        iters: usize,
        op: u16,
        d: &impl Fn(usize) -> serde_json::Value,
    ) -> Vec<Chat> {
        let (chats, samples, took) = livechat_load(chats, iters, op, d).await;
        self.samples.extend(samples);
        self.took += took;
        chats
    }

    /// Round trips a second over the phase's own time.
    fn rate(&self) -> f64 {
        self.samples.len() as f64 / self.took.as_secs_f64()
    }
}

async fn bench_livechat(iters: usize) {
    // BENCH_LIVECHAT_MODES=process|network|floor and BENCH_LIVECHAT_CONNS=16
    // narrow the run (to attach a profiler to one case).
    let modes = std::env::var("BENCH_LIVECHAT_MODES").unwrap_or_default();
    let wants = |key: &str| modes.is_empty() || modes.split(',').any(|m| m == key);
    for (key, mode, flags) in [
        ("process", "in process (`up`)", &[][..]),
        ("network", "over loopback gRPC", NETWORK),
    ] {
        if wants(key) {
            println!(
                "== livechat: MESSAGE_CREATE (channel service) against HEARTBEAT (gateway only); roles call {mode}"
            );
            let mesh = start_mesh(flags).await;
            livechat_rows(mesh.gateway_addr, iters).await;
            mesh.shutdown().await.unwrap();
        }
    }
    if wants("floor") {
        println!(
            "== livechat floor: a bare WebSocket server (no services, no state) answering each request with an ACK, and MESSAGE_CREATE with a second frame, as the protocol does"
        );
        let floor = floor_server().await;
        livechat_rows(floor.addr, iters).await;
    }
    // The issue's setup: the server as its own process on one core, the
    // clients on another, so the clients' reads of the second frame are
    // not counted against the server's core.
    if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 || !has_taskset() {
        if wants("separate") || wants("separate-floor") {
            println!("== livechat on separate cores: skipped (needs two cores and taskset)");
        }
        return;
    }
    if wants("separate") {
        for (label, exe) in repeated(builds()) {
            println!(
                "== livechat: MESSAGE_CREATE against HEARTBEAT; `relaymesh up` ({label}) as its own process on core 0, the clients on core 1"
            );
            let (up, addr, _) = up_process(&exe, Some("0"), &[]).await;
            pin_bench("1");
            livechat_rows(addr, iters).await;
            pin_bench(&all_cores());
            drop(up);
        }
    }
    if wants("separate-floor") {
        println!("== livechat floor: the bare WebSocket server as its own process on core 0, the clients on core 1");
        let mut floor = ServerProcess::spawn(Some("0"), &std::env::current_exe().unwrap(), |c| {
            c.env(SERVE_FLOOR, "1");
        });
        let line = floor.read_until("floor").await.pop().unwrap();
        let addr = line.trim_start_matches("floor").trim().parse().unwrap();
        pin_bench("1");
        livechat_rows(addr, iters).await;
        pin_bench(&all_cores());
        drop(floor);
    }
}

/// Set in the environment of this bench started as a child: it then only
/// serves the livechat floor ([`floor_server`]), prints `floor <address>`,
/// and exits when its standard input closes.
const SERVE_FLOOR: &str = "BENCH_SERVE_FLOOR";

fn serve_floor() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    // The server's tasks run on the runtime's workers while this thread
    // waits for standard input to close.
    let floor = rt.block_on(floor_server());
    println!("floor {}", floor.addr);
    let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
    drop(floor);
}

/// Connects the livechat clients to `addr` (1 and 16 connections, or
/// BENCH_LIVECHAT_CONNS) and prints MESSAGE_CREATE against HEARTBEAT.
async fn livechat_rows(addr: std::net::SocketAddr, iters: usize) {
    let conn_counts: Vec<usize> = std::env::var("BENCH_LIVECHAT_CONNS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 16]);
    for conns in conn_counts {
        let mut chats = Vec::new();
        for i in 0..conns {
            let mut c = Chat::connect(addr, &format!("u{conns}-{i}")).await;
            let channel = format!("bench-{conns}-{i}");
            c.call(10, serde_json::json!({"channel_id": channel})).await;
            c.call(11, serde_json::json!({"channel_id": channel, "ssrc": i + 1}))
                .await;
            chats.push(c);
        }
        let per_conn = (iters / conns).max(200);
        let heartbeat = |_| serde_json::json!({});
        let message = |i| serde_json::json!({"channel_id": format!("bench-{conns}-{i}"), "content": "hello"});
        // Warm-up.
        let (mut chats, _, _) = livechat_load(chats, per_conn / 10, 1, &heartbeat).await;
        // The two kinds alternate in rounds (BENCH_LIVECHAT_ROUNDS), so a
        // change in the machine's speed during the run falls on both alike:
        // run one after the other, a slow second half reads as a slow kind.
        let rounds = env_usize("BENCH_LIVECHAT_ROUNDS", 10).max(1);
        let per_round = (per_conn / rounds).max(20);
        let (mut hb, mut msg) = (Phase::default(), Phase::default());
        for _ in 0..rounds {
            chats = hb.round(chats, per_round, 1, &heartbeat).await;
            chats = msg.round(chats, per_round, 20, &message).await;
        }
        let (hb_rate, msg_rate) = (hb.rate(), msg.rate());
        let (hb, msg) = (stats(hb.samples), stats(msg.samples));
        row(&format!("{conns} conn: HEARTBEAT -> ACK (baseline)"), &hb, &hb);
        row(&format!("{conns} conn: MESSAGE_CREATE -> ACK"), &msg, &hb);
        println!(
            "{:<44} {:>9.0}/s vs {:>9.0}/s baseline ({:.2}x)",
            format!("{conns} conn: throughput"),
            msg_rate,
            hb_rate,
            msg_rate / hb_rate
        );
    }
}

/// A bare WebSocket server for the floors: accepts on loopback and runs
/// `conn` for each connection (handshake done, 4 KiB reads). Every task it
/// starts is tracked; dropping the returned server aborts them all.
struct BareServer {
    addr: std::net::SocketAddr,
    /// The accept task, which owns every connection's task; held for its
    /// Drop.
    _accept: tokio_util::task::AbortOnDropHandle<()>,
}

type ServerWs = tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>;

async fn bare_server<F, Fut>(conn: F) -> BareServer
where
    F: Fn(ServerWs) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let conn = std::sync::Arc::new(conn);
    let accept = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        while let Ok((tcp, _)) = listener.accept().await {
            while conns.try_join_next().is_some() {}
            tcp.set_nodelay(true).unwrap();
            let conn = conn.clone();
            conns.spawn(async move {
                if let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, Some(small_reads())).await {
                    conn(ws).await;
                }
            });
        }
    });
    BareServer {
        addr,
        _accept: tokio_util::task::AbortOnDropHandle::new(accept),
    }
}

/// The least any server can do for LiveChat's answers, to read the mesh's
/// ratios against: a bare WebSocket server in the same runtime, with no
/// services, no state and no fan-out. It sends HELLO, answers IDENTIFY
/// with READY and every other request with an ACK carrying its nonce, and
/// MESSAGE_CREATE, as seed 003 requires of a message (the channel,
/// sender included, receives it), with a MESSAGE_EVENT written after the
/// ACK, in the same write. Its MESSAGE_CREATE/HEARTBEAT ratio is what the
/// protocol's second frame costs by itself on this machine.
async fn floor_server() -> BareServer {
    bare_server(|mut ws| async move {
        let hello = serde_json::json!({"op": 0, "d": {"heartbeat_interval": 30000}});
        if ws.send(Message::Text(hello.to_string().into())).await.is_err() {
            return;
        }
        while let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: serde_json::Value = serde_json::from_str(&t).unwrap();
            let op = v["op"].as_u64().unwrap_or(0);
            let d = &v["d"];
            let reply = match op {
                3 => serde_json::json!({"op": 4, "d": {"session_id": "floor", "user_id": d["user_id"]}}),
                _ => serde_json::json!({"op": 200, "d": {"request_op": op, "nonce": d["nonce"]}}),
            };
            // Both of a message's frames go out in one write, as the
            // gateway writes them.
            if ws.feed(Message::Text(reply.to_string().into())).await.is_err() {
                return;
            }
            if op == 20 {
                let event = serde_json::json!({"op": 101, "d": {
                    "channel_id": d["channel_id"], "message_id": "m", "user_id": "u",
                    "content": d["content"], "timestamp": 0,
                }});
                if ws.feed(Message::Text(event.to_string().into())).await.is_err() {
                    return;
                }
            }
            if ws.flush().await.is_err() {
                return;
            }
        }
    })
    .await
}

const FANOUT_MEMBERS: usize = 1000;

async fn bench_fanout(messages: usize) {
    let Ok(redis) = std::env::var("REDIS_URL") else {
        println!("== fanout: skipped (set REDIS_URL: two gateway replicas share Redis)");
        return;
    };
    // BENCH_FANOUT_MODES=in-process|processes|floor narrows the run.
    let modes = std::env::var("BENCH_FANOUT_MODES").unwrap_or_default();
    let wants = |key: &str| modes.is_empty() || modes.split(',').any(|m| m == key);
    let metrics = std::env::var_os("BENCH_FANOUT_METRICS").is_some();
    if wants("in-process") {
        println!(
            "== fanout: {messages} messages, one every 200 ms, to {FANOUT_MEMBERS} members on two gateway replicas (Redis); the mesh in this process"
        );
        let mut options =
            relaymesh::MeshOptions::loopback(&["--jwt-secret", SECRET, "--max-channel-members", "2000"]).unwrap();
        options.redis_url = Some(redis.clone());
        options.redis_key_prefix = format!("bench-fanout-{}", std::process::id());
        let mut mesh = relaymesh::Mesh::start(options).await.unwrap();
        let second = mesh.add_gateway(0, None).await.unwrap();
        fanout_rounds(mesh.gateway_addr, second, messages).await;
        if metrics {
            print_histograms(mesh.gateway_addr).await;
        }
        mesh.shutdown().await.unwrap();
    }
    if wants("processes") {
        // As deployed: each replica its own process (in Kubernetes, its own
        // pod), so the two deliver in parallel rather than in one runtime.
        for (round, (label, exe)) in repeated(builds()).into_iter().enumerate() {
            println!(
                "== fanout: {messages} messages, one every 200 ms, to {FANOUT_MEMBERS} members on two gateway replicas (Redis); `relaymesh up` and a second `relaymesh gateway` as processes ({label})"
            );
            let prefix = format!("bench-fanout-processes-{}-{round}", std::process::id());
            let (up, first, services) = up_process(
                &exe,
                None,
                &[
                    ("REDIS_URL", redis.as_str()),
                    ("REDIS_KEY_PREFIX", prefix.as_str()),
                    ("MAX_CHANNEL_MEMBERS", "2000"),
                ],
            )
            .await;
            let (second_process, second) = gateway_process(&exe, &services, &redis, &prefix).await;
            fanout_rounds(first, second, messages).await;
            if metrics {
                print_histograms(first).await;
            }
            drop((second_process, up));
        }
    }
    redis_replies(&redis, FANOUT_MEMBERS).await;
    if wants("floor") {
        bench_fanout_floor(messages).await;
    }
}

/// Where the time before the first delivery goes: the mesh's own
/// histograms at `gateway` (the fan-out job, the RPCs, shared-state calls).
async fn print_histograms(gateway: std::net::SocketAddr) {
    let text = http(gateway, "GET", "/metrics", None, "").await;
    for line in text.lines().filter(|l| l.contains("_sum") || l.contains("_count")) {
        println!("  {line}");
    }
}

/// Joins [`FANOUT_MEMBERS`] members to one channel, half on each of the
/// gateways `first` and `second`, then sends `messages` messages, one every
/// 200 ms, and prints send -> first and last member's delivery.
async fn fanout_rounds(first: std::net::SocketAddr, second: std::net::SocketAddr, messages: usize) {
    let mut sender = Chat::connect(first, "sender").await;
    sender.call(10, serde_json::json!({"channel_id": "big"})).await;
    sender
        .call(11, serde_json::json!({"channel_id": "big", "ssrc": 1}))
        .await;
    // Members join, 64 at a time, half on each replica (issue 12's "an
    // event start where everyone joins at once").
    let joins_started = Instant::now();
    let mut members = Vec::with_capacity(FANOUT_MEMBERS);
    for chunk in (0..FANOUT_MEMBERS).collect::<Vec<_>>().chunks(64) {
        let joins = chunk.iter().map(|&i| {
            let addr = if i % 2 == 0 { first } else { second };
            async move {
                let mut c = Chat::connect(addr, &format!("m{i}")).await;
                c.call(11, serde_json::json!({"channel_id": "big", "ssrc": i + 2}))
                    .await;
                c
            }
        });
        members.extend(futures_util::future::join_all(joins).await);
    }
    println!(
        "{:<44} {:>9.1?}",
        format!("{FANOUT_MEMBERS} joins answered (64 in flight)"),
        joins_started.elapsed()
    );
    let (mut rx, readers) = fanout_readers(members.into_iter().map(|c| c.ws).collect());
    // The 1,000 joins queued ~500,000 join-event deliveries behind which the
    // first messages would wait (ordered per channel): time the steady
    // state, once a first message has reached every member.
    let settle = usize::MAX / 2;
    let started = Instant::now();
    sender
        .call(
            20,
            serde_json::json!({"channel_id": "big", "content": format!("fan-{settle}")}),
        )
        .await;
    let mut settled = 0;
    while settled < FANOUT_MEMBERS {
        let (n, _) = rx.recv().await.unwrap();
        settled += usize::from(n == settle);
    }
    println!(
        "{:<44} {:>9.1?}",
        "join events drained, first message delivered",
        started.elapsed()
    );
    let mut sent_at = Vec::with_capacity(messages);
    for n in 0..messages {
        sent_at.push(Instant::now());
        sender
            .call(
                20,
                serde_json::json!({"channel_id": "big", "content": format!("fan-{n}")}),
            )
            .await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fanout_report(&mut rx, &sent_at, FANOUT_MEMBERS).await;
    for r in readers {
        r.abort();
    }
}

/// What a fan-out's two 1,000-element reads cost through the state crate
/// (`SharedState`, the code the mesh runs): the members' `HKEYS` that
/// `SendMessage` reads and the registry's `MGET` that the fan-out job
/// reads, beside one `GET` (the round trip alone).
async fn redis_replies(redis: &str, n: usize) {
    let prefix = format!("bench-replies-{}", std::process::id());
    let state = relaymesh_state::SharedState::connect(Some(redis), &prefix)
        .await
        .unwrap();
    let ttl = Some(Duration::from_secs(60));
    let value = [7u8; 90];
    let keys: Vec<String> = (0..n).map(|i| format!("sess:{i}")).collect();
    for (i, key) in keys.iter().enumerate() {
        state.set(key, &value, ttl).await.unwrap();
        state
            .hash_set("members", &format!("conn-{i}-0123456789abcdef0123456789"), &value)
            .await
            .unwrap();
    }
    let keys: Vec<&str> = keys.iter().map(String::as_str).collect();
    let time = async |op: u8| {
        let mut samples = Vec::with_capacity(200);
        for _ in 0..200 {
            let t = Instant::now();
            match op {
                0 => drop(state.get(keys[0]).await.unwrap()),
                1 => drop(state.hash_fields("members").await.unwrap()),
                _ => drop(state.get_many(&keys).await.unwrap()),
            }
            samples.push(t.elapsed());
        }
        stats(samples)
    };
    let one = time(0).await;
    row("redis GET, one key (baseline)", &one, &one);
    row(&format!("redis HKEYS, {n} fields"), &time(1).await, &one);
    row(&format!("redis MGET, {n} keys"), &time(2).await, &one);
    state.delete("members").await.unwrap();
}

/// Per-message arrivals at each of `members`: (message number, when).
type Arrivals = tokio::sync::mpsc::UnboundedReceiver<(usize, Instant)>;

/// One reader task per member socket, reporting when each `fan-N` message
/// reaches it.
fn fanout_readers(members: Vec<Ws>) -> (Arrivals, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel::<(usize, Instant)>();
    let readers = members
        .into_iter()
        .map(|mut ws| {
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(Ok(Message::Text(t))) = ws.next().await {
                    if let Some(rest) = t.split("\"content\":\"fan-").nth(1)
                        && let Some(n) = rest.split('"').next().and_then(|n| n.parse().ok())
                    {
                        let _ = tx.send((n, Instant::now()));
                    }
                }
            })
        })
        .collect();
    (rx, readers)
}

/// Prints p50/p99 of send -> last member's delivery over the messages
/// sent at `sent_at` (message n at `sent_at[n]`).
async fn fanout_report(rx: &mut Arrivals, sent_at: &[Instant], members: usize) {
    let messages = sent_at.len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut first = vec![None::<Instant>; messages];
    let mut last = vec![None::<Instant>; messages];
    let mut count = vec![0usize; messages];
    while let Ok(Some((n, at))) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
        if n < messages {
            count[n] += 1;
            first[n] = Some(first[n].map_or(at, |f: Instant| f.min(at)));
            last[n] = Some(last[n].map_or(at, |l: Instant| l.max(at)));
        }
    }
    let delivered: usize = count.iter().sum();
    let since_sent = |at: &[Option<Instant>]| -> Stats {
        stats(
            (0..messages)
                .filter_map(|n| at[n].map(|t| t.duration_since(sent_at[n])))
                .collect(),
        )
    };
    let (f, s) = (since_sent(&first), since_sent(&last));
    println!(
        "{:<44} p50 {:>9.1?}  p99 {:>9.1?}",
        "send -> first member's delivery", f.median, f.p99,
    );
    println!(
        "{:<44} p50 {:>9.1?}  p99 {:>9.1?}  ({delivered} of {} deliveries)",
        "send -> last member's delivery",
        s.median,
        s.p99,
        messages * members
    );
}

/// The fan-out's floor: a bare WebSocket server in the same runtime, one
/// task and one bounded queue per connection as the gateway has, that
/// writes one MESSAGE_EVENT-sized frame to each of 1,000 connections, read
/// by the same reader tasks: no services, no Redis, no registry, no
/// sender's request. What 1,000 socket writes and reads cost on this
/// machine.
async fn bench_fanout_floor(messages: usize) {
    const MEMBERS: usize = FANOUT_MEMBERS;
    println!(
        "== fanout floor: a bare WebSocket server writing {messages} frames, one every 200 ms, to {MEMBERS} connections"
    );
    let queues = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let accepted = queues.clone();
    let server = bare_server(move |mut ws| {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<tokio_tungstenite::tungstenite::Utf8Bytes>(64);
        accepted.lock().unwrap().push(tx);
        async move {
            while let Some(frame) = rx.recv().await {
                if ws.send(Message::Text(frame)).await.is_err() {
                    return;
                }
            }
        }
    })
    .await;
    let addr = server.addr;
    let mut members = Vec::with_capacity(MEMBERS);
    for chunk in (0..MEMBERS).collect::<Vec<_>>().chunks(64) {
        let connects = chunk
            .iter()
            .map(|_| async move { ws_connect(format!("ws://{addr}/")).await.unwrap().0 });
        members.extend(futures_util::future::join_all(connects).await);
    }
    while queues.lock().unwrap().len() < MEMBERS {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut rx, readers) = fanout_readers(members);
    let mut sent_at = Vec::with_capacity(messages);
    for n in 0..messages {
        sent_at.push(Instant::now());
        let frame = serde_json::json!({"op": 101, "d": {
            "channel_id": "big", "message_id": uuid::Uuid::new_v4().to_string(), "user_id": "sender",
            "content": format!("fan-{n}"), "timestamp": 0,
        }})
        .to_string();
        let frame = tokio_tungstenite::tungstenite::Utf8Bytes::from(frame);
        for q in queues.lock().unwrap().iter() {
            let _ = q.try_send(frame.clone());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    fanout_report(&mut rx, &sent_at, MEMBERS).await;
    for r in readers {
        r.abort();
    }
    drop(server);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A signal client: sends seed 004 frames, waits for one type.
struct SignalPeer {
    ws: Ws,
    id: String,
}

impl SignalPeer {
    async fn join(addr: std::net::SocketAddr, id: &str) -> Self {
        let url = format!("ws://{addr}/ws/signal?token={}", token(id));
        let (ws, _) = ws_connect(url).await.unwrap();
        let mut p = Self { ws, id: id.to_owned() };
        p.send("join_lobby", serde_json::json!({"playerId": id, "playerName": id}))
            .await;
        p.wait("lobby_joined").await;
        p
    }

    async fn send(&mut self, kind: &str, payload: serde_json::Value) {
        let frame = serde_json::json!({"type": kind, "payload": payload}).to_string();
        self.ws.send(Message::Text(frame.into())).await.unwrap();
    }

    async fn wait(&mut self, kind: &str) -> serde_json::Value {
        loop {
            if let Message::Text(t) = self.ws.next().await.unwrap().unwrap() {
                let v: serde_json::Value = serde_json::from_str(&t).unwrap();
                if v["type"] == kind {
                    return v["payload"].clone();
                }
                assert_ne!(v["type"], "error", "{}: {v}", self.id);
            }
        }
    }

    /// A WebSocket ping and its pong, which the gateway answers itself.
    async fn ping(&mut self) {
        self.ws.send(Message::Ping(Default::default())).await.unwrap();
        loop {
            if let Message::Pong(_) = self.ws.next().await.unwrap().unwrap() {
                return;
            }
        }
    }
}

/// One match from two fresh players to the last ICE candidate.
async fn negotiate(a_addr: std::net::SocketAddr, b_addr: std::net::SocketAddr, n: usize) {
    let (ida, idb) = (format!("a{n}"), format!("b{n}"));
    let (mut a, mut b) = tokio::join!(SignalPeer::join(a_addr, &ida), SignalPeer::join(b_addr, &idb));
    a.send(
        "request_match",
        serde_json::json!({"requesterId": ida, "targetId": idb}),
    )
    .await;
    let sid = b.wait("match_request_received").await["sessionId"].clone();
    b.send(
        "accept_match",
        serde_json::json!({"accepterId": idb, "requesterId": ida, "sessionId": sid}),
    )
    .await;
    a.wait("match_request_accepted").await;
    a.send(
        "send_sdp_offer",
        serde_json::json!({"senderId": ida, "receiverId": idb, "sdp": "v=0", "sessionId": sid}),
    )
    .await;
    b.wait("sdp_offer_received").await;
    b.send(
        "send_sdp_answer",
        serde_json::json!({"senderId": idb, "receiverId": ida, "sdp": "v=0", "sessionId": sid}),
    )
    .await;
    a.wait("sdp_answer_received").await;
    trickle(&mut a, &mut b, &sid).await;
    trickle(&mut b, &mut a, &sid).await;
}

/// Four ICE candidates from `from`, until all reached `to`.
async fn trickle(from: &mut SignalPeer, to: &mut SignalPeer, sid: &serde_json::Value) {
    for i in 0..4 {
        let c = serde_json::json!({"candidate": format!("candidate:{i} 1 udp 1 10.0.0.1 9 typ host"), "sdpMid": "0", "sdpMLineIndex": 0});
        let p = serde_json::json!({"senderId": from.id, "receiverId": to.id, "candidate": c, "sessionId": sid});
        from.send("send_ice_candidate", p).await;
    }
    for _ in 0..4 {
        to.wait("ice_candidate_received").await;
    }
}

async fn bench_signal(iters: usize) {
    let matches = iters.min(400);
    let concurrency = 8;
    println!(
        "== signal: seed 004 over two gateway replicas ({matches} matches, {concurrency} at a time; {iters} relayed SDP)"
    );
    let mut mesh = start_mesh(&[]).await;
    let (a_addr, b_addr) = (mesh.gateway_addr, mesh.add_gateway(0, None).await.unwrap());

    let started = Instant::now();
    let mut next = 0;
    while next < matches {
        let batch: Vec<_> = (next..(next + concurrency).min(matches))
            .map(|n| tokio::spawn(negotiate(a_addr, b_addr, n)))
            .collect();
        next += batch.len();
        for t in batch {
            t.await.unwrap();
        }
    }
    let per_sec = matches as f64 / started.elapsed().as_secs_f64();

    // One open match; then SDP offers from A to B against pings.
    let (mut a, mut b) = tokio::join!(SignalPeer::join(a_addr, "lat-a"), SignalPeer::join(b_addr, "lat-b"));
    a.send(
        "request_match",
        serde_json::json!({"requesterId": "lat-a", "targetId": "lat-b"}),
    )
    .await;
    let sid = b.wait("match_request_received").await["sessionId"].clone();
    b.send(
        "accept_match",
        serde_json::json!({"accepterId": "lat-b", "requesterId": "lat-a", "sessionId": sid}),
    )
    .await;
    a.wait("match_request_accepted").await;
    let offer = serde_json::json!({"senderId": "lat-a", "receiverId": "lat-b", "sdp": "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\n", "sessionId": sid});
    let ping = measure(iters, async || a.ping().await).await;
    let relayed = measure(iters, async || {
        a.send("send_sdp_offer", offer.clone()).await;
        b.wait("sdp_offer_received").await;
    })
    .await;
    println!("matches negotiated per second: {per_sec:.1} (join, request, accept, offer, answer, 4 ICE each way)");
    row("ws ping -> pong (gateway only, baseline)", &ping, &ping);
    row("send_sdp_offer -> sdp_offer_received", &relayed, &ping);
    mesh.shutdown().await.unwrap();
}

fn main() {
    if std::env::var_os(SERVE_FLOOR).is_some() {
        return serve_floor();
    }
    let filter: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with('-')).collect();
    let wants = |name: &str| filter.is_empty() || filter.iter().any(|f| name.contains(f.as_str()));
    let iters = env_usize("BENCH_ITERS", 5000);
    let sockets = env_usize("BENCH_SOCKETS", 2000);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        if wants("rpc") {
            bench_rpc(iters).await;
        }
        if wants("copilot") {
            bench_copilot(iters).await;
        }
        if wants("idle-sockets") {
            bench_idle_sockets(sockets).await;
        }
        if wants("signal") {
            bench_signal(iters).await;
        }
        if wants("farm") {
            bench_farm(iters.min(500)).await;
        }
        if wants("livechat") {
            bench_livechat(iters).await;
        }
        if wants("fanout") {
            bench_fanout(env_usize("BENCH_FANOUT_MESSAGES", 50)).await;
        }
    });
}
