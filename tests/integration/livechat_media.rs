//! Push-to-talk media through the whole mesh: members join over
//! `/ws/livechat`, learn the relay's address from the JOIN ACK, and send RTP
//! over real UDP.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use tokio::net::UdpSocket;

use super::harness::{self, Chat};

const PACKETS: u16 = 10_000;

fn rtp(ssrc: u32, seq: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = vec![0x80, 111];
    p.extend_from_slice(&seq.to_be_bytes());
    p.extend_from_slice(&(u32::from(seq) * 960).to_be_bytes());
    p.extend_from_slice(&ssrc.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn ssrc_of(p: &[u8]) -> u32 {
    u32::from_be_bytes([p[8], p[9], p[10], p[11]])
}

/// A member: its chat, its UDP socket (latched at the relay) and its SSRC.
struct Member {
    chat: Chat,
    udp: UdpSocket,
    ssrc: u32,
}

async fn member(gateway: SocketAddr, user: &str, channel: &str, ssrc: u32) -> (Member, SocketAddr) {
    let mut chat = Chat::ready(gateway, user).await;
    let ack = chat.ok(11, json!({"channel_id": channel, "ssrc": ssrc})).await;
    let relay: SocketAddr = ack["media_addr"]
        .as_str()
        .unwrap()
        .parse()
        .expect("JOIN ACK carries the relay address");
    let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    (Member { chat, udp, ssrc }, relay)
}

/// Sends one packet so the relay learns this member's address, then waits
/// until the other members have seen it (so all are latched).
async fn latch(members: &[Member], relay: SocketAddr) {
    for m in members {
        m.udp.send_to(&rtp(m.ssrc, 0, b"latch"), relay).await.unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Drain the latch packets each member received from the others.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut buf = [0u8; 2048];
    for m in members {
        while m.udp.try_recv_from(&mut buf).is_ok() {}
    }
}

async fn collect(udp: &UdpSocket, from_ssrc: u32, want: usize) -> (Vec<Vec<u8>>, usize) {
    let mut got = Vec::with_capacity(want);
    let mut strangers = 0;
    let mut buf = [0u8; 2048];
    while got.len() < want {
        match tokio::time::timeout(Duration::from_secs(3), udp.recv_from(&mut buf)).await {
            Ok(Ok((n, _))) if ssrc_of(&buf[..n]) == from_ssrc => got.push(buf[..n].to_vec()),
            Ok(Ok(_)) => strangers += 1,
            _ => break,
        }
    }
    (got, strangers)
}

#[tokio::test]
async fn every_member_receives_every_packet_in_order_and_byte_identical() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let gw = mesh.gateway_addr;
        let mut creator = Chat::ready(gw, "host").await;
        creator.ok(10, json!({"channel_id": "radio"})).await;
        let (ann, relay) = member(gw, "ann", "radio", 0xA1).await;
        let (bob, _) = member(gw, "bob", "radio", 0xB2).await;
        let (cat, _) = member(gw, "cat", "radio", 0xC3).await;
        let members = [ann, bob, cat];
        latch(&members, relay).await;

        let stranger = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let [ann, bob, cat] = &members;
        let sent: Vec<Vec<u8>> = (1..=PACKETS)
            .map(|seq| rtp(ann.ssrc, seq, format!("voice frame {seq:05}").as_bytes()))
            .collect();
        let send = async {
            for (i, p) in sent.iter().enumerate() {
                ann.udp.send_to(p, relay).await.unwrap();
                if i % 100 == 0 {
                    // A non-member's packets ride along and must go nowhere.
                    stranger
                        .send_to(&rtp(0xDEAD, i as u16, b"intruder"), relay)
                        .await
                        .unwrap();
                    // Pace the burst so loopback socket buffers do not overflow.
                    tokio::time::sleep(Duration::from_millis(2)).await;
                }
            }
        };
        let (_, (to_bob, bob_strangers), (to_cat, cat_strangers)) = tokio::join!(
            send,
            collect(&bob.udp, ann.ssrc, PACKETS as usize),
            collect(&cat.udp, ann.ssrc, PACKETS as usize)
        );
        assert_eq!(to_bob.len(), PACKETS as usize, "{backend:?}: bob got every packet");
        assert!(
            to_bob == sent,
            "{backend:?}: bob's packets are in order and byte-identical"
        );
        assert!(
            to_cat == sent,
            "{backend:?}: cat's packets are in order and byte-identical"
        );
        assert_eq!(
            (bob_strangers, cat_strangers),
            (0, 0),
            "{backend:?}: nothing else arrived"
        );
        let mut buf = [0u8; 64];
        assert!(
            tokio::time::timeout(Duration::from_millis(100), ann.udp.recv_from(&mut buf))
                .await
                .is_err(),
            "{backend:?}: the sender hears nothing back"
        );
        drop(members);
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn in_a_floor_controlled_channel_only_the_holder_is_heard() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let gw = mesh.gateway_addr;
    let mut creator = Chat::ready(gw, "host").await;
    creator.ok(10, json!({"channel_id": "ptt", "floor": "exclusive"})).await;
    let (mut ann, relay) = member(gw, "ann", "ptt", 0x11).await;
    let (bob, _) = member(gw, "bob", "ptt", 0x22).await;
    // Latch both: with nobody holding the floor nothing is forwarded, so
    // latching cannot be observed; give the relay a moment per packet.
    for m in [&ann, &bob] {
        m.udp.send_to(&rtp(m.ssrc, 0, b"latch"), relay).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut buf = [0u8; 2048];
    assert!(
        tokio::time::timeout(Duration::from_millis(100), bob.udp.recv_from(&mut buf))
            .await
            .is_err(),
        "no floor, no forwarding"
    );

    ann.chat.ok(30, json!({"channel_id": "ptt"})).await;
    ann.udp.send_to(&rtp(ann.ssrc, 1, b"over"), relay).await.unwrap();
    let (n, _) = tokio::time::timeout(Duration::from_secs(2), bob.udp.recv_from(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&buf[..n], rtp(ann.ssrc, 1, b"over"), "the holder is heard");
    bob.udp.send_to(&rtp(bob.ssrc, 1, b"interrupt"), relay).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(150), ann.udp.recv_from(&mut buf))
            .await
            .is_err(),
        "a member without the floor is not forwarded"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_join_whose_ssrc_another_member_holds_is_refused() {
    let mesh = harness::start(&harness::Backend::Memory, &[]).await;
    let gw = mesh.gateway_addr;
    let mut ann = Chat::ready(gw, "ann").await;
    let mut bob = Chat::ready(gw, "bob").await;
    ann.ok(10, json!({"channel_id": "c"})).await;
    ann.ok(11, json!({"channel_id": "c", "ssrc": 42})).await;
    assert_eq!(bob.err(11, json!({"channel_id": "c", "ssrc": 42})).await, 2007);
    mesh.shutdown().await.unwrap();
}
