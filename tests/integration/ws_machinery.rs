//! The WebSocket machinery every endpoint shares: bad input gets the
//! protocol's own error frame and the connection stays open; auth failures,
//! lost heartbeats, slow readers and shutdown close it with the contract's
//! codes.

use std::time::Duration;

use serde_json::json;

use super::harness::{self, Backend, Client, Ended, WAIT, token};

/// A connected client of each protocol, past its first frames.
async fn clients(addr: std::net::SocketAddr) -> Vec<(&'static str, Client)> {
    let (livechat, _) = harness::livechat_ready(addr, "ann").await;
    let mut copilot = Client::connect(addr, &format!("/ws/copilot?token={}", token("ann", 600))).await;
    assert_eq!(copilot.recv().await["type"], "connected");
    let signal = Client::connect(addr, &format!("/ws/signal?token={}", token("ann", 600))).await;
    let node = Client::connect(addr, "/ws/node").await;
    vec![
        ("livechat", livechat),
        ("copilot", copilot),
        ("signal", signal),
        ("node", node),
    ]
}

/// The error code of each protocol's error frame, or None if `v` is not one.
fn error_code(protocol: &str, v: &serde_json::Value) -> Option<String> {
    let code = match protocol {
        "livechat" if v["op"] == 201 => &v["d"]["code"],
        "copilot" if v["type"] == "error" => &v["code"],
        "signal" if v["type"] == "error" => &v["payload"]["code"],
        "node" if v["type"] == "ERROR" => &v["payload"]["code"],
        _ => return None,
    };
    Some(code.to_string().trim_matches('"').to_owned())
}

/// Each protocol still answers after a refused frame.
async fn still_answers(protocol: &str, c: &mut Client) {
    match protocol {
        "livechat" => {
            c.send_json(json!({"op": 1, "d": {"nonce": "alive"}})).await;
            assert_eq!(c.recv().await["op"], 2);
        }
        "copilot" => {
            c.send_json(json!({"type": "ping"})).await;
            assert_eq!(c.recv().await["type"], "pong");
        }
        _ => {
            c.send_text("[]").await;
            assert!(error_code(protocol, &c.recv().await).is_some());
        }
    }
}

async fn refused_with(addr: std::net::SocketAddr, frame: &str, expect: [&str; 4]) {
    for ((protocol, mut c), want) in clients(addr).await.into_iter().zip(expect) {
        c.send_text(frame).await;
        let answer = c.recv().await;
        assert_eq!(
            error_code(protocol, &answer).as_deref(),
            Some(want),
            "{protocol} refusing {frame:?}: {answer}"
        );
        still_answers(protocol, &mut c).await;
    }
}

/// Each protocol's "bad frame" code, in `clients` order.
const BAD_FRAME: [&str; 4] = ["1004", "INVALID_MESSAGE", "4000", "INVALID_FRAME"];

