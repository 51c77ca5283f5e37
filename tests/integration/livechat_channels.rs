//! LiveChat channels, chat and floor control (seed 003) end to end: real
//! WebSockets to the gateway, the channel service over gRPC, shared state.

use std::time::Duration;

use serde_json::json;

use super::harness::{self, Backend, Chat, Client, Ended, WAIT};

const CREATE: u16 = 10;
const JOIN: u16 = 11;
const LEAVE: u16 = 12;
const UPDATE: u16 = 13;
const DELETE: u16 = 14;
const MESSAGE: u16 = 20;
const FLOOR_REQUEST: u16 = 30;
const FLOOR_RELEASE: u16 = 31;
const CHANNEL_EVENT: u16 = 100;
const MESSAGE_EVENT: u16 = 101;
const FLOOR_EVENT: u16 = 102;

#[tokio::test]
async fn three_members_create_join_chat_take_the_floor_and_leave() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let addr = mesh.gateway_addr;
        let mut ann = Chat::ready(addr, "ann").await;
        let mut bob = Chat::ready(addr, "bob").await;
        let mut cat = Chat::ready(addr, "cat").await;

        let created = ann
            .ok(CREATE, json!({"channel_id": "CH_1", "name": "ops", "floor": "queue"}))
            .await;
        assert_eq!(created["request_op"], CREATE);
        assert_eq!(created["channel"]["creator_id"], "ann");
        assert_eq!(created["channel"]["floor"], "queue");

        let joined = ann.ok(JOIN, json!({"channel_id": "CH_1", "ssrc": 111})).await;
        assert_eq!(joined["active_members"].as_array().unwrap().len(), 1);
        bob.ok(JOIN, json!({"channel_id": "CH_1", "ssrc": 222})).await;
        let joined = cat.ok(JOIN, json!({"channel_id": "CH_1", "ssrc": 333})).await;
        let mut users: Vec<_> = joined["active_members"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["user_id"].as_str().unwrap())
            .collect();
        users.sort();
        assert_eq!(users, ["ann", "bob", "cat"], "{backend:?}");

        // Join events reach the members already there.
        let e = ann.event(CHANNEL_EVENT).await;
        assert_eq!(
            (e["d"]["type"].as_str(), e["d"]["user_id"].as_str()),
            (Some("join"), Some("bob"))
        );
        assert_eq!(e["d"]["ssrc"], 222);
        assert_eq!(e["d"]["session_id"], bob.session_id.as_str());
        assert_eq!(ann.event(CHANNEL_EVENT).await["d"]["user_id"], "cat");
        assert_eq!(bob.event(CHANNEL_EVENT).await["d"]["user_id"], "cat");

        // Chat reaches everyone, the sender too.
        let sent = bob
            .ok(MESSAGE, json!({"channel_id": "CH_1", "content": "hello 👋"}))
            .await;
        for chat in [&mut ann, &mut bob, &mut cat] {
            let m = chat.event(MESSAGE_EVENT).await;
            assert_eq!(m["d"]["content"], "hello 👋");
            assert_eq!(m["d"]["user_id"], "bob");
            assert_eq!(m["d"]["message_id"], sent["message_id"]);
        }

        // Floor: bob takes it, cat queues, bob releases, cat gets it.
        let f = bob.ok(FLOOR_REQUEST, json!({"channel_id": "CH_1"})).await;
        assert_eq!(f["holder_id"], "bob");
        for chat in [&mut ann, &mut bob, &mut cat] {
            let e = chat.event(FLOOR_EVENT).await;
            assert_eq!(
                (e["d"]["type"].as_str(), e["d"]["holder_id"].as_str()),
                (Some("granted"), Some("bob"))
            );
        }
        let q = cat.ok(FLOOR_REQUEST, json!({"channel_id": "CH_1"})).await;
        assert_eq!(
            (q["holder_id"].as_str(), q["queue_position"].as_u64()),
            (Some("bob"), Some(1))
        );
        bob.ok(FLOOR_RELEASE, json!({"channel_id": "CH_1"})).await;
        assert_eq!(bob.event(FLOOR_EVENT).await["d"]["holder_id"], "cat");
        let e = ann.event(FLOOR_EVENT).await;
        assert_eq!(
            (e["d"]["type"].as_str(), e["d"]["holder_id"].as_str()),
            (Some("released"), Some("cat"))
        );
        assert_eq!(e["d"]["holder_ssrc"], 333);

        // Leaving: the holder leaves, the floor frees, the others hear it.
        cat.ok(LEAVE, json!({"channel_id": "CH_1"})).await;
        let e = ann.event(CHANNEL_EVENT).await;
        assert_eq!(
            (e["d"]["type"].as_str(), e["d"]["user_id"].as_str()),
            (Some("leave"), Some("cat"))
        );
        let f = bob.event(FLOOR_EVENT).await;
        assert_eq!(
            f["d"]["holder_id"],
            serde_json::Value::Null,
            "floor freed when its holder left"
        );
        assert_eq!(f["d"]["type"], "left");
        assert_eq!(bob.event(CHANNEL_EVENT).await["d"]["type"], "leave");

        // Update and delete, by the creator.
        ann.ok(UPDATE, json!({"channel_id": "CH_1", "name": "ops-2"})).await;
        let e = bob.event(CHANNEL_EVENT).await;
        assert_eq!(
            (e["d"]["type"].as_str(), e["d"]["name"].as_str()),
            (Some("update"), Some("ops-2"))
        );
        ann.ok(DELETE, json!({"channel_id": "CH_1"})).await;
        assert_eq!(bob.event(CHANNEL_EVENT).await["d"]["type"], "delete");
        assert_eq!(
            bob.err(MESSAGE, json!({"channel_id": "CH_1", "content": "anyone?"}))
                .await,
            2000
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn every_channel_and_message_error_code_is_returned_where_it_applies() {
    let mesh = harness::start(&Backend::Memory, &["--max-message-len", "10"]).await;
    let addr = mesh.gateway_addr;
    let mut ann = Chat::ready(addr, "ann").await;
    let mut bob = Chat::ready(addr, "bob").await;

    assert_eq!(
        ann.err(JOIN, json!({"channel_id": "nope", "ssrc": 1})).await,
        2000,
        "no such channel"
    );
    assert_eq!(
        ann.err(MESSAGE, json!({"channel_id": "nope", "content": "hi"})).await,
        2000,
        "no such channel for a message"
    );
    ann.ok(CREATE, json!({"channel_id": "small", "capacity": 1})).await;
    assert_eq!(
        bob.err(CREATE, json!({"channel_id": "small"})).await,
        2008,
        "channel exists"
    );
    ann.ok(JOIN, json!({"channel_id": "small", "ssrc": 1})).await;
    assert_eq!(
        ann.err(JOIN, json!({"channel_id": "small", "ssrc": 1})).await,
        2003,
        "already joined"
    );
    assert_eq!(
        bob.err(JOIN, json!({"channel_id": "small", "ssrc": 2})).await,
        2001,
        "channel full"
    );
    assert_eq!(
        bob.err(UPDATE, json!({"channel_id": "small", "name": "mine"})).await,
        2002,
        "only the creator"
    );
    assert_eq!(
        bob.err(DELETE, json!({"channel_id": "small"})).await,
        2002,
        "only the creator"
    );
    assert_eq!(bob.err(LEAVE, json!({"channel_id": "small"})).await, 2004, "not joined");
    assert_eq!(
        ann.err(MESSAGE, json!({"channel_id": "small", "content": "   "})).await,
        3000,
        "empty"
    );
    assert_eq!(
        ann.err(MESSAGE, json!({"channel_id": "small", "content": "x".repeat(11)}))
            .await,
        3001,
        "too long"
    );
    assert!(
        ann.call(MESSAGE, json!({"channel_id": "small", "content": "é".repeat(10)}))
            .await["op"]
            == 200,
        "the limit counts characters, not bytes"
    );
    assert_eq!(
        bob.err(MESSAGE, json!({"channel_id": "small", "content": "hi"})).await,
        3002,
        "not a member"
    );
    assert_eq!(
        ann.err(FLOOR_REQUEST, json!({"channel_id": "small"})).await,
        2006,
        "no floor control"
    );
    assert_eq!(
        ann.err(CREATE, json!({"channel_id": "x", "floor": "chaos"})).await,
        1004,
        "bad policy"
    );
    assert_eq!(
        ann.err(JOIN, json!({"channel_id": "small", "ssrc": "one"})).await,
        1004,
        "wrong type"
    );

    ann.ok(CREATE, json!({"channel_id": "talk", "floor": "exclusive"}))
        .await;
    ann.ok(JOIN, json!({"channel_id": "talk", "ssrc": 10})).await;
    bob.ok(JOIN, json!({"channel_id": "talk", "ssrc": 20})).await;
    ann.ok(FLOOR_REQUEST, json!({"channel_id": "talk"})).await;
    assert_eq!(
        bob.err(FLOOR_REQUEST, json!({"channel_id": "talk"})).await,
        2005,
        "floor busy"
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_member_on_another_gateway_replica_receives_events() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let other = mesh.add_gateway(0, None).await.unwrap();
        let mut ann = Chat::ready(mesh.gateway_addr, "ann").await;
        let mut bob = Chat::ready(other, "bob").await;
        ann.ok(CREATE, json!({"channel_id": "x"})).await;
        ann.ok(JOIN, json!({"channel_id": "x", "ssrc": 1})).await;
        bob.ok(JOIN, json!({"channel_id": "x", "ssrc": 2})).await;
        assert_eq!(ann.event(CHANNEL_EVENT).await["d"]["user_id"], "bob", "{backend:?}");
        ann.ok(MESSAGE, json!({"channel_id": "x", "content": "across replicas"}))
            .await;
        assert_eq!(
            bob.event(MESSAGE_EVENT).await["d"]["content"],
            "across replicas",
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_client_that_stops_heartbeating_is_closed_and_reported_as_left() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &["--heartbeat-interval-ms", "150"]).await;
        let mut ann = Chat::ready(mesh.gateway_addr, "ann").await;
        let mut zed = Chat::ready(mesh.gateway_addr, "zed").await;
        ann.ok(CREATE, json!({"channel_id": "z"})).await;
        ann.ok(JOIN, json!({"channel_id": "z", "ssrc": 1})).await;
        zed.ok(JOIN, json!({"channel_id": "z", "ssrc": 2})).await;
        assert_eq!(ann.event(CHANNEL_EVENT).await["d"]["type"], "join");

        // ann keeps heartbeating; zed goes silent.
        let beat = async {
            loop {
                ann.client.send_json(json!({"op": 1})).await;
                if let Some(e) = ann.try_event(CHANNEL_EVENT, Duration::from_millis(60)).await {
                    return e;
                }
            }
        };
        let left = tokio::time::timeout(WAIT, beat).await.expect("leave event");
        assert_eq!(
            (left["d"]["type"].as_str(), left["d"]["user_id"].as_str()),
            (Some("leave"), Some("zed"))
        );
        assert_eq!(
            zed.client.ended(WAIT, true).await,
            Ended::Closed(4003, "heartbeat lost".into())
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_abrupt_disconnect_leaves_every_channel() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut ann = Chat::ready(mesh.gateway_addr, "ann").await;
    let mut bob = Chat::ready(mesh.gateway_addr, "bob").await;
    // An SSRC names one stream on the relay, so each join brings its own.
    for (ch, ssrc) in [("a", 10), ("b", 20)] {
        ann.ok(CREATE, json!({"channel_id": ch})).await;
        ann.ok(JOIN, json!({"channel_id": ch, "ssrc": ssrc + 1})).await;
        bob.ok(JOIN, json!({"channel_id": ch, "ssrc": ssrc + 2})).await;
    }
    drop(bob);
    for _ in 0..2 {
        let mut e = ann.event(CHANNEL_EVENT).await;
        while e["d"]["type"] != "leave" {
            e = ann.event(CHANNEL_EVENT).await;
        }
        assert_eq!(e["d"]["user_id"], "bob");
    }
    // Rejoining works: nothing of bob's old session is left behind.
    let mut bob = Chat::ready(mesh.gateway_addr, "bob").await;
    let joined = bob.ok(JOIN, json!({"channel_id": "a", "ssrc": 12})).await;
    assert_eq!(joined["active_members"].as_array().unwrap().len(), 2);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_floor_is_revoked_after_the_maximum_talk_time() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut ann = Chat::ready(mesh.gateway_addr, "ann").await;
    let mut bob = Chat::ready(mesh.gateway_addr, "bob").await;
    ann.ok(
        CREATE,
        json!({"channel_id": "ptt", "floor": "queue", "max_talk_ms": 300}),
    )
    .await;
    ann.ok(JOIN, json!({"channel_id": "ptt", "ssrc": 1})).await;
    bob.ok(JOIN, json!({"channel_id": "ptt", "ssrc": 2})).await;
    ann.ok(FLOOR_REQUEST, json!({"channel_id": "ptt"})).await;
    bob.ok(FLOOR_REQUEST, json!({"channel_id": "ptt"})).await;
    assert_eq!(bob.event(FLOOR_EVENT).await["d"]["type"], "granted");
    let revoked = bob.event(FLOOR_EVENT).await;
    assert_eq!(
        (revoked["d"]["type"].as_str(), revoked["d"]["holder_id"].as_str()),
        (Some("revoked"), Some("bob"))
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn channel_operations_need_identify_first() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = Client::connect(mesh.gateway_addr, "/ws/livechat").await;
    c.recv().await;
    for op in [
        CREATE,
        JOIN,
        LEAVE,
        UPDATE,
        DELETE,
        MESSAGE,
        FLOOR_REQUEST,
        FLOOR_RELEASE,
    ] {
        c.send_json(json!({"op": op, "d": {"channel_id": "c", "ssrc": 1, "name": "n", "content": "x"}}))
            .await;
        assert_eq!(c.recv().await["d"]["code"], 1000, "op {op}");
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_join_with_ssrc_0_is_bad_input_and_a_refused_join_leaves_no_relay_peer() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut ann = Chat::ready(mesh.gateway_addr, "ann").await;
        let mut bob = Chat::ready(mesh.gateway_addr, "bob").await;
        let mut cat = Chat::ready(mesh.gateway_addr, "cat").await;
        ann.ok(CREATE, json!({"channel_id": "tiny", "capacity": 1})).await;
        assert_eq!(
            ann.err(JOIN, json!({"channel_id": "tiny", "ssrc": 0})).await,
            1004,
            "{backend:?}"
        );
        ann.ok(JOIN, json!({"channel_id": "tiny", "ssrc": 7})).await;
        // Full: bob's peer, added to the relay before the channel was
        // checked, is removed again, so his SSRC is free for cat elsewhere.
        assert_eq!(
            bob.err(JOIN, json!({"channel_id": "tiny", "ssrc": 8})).await,
            2001,
            "{backend:?}"
        );
        ann.ok(LEAVE, json!({"channel_id": "tiny"})).await;
        cat.ok(JOIN, json!({"channel_id": "tiny", "ssrc": 8})).await;
        mesh.shutdown().await.unwrap();
    }
}
