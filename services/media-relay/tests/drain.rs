//! Shutdown of a relay that still serves channels, and the address it
//! announces: real UDP and gRPC on loopback, shared state in memory.
#![allow(clippy::unwrap_used)]

mod harness;

use std::time::Duration;

use harness::{Relay, WAIT, config};
use prost::Message;
use relaymesh_media_relay::{RELAYS_SET, registration_key};
use relaymesh_proto::media_relay::v1::{RelayRegistration, RemovePeerRequest};
use relaymesh_state::SharedState;

/// The one registration in `state`, once `done` holds for it.
async fn wait_registration(
    state: &SharedState,
    what: &str,
    done: impl Fn(&RelayRegistration) -> bool,
) -> RelayRegistration {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let ids = state.set_members(RELAYS_SET).await.unwrap();
        if let [id] = ids.as_slice()
            && let Some(bytes) = state.get(&registration_key(id)).await.unwrap()
        {
            let reg = RelayRegistration::decode(bytes.as_slice()).unwrap();
            if done(&reg) {
                return reg;
            }
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn assert_withdrawn(state: &SharedState) {
    assert!(state.set_members(RELAYS_SET).await.unwrap().is_empty(), "still listed");
}

#[tokio::test]
async fn a_draining_relay_says_so_and_keeps_forwarding_until_its_channels_are_empty() {
    for state in relaymesh_state::testing::backends("relay-drain").await {
        drains_until_empty(state).await;
    }
}

async fn drains_until_empty(state: SharedState) {
    let mut cfg = config(30_000);
    cfg.media_drain_timeout_ms = 600_000;
    let mut relay = Relay::start_with(cfg, state.clone()).await;
    let a = relay.join("room", 1, "alice").await;
    let b = relay.join("room", 2, "bob").await;
    relay.latch(&[&a, &b]).await;
    let before = wait_registration(&state, "registration", |_| true).await;
    assert!(!before.draining);

    relay.shutdown.cancel();
    wait_registration(&state, "the draining flag", |r| r.draining).await;

    // Still forwarding, still answering the channel service.
    let sent = a.send(7, b"during the drain").await;
    assert_eq!(b.recv().await, sent);
    assert!(!relay.task.is_finished(), "stopped with a channel still open");
    for ssrc in [1, 2] {
        let req = RemovePeerRequest {
            channel_id: "room".into(),
            ssrc,
        };
        relay.client.remove_peer(req).await.unwrap();
    }

    // The last member left: the relay stops and withdraws its record.
    tokio::time::timeout(WAIT, relay.task).await.unwrap().unwrap().unwrap();
    assert_withdrawn(&state).await;
}

#[tokio::test]
async fn the_drain_ends_at_its_timeout_when_channels_stay_open() {
    let mut cfg = config(30_000);
    cfg.media_drain_timeout_ms = 200;
    let state = SharedState::memory();
    let mut relay = Relay::start_with(cfg, state.clone()).await;
    let a = relay.join("room", 1, "alice").await;
    relay.latch(&[&a]).await;
    relay.shutdown.cancel();
    tokio::time::timeout(WAIT, relay.task).await.unwrap().unwrap().unwrap();
    assert_withdrawn(&state).await;
}

#[tokio::test]
async fn clients_are_told_the_address_mapped_to_this_instance() {
    let dir = std::env::temp_dir().join(format!("relaymesh-addr-dir-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("node-a"), "198.51.100.9\n").unwrap();
    std::fs::write(dir.join("node-b"), "198.51.100.10:31004\n").unwrap();

    let mut cfg = config(30_000);
    cfg.media_public_addr_dir = Some(dir.clone());
    cfg.media_public_addr_key = Some("node-a".into());
    let state = SharedState::memory();
    let mut relay = Relay::start_with(cfg.clone(), state.clone()).await;
    let told = relay.add_peer("room", 1, "alice").await.unwrap();
    assert!(told.starts_with("198.51.100.9:"), "{told}");
    let reg = wait_registration(&state, "registration", |_| true).await;
    assert_eq!(reg.media_addr, told, "the registration carries the same address");
    relay.stop().await;

    cfg.media_public_addr_key = Some("node-b".into());
    let mut relay = Relay::start_with(cfg, SharedState::memory()).await;
    assert_eq!(relay.add_peer("room", 1, "alice").await.unwrap(), "198.51.100.10:31004");
    relay.stop().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
