//! Seed 004 against real WebRTC software: TURN credentials minted by the
//! match service are checked by a real coturn, and two real WebRTC peers
//! (aiortc) negotiate a data channel through `/ws/signal`. CI installs both
//! (`.ci/run`); a machine without them fails these tests rather than
//! quietly skipping them.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;
use tokio::process::{Child, Command};

use super::harness::{self, Backend, Client, token};

const SECRET: &str = "turn-test-secret";

/// A free UDP port on loopback (bound, read, released).
async fn free_udp_port() -> u16 {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    s.local_addr().unwrap().port()
}

fn spawn(cmd: &mut Command) -> Child {
    cmd.stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?} must be installed (apt-get install coturn): {e}"))
}

/// Whether a STUN binding request to `port` is answered within `within`.
async fn answers_stun(port: u16, within: Duration) -> bool {
    let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut req = vec![0x00, 0x01, 0x00, 0x00, 0x21, 0x12, 0xa4, 0x42];
    req.extend_from_slice(&[7u8; 12]);
    let mut buf = [0u8; 512];
    let deadline = tokio::time::Instant::now() + within;
    while tokio::time::Instant::now() < deadline {
        s.send_to(&req, ("127.0.0.1", port)).await.unwrap();
        if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), s.recv_from(&mut buf)).await {
            return true;
        }
    }
    false
}

/// A coturn with `use-auth-secret` on loopback, and a UDP echo peer.
struct Coturn {
    port: u16,
    peer_port: u16,
    _server: Child,
    _peer: Child,
    dir: std::path::PathBuf,
}

impl Drop for Coturn {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Coturn {
    /// Starts coturn on a free port. The port is found free and then
    /// released before coturn binds it, so another test's socket can take
    /// it in between, and a loaded CI box can be slow to start it: a start
    /// that does not answer STUN is retried on fresh ports, and the last
    /// attempt's log is shown if none does.
    async fn start() -> Self {
        let mut last_log = String::new();
        for attempt in 1..=3 {
            let dir = std::env::temp_dir().join(format!("relaymesh-coturn-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&dir).unwrap();
            let (port, peer_port) = (free_udp_port().await, free_udp_port().await);
            let relay_min = free_udp_port().await.saturating_sub(20).max(40000);
            let log = dir.join("turnserver.log");
            let server = spawn(Command::new("turnserver").args([
                "-n",
                "--listening-ip=127.0.0.1",
                "--relay-ip=127.0.0.1",
                &format!("--listening-port={port}"),
                "--use-auth-secret",
                &format!("--static-auth-secret={SECRET}"),
                "--realm=relaymesh.test",
                "--no-tls",
                "--no-dtls",
                "--no-cli",
                &format!("--min-port={relay_min}"),
                &format!("--max-port={}", relay_min + 200),
                "--allow-loopback-peers",
                &format!("--pidfile={}", dir.join("turnserver.pid").display()),
                &format!("--userdb={}", dir.join("turndb").display()),
                &format!("--log-file={}", log.display()),
                "--simple-log",
            ]));
            let peer = spawn(Command::new("turnutils_peer").args(["-L", "127.0.0.1", "-p", &peer_port.to_string()]));
            if answers_stun(port, Duration::from_secs(20)).await {
                return Self {
                    port,
                    peer_port,
                    _server: server,
                    _peer: peer,
                    dir,
                };
            }
            last_log = std::fs::read_to_string(&log).unwrap_or_default();
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!("turnserver on {port} did not answer STUN (attempt {attempt})");
        }
        panic!("turnserver never answered STUN; its last log:\n{last_log}");
    }

    /// Allocates a relay with (username, password) and sends through it;
    /// true when coturn allowed it.
    async fn allocate(&self, username: &str, password: &str) -> bool {
        let status = Command::new("turnutils_uclient")
            .args(["-p", &self.port.to_string(), "-u", username, "-w", password])
            .args(["-n", "1", "-m", "1", "-l", "100", "-e", "127.0.0.1"])
            .args(["-r", &self.peer_port.to_string(), "-g", "127.0.0.1"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .status();
        let status = tokio::time::timeout(Duration::from_secs(20), status).await;
        matches!(status, Ok(Ok(s)) if s.success())
    }
}

#[tokio::test]
async fn minted_turn_credentials_allocate_on_coturn_and_expired_ones_do_not() {
    let coturn = Coturn::start().await;
    let turn_url = format!("turn:127.0.0.1:{}?transport=udp", coturn.port);
    let flags = [
        "--turn-urls",
        &turn_url,
        "--turn-secret",
        SECRET,
        "--turn-ttl-secs",
        "600",
    ];
    let mesh = harness::start(&Backend::Memory, &flags).await;
    let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/signal?token={}", token("alice", 600))).await;
    c.send_json(json!({"type": "join_lobby", "payload": {"playerId": "alice", "playerName": "A"}}))
        .await;
    let joined = c.recv().await;
    assert_eq!(joined["type"], "lobby_joined", "{joined}");
    let turn = &joined["payload"]["iceServers"][0];
    assert_eq!(turn["urls"][0], turn_url.as_str());
    let (user, pass) = (turn["username"].as_str().unwrap(), turn["credential"].as_str().unwrap());
    assert!(coturn.allocate(user, pass).await, "minted credentials allocate");

    let past = joined["payload"]["credentialsExpireAt"].as_i64().unwrap() - 3600;
    let (old_user, old_pass) = relaymesh_match::turn::turn_credential(SECRET, "alice", past);
    assert!(
        !coturn.allocate(&old_user, &old_pass).await,
        "expired credentials are refused"
    );
    let (_, forged) = relaymesh_match::turn::turn_credential("another-secret", "alice", past + 7200);
    assert!(!coturn.allocate(user, &forged).await, "a wrong password is refused");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_aiortc_peers_open_a_data_channel_through_the_mesh() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let second = mesh.add_gateway(0, None).await.unwrap();
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/webrtc_peer.py");
        let peer = |addr: std::net::SocketAddr, me: &str, other: &str, role: &str| {
            let url = format!("ws://{addr}/ws/signal?token={}", token(me, 600));
            let mut cmd = Command::new("python3");
            cmd.arg(&script)
                .args(["--url", &url, "--me", me, "--other", other, "--role", role])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .kill_on_drop(true);
            cmd.spawn().expect("python3 runs")
        };
        let answerer = peer(second, "bob", "alice", "answer");
        let offerer = peer(mesh.gateway_addr, "alice", "bob", "offer");
        let (a, b) = tokio::join!(
            tokio::time::timeout(Duration::from_secs(60), offerer.wait_with_output()),
            tokio::time::timeout(Duration::from_secs(60), answerer.wait_with_output()),
        );
        for (who, out) in [("alice", a), ("bob", b)] {
            let out = out.expect("peer finishes in time").unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{backend:?} {who}: {}\n{stdout}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(stdout.contains("match_started"), "{who}: {stdout}");
            assert!(stdout.contains("received: hello from"), "{who}: {stdout}");
        }
        mesh.shutdown().await.unwrap();
    }
}
