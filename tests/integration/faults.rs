//! Breaks an operator would cause, with real processes: a gateway replica
//! killed with SIGKILL while its users sit in channels.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::json;

use super::harness::{self, Backend, Chat};

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

#[tokio::test]
async fn a_killed_gateways_members_leave_their_channels_and_free_their_seats() {
    let Some(redis) = harness::backends().into_iter().find_map(|b| match b {
        Backend::Redis(url) => Some(url),
        Backend::Memory | Backend::Cluster(_) => None,
    }) else {
        eprintln!("skipped: needs REDIS_URL (gateway processes share Redis)");
        return;
    };
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
    let pid = doomed.id().unwrap().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-KILL", &pid])
            .status()
            .unwrap()
            .success()
    );
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
async fn a_thousand_users_joining_one_channel_at_once_over_two_gateways_all_get_in() {
    const USERS: usize = 1000;
    for backend in harness::backends() {
        // Half a million join events on one machine: service calls may
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
        // Every join is announced to every member (half a million events in
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
