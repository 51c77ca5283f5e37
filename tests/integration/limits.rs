//! Rate limits: per connection and per user on every WebSocket protocol,
//! answered in the protocol's own error frame with the connection kept open,
//! and the channel's fan-out cap. Rates are set so low (a token per 1,000
//! seconds) that only the burst passes: the outcomes do not depend on time.

use serde_json::{Value, json};

use super::harness::{self, Chat, Client, NODE_SECRET, token};

/// A per-connection limit of `burst` frames, no per-user limit.
fn per_connection(burst: &'static str) -> Vec<&'static str> {
    vec![
        "--rate-limit-conn-per-sec",
        "0.001",
        "--rate-limit-conn-burst",
        burst,
        "--rate-limit-user-per-sec",
        "0",
    ]
}

/// Sends `n` messages to `channel`; the answers in order.
async fn send_messages(chat: &mut Chat, channel: &str, n: usize) -> Vec<Value> {
    let mut answers = Vec::new();
    for i in 0..n {
        answers.push(
            chat.call(20, json!({"channel_id": channel, "content": format!("m{i}")}))
                .await,
        );
    }
    answers
}

/// How many answers are ACKs; panics on an ERROR other than 4290, or a
/// 4290 without its retry time.
fn acked(answers: &[Value]) -> usize {
    answers
        .iter()
        .filter(|a| {
            if a["op"] == 201 {
                assert_eq!(a["d"]["code"], 4290, "{a}");
                assert!(a["d"]["retry_after_ms"].as_u64().unwrap() > 0, "{a}");
                false
            } else {
                true
            }
        })
        .count()
}

#[tokio::test]
async fn a_livechat_flood_gets_4290_the_socket_stays_and_other_users_are_unaffected() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &per_connection("10")).await;
        let addr = mesh.gateway_addr;
        // IDENTIFY, CREATE and JOIN take 3 of alice's 10.
        let mut alice = Chat::ready(addr, "alice").await;
        alice.ok(10, json!({"channel_id": "room"})).await;
        alice.ok(11, json!({"channel_id": "room", "ssrc": 1})).await;
        let mut bob = Chat::ready(addr, "bob").await;
        bob.ok(11, json!({"channel_id": "room", "ssrc": 2})).await;

        let answers = send_messages(&mut alice, "room", 20).await;
        assert_eq!(acked(&answers), 7, "{backend:?}: only the burst passes");
        // Still open: alice's frames are still answered (refused, in kind).
        assert_eq!(alice.err(1, json!({})).await, 4290, "{backend:?}");
        // Bob, in the same channel, is not limited by alice's flood.
        let bob_answers = send_messages(&mut bob, "room", 5).await;
        assert_eq!(acked(&bob_answers), 5, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_user_limit_holds_across_two_gateway_replicas() {
    for backend in harness::backends() {
        let flags = [
            "--rate-limit-conn-per-sec",
            "0",
            "--rate-limit-user-per-sec",
            "0.001",
            "--rate-limit-user-burst",
            "12",
        ];
        let mut mesh = harness::start(&backend, &flags).await;
        let second = mesh.add_gateway(0, None).await.unwrap();
        // IDENTIFY counts only once the user is known: CREATE and the two
        // JOINs take 3 of alice's 12, on either replica.
        let mut on_a = Chat::ready(mesh.gateway_addr, "alice").await;
        let mut on_b = Chat::ready(second, "alice").await;
        on_a.ok(10, json!({"channel_id": "hall"})).await;
        on_a.ok(11, json!({"channel_id": "hall", "ssrc": 1})).await;
        on_b.ok(11, json!({"channel_id": "hall", "ssrc": 2})).await;
        let mut carol = Chat::ready(second, "carol").await;
        carol.ok(11, json!({"channel_id": "hall", "ssrc": 3})).await;

        let mut answers = Vec::new();
        for _ in 0..10 {
            answers.extend(send_messages(&mut on_a, "hall", 1).await);
            answers.extend(send_messages(&mut on_b, "hall", 1).await);
        }
        assert_eq!(acked(&answers), 9, "{backend:?}: one budget for both replicas");
        assert_eq!(answers[19]["d"]["code"], 4290, "{backend:?}: refused on replica B too");
        assert_eq!(answers[18]["d"]["code"], 4290, "{backend:?}: and on A");
        let carol_answers = send_messages(&mut carol, "hall", 3).await;
        assert_eq!(acked(&carol_answers), 3, "{backend:?}: another user is unaffected");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_signal_flood_gets_rate_limited_errors_and_the_socket_stays() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &per_connection("3")).await;
        let addr = mesh.gateway_addr;
        let mut flooder = Client::connect(addr, &format!("/ws/signal?token={}", token("mallory", 600))).await;
        // Frames naming another player are answered by the gateway alone
        // (4003): the limit comes first.
        let forged = json!({"type": "leave_lobby", "payload": {"playerId": "someone-else"}});
        let mut codes = Vec::new();
        for _ in 0..6 {
            flooder.send_json(forged.clone()).await;
            let e = flooder.recv().await;
            assert_eq!(e["type"], "error", "{backend:?}: {e}");
            if e["payload"]["code"] == 4029 {
                assert!(e["payload"]["retryAfterMs"].as_u64().unwrap() > 0, "{e}");
            }
            codes.push(e["payload"]["code"].as_u64().unwrap());
        }
        assert_eq!(codes, [4003, 4003, 4003, 4029, 4029, 4029], "{backend:?}");
        let mut other = Client::connect(addr, &format!("/ws/signal?token={}", token("trent", 600))).await;
        other.send_json(forged).await;
        assert_eq!(other.recv().await["payload"]["code"], 4003, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_copilot_flood_gets_rate_limited_errors_and_the_socket_stays() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &per_connection("3")).await;
        let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("ivy", 600))).await;
        assert_eq!(c.recv().await["type"], "connected");
        let mut seen = Vec::new();
        for _ in 0..5 {
            c.send_json(json!({"type": "ping"})).await;
            let answer = c.recv().await;
            if answer["type"] == "error" {
                assert!(answer["retryAfterMs"].as_u64().unwrap() > 0, "{answer}");
                seen.push(answer["code"].as_str().unwrap().to_owned());
            } else {
                seen.push(answer["type"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(
            seen,
            ["pong", "pong", "pong", "RATE_LIMITED", "RATE_LIMITED"],
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

/// A signed node frame of `kind` from `node`.
fn node_frame(node: &str, kind: &str, payload: Value) -> String {
    let frame = json!({
        "version": "1.0",
        "timestamp": relaymesh_wire::node::rfc3339_millis_now(),
        "message_id": uuid::Uuid::new_v4().to_string(),
        "type": kind,
        "node_id": node,
        "payload": payload,
    });
    let key = relaymesh_wire::node::NodeKey::from_secret(NODE_SECRET);
    relaymesh_wire::node::signature::signed_frame(&frame.to_string(), &key).unwrap()
}

#[tokio::test]
async fn a_node_flood_gets_rate_limited_errors_and_the_socket_stays() {
    for backend in harness::backends() {
        let flags = [
            "--rate-limit-node-per-sec",
            "0.001",
            "--rate-limit-node-burst",
            "3",
            "--node-shared-secret",
            NODE_SECRET,
        ];
        let mesh = harness::start(&backend, &flags).await;
        let mut node = Client::connect(mesh.gateway_addr, "/ws/node").await;
        node.send_text(&node_frame("node-L", "HELLO", json!({"devices": ["D1"], "slots": 1})))
            .await;
        assert_eq!(node.recv().await["type"], "HELLO_ACK", "{backend:?}");
        let mut seen = Vec::new();
        for _ in 0..4 {
            let hb = node_frame("node-L", "HEARTBEAT", json!({"status": "BUSY"}));
            let id = serde_json::from_str::<Value>(&hb).unwrap()["message_id"].clone();
            node.send_text(&hb).await;
            let answer = node.recv().await;
            if answer["type"] == "ERROR" {
                assert_eq!(answer["payload"]["ref_message_id"], id, "{answer}");
                seen.push(answer["payload"]["code"].as_str().unwrap().to_owned());
            } else {
                seen.push(answer["type"].as_str().unwrap().to_owned());
            }
        }
        assert_eq!(
            seen,
            ["HEARTBEAT_ACK", "HEARTBEAT_ACK", "RATE_LIMITED", "RATE_LIMITED"],
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_channel_over_its_fan_out_cap_refuses_messages_and_others_go_on() {
    for backend in harness::backends() {
        let flags = ["--channel-fanout-per-sec", "0.001", "--channel-fanout-burst", "10"];
        let mesh = harness::start(&backend, &flags).await;
        let addr = mesh.gateway_addr;
        let mut alice = Chat::ready(addr, "alice").await;
        alice.ok(10, json!({"channel_id": "busy"})).await;
        alice.ok(10, json!({"channel_id": "calm"})).await;
        alice.ok(11, json!({"channel_id": "busy", "ssrc": 1})).await;
        alice.ok(11, json!({"channel_id": "calm", "ssrc": 2})).await;
        let mut others = Vec::new();
        for user in ["bob", "carol"] {
            let mut c = Chat::ready(addr, user).await;
            c.ok(11, json!({"channel_id": "busy", "ssrc": 10 + others.len()})).await;
            others.push(c);
        }
        // Three members: three deliveries a message, ten in all.
        let answers = send_messages(&mut alice, "busy", 5).await;
        assert_eq!(acked(&answers[..3]), 3, "{backend:?}");
        assert_eq!(answers[3]["d"]["code"], 4290, "{backend:?}: {}", answers[3]);
        assert!(
            answers[3]["d"]["retry_after_ms"].as_u64().unwrap() > 0,
            "{}",
            answers[3]
        );
        // Another channel has its own cap.
        assert_eq!(acked(&send_messages(&mut alice, "calm", 2).await), 2, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}
