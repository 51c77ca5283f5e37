//! Starts the mesh on port 0 and speaks its WebSocket protocols.

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use relaymesh::{Mesh, MeshOptions};
use relaymesh_state::testing;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const JWT_SECRET: &str = "integration-test-secret";

/// A shared-state backend a test runs on.
pub use relaymesh_state::Backend;

/// Memory always; Redis too when REDIS_URL is set, a Redis Cluster too when
/// REDIS_CLUSTER_URLS is (CI sets both).
pub fn backends() -> Vec<Backend> {
    testing::backend_list()
}

/// Options for a test mesh: loopback, port 0, a fresh Redis prefix, the
/// test JWT secret, plus `extra` flags (as `relaymesh up` would take them).
pub fn options(backend: &Backend, extra: &[&str]) -> MeshOptions {
    let mut args = vec!["--jwt-secret", JWT_SECRET];
    args.extend_from_slice(extra);
    let mut options = MeshOptions::loopback(&args).expect("valid test flags");
    (options.redis_url, options.redis_cluster_urls) = match backend {
        Backend::Memory => (None, None),
        Backend::Redis(url) => (Some(url.clone()), None),
        Backend::Cluster(seeds) => (None, Some(seeds.join(","))),
    };
    options.redis_key_prefix = testing::unique_prefix("mesh");
    options
}

pub async fn start(backend: &Backend, extra: &[&str]) -> Mesh {
    Mesh::start(options(backend, extra)).await.expect("mesh starts")
}

/// An HS256 token for `user` expiring `ttl_secs` from now (negative: expired).
pub fn token(user: &str, ttl_secs: i64) -> String {
    token_with_secret(user, ttl_secs, JWT_SECRET)
}

pub fn token_with_secret(user: &str, ttl_secs: i64, secret: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "sub": user, "exp": now + ttl_secs, "iat": now });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )
    .unwrap()
}

/// A loopback port free now, for a process the test starts; never one
/// this test run handed out before. The kernel may give a port just
/// released to the next `bind(0)`: two calls in a row once returned the
/// same port, and the second scheduler of a test failed to bind while the
/// test read the first one's health as the second's.
pub fn free_port() -> u16 {
    static HANDED_OUT: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    loop {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        if !handed_out.contains(&port) {
            handed_out.push(port);
            return port;
        }
    }
}

/// As [`http_get`], None when nothing answers yet (nothing listens, or the
/// connection breaks: a process still starting, or not ours).
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Option<u16> {
    fetch(addr, path).await.ok().map(|(status, _)| status)
}

pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    fetch(addr, path).await.unwrap()
}

async fn fetch(addr: SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok((status, body))
}

/// A WebSocket client that reads frames as JSON.
pub struct Client {
    ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
    /// A close frame read while waiting for a text frame, for [`Self::ended`].
    closed: Option<Ended>,
    /// Whether the last frame returned came as binary MessagePack.
    pub last_binary: bool,
}

/// How a socket ended, as seen by the client.
#[derive(Debug, PartialEq, Eq)]
pub enum Ended {
    Closed(u16, String),
    /// Closed without a close frame.
    Dropped,
}

pub const WAIT: Duration = Duration::from_secs(5);

