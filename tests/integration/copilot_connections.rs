//! The operators' listing of live copilot connections (seed 001, phase 5:
//! "연결 현황 조회"), across gateway replicas.

use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{self, Client, token};

const PATH: &str = "/api/v1/copilot/connections";

async fn listing(addr: std::net::SocketAddr) -> Vec<Value> {
    let (status, body) = harness::operator_call(addr, "GET", PATH, None).await;
    assert_eq!(status, 200, "{body}");
    body["connections"].as_array().cloned().unwrap_or_default()
}

async fn copilot(addr: std::net::SocketAddr, user: &str) -> (Client, String) {
    let mut c = Client::connect(addr, &format!("/ws/copilot?token={}", token(user, 600))).await;
    let connected = c.recv().await;
    assert_eq!(connected["type"], "connected");
    (c, connected["connectionId"].as_str().unwrap().to_owned())
}

#[tokio::test]
async fn operators_list_live_copilot_connections_on_every_replica() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &["--gateway-id", "gw-a"]).await;
        let replica_b = mesh.add_gateway(0, Some("gw-b".into())).await.unwrap();
        let (_alice, alice_conn) = copilot(mesh.gateway_addr, "alice").await;
        let (bob, bob_conn) = copilot(replica_b, "bob").await;
        // Another protocol's sessions are not listed.
        let (_livechat, _) = harness::livechat_ready(mesh.gateway_addr, "carol").await;

        // Either replica answers with both.
        for addr in [mesh.gateway_addr, replica_b] {
            let list = listing(addr).await;
            let rows: Vec<(&str, &str, &str)> = list
                .iter()
                .map(|c| {
                    (
                        c["user_id"].as_str().unwrap(),
                        c["connection_id"].as_str().unwrap(),
                        c["gateway_id"].as_str().unwrap(),
                    )
                })
                .collect();
            assert_eq!(
                rows,
                vec![
                    ("alice", alice_conn.as_str(), "gw-a"),
                    ("bob", bob_conn.as_str(), "gw-b")
                ],
                "{backend:?}"
            );
            for c in &list {
                assert!(c["connected_at_ms"].as_i64().unwrap() > 0);
                assert!(c["last_activity_ms"].as_i64().unwrap() >= c["connected_at_ms"].as_i64().unwrap());
            }
        }

        drop(bob);
        let deadline = tokio::time::Instant::now() + harness::WAIT;
        while listing(mesh.gateway_addr).await.len() != 1 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: bob's connection is gone"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert_eq!(listing(mesh.gateway_addr).await[0]["user_id"], "alice");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn last_activity_follows_the_clients_frames_with_the_heartbeat() {
    let mesh = harness::start(&harness::Backend::Memory, &["--heartbeat-interval-ms", "200"]).await;
    let (mut c, _) = copilot(mesh.gateway_addr, "dana").await;
    let first = listing(mesh.gateway_addr).await[0].clone();
    let deadline = tokio::time::Instant::now() + harness::WAIT;
    loop {
        c.send_json(json!({"type": "pong"})).await;
        let now = listing(mesh.gateway_addr).await;
        if now[0]["last_activity_ms"].as_i64() > first["last_activity_ms"].as_i64() {
            assert_eq!(now[0]["connected_at_ms"], first["connected_at_ms"]);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "last activity never moved");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn listing_connections_needs_the_operator_role() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let (status, _) = harness::http(mesh.gateway_addr, "GET", PATH, &[], b"").await;
    assert_eq!(status, 401);
    let user = format!("Bearer {}", token("mallory", 600));
    let (status, body) = harness::http(mesh.gateway_addr, "GET", PATH, &[("Authorization", &user)], b"").await;
    assert_eq!((status, body["error"]["code"].as_str()), (403, Some("not_operator")));
    mesh.shutdown().await.unwrap();
}
