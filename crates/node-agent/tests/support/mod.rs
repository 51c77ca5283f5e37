//! A fake hub speaking docs/node-protocol.md over a real socket on
//! 127.0.0.1:0, signing and verifying frames like the real one, plus the
//! helpers to start an agent against it. Each test drives the hub by hand:
//! it decides when to accept a connection, what to send and when to hang up.
//!
//! [`FakeHub::bind_tls`] puts a rustls acceptor with a fresh self-signed
//! `localhost` certificate in front of the same hub, for `wss://` tests.

#![allow(clippy::unwrap_used, clippy::expect_used, dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use relaymesh_node_agent::{AgentConfig, AgentError};
use relaymesh_wire::node::signature::{signed_frame, verify};
use relaymesh_wire::node::{FrameType, NodeKey, OutFrame};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_util::sync::CancellationToken;

pub const SECRET: &str = "c2VjcmV0LWZvci10ZXN0cw==";
pub const NODE: &str = "node-test";
/// Upper bound on any single wait, so a broken agent fails a test instead of hanging it.
pub const PATIENCE: Duration = Duration::from_secs(10);

pub fn key() -> NodeKey {
    NodeKey::from_secret(SECRET)
}

/// The hub's side of a connection: plain TCP or TLS over TCP.
pub trait HubIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> HubIo for T {}

type HubStream = Box<dyn HubIo>;

pub struct FakeHub {
    listener: TcpListener,
    pub url: String,
    /// Set by [`FakeHub::bind_tls`]: every accepted connection does TLS first.
    tls: Option<TlsAcceptor>,
    /// The self-signed certificate (PEM) of a TLS hub.
    pub cert_pem: Option<String>,
}

impl FakeHub {
    pub async fn bind() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("ws://{}/ws/node", listener.local_addr().unwrap());
        Self {
            listener,
            url,
            tls: None,
            cert_pem: None,
        }
    }

    /// A hub at `wss://localhost:PORT/ws/node` with a fresh self-signed
    /// certificate for `localhost` and 127.0.0.1 (see [`FakeHub::write_ca_file`]).
    pub async fn bind_tls() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rcgen::CertifiedKey { cert, signing_key } =
            rcgen::generate_simple_self_signed(vec!["localhost".to_owned(), "127.0.0.1".to_owned()]).unwrap();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(signing_key.serialize_der()));
        let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
        let server = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(vec![cert.der().clone()], key)
            .unwrap();
        Self {
            listener,
            url: format!("wss://localhost:{port}/ws/node"),
            tls: Some(TlsAcceptor::from(Arc::new(server))),
            cert_pem: Some(cert.pem()),
        }
    }

    /// Writes the TLS hub's certificate to a PEM file, for `--hub-ca-file`.
    pub fn write_ca_file(&self) -> PathBuf {
        let pem = self.cert_pem.as_deref().expect("not a TLS hub");
        let port = self.listener.local_addr().unwrap().port();
        let path = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("fake-hub-ca-{port}.pem"));
        std::fs::write(&path, pem).unwrap();
        path
    }

    /// Accepts the agent's next connection. Until this is called the agent
    /// cannot finish its WebSocket handshake: to it, the hub is down.
    pub async fn accept(&self) -> HubConn {
        self.try_accept().await.unwrap()
    }

    /// Accepts the agent's next TCP connection (panics if none comes) and
    /// runs the TLS (TLS hubs) and WebSocket handshakes; `Err` says which
    /// handshake failed and why.
    pub async fn try_accept(&self) -> Result<HubConn, String> {
        let (tcp, _) = tokio::time::timeout(PATIENCE, self.listener.accept())
            .await
            .expect("agent did not connect")
            .unwrap();
        let stream: HubStream = match &self.tls {
            None => Box::new(tcp),
            Some(acceptor) => match tokio::time::timeout(PATIENCE, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => Box::new(tls),
                Ok(Err(e)) => return Err(format!("TLS handshake failed: {e}")),
                Err(_) => return Err("TLS handshake timed out".to_owned()),
            },
        };
        let ws = tokio_tungstenite::accept_async(stream)
            .await
            .map_err(|e| format!("WebSocket handshake failed: {e}"))?;
        Ok(HubConn {
            ws,
            key: key(),
            closed_with: None,
        })
    }
}

/// A frame the hub received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: String,
    pub message_id: String,
    pub node_id: String,
    pub payload: Value,
    pub signed_ok: bool,
}

impl Frame {
    pub fn str(&self, field: &str) -> &str {
        self.payload[field].as_str().unwrap_or_default()
    }
}

pub struct HubConn {
    ws: WebSocketStream<HubStream>,
    key: NodeKey,
    /// The agent's close code, once it closed.
    pub closed_with: Option<u16>,
}