impl Client {
    pub async fn connect(addr: SocketAddr, path: &str) -> Self {
        let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}{path}"))
            .await
            .expect("ws connects");
        Self {
            ws,
            closed: None,
            last_binary: false,
        }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws.send(Message::Text(text.into())).await.expect("send");
    }

    pub async fn send_json(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    /// A text frame whose payload is `bytes` as they are (even not UTF-8).
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        use tokio_tungstenite::tungstenite::protocol::frame::{Frame, FrameHeader};
        let header = FrameHeader {
            opcode: OpCode::Data(Data::Text),
            ..FrameHeader::default()
        };
        let frame = Frame::from_payload(header, bytes.into());
        self.ws.send(Message::Frame(frame)).await.expect("send");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::Binary(bytes.into())).await.expect("send");
    }

    /// The next text frame as JSON (or binary frame as MessagePack, read as
    /// the same JSON value), skipping the server's pings.
    pub async fn recv(&mut self) -> Value {
        self.try_recv(WAIT).await.expect("a text frame")
    }

    pub async fn try_recv(&mut self, wait: Duration) -> Option<Value> {
        self.try_recv_frame(wait, true).await
    }

    /// The next text frame as JSON, the server's pings included.
    pub async fn try_recv_any(&mut self, wait: Duration) -> Option<Value> {
        self.try_recv_frame(wait, false).await
    }

    async fn try_recv_frame(&mut self, wait: Duration, skip_pings: bool) -> Option<Value> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let msg = tokio::time::timeout_at(deadline, self.ws.next()).await.ok()??.ok()?;
            match msg {
                Message::Text(t) => {
                    let v: Value = serde_json::from_str(&t).expect("server frames are JSON");
                    if skip_pings && v["type"] == "ping" {
                        continue;
                    }
                    self.last_binary = false;
                    return Some(v);
                }
                Message::Binary(b) => {
                    self.last_binary = true;
                    return Some(rmp_serde::from_slice(&b).expect("server binary frames are MessagePack"));
                }
                Message::Close(frame) => {
                    self.closed =
                        Some(frame.map_or(Ended::Dropped, |f| Ended::Closed(f.code.into(), f.reason.to_string())));
                    return None;
                }
                _ => continue,
            }
        }
    }

    /// Reads and discards every frame until the socket ends.
    pub async fn drain(mut self) {
        while let Some(Ok(_)) = self.ws.next().await {}
    }

    /// Reads until the socket ends; panics if a text frame comes first
    /// unless `skip_text`.
    pub async fn ended(&mut self, wait: Duration, skip_text: bool) -> Ended {
        if let Some(ended) = self.closed.take() {
            return ended;
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.ws.next())
                .await
                .expect("socket ends in time")
            {
                None | Some(Err(_)) => return Ended::Dropped,
                Some(Ok(Message::Close(Some(f)))) => return Ended::Closed(f.code.into(), f.reason.to_string()),
                Some(Ok(Message::Close(None))) => return Ended::Dropped,
                Some(Ok(Message::Text(t))) if !skip_text => panic!("expected close, got {t}"),
                Some(Ok(_)) => continue,
            }
        }
    }

    pub async fn close_code(&mut self) -> u16 {
        match self.ended(WAIT, true).await {
            Ended::Closed(code, _) => code,
            Ended::Dropped => panic!("closed without a close frame"),
        }
    }
}

/// A livechat client that has identified as `user`.
pub async fn livechat_ready(addr: SocketAddr, user: &str) -> (Client, Value) {
    // Generous: under a load test (a thousand members fanning out) the
    // handshake queues; waiting longer is not an assertion of speed.
    let answer_within = Duration::from_secs(60);
    let mut c = Client::connect(addr, "/ws/livechat").await;
    let hello = c.try_recv(answer_within).await.expect("HELLO");
    assert_eq!(hello["op"], 0);
    c.send_json(serde_json::json!({"op": 3, "d": {"user_id": user, "token": token(user, 600)}}))
        .await;
    let ready = c.try_recv(answer_within).await.expect("READY");
    assert_eq!(ready["op"], 4, "READY: {ready}");
    (c, ready)
}

/// A LiveChat MESSAGE_EVENT, as a service would deliver it.
pub fn message_event(channel_id: &str, content: String) -> relaymesh_proto::client::v1::LivechatResponse {
    use relaymesh_proto::client::v1::{LivechatResponse, MessageEvent, livechat_response::Event};
    LivechatResponse {
        event: Some(Event::MessageEvent(MessageEvent {
            channel_id: channel_id.to_owned(),
            message_id: "m".into(),
            user_id: "producer".into(),
            content,
            timestamp: 1,
        })),
    }
}

