//! The node agent against the fake hub behind TLS (`wss://localhost`) with
//! a self-signed certificate: trusted through `--hub-ca-file`, refused
//! without it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use relaymesh_node_agent::AgentError;
use support::{FakeHub, NODE, config, serial, start};

#[tokio::test]
async fn wss_hub_trusted_through_the_ca_file_registers_and_runs_commands() {
    let hub = FakeHub::bind_tls().await;
    assert!(hub.url.starts_with("wss://localhost:"), "{}", hub.url);
    let ca = hub.write_ca_file();
    let agent = start(config(&hub, &["--hub-ca-file", ca.to_str().unwrap()]));
    let mut conn = hub.accept().await;

    let hello = conn.handshake().await;
    assert!(hello.signed_ok, "HELLO over TLS must verify with the shared secret");
    assert_eq!(hello.node_id, NODE);
    assert_eq!(hello.payload["devices"].as_array().map(Vec::len), Some(100));

    conn.command("cmd-tls", &serial(1), None).await;
    let r = conn.expect("RESULT").await;
    assert!(r.signed_ok);
    assert_eq!(r.str("command_id"), "cmd-tls");
    assert_eq!(r.str("status"), "SUCCESS", "{:?}", r.payload);
    conn.ack_result(&r).await;

    agent.shutdown.cancel();
    while conn.recv().await.is_some() {}
    assert_eq!(conn.closed_with, Some(1000));
    agent.finished().await.unwrap();
    let _ = std::fs::remove_file(ca);
}

#[tokio::test]
async fn self_signed_hub_without_the_ca_file_is_refused_and_retried() {
    let hub = FakeHub::bind_tls().await;
    let agent = start(config(&hub, &[]));

    // Every attempt dies in the TLS handshake, so no HELLO can ever be
    // sent; the agent keeps retrying on its backoff (50..200 ms here).
    let window = tokio::time::Instant::now() + Duration::from_millis(1500);
    let mut attempts = 0;
    while tokio::time::Instant::now() < window {
        match hub.try_accept().await {
            Err(why) => assert!(why.starts_with("TLS handshake failed"), "{why}"),
            Ok(_) => panic!("the agent must not trust a self-signed hub without --hub-ca-file"),
        }
        attempts += 1;
    }
    assert!(
        attempts >= 2,
        "the agent should keep retrying, made {attempts} attempt(s)"
    );
    assert!(!agent.handle.is_finished(), "a TLS failure must not stop the agent");

    agent.shutdown.cancel();
    agent.finished().await.unwrap();
}

#[tokio::test]
async fn an_unreadable_ca_file_stops_the_agent_at_start() {
    let hub = FakeHub::bind_tls().await;
    let agent = start(config(&hub, &["--hub-ca-file", "/nonexistent/relaymesh-hub-ca.pem"]));
    let err = agent.finished().await.unwrap_err();
    assert!(matches!(err, AgentError::HubCa { .. }), "{err:?}");
}