impl HubConn {
    /// The next frame, or `None` once the agent closed. HEARTBEATs are
    /// answered with HEARTBEAT_ACK, as the hub does, and still returned.
    pub async fn recv(&mut self) -> Option<Frame> {
        loop {
            let msg = tokio::time::timeout(PATIENCE, self.ws.next())
                .await
                .expect("agent went silent");
            match msg {
                None | Some(Err(_)) => return None,
                Some(Ok(Message::Close(frame))) => {
                    self.closed_with = Some(frame.map_or(1005, |f| u16::from(f.code)));
                    return None;
                }
                Some(Ok(Message::Text(text))) => {
                    let signed_ok = verify(text.as_str(), &self.key).is_ok();
                    let v: Value = serde_json::from_str(text.as_str()).unwrap();
                    let frame = Frame {
                        kind: v["type"].as_str().unwrap().to_owned(),
                        message_id: v["message_id"].as_str().unwrap_or_default().to_owned(),
                        node_id: v["node_id"].as_str().unwrap_or_default().to_owned(),
                        payload: v["payload"].clone(),
                        signed_ok,
                    };
                    if frame.kind == "HEARTBEAT" {
                        let ack = json!({ "ref_message_id": frame.message_id });
                        self.send(FrameType::HeartbeatAck, ack).await;
                    }
                    return Some(frame);
                }
                Some(Ok(_)) => {}
            }
        }
    }

    /// The next frame of `kind`, skipping others.
    pub async fn expect(&mut self, kind: &str) -> Frame {
        loop {
            let f = self
                .recv()
                .await
                .unwrap_or_else(|| panic!("closed while waiting for {kind}"));
            if f.kind == kind {
                return f;
            }
        }
    }

    /// Every frame received during the next `window` (until the agent closes).
    pub async fn collect_for(&mut self, window: Duration) -> Vec<Frame> {
        let deadline = tokio::time::Instant::now() + window;
        let mut frames = Vec::new();
        while let Ok(Some(f)) = tokio::time::timeout_at(deadline, self.recv()).await {
            frames.push(f);
        }
        frames
    }

    /// Sends a frame signed with the shared secret; returns its message_id.
    pub async fn send(&mut self, kind: FrameType, payload: Value) -> String {
        let key = self.key.clone();
        self.send_signed_by(kind, payload, &key).await
    }

    /// Sends a frame signed with `key` (a forger's, for refusal tests).
    pub async fn send_signed_by(&mut self, kind: FrameType, payload: Value, key: &NodeKey) -> String {
        let out = OutFrame::new(kind, NODE, payload);
        let text = signed_frame(&out.to_text(), key).unwrap();
        self.ws.send(Message::text(text)).await.unwrap();
        out.message_id
    }

    /// Reads the HELLO, answers HELLO_ACK, returns the HELLO.
    pub async fn handshake(&mut self) -> Frame {
        let hello = self.expect("HELLO").await;
        let accepted = hello.payload["devices"].as_array().map_or(0, Vec::len);
        self.send(FrameType::HelloAck, json!({ "devices": accepted })).await;
        hello
    }

    pub async fn command(&mut self, id: &str, device: &str, timeout_ms: Option<u64>) -> String {
        self.send(FrameType::Command, command(id, device, timeout_ms)).await
    }

    pub async fn ack_result(&mut self, result: &Frame) {
        let payload = json!({ "ref_message_id": result.message_id, "command_id": result.str("command_id") });
        self.send(FrameType::Ack, payload).await;
    }

    /// Closes from the hub side with `code`.
    pub async fn close(mut self, code: u16) {
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: "test".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        let _ = tokio::time::timeout(Duration::from_secs(1), async {
            while self.ws.next().await.is_some() {}
        })
        .await;
    }
}

pub fn command(id: &str, device: &str, timeout_ms: Option<u64>) -> Value {
    let mut c = json!({
        "command_id": id,
        "run_id": "run-1",
        "device_serial": device,
        "command_type": "WATCH_VIDEO",
        "params": { "video_id": "dQw4w9WgXcQ" },
    });
    if let Some(ms) = timeout_ms {
        c["timeout_ms"] = json!(ms);
    }
    c
}

pub fn serial(i: usize) -> String {
    format!("SIM-{i:04}")
}

/// An agent for `hub` with fast test timings plus `extra` flags.
pub fn config(hub: &FakeHub, extra: &[&str]) -> AgentConfig {
    let mut args = vec![
        "node-agent",
        "--node-id",
        NODE,
        "--node-secret",
        SECRET,
        "--vultr-url",
        hub.url.as_str(),
        "--driver",
        "sim",
        "--heartbeat-interval-ms",
        "1000",
        "--reconnect-min-ms",
        "50",
        "--reconnect-max-ms",
        "200",
        "--sim-task-ms",
        "100",
        "--sim-jitter-ms",
        "0",
        "--shutdown-grace-ms",
        "3000",
    ];
    args.extend_from_slice(extra);
    AgentConfig::try_parse_from(args).unwrap()
}

pub struct RunningAgent {
    pub shutdown: CancellationToken,
    pub handle: JoinHandle<Result<(), AgentError>>,
}

impl RunningAgent {
    /// Waits for the agent to return.
    pub async fn finished(self) -> Result<(), AgentError> {
        tokio::time::timeout(PATIENCE, self.handle)
            .await
            .expect("agent did not stop")
            .unwrap()
    }
}

pub fn start(config: AgentConfig) -> RunningAgent {
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(relaymesh_node_agent::run(config, shutdown.clone()));
    RunningAgent { shutdown, handle }
}