/// A identified livechat client that matches answers to requests by nonce
/// and keeps the events that arrive in between.
pub struct Chat {
    pub client: Client,
    /// READY's session id (the gateway connection id).
    pub session_id: String,
    pending: std::collections::VecDeque<Value>,
    next_nonce: u64,
}

impl Chat {
    pub async fn ready(addr: SocketAddr, user: &str) -> Self {
        let (client, ready) = livechat_ready(addr, user).await;
        let session_id = ready["d"]["session_id"].as_str().unwrap().to_owned();
        Self {
            client,
            session_id,
            pending: Default::default(),
            next_nonce: 0,
        }
    }

    /// Sends `{op, d + nonce}` and returns the ACK (200) or ERROR (201)
    /// carrying that nonce.
    pub async fn call(&mut self, op: u16, d: Value) -> Value {
        self.call_within(op, d, WAIT).await
    }

    /// As [`Self::call`], waiting up to `wait` for the answer (a test of
    /// load, where an answer may queue behind many others, not of speed).
    pub async fn call_within(&mut self, op: u16, mut d: Value, wait: Duration) -> Value {
        self.next_nonce += 1;
        let nonce = format!("n{}", self.next_nonce);
        d["nonce"] = Value::String(nonce.clone());
        self.client.send_json(serde_json::json!({"op": op, "d": d})).await;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.client.try_recv(left).await.expect("an answer in time");
            if (v["op"] == 200 || v["op"] == 201) && v["d"]["nonce"] == nonce.as_str() {
                return v;
            }
            self.pending.push_back(v);
        }
    }

    /// ACK's `d`, panicking on ERROR.
    pub async fn ok(&mut self, op: u16, d: Value) -> Value {
        let v = self.call(op, d).await;
        assert_eq!(v["op"], 200, "expected ACK, got {v}");
        v["d"].clone()
    }

    /// The ERROR code for a request that must fail.
    pub async fn err(&mut self, op: u16, d: Value) -> u64 {
        let v = self.call(op, d).await;
        assert_eq!(v["op"], 201, "expected ERROR, got {v}");
        v["d"]["code"].as_u64().unwrap()
    }

    /// The next frame with `op` (kept or new), skipping nothing else.
    pub async fn event(&mut self, op: u16) -> Value {
        self.try_event(op, WAIT)
            .await
            .unwrap_or_else(|| panic!("no op {op} event"))
    }

    pub async fn try_event(&mut self, op: u16, wait: Duration) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(|v| v["op"] == op) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.client.try_recv(left).await?;
            if v["op"] == op {
                return Some(v);
            }
            self.pending.push_back(v);
        }
    }
}

/// Node frame secret of the test mesh (`NODE_SHARED_SECRET`), base64.
pub const NODE_SECRET: &str = "cmVsYXltZXNoLXRlc3Qtbm9kZS1zZWNyZXQ=";
/// `NODE_AGENT_SHARED_SECRET` of the test mesh.
pub const NODE_AGENT_SECRET: &str = "agent-secret";

/// A token for an operator (roles include `operator`).
pub fn operator_token(user: &str) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64;
    let claims = serde_json::json!({ "sub": user, "exp": now + 600, "realm_access": {"roles": ["operator"]} });
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap()
}

/// One HTTP/1.1 request; returns the status and the body as JSON (Null
/// when the body is empty or not JSON).
pub async fn http(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    s.write_all(body).await.unwrap();
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.unwrap();
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split(' ').nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or_default();
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

/// POST/GET as an operator, with a JSON body.
pub async fn operator_call(addr: SocketAddr, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let auth = format!("Bearer {}", operator_token("ops"));
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    http(
        addr,
        method,
        path,
        &[("Authorization", &auth), ("Content-Type", "application/json")],
        body.as_bytes(),
    )
    .await
}

/// A copilot client (seed 001) past its `connected` frame, that keeps the
/// frames it is not waiting for.
pub struct Copilot {
    pub client: Client,
    /// `connected.connectionId`.
    pub connection_id: String,
    pending: std::collections::VecDeque<Value>,
}

/// The answers a cooperative copilot client gives to each callback.
pub fn callback_answer(kind: &str) -> Value {
    match kind {
        "request_available_data" => serde_json::json!(["costs-2024", "budgets"]),
        "request_api" => serde_json::json!({"rows": 3}),
        _ => serde_json::json!("the monthly cost"),
    }
}

/// The answer frame type of a callback frame type.
pub fn answer_type(callback: &str) -> &'static str {
    match callback {
        "request_available_data" => "available_data",
        "request_api" => "api_result",
        _ => "human_response",
    }
}

