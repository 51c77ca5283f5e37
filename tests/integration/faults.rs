//! Breaks an operator would cause, with real processes: a gateway replica
//! killed with SIGKILL while its users sit in channels, play a match, or
//! while a copilot callback waits for one of its users.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
use relaymesh_proto::signaling::v1::{CallClientRequest, CallbackKind, ErrorReason};
use relaymesh_rpc::reason_of;
use relaymesh_wire::json_value::to_proto;

use super::harness::{self, Backend, Chat, Copilot};
use super::signal::{Player, matched, status_of};

const BIN: &str = env!("CARGO_BIN_EXE_relaymesh");

/// A gateway replica as its own process, on the test mesh's services and Redis.
async fn gateway_process(mesh: &relaymesh::Mesh, redis: &str) -> (tokio::process::Child, std::net::SocketAddr) {
    let port = super::harness::free_port();
    let url = |role: &str| {
        let addr = mesh.services.iter().find(|(r, _)| *r == role).unwrap().1;
        format!("http://{addr}")
    };
    let child = tokio::process::Command::new(BIN)
        .arg("gateway")
        .env("HOST", "127.0.0.1")
        .env("PORT", port.to_string())
        .env("METRICS_PORT", super::harness::free_port().to_string())
        .env("REDIS_URL", redis)
        .env_remove("REDIS_CLUSTER_URLS")
        .env("REDIS_KEY_PREFIX", &mesh.options().redis_key_prefix)
        .env("JWT_SECRET", harness::JWT_SECRET)
        .env("AUTH_URL", url("auth"))
        .env("SIGNALING_URL", url("signaling"))
        .env("CHANNEL_URL", url("channel"))
        .env("MEDIA_RELAY_URL", url("media-relay"))
        .env("MATCH_URL", url("match"))
        .env("SCHEDULER_URL", url("scheduler"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while harness::try_http_get(addr, "/healthz").await.is_none() {
        assert!(Instant::now() < deadline, "gateway process never listened");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    (child, addr)
}

/// The Redis the gateway processes share, when REDIS_URL is set.
fn shared_redis() -> Option<String> {
    let redis = harness::backends().into_iter().find_map(|b| match b {
        Backend::Redis(url) => Some(url),
        Backend::Memory | Backend::Cluster(_) => None,
    });
    if redis.is_none() {
        eprintln!("skipped: needs REDIS_URL (gateway processes share Redis)");
    }
    redis
}

fn kill_9(child: &tokio::process::Child) {
    let pid = child.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
}

#[tokio::test]
async fn a_killed_gateways_members_leave_their_channels_and_free_their_seats() {
    let Some(redis) = shared_redis() else { return };
    let mesh = harness::start(&Backend::Redis(redis.clone()), &[]).await;
    let (mut doomed, addr) = gateway_process(&mesh, &redis).await;

    let mut alice = Chat::ready(mesh.gateway_addr, "alice").await;
    alice
        .ok(10, json!({"channel_id": "room", "capacity": 3, "floor": "queue"}))
        .await;
    alice.ok(11, json!({"channel_id": "room", "ssrc": 1})).await;
    let mut ghosts = Vec::new();
    for (i, user) in ["bob", "carol"].into_iter().enumerate() {
        let mut c = Chat::ready(addr, user).await;
        c.ok(11, json!({"channel_id": "room", "ssrc": 10 + i})).await;
        ghosts.push(c);
    }
    // bob holds the floor when his gateway dies.
    ghosts[0].ok(30, json!({"channel_id": "room"})).await;
    assert_eq!(alice.event(102).await["d"]["holder_id"], "bob");
    let full = Chat::ready(mesh.gateway_addr, "dave")
        .await
        .err(11, json!({"channel_id": "room", "ssrc": 30}))
        .await;
    assert_eq!(full, 2001, "the channel is full while bob and carol sit in it");

    let killed_at = Instant::now();
    kill_9(&doomed);
    doomed.wait().await.unwrap();

    // The others are told, once per member, within a few seconds.
    let mut left = Vec::new();
    while left.len() < 2 {
        let e = alice
            .try_event(100, Duration::from_secs(10))
            .await
            .expect("a leave event for each member of the dead gateway");
        if e["d"]["type"] == "leave" {
            left.push(e["d"]["user_id"].as_str().unwrap().to_owned());
        }
    }
    let noticed = killed_at.elapsed();
    left.sort();
    assert_eq!(left, ["bob", "carol"]);
    assert!(noticed < Duration::from_secs(8), "noticed after {noticed:?}");
    // The floor was handed over with the leave, and nothing is repeated.
    let floor = alice.event(102).await;
    assert_eq!(floor["d"]["type"], "left", "{floor}");
    assert!(
        alice.try_event(100, Duration::from_millis(1500)).await.is_none(),
        "each leave once"
    );

    // Their seats are free: the same users come back through the live gateway.
    for (i, user) in ["bob", "carol"].into_iter().enumerate() {
        let mut c = Chat::ready(mesh.gateway_addr, user).await;
        c.ok(11, json!({"channel_id": "room", "ssrc": 20 + i})).await;
    }
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_killed_gateway_releases_the_callbacks_waiting_for_its_copilot_users() {
    let Some(redis) = shared_redis() else { return };
    let mesh = harness::start(&Backend::Redis(redis.clone()), &[]).await;
    let (mut doomed, addr) = gateway_process(&mesh, &redis).await;
    let mut ann = Copilot::connect(addr, "ann").await;
    let signaling = mesh.services.iter().find(|(r, _)| *r == "signaling").unwrap().1;
    let mut signaling = SignalingServiceClient::connect(format!("http://{signaling}"))
        .await
        .unwrap();

    // A service asks ann, with a timeout far beyond the test's patience.
    let call = CallClientRequest {
        connection_id: ann.connection_id.clone(),
        kind: CallbackKind::Api as i32,
        data: Some(to_proto(json!({"api": "costs"}))),
        timeout: Some(Duration::from_secs(300).try_into().unwrap()),
    };
    let waiting = tokio::spawn(async move { signaling.call_client(call).await });
    assert_eq!(ann.next_callback().await["type"], "request_api");
    let listed = |body: &serde_json::Value| {
        body["connections"]
            .as_array()
            .is_some_and(|c| c.iter().any(|c| c["user_id"] == "ann"))
    };
    let (status, body) = harness::operator_call(mesh.gateway_addr, "GET", "/api/v1/copilot/connections", None).await;
    assert!(status == 200 && listed(&body), "{body}");

    kill_9(&doomed);
    doomed.wait().await.unwrap();
    drop(ann);

    // Released by the survivors' cleanup, not by the callback's timeout.
    let answer = tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("the waiting call is released")
        .unwrap();
    let status = answer.expect_err("no answer came");
    assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}");
    assert_eq!(reason_of::<ErrorReason>(&status), Some(ErrorReason::ConnectionClosed));
    let (status, body) = harness::operator_call(mesh.gateway_addr, "GET", "/api/v1/copilot/connections", None).await;
    assert!(status == 200 && !listed(&body), "{body}");
    // ann comes back through the live gateway, single session or not.
    let mut back = Copilot::connect(mesh.gateway_addr, "ann").await;
    assert!(back.still_open().await);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_thousand_users_joining_one_channel_at_once_over_two_gateways_all_get_in() {
    const USERS: usize = 1000;
    for backend in harness::backends() {
        // Tens of thousands of join events on one machine: service calls may
        // queue past the default 5 s deadline; this tests outcomes, not speed.
        let flags = [
            "--max-channel-members",
            "2000",
            "--outbound-queue",
            "4096",
            "--rpc-timeout-ms",
            "60000",
        ];
        let mut mesh = harness::start(&backend, &flags).await;
        let second = mesh.add_gateway(0, None).await.unwrap();
        let mut owner = Chat::ready(mesh.gateway_addr, "owner").await;
        owner.ok(10, json!({"channel_id": "stadium", "capacity": 2000})).await;
        let started = Instant::now();
        // 64 joins in flight at a time, spread over two gateway replicas.
        let users: Vec<usize> = (0..USERS).collect();
        let mut refused = Vec::new();
        // Every join is announced to every member (80,000 events in
        // all): members keep reading, as live clients do.
        let mut members = tokio::task::JoinSet::new();
        for wave in users.chunks(64) {
            let joins = wave.iter().map(|&i| {
                let addr = if i % 2 == 0 { mesh.gateway_addr } else { second };
                async move {
                    let mut c = Chat::ready(addr, &format!("fan{i}")).await;
                    // Joins queue for the channel's lock, each announcing itself to
                    // up to a thousand members: an answer may wait its turn.
                    let join = json!({"channel_id": "stadium", "ssrc": i + 1});
                    let answer = c.call_within(11, join, Duration::from_secs(120)).await;
                    (c, answer)
                }
            });
            for (c, answer) in futures_util::future::join_all(joins).await {
                if answer["op"] != 200 {
                    refused.push(answer);
                }
                members.spawn(c.client.drain());
            }
        }
        let took = started.elapsed();
        assert!(
            refused.is_empty(),
            "{backend:?}: {} refused, e.g. {}",
            refused.len(),
            refused[0]
        );
        // The last joiner sees everyone.
        let mut last = Chat::ready(mesh.gateway_addr, "last").await;
        let join = json!({"channel_id": "stadium", "ssrc": 5000});
        let ack = last.call_within(11, join, Duration::from_secs(120)).await;
        assert_eq!(ack["op"], 200, "{backend:?}: {ack}");
        assert_eq!(
            ack["d"]["active_members"].as_array().unwrap().len(),
            USERS + 1,
            "{backend:?}"
        );
        eprintln!("{backend:?}: {USERS} concurrent joins in {took:?}");
        members.abort_all();
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_killed_gateways_players_leave_the_lobby_and_their_match_fails_once() {
    let Some(redis) = shared_redis() else { return };
    let mesh = harness::start(&Backend::Redis(redis.clone()), &[]).await;
    let (mut doomed, addr) = gateway_process(&mesh, &redis).await;

    // alice plays from the doomed gateway, bob from the surviving one;
    // carol, on the doomed one too, only waits in the lobby.
    let (mut alice, _) = Player::joined(addr, "alice").await;
    let (_carol, _) = Player::joined(addr, "carol").await;
    let (mut bob, _) = Player::joined(mesh.gateway_addr, "bob").await;
    let sid = matched(&mut alice, &mut bob).await;
    bob.lobby_until(|p| p.len() == 3 && status_of(p, "bob").as_deref() == Some("in_match"))
        .await;

    kill_9(&doomed);
    doomed.wait().await.unwrap();
    // Within seconds (liveness TTL 3 s): the failure, and a snapshot
    // without the dead gateway's players, in whichever order.
    let (mut failed, mut alone) = (Vec::new(), false);
    while failed.is_empty() || !alone {
        let v = bob
            .try_frame(Duration::from_secs(15))
            .await
            .expect("bob is told about the dead gateway's players");
        match v["type"].as_str() {
            Some("match_failed") => failed.push(v["payload"].clone()),
            Some("lobby_update") => {
                let players = v["payload"]["players"].as_array().unwrap();
                alone = players.len() == 1 && status_of(players, "bob").as_deref() == Some("available");
            }
            _ => panic!("unexpected {v}"),
        }
    }
    assert_eq!(
        failed,
        [json!({"opponentId": "alice", "reason": "opponent_left", "sessionId": sid})]
    );
    // Once: nothing else comes (lobby snapshots aside).
    assert_eq!(bob.try_next(Duration::from_millis(1500)).await, None);
    // bob is free: he matches a new player at once.
    let (mut dave, _) = Player::joined(mesh.gateway_addr, "dave").await;
    let _ = matched(&mut dave, &mut bob).await;
    mesh.shutdown().await.unwrap();
}
