//! LiveChat connection flow (seed 003): HELLO, HEARTBEAT, IDENTIFY/READY.

use serde_json::json;

use super::harness::{self, Backend, Client, token};

#[tokio::test]
async fn hello_announces_the_heartbeat_interval() {
    let mesh = harness::start(&Backend::Memory, &["--heartbeat-interval-ms", "41250"]).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    assert_eq!(c.recv().await, json!({"op": 0, "d": {"heartbeat_interval": 41250}}));
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn identify_yields_ready_with_a_session_and_registers_it() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let (_c, ready) = harness::livechat_ready(mesh.gateway_addr, "alice").await;
        assert_eq!(ready["d"]["user_id"], "alice");
        let session = ready["d"]["session_id"].as_str().unwrap();
        assert!(!session.is_empty());
        let registry = relaymesh_state::SessionRegistry::new(mesh.state.clone(), std::time::Duration::from_secs(60));
        let sessions = registry
            .sessions_of(relaymesh_proto::client::v1::ClientProtocol::Livechat, "alice")
            .await
            .unwrap();
        assert_eq!(sessions.len(), 1, "{backend:?}");
        assert_eq!(sessions[0].connection_id, session);
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn heartbeat_is_acknowledged_with_its_nonce() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    c.recv().await;
    c.send_json(json!({"op": 1, "d": {"nonce": "n-1"}})).await;
    assert_eq!(c.recv().await, json!({"op": 2, "d": {"nonce": "n-1"}}));
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn operations_before_identify_get_1000() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    c.recv().await;
    c.send_json(json!({"op": 10, "d": {"channel_id": "CH_1", "nonce": "x"}}))
        .await;
    let err = c.recv().await;
    assert_eq!(err["op"], 201);
    assert_eq!(err["d"]["code"], 1000);
    assert_eq!(err["d"]["nonce"], "x", "the request's nonce is echoed");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_bad_token_gets_1001_and_closes_with_4001() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    for bad in [
        token("mallory", -60),
        harness::token_with_secret("mallory", 60, "wrong"),
        "junk".into(),
    ] {
        let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
        c.recv().await;
        c.send_json(json!({"op": 3, "d": {"user_id": "mallory", "token": bad}}))
            .await;
        let err = c.recv().await;
        assert_eq!(err["d"]["code"], 1001, "{err}");
        assert_eq!(c.close_code().await, 4001);
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_token_for_another_user_is_refused() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    c.recv().await;
    c.send_json(json!({"op": 3, "d": {"user_id": "alice", "token": token("mallory", 60)}}))
        .await;
    assert_eq!(c.recv().await["d"]["code"], 1001);
    assert_eq!(c.close_code().await, 4001);
    mesh.shutdown().await.unwrap();
}