pub fn is_callback(v: &Value) -> bool {
    matches!(
        v["type"].as_str(),
        Some("request_available_data" | "request_api" | "clarification_request")
    )
}

impl Copilot {
    pub async fn connect(addr: SocketAddr, user: &str) -> Self {
        let mut client = Client::connect(addr, &format!("/ws/copilot?token={}", token(user, 600))).await;
        let hello = client.recv().await;
        assert_eq!(hello["type"], "connected", "{hello}");
        assert_eq!(hello["userId"], user);
        let connection_id = hello["connectionId"].as_str().expect("connectionId").to_owned();
        Self {
            client,
            connection_id,
            pending: Default::default(),
        }
    }

    /// Sends a `query` under the client's `request_id`.
    pub async fn send_query(&mut self, request_id: &str, data: Value) {
        self.client
            .send_json(serde_json::json!({"type": "query", "requestId": request_id, "data": data}))
            .await;
    }

    /// Answers a callback frame with `data`.
    pub async fn answer(&mut self, callback: &Value, data: Value) {
        let kind = answer_type(callback["type"].as_str().unwrap_or_default());
        let id = callback["requestId"].as_str().expect("callback requestId");
        self.client
            .send_json(serde_json::json!({"type": kind, "requestId": id, "data": data}))
            .await;
    }

    /// The next frame that `matches` (kept or new), keeping the others.
    pub async fn next_where(&mut self, wait: Duration, matches: impl Fn(&Value) -> bool) -> Option<Value> {
        if let Some(i) = self.pending.iter().position(&matches) {
            return self.pending.remove(i);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let v = self.client.try_recv(left).await?;
            if matches(&v) {
                return Some(v);
            }
            self.pending.push_back(v);
        }
    }

    /// The next frame of `kind`.
    pub async fn next(&mut self, kind: &str) -> Value {
        self.next_where(WAIT, |v| v["type"] == kind)
            .await
            .unwrap_or_else(|| panic!("no {kind} frame"))
    }

    /// The next callback frame.
    pub async fn next_callback(&mut self) -> Value {
        self.next_where(WAIT, is_callback).await.expect("a callback frame")
    }

    /// The `response` or `error` ending query `request_id`.
    pub async fn outcome(&mut self, request_id: &str) -> Value {
        self.next_where(WAIT, |v| {
            (v["type"] == "response" || v["type"] == "error") && v["requestId"] == request_id
        })
        .await
        .unwrap_or_else(|| panic!("no outcome for query {request_id}"))
    }

    /// Runs a query to its end, answering every callback cooperatively
    /// (see [`callback_answer`]); returns the `response` or `error`.
    pub async fn ask(&mut self, request_id: &str, data: Value) -> Value {
        self.send_query(request_id, data).await;
        loop {
            let v = self
                .next_where(WAIT, |v| {
                    is_callback(v)
                        || ((v["type"] == "response" || v["type"] == "error") && v["requestId"] == request_id)
                })
                .await
                .unwrap_or_else(|| panic!("query {request_id} stalled"));
            if !is_callback(&v) {
                return v;
            }
            let data = callback_answer(v["type"].as_str().unwrap_or_default());
            self.answer(&v, data).await;
        }
    }

    /// Whether the connection still answers a `ping`.
    pub async fn still_open(&mut self) -> bool {
        self.client.send_json(serde_json::json!({"type": "ping"})).await;
        self.next_where(WAIT, |v| v["type"] == "pong").await.is_some()
    }
}
