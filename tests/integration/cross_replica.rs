//! Delivery across gateway replicas: an event for a connection reaches it
//! whichever replica holds it, on one shared state.

use std::time::Duration;

use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_state::{Delivery, SessionRegistry, event_envelope};

use super::harness::{self, Backend, Client, token};

#[tokio::test]
async fn a_newer_session_on_replica_a_closes_the_older_one_on_replica_b_with_4004() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &["--single-session-per-user", "true"]).await;
        let replica_b = mesh.gateway_addr;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();

        let path = format!("/ws/copilot?token={}", token("alice", 600));
        let mut on_b = Client::connect(replica_b, &path).await;
        assert_eq!(on_b.recv().await["type"], "connected");
        let mut on_a = Client::connect(replica_a, &path).await;
        assert_eq!(on_a.recv().await["type"], "connected");

        assert_eq!(
            on_b.close_code().await,
            4004,
            "{backend:?}: replaced on the other replica"
        );
        on_a.send_json(serde_json::json!({"type": "ping"})).await;
        assert_eq!(
            on_a.recv().await["type"],
            "pong",
            "{backend:?}: the newer session lives"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn sessions_of_other_users_are_not_replaced() {
    let mut mesh = harness::start(&Backend::Memory, &["--single-session-per-user", "true"]).await;
    let replica_a = mesh.add_gateway(0, None).await.unwrap();
    let mut bob = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("bob", 600))).await;
    bob.recv().await;
    let mut carol = Client::connect(replica_a, &format!("/ws/copilot?token={}", token("carol", 600))).await;
    carol.recv().await;
    bob.send_json(serde_json::json!({"type": "ping"})).await;
    assert_eq!(bob.recv().await["type"], "pong");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_event_published_anywhere_reaches_the_user_on_its_replica() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let (mut alice, _) = harness::livechat_ready(mesh.gateway_addr, "alice").await;
        let (mut bob, _) = harness::livechat_ready(replica_a, "bob").await;

        // A producer with its own connection to the shared state, as a
        // service replica in another process would have.
        let producer_state = match &backend {
            Backend::Memory => mesh.state.clone(),
            Backend::Redis(_) | Backend::Cluster(_) => mesh.options().connect_state().await.unwrap(),
        };
        let registry = SessionRegistry::new(producer_state.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(producer_state, registry);
        let event = harness::message_event("CH", "hi alice".into());
        let sent = delivery
            .send_to_user(ClientProtocol::Livechat, "alice", event_envelope(event, false))
            .await
            .unwrap();
        assert_eq!(sent, 1, "{backend:?}");
        let got = alice.recv().await;
        assert_eq!(
            (got["op"].as_u64(), got["d"]["content"].as_str()),
            (Some(101), Some("hi alice")),
            "{backend:?}"
        );
        assert!(
            bob.try_recv(Duration::from_millis(200)).await.is_none(),
            "{backend:?}: bob got nothing"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_closed_socket_leaves_the_registry() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let (c, _) = harness::livechat_ready(mesh.gateway_addr, "dave").await;
        let registry = SessionRegistry::new(mesh.state.clone(), Duration::from_secs(60));
        assert_eq!(
            registry
                .sessions_of(ClientProtocol::Livechat, "dave")
                .await
                .unwrap()
                .len(),
            1
        );
        drop(c); // abrupt: no close frame
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while !registry
            .sessions_of(ClientProtocol::Livechat, "dave")
            .await
            .unwrap()
            .is_empty()
        {
            assert!(
                tokio::time::Instant::now() < deadline,
                "{backend:?}: session not cleaned up"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        mesh.shutdown().await.unwrap();
    }
}
