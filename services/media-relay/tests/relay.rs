//! The relay end to end: real UDP sockets and real gRPC on loopback.
#![allow(clippy::unwrap_used)]

mod harness;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use harness::{Member, Relay, WAIT, config, rtp};
use prost::Message;
use relaymesh_media_relay::{RELAYS_SET, registration_key};
use relaymesh_proto::media_relay::v1::{RelayRegistration, RemovePeerRequest};
use relaymesh_state::SharedState;

/// Long enough to be sure a packet that was going to arrive on loopback has.
const SILENCE: Duration = Duration::from_millis(100);

fn payload(seq: u16) -> Vec<u8> {
    (0..160u16).map(|i| (seq.wrapping_add(i) & 0xff) as u8).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_other_member_receives_every_packet_in_order_byte_identical() {
    const PACKETS: u64 = 10_000;
    // The sender stays this far ahead of the slowest receiver, so no socket
    // buffer overflows and every loss would be the relay's.
    const WINDOW: u64 = 64;
    let mut relay = Relay::start().await;
    let sender = relay.join("fanout", 1, "alice").await;
    let b = relay.join("fanout", 2, "bob").await;
    let c = relay.join("fanout", 3, "carol").await;
    relay.latch(&[&sender, &b, &c]).await;

    let progress: Vec<Arc<AtomicU64>> = (0..2).map(|_| Arc::new(AtomicU64::new(0))).collect();
    let receivers: Vec<_> = [b, c]
        .into_iter()
        .zip(progress.iter().cloned())
        .map(|(member, got)| {
            tokio::spawn(async move {
                for i in 0..PACKETS {
                    let seq = i as u16;
                    let packet = member.recv().await;
                    assert_eq!(packet, rtp(1, seq, &payload(seq)), "packet {i} at ssrc {}", member.ssrc);
                    got.store(i + 1, Ordering::Release);
                }
            })
        })
        .collect();

    for i in 0..PACKETS {
        let deadline = tokio::time::Instant::now() + WAIT;
        while progress.iter().map(|p| p.load(Ordering::Acquire)).min().unwrap_or(0) + WINDOW <= i {
            assert!(
                tokio::time::Instant::now() < deadline,
                "receivers stalled at packet {i}"
            );
            tokio::task::yield_now().await;
        }
        sender.send(i as u16, &payload(i as u16)).await;
    }
    for r in receivers {
        tokio::time::timeout(WAIT, r).await.unwrap().unwrap();
    }
    let stats = relay
        .wait_stats("all packets out", |s| s.packets_out >= 2 * PACKETS)
        .await;
    assert_eq!(
        stats.packets_out,
        2 * PACKETS + 3,
        "10,000 to each of 2, plus forwarded keepalives"
    );
    assert_eq!(
        stats.dropped_unknown_ssrc + stats.dropped_malformed + stats.dropped_no_floor,
        0
    );
    relay.stop().await;
}

#[tokio::test]
async fn unknown_ssrc_packets_go_nowhere_and_are_counted() {
    let mut relay = Relay::start().await;
    let a = relay.join("strangers", 11, "alice").await;
    let b = relay.join("strangers", 12, "bob").await;
    relay.latch(&[&a, &b]).await;
    let stranger = Member::bind(999, a.relay).await;

    for seq in 1..=5 {
        stranger.send(seq, b"not a member").await;
    }
    // Loopback keeps order: if the stranger's packets were forwarded, they
    // would arrive before this one.
    let marker = a.send(100, b"marker").await;
    assert_eq!(b.recv().await, marker);
    assert_eq!(stranger.recv_within(SILENCE).await, None);
    let stats = relay
        .wait_stats("unknown ssrc drops", |s| s.dropped_unknown_ssrc == 5)
        .await;
    assert_eq!(stats.packets_in, 2 + 5 + 1);
    relay.stop().await;
}

#[tokio::test]
async fn srtp_packets_are_forwarded_unchanged() {
    let mut relay = Relay::start().await;
    let a = relay.join("srtp", 21, "alice").await;
    let b = relay.join("srtp", 22, "bob").await;
    relay.latch(&[&a, &b]).await;

    // A plain RTP header, then ciphertext and a 10-byte HMAC-SHA1-80 tag
    // the relay has no key for and must not touch.
    let mut ciphertext: Vec<u8> = (0..120u8).map(|i| i.wrapping_mul(37) ^ 0x5a).collect();
    ciphertext.extend_from_slice(&[0xa5, 0x1f, 0x00, 0xff, 0x80, 0x7e, 0x33, 0xc4, 0x02, 0x9d]);
    let packet = a.send(7, &ciphertext).await;
    assert_eq!(b.recv().await, packet);
    relay.stop().await;
}

#[tokio::test]
async fn malformed_packets_are_dropped_counted_and_forwarding_continues() {
    let mut relay = Relay::start().await;
    let a = relay.join("malformed", 31, "alice").await;
    let b = relay.join("malformed", 32, "bob").await;
    relay.latch(&[&a, &b]).await;

    let mut version_1 = rtp(31, 1, b"payload");
    version_1[0] = 0x40;
    let truncated = rtp(31, 2, b"")[..7].to_vec();
    let mut bad_csrc_count = rtp(31, 3, b"abcd");
    bad_csrc_count[0] |= 0x0f;
    let mut bad_extension = rtp(31, 4, &[0xbe, 0xde, 0x00, 0x10, 1, 2, 3, 4]);
    bad_extension[0] |= 0x10;
    for bad in [&version_1, &truncated, &bad_csrc_count, &bad_extension] {
        a.send_raw(bad).await;
    }
    let good = a.send(5, b"still relaying").await;

    assert_eq!(b.recv().await, good);
    let stats = relay.wait_stats("malformed drops", |s| s.dropped_malformed == 4).await;
    assert_eq!(stats.dropped_unknown_ssrc, 0);
    relay.stop().await;
}

#[tokio::test]
async fn latched_address_follows_a_new_source_socket() {
    let mut relay = Relay::start().await;
    let a = relay.join("latch", 41, "alice").await;
    let b = relay.join("latch", 42, "bob").await;
    relay.latch(&[&a, &b]).await;

    let moved = a.rebind().await;
    let packet = moved.send(1, b"from my new port").await;
    assert_eq!(b.recv().await, packet);

    let reply = b.send(2, b"reply").await;
    assert_eq!(moved.recv().await, reply);
    assert_eq!(a.recv_within(SILENCE).await, None, "old address must be forgotten");
    relay.stop().await;
}

#[tokio::test]
async fn ssrc_held_by_another_live_member_is_already_exists() {
    let mut relay = Relay::start().await;
    relay.add_peer("dup", 51, "alice").await.unwrap();

    let other_user = relay.add_peer("dup", 51, "mallory").await.unwrap_err();
    assert_eq!(other_user.code(), tonic::Code::AlreadyExists);
    assert_eq!(
        relaymesh_rpc::reason_of(&other_user),
        Some(relaymesh_proto::media_relay::v1::ErrorReason::SsrcInUse)
    );
    let other_channel = relay.add_peer("dup-2", 51, "alice").await.unwrap_err();
    assert_eq!(other_channel.code(), tonic::Code::AlreadyExists);

    // The same member joining again is not a conflict.
    relay.add_peer("dup", 51, "alice").await.unwrap();
    assert_eq!(relay.stats().await.peers, 1);
    relay.stop().await;
}

#[tokio::test]
async fn removed_peer_frees_its_ssrc_and_unknown_removal_is_not_found() {
    let mut relay = Relay::start().await;
    relay.add_peer("remove", 55, "alice").await.unwrap();
    let remove = RemovePeerRequest {
        channel_id: "remove".into(),
        ssrc: 55,
    };
    relay.client.remove_peer(remove.clone()).await.unwrap();
    assert_eq!(relay.stats().await.peers, 0);
    let again = relay.client.remove_peer(remove).await.unwrap_err();
    assert_eq!(
        relaymesh_rpc::reason_of(&again),
        Some(relaymesh_proto::media_relay::v1::ErrorReason::UnknownPeer)
    );
    relay.add_peer("remove", 55, "bob").await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn floor_holder_alone_is_forwarded() {
    let mut relay = Relay::start().await;
    let a = relay.join("floor-held", 61, "alice").await;
    let b = relay.join("floor-held", 62, "bob").await;
    let c = relay.join("floor-held", 63, "carol").await;
    relay.latch(&[&a, &b, &c]).await;
    relay.set_floor("floor-held", true, 61).await;

    b.send(1, b"not my turn").await;
    let spoken = a.send(2, b"holder speaks").await;
    assert_eq!(c.recv().await, spoken, "b's packet must not come first");
    assert_eq!(b.recv().await, spoken);
    assert_eq!(a.recv_within(SILENCE).await, None);
    relay.wait_stats("no_floor drop", |s| s.dropped_no_floor == 1).await;
    relay.stop().await;
}

#[tokio::test]
async fn a_floor_that_arrives_after_a_newer_one_is_ignored() {
    let mut relay = Relay::start().await;
    let a = relay.join("floor-order", 81, "alice").await;
    let b = relay.join("floor-order", 82, "bob").await;
    relay.latch(&[&a, &b]).await;
    // Two channel replicas' changes, the older arriving second.
    relay.set_floor_version("floor-order", true, 82, 20).await;
    relay.set_floor_version("floor-order", true, 81, 10).await;

    a.send(1, b"stale holder").await;
    relay.wait_stats("no_floor drop", |s| s.dropped_no_floor == 1).await;
    let spoken = b.send(2, b"current holder").await;
    assert_eq!(a.recv().await, spoken, "the stale holder's packet must not come first");
    relay.stop().await;
}

#[tokio::test]
async fn floor_without_holder_forwards_nobody_until_released() {
    let mut relay = Relay::start().await;
    let a = relay.join("floor-none", 71, "alice").await;
    let b = relay.join("floor-none", 72, "bob").await;
    relay.latch(&[&a, &b]).await;
    relay.set_floor("floor-none", true, 0).await;

    a.send(1, b"silenced a").await;
    b.send(2, b"silenced b").await;
    relay.wait_stats("no_floor drops", |s| s.dropped_no_floor == 2).await;

    relay.set_floor("floor-none", false, 0).await;
    let open = b.send(3, b"open again").await;
    assert_eq!(a.recv().await, open, "the silenced packet must not come first");
    let open = a.send(4, b"everyone speaks").await;
    assert_eq!(b.recv().await, open);
    relay.stop().await;
}

#[tokio::test]
async fn idle_peer_is_evicted_after_the_timeout() {
    let mut relay = Relay::start_with(config(200), SharedState::memory()).await;
    let active = relay.join("idle", 81, "alice").await;
    relay.add_peer("idle", 82, "bob").await.unwrap();
    assert_eq!(relay.stats().await.peers, 2);

    // Alice keeps talking while Bob, who never sent, goes stale.
    let deadline = tokio::time::Instant::now() + WAIT;
    while relay.stats().await.peers != 1 {
        assert!(tokio::time::Instant::now() < deadline, "bob was never evicted");
        active.keepalive().await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Bob's SSRC is free again, and Alice goes too once she falls silent.
    relay.add_peer("idle", 82, "carol").await.unwrap();
    relay
        .wait_stats("alice and carol evicted", |s| s.peers == 0 && s.channels == 0)
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn registration_announces_media_addr_and_is_withdrawn_on_shutdown() {
    let state = SharedState::memory();
    let mut cfg = config(30_000);
    cfg.media_relay_id = Some("relay-registration-test".into());
    let mut relay = Relay::start_with(cfg, state.clone()).await;
    let media_addr = relay.add_peer("registration", 91, "alice").await.unwrap();
    let key = registration_key("relay-registration-test");

    let deadline = tokio::time::Instant::now() + WAIT;
    let record = loop {
        if let Some(bytes) = state.get(&key).await.unwrap() {
            break RelayRegistration::decode(bytes.as_slice()).unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "no registration record");
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    assert_eq!(record.relay_id, "relay-registration-test");
    assert_eq!(record.media_addr, media_addr);
    assert!(media_addr.starts_with("127.0.0.1:") && !media_addr.ends_with(":0"));
    assert_eq!(record.grpc_url, format!("http://127.0.0.1:{}", relay.grpc_addr.port()));
    assert!(record.refreshed_at_ms > 0);
    assert!(state.set_members(RELAYS_SET).await.unwrap().contains(&record.relay_id));

    relay.stop().await;
    assert_eq!(state.get(&key).await.unwrap(), None);
    assert!(!state.set_members(RELAYS_SET).await.unwrap().contains(&record.relay_id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_reuse_port_sockets_relay_every_member_on_one_port() {
    let mut cfg = config(30_000);
    cfg.media_udp_sockets = 4;
    let mut relay = Relay::start_with(cfg, SharedState::memory()).await;
    let mut members = Vec::new();
    for ssrc in 1..=6 {
        members.push(relay.join("multi", ssrc, &format!("user-{ssrc}")).await);
    }
    let all: Vec<&harness::Member> = members.iter().collect();
    relay.latch(&all).await;
    // Every member speaks in turn from its own flow, which the kernel may
    // hash to any of the sockets; everyone else hears it, in order.
    for round in 0..5u16 {
        for speaker in &members {
            let sent = speaker.send(round, &payload(round)).await;
            for listener in members.iter().filter(|m| m.ssrc != speaker.ssrc) {
                assert_eq!(listener.recv().await, sent, "round {round} from {}", speaker.ssrc);
            }
        }
    }
    relay.stop().await;
}
