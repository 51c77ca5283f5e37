//! A Redis restart under a running mesh (a private redis-server, killed and
//! started again empty on the same port): the gateway writes its live
//! sockets' sessions again at once, not at their next heartbeat, and events
//! keep reaching them.

use std::time::Duration;

use relaymesh_proto::client::v1::ClientProtocol;
use relaymesh_state::testing::RedisServer;
use relaymesh_state::{Delivery, SessionRegistry, event_envelope};

use super::harness::{self, Backend};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_keeps_the_gateways_live_sockets_registered_and_reachable() {
    let server = RedisServer::start();
    let mesh = harness::start(&Backend::Redis(server.url()), &[]).await;
    let (mut alice, ready) = harness::livechat_ready(mesh.gateway_addr, "alice").await;
    let session = ready["d"]["session_id"].as_str().unwrap().to_owned();
    let registry = SessionRegistry::new(mesh.state.clone(), Duration::from_secs(60));
    let delivery = Delivery::new(mesh.state.clone(), registry.clone());
    let mut reconnected = mesh.state.reconnected();
    let epoch = *reconnected.borrow_and_update();

    let server = server.restarted().await;
    let restarted = tokio::time::Instant::now();
    let back = loop {
        let sessions = registry.sessions_of(ClientProtocol::Livechat, "alice").await.unwrap();
        if sessions.iter().any(|s| s.connection_id == session) {
            break restarted.elapsed();
        }
        assert!(
            restarted.elapsed() < Duration::from_secs(5),
            "alice's session not registered again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    eprintln!(
        "gateway session registered again {} ms after the restart",
        back.as_millis()
    );
    // The gateway's own refresh comes every 30 s (the heartbeat period).
    assert!(back < Duration::from_secs(1), "re-registered in {back:?}");

    // Its inbox subscription is back once the connections are.
    tokio::time::timeout(Duration::from_secs(5), async {
        while *reconnected.borrow_and_update() == epoch {
            reconnected.changed().await.unwrap();
        }
    })
    .await
    .expect("reconnected() bumped");
    let event = harness::message_event("CH", "after the restart".into());
    let sent = delivery
        .send_to_user(ClientProtocol::Livechat, "alice", event_envelope(event, false))
        .await
        .unwrap();
    assert_eq!(sent, 1);
    let got = alice.recv().await;
    assert_eq!(
        (got["op"].as_u64(), got["d"]["content"].as_str()),
        (Some(101), Some("after the restart"))
    );
    mesh.shutdown().await.unwrap();
    drop(server);
}