#[tokio::test]
async fn malformed_non_object_and_wrongly_typed_json_gets_each_protocols_error_frame() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for frame in ["{\"op\": 1,", "[1, 2, 3]", r#"{"op":"one","type":7}"#] {
        refused_with(mesh.gateway_addr, frame, BAD_FRAME).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn unknown_types_get_each_protocols_error_frame() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for ((protocol, mut c), (frame, want)) in clients(mesh.gateway_addr).await.into_iter().zip([
        (r#"{"op":99,"d":{}}"#, "1003"),
        (r#"{"type":"dance"}"#, "UNKNOWN_TYPE"),
        (r#"{"type":"dance","payload":{}}"#, "4001"),
        (r#"{"type":"DANCE","node_id":"n1"}"#, "UNKNOWN_TYPE"),
    ]) {
        c.send_text(frame).await;
        let answer = c.recv().await;
        assert_eq!(
            error_code(protocol, &answer).as_deref(),
            Some(want),
            "{protocol}: {answer}"
        );
        still_answers(protocol, &mut c).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn oversized_frames_get_an_error_frame_and_the_connection_stays_open() {
    let mesh = harness::start(&Backend::Memory, &["--max-frame-bytes", "1024"]).await;
    let big = format!(r#"{{"op":1,"type":"ping","d":{{"pad":"{}"}}}}"#, "x".repeat(4096));
    refused_with(
        mesh.gateway_addr,
        &big,
        ["1004", "FRAME_TOO_LARGE", "4002", "FRAME_TOO_LARGE"],
    )
    .await;
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn binary_frames_get_an_error_frame() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for (protocol, mut c) in clients(mesh.gateway_addr).await {
        c.send_binary(vec![0, 1, 2]).await;
        assert!(error_code(protocol, &c.recv().await).is_some(), "{protocol}");
        still_answers(protocol, &mut c).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn missing_token_closes_with_1008() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for path in ["/ws/copilot", "/ws/signal", "/ws/copilot?token="] {
        let mut c = Client::connect(mesh.gateway_addr, path).await;
        assert_eq!(c.close_code().await, 1008, "{path}");
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn expired_or_forged_tokens_close_with_4001() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let expired = token("ann", -3600);
    let forged = harness::token_with_secret("ann", 600, "not-the-secret");
    for endpoint in ["/ws/copilot", "/ws/signal"] {
        for (what, t) in [
            ("expired", &expired),
            ("forged", &forged),
            ("garbage", &"abc.def.ghi".to_owned()),
        ] {
            let mut c = Client::connect(mesh.gateway_addr, &format!("{endpoint}?token={t}")).await;
            assert_eq!(c.close_code().await, 4001, "{endpoint} {what}");
        }
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_is_closed_with_4003() {
    let mesh = harness::start(&Backend::Memory, &["--heartbeat-interval-ms", "100"]).await;
    let addr = mesh.gateway_addr;
    let (mut livechat, _) = harness::livechat_ready(addr, "quiet").await;
    let mut copilot = Client::connect(addr, &format!("/ws/copilot?token={}", token("quiet", 600))).await;
    let mut signal = Client::connect(addr, &format!("/ws/signal?token={}", token("quiet", 600))).await;
    let mut node = Client::connect(addr, "/ws/node").await;
    // Each reads what the server sends but never answers.
    for (name, c) in [
        ("livechat", &mut livechat),
        ("copilot", &mut copilot),
        ("signal", &mut signal),
        ("node", &mut node),
    ] {
        match c.ended(WAIT, true).await {
            Ended::Closed(code, _) => assert_eq!(code, 4003, "{name}"),
            other => panic!("{name}: {other:?}"),
        }
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_client_that_heartbeats_stays_connected() {
    let mesh = harness::start(&Backend::Memory, &["--heartbeat-interval-ms", "100"]).await;
    let (mut c, _) = harness::livechat_ready(mesh.gateway_addr, "chatty").await;
    for _ in 0..10 {
        c.send_json(json!({"op": 1})).await;
        assert_eq!(c.recv().await["op"], 2, "still open after heartbeats");
        tokio::time::sleep(Duration::from_millis(60)).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn copilot_pongs_keep_the_connection_open() {
    let mesh = harness::start(&Backend::Memory, &["--heartbeat-interval-ms", "100"]).await;
    let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("p", 600))).await;
    assert_eq!(c.recv().await["type"], "connected");
    let deadline = tokio::time::Instant::now() + Duration::from_millis(700);
    while tokio::time::Instant::now() < deadline {
        c.send_json(json!({"type": "pong"})).await;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.send_json(json!({"type": "ping"})).await;
    assert_eq!(c.recv().await["type"], "pong");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_closes_every_socket_with_1001() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut all = clients(mesh.gateway_addr).await;
    let stopping = tokio::spawn(mesh.shutdown());
    for (protocol, c) in &mut all {
        assert_eq!(c.close_code().await, 1001, "{protocol}");
    }
    stopping.await.unwrap().unwrap();
}

/// Held by each test that makes a slow LiveChat reader: one of them counts
/// another's close in the process-wide metrics otherwise.
static SLOW_READERS: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

#[tokio::test]
async fn a_slow_reader_is_disconnected_and_the_others_are_unharmed() {
    let _alone = SLOW_READERS.lock().await;
    let mesh = harness::start(
        &Backend::Memory,
        &[
            "--outbound-queue",
            "4",
            "--send-timeout-ms",
            "300",
            "--heartbeat-interval-ms",
            "60000",
        ],
    )
    .await;
    let addr = mesh.gateway_addr;
    let (mut slow, ready) = harness::livechat_ready(addr, "slow").await;
    let conn = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let mut fine = Client::connect(addr, &format!("/ws/copilot?token={}", token("fine", 600))).await;
    assert_eq!(fine.recv().await["type"], "connected");

    let registry = relaymesh_state::SessionRegistry::new(mesh.state.clone(), Duration::from_secs(60));
    let delivery = relaymesh_state::Delivery::new(mesh.state.clone(), registry);
    let event = harness::message_event("CH", "y".repeat(32 * 1024));
    let conn = relaymesh_state::ConnectionId::new(conn);
    const SENT: usize = 2000;
    for _ in 0..SENT {
        let env = relaymesh_state::event_envelope(event.clone(), false);
        delivery.send_to_connection(&conn, env).await.unwrap();
    }
    // The slow client has read nothing; give the server time to give up.
    tokio::time::sleep(Duration::from_secs(1)).await;

    fine.send_json(json!({"type": "ping"})).await;
    assert_eq!(fine.recv().await["type"], "pong", "another connection is unharmed");

    let mut received = 0;
    let end = loop {
        match slow.try_recv(WAIT).await {
            Some(_) => received += 1,
            None => break slow.ended(Duration::from_millis(200), true).await,
        }
    };
    assert!(
        received < SENT,
        "the slow reader was cut off, not served everything ({received})"
    );
    assert!(matches!(end, Ended::Closed(1013, _)), "{end:?}");
    mesh.shutdown().await.unwrap();
}

/// The value of the counter series `name` whose labels include `labels`.
async fn counter(addr: std::net::SocketAddr, name: &str, labels: &[&str]) -> u64 {
    let (_, body) = harness::http_get(addr, "/metrics").await;
    body.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) && labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

#[tokio::test]
async fn a_reader_with_a_tiny_receive_buffer_gets_1013_and_is_counted() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let _alone = SLOW_READERS.lock().await;
    for backend in harness::backends() {
        // A queue long enough that only the write timeout can give up.
        let flags = ["--outbound-queue", "100000", "--send-timeout-ms", "300"];
        let mesh = harness::start(&backend, &flags).await;
        let addr = mesh.gateway_addr;
        let series = "relaymesh_gateway_slow_consumer_closes_total";
        let labels = ["protocol=\"livechat\"", "cause=\"send_timeout\""];
        let before = counter(addr, series, &labels).await;

        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        let tcp = socket.connect(addr).await.unwrap();
        let (mut ws, _) = tokio_tungstenite::client_async(format!("ws://{addr}/ws/livechat"), tcp)
            .await
            .unwrap();
        ws.next().await.unwrap().unwrap(); // HELLO
        let identify = json!({"op": 3, "d": {"user_id": "sloth", "token": token("sloth", 600)}});
        ws.send(Message::Text(identify.to_string().into())).await.unwrap();
        let ready: serde_json::Value = match ws.next().await.unwrap().unwrap() {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected READY, got {other:?}"),
        };
        let conn = relaymesh_state::ConnectionId::new(ready["d"]["session_id"].as_str().unwrap());

        // Far more than the socket buffers on both sides hold; never read.
        let registry = relaymesh_state::SessionRegistry::new(mesh.state.clone(), Duration::from_secs(60));
        let delivery = relaymesh_state::Delivery::new(mesh.state.clone(), registry);
        let event = harness::message_event("CH", "z".repeat(32 * 1024));
        for _ in 0..600 {
            let env = relaymesh_state::event_envelope(event.clone(), false);
            delivery.send_to_connection(&conn, env).await.unwrap();
        }
        // Waits for the event, not for speed: the machine may be loaded.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while counter(addr, series, &labels).await == before {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: no slow-consumer close counted"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // Reading now, the client gets what was buffered, then the close.
        let mut read = 0;
        let code = loop {
            match tokio::time::timeout(WAIT, ws.next()).await.expect("the socket ends") {
                Some(Ok(Message::Close(Some(frame)))) => break u16::from(frame.code),
                other => {
                    if !matches!(other, Some(Ok(Message::Text(_)))) {
                        panic!("{backend:?}: no close frame after {read} frames: {other:?}");
                    }
                    read += 1;
                }
            }
        };
        assert_eq!(code, 1013, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn connections_over_the_limit_are_refused() {
    let mesh = harness::start(&Backend::Memory, &["--max-connections", "2"]).await;
    let addr = mesh.gateway_addr;
    let _a = Client::connect(addr, "/ws/node").await;
    let _b = Client::connect(addr, "/ws/node").await;
    let third = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/node")).await;
    match third {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 503),
        other => panic!("expected 503, got {:?}", other.map(|_| ())),
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn past_the_hard_limit_and_invalid_utf8_get_rfc_6455_close_codes_on_every_path() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for (protocol, mut c) in clients(mesh.gateway_addr).await {
        // 1 MiB: past MAX_FRAME_BYTES (an error frame) and past the hard cap.
        c.send_text(&"x".repeat(1024 * 1024)).await;
        assert_eq!(c.close_code().await, 1009, "{protocol}: 1 MiB frame");
    }
    for (protocol, mut c) in clients(mesh.gateway_addr).await {
        c.send_raw_text(vec![b'{', 0xff, 0xfe, b'}']).await;
        assert_eq!(c.close_code().await, 1007, "{protocol}: invalid UTF-8");
    }
    // The process and other connections are unharmed.
    let mut fine = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("after", 600))).await;
    assert_eq!(fine.recv().await["type"], "connected");
    mesh.shutdown().await.unwrap();
}
