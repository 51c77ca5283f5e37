//! Seed 004 over real sockets: lobby, the match state machine, SDP/ICE
//! relay, with the two players on different gateway replicas, on every
//! backend under test; JSON and MessagePack (`?format=msgpack`) clients.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::{Value, json};

use super::harness::{self, Backend, Client, backends, token};

/// A signal client connected as `id`, speaking JSON text frames or, when
/// `msgpack`, MessagePack binary frames.
pub(super) struct Player {
    pub(super) id: String,
    client: Client,
    msgpack: bool,
}

impl Player {
    async fn connect(addr: SocketAddr, id: &str) -> Self {
        Self::connect_in(addr, id, false).await
    }

    async fn connect_in(addr: SocketAddr, id: &str, msgpack: bool) -> Self {
        let format = if msgpack { "format=msgpack&" } else { "" };
        let client = Client::connect(addr, &format!("/ws/signal?{format}token={}", token(id, 600))).await;
        Self {
            id: id.to_owned(),
            client,
            msgpack,
        }
    }

    /// Connects and joins the lobby; returns the player and `lobby_joined`.
    pub(super) async fn joined(addr: SocketAddr, id: &str) -> (Self, Value) {
        Self::joined_in(addr, id, false).await
    }

    async fn joined_in(addr: SocketAddr, id: &str, msgpack: bool) -> (Self, Value) {
        let mut p = Self::connect_in(addr, id, msgpack).await;
        p.send(
            "join_lobby",
            json!({"playerId": id, "playerName": format!("{id}-name")}),
        )
        .await;
        let joined = p.next("lobby_joined").await;
        (p, joined)
    }

    async fn send(&mut self, kind: &str, payload: Value) {
        let frame = json!({"type": kind, "payload": payload});
        if self.msgpack {
            self.client.send_binary(rmp_serde::to_vec_named(&frame).unwrap()).await;
        } else {
            self.client.send_json(frame).await;
        }
    }

    /// The next frame, checked to come in the player's format.
    async fn recv(&mut self) -> Value {
        let v = self.client.recv().await;
        assert_eq!(
            self.client.last_binary, self.msgpack,
            "{}: {v} in the wrong format",
            self.id
        );
        v
    }

    /// The next frame within `wait`, lobby snapshots included.
    pub(super) async fn try_frame(&mut self, wait: Duration) -> Option<Value> {
        let v = self.client.try_recv(wait).await?;
        assert_eq!(
            self.client.last_binary, self.msgpack,
            "{}: {v} in the wrong format",
            self.id
        );
        Some(v)
    }

    /// The next frame within `wait`, skipping lobby snapshots.
    pub(super) async fn try_next(&mut self, wait: Duration) -> Option<Value> {
        loop {
            let v = self.try_frame(wait).await?;
            if v["type"] != "lobby_update" {
                return Some(v);
            }
        }
    }

    /// The next frame of type `kind`, skipping lobby snapshots (and
    /// failing on any other frame first).
    pub(super) async fn next(&mut self, kind: &str) -> Value {
        loop {
            let v = self.recv().await;
            if v["type"] == kind {
                return v["payload"].clone();
            }
            assert_eq!(v["type"], "lobby_update", "{}: waiting for {kind}, got {v}", self.id);
        }
    }

    /// The next `error`'s code and sessionId.
    async fn error(&mut self) -> (i64, Option<String>) {
        let e = self.next("error").await;
        (e["code"].as_i64().unwrap(), e["sessionId"].as_str().map(str::to_owned))
    }

    /// The outcome of a raced request (`match_request_accepted` or
    /// `match_request_cancelled`), and the code of an error that came first.
    async fn outcome(&mut self) -> (String, Option<i64>) {
        let mut refused = None;
        loop {
            let v = self.recv().await;
            match v["type"].as_str() {
                Some(t @ ("match_request_accepted" | "match_request_cancelled")) => return (t.to_owned(), refused),
                Some("error") => refused = v["payload"]["code"].as_i64(),
                _ => {}
            }
        }
    }

    /// Waits for a lobby snapshot satisfying `want`.
    pub(super) async fn lobby_until(&mut self, want: impl Fn(&[Value]) -> bool) -> Vec<Value> {
        loop {
            let v = self.recv().await;
            if v["type"] == "lobby_update" {
                let players = v["payload"]["players"].as_array().unwrap().clone();
                if want(&players) {
                    return players;
                }
            }
        }
    }
}

pub(super) fn status_of(players: &[Value], id: &str) -> Option<String> {
    players
        .iter()
        .find(|p| p["playerId"] == id)
        .map(|p| p["status"].as_str().unwrap().to_owned())
}

/// A mesh with two gateway replicas; players A and B joined, one on each.
async fn two_players(backend: &Backend, extra: &[&str]) -> (relaymesh::Mesh, Player, Player) {
    two_players_in(backend, extra, false).await
}

/// [`two_players`], A speaking MessagePack when `a_msgpack`.
async fn two_players_in(backend: &Backend, extra: &[&str], a_msgpack: bool) -> (relaymesh::Mesh, Player, Player) {
    let mut mesh = harness::start(backend, extra).await;
    let second = mesh.add_gateway(0, None).await.unwrap();
    let (a, _) = Player::joined_in(mesh.gateway_addr, "alice", a_msgpack).await;
    let (b, _) = Player::joined(second, "bob").await;
    (mesh, a, b)
}

/// A requests B and B accepts; returns the session id.
pub(super) async fn matched(a: &mut Player, b: &mut Player) -> String {
    let sid = requested(a, b).await;
    b.send("accept_match", json!({"accepterId": b.id, "requesterId": a.id}))
        .await;
    for p in [&mut *a, &mut *b] {
        let acc = p.next("match_request_accepted").await;
        assert_eq!(
            (acc["accepterId"].as_str(), acc["sessionId"].as_str()),
            (Some("bob"), Some(sid.as_str()))
        );
    }
    sid
}

async fn requested(a: &mut Player, b: &mut Player) -> String {
    a.send("request_match", json!({"requesterId": a.id, "targetId": b.id}))
        .await;
    let sent = a.next("match_request_sent").await;
    let got = b.next("match_request_received").await;
    assert_eq!(got["requesterId"], a.id.as_str());
    assert_eq!(got["requesterName"], format!("{}-name", a.id));
    assert_eq!(got["sessionId"], sent["sessionId"]);
    got["sessionId"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn lobby_shows_players_and_their_status_across_replicas() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let players = a.lobby_until(|p| p.len() == 2).await;
        assert_eq!(status_of(&players, "bob").as_deref(), Some("available"), "{backend:?}");
        let _ = matched(&mut a, &mut b).await;
        let players = b
            .lobby_until(|p| status_of(p, "alice").as_deref() == Some("in_match"))
            .await;
        assert_eq!(status_of(&players, "bob").as_deref(), Some("in_match"));
        b.send("leave_lobby", json!({"playerId": "bob"})).await;
        let players = a.lobby_until(|p| p.len() == 1).await;
        assert_eq!(
            status_of(&players, "alice").as_deref(),
            Some("available"),
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_match_is_negotiated_in_order_between_two_replicas() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        negotiate(&mut a, &mut b, &backend).await;
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_msgpack_player_and_a_json_player_negotiate_a_match_between_two_replicas() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players_in(&backend, &[], true).await;
        let players = a.lobby_until(|p| p.len() == 2).await;
        assert_eq!(status_of(&players, "bob").as_deref(), Some("available"), "{backend:?}");
        negotiate(&mut a, &mut b, &backend).await;
        mesh.shutdown().await.unwrap();
    }
}

/// A (the requester) and B match and exchange offer, answer and ICE both
/// ways until the match starts.
async fn negotiate(a: &mut Player, b: &mut Player, backend: &Backend) {
    let sid = matched(a, b).await;
    a.send(
        "send_sdp_offer",
        json!({"senderId": "alice", "receiverId": "bob", "sdp": "offer-sdp"}),
    )
    .await;
    let offer = b.next("sdp_offer_received").await;
    assert_eq!(
        offer,
        json!({"senderId": "alice", "sdp": "offer-sdp", "sessionId": sid})
    );
    b.send(
        "send_sdp_answer",
        json!({"senderId": "bob", "receiverId": "alice", "sdp": "answer-sdp", "sessionId": sid}),
    )
    .await;
    assert_eq!(a.next("sdp_answer_received").await["sdp"], "answer-sdp");
    trickle(a, b, backend).await;
    trickle(b, a, backend).await;
    a.send(
        "report_connection",
        json!({"playerId": "alice", "sessionId": sid, "connected": true}),
    )
    .await;
    b.send(
        "report_connection",
        json!({"playerId": "bob", "sessionId": sid, "connected": true}),
    )
    .await;
    let started = a.next("match_started").await;
    assert_eq!(
        started,
        json!({"opponentId": "bob", "opponentName": "bob-name", "sessionId": sid})
    );
    assert_eq!(b.next("match_started").await["opponentId"], "alice");
}

/// Four ICE candidates from `from` reach `to` in order.
async fn trickle(from: &mut Player, to: &mut Player, backend: &Backend) {
    for i in 0..4 {
        let c = json!({"candidate": format!("candidate:{i}"), "sdpMid": "0", "sdpMLineIndex": 0});
        from.send(
            "send_ice_candidate",
            json!({"senderId": from.id, "receiverId": to.id, "candidate": c}),
        )
        .await;
    }
    for i in 0..4 {
        let got = to.next("ice_candidate_received").await;
        assert_eq!(
            got["candidate"]["candidate"],
            format!("candidate:{i}"),
            "{backend:?}: in order"
        );
        assert_eq!(got["candidate"]["sdpMLineIndex"], 0);
        assert_eq!(got["senderId"], from.id.as_str());
    }
}

#[tokio::test]
async fn declined_requests_tell_the_requester_and_close_the_session() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let sid = requested(&mut a, &mut b).await;
        b.send("decline_match", json!({"declinerId": "bob", "requesterId": "alice"}))
            .await;
        let d = a.next("match_request_declined").await;
        assert_eq!(
            d,
            json!({"declinerId": "bob", "declinerName": "bob-name", "sessionId": sid})
        );
        // Nothing after a terminal state.
        b.send(
            "accept_match",
            json!({"accepterId": "bob", "requesterId": "alice", "sessionId": sid}),
        )
        .await;
        assert_eq!(b.error().await, (4011, Some(sid.clone())), "{backend:?}");
        // Both are free again.
        let _ = requested(&mut a, &mut b).await;
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn cancelled_requests_tell_both_players() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let sid = requested(&mut a, &mut b).await;
        a.send(
            "cancel_match_request",
            json!({"requesterId": "alice", "targetId": "bob", "sessionId": sid}),
        )
        .await;
        for p in [&mut a, &mut b] {
            let c = p.next("match_request_cancelled").await;
            assert_eq!(c, json!({"requesterId": "alice", "sessionId": sid}), "{backend:?}");
        }
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn every_refused_transition_gets_its_code_and_session() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let (mut c, _) = Player::joined(mesh.gateway_addr, "carol").await;
        let mut d = Player::connect(mesh.gateway_addr, "dave").await; // never joins

        // A player acts only as themselves.
        a.send("request_match", json!({"requesterId": "bob", "targetId": "carol"}))
            .await;
        assert_eq!(a.error().await, (4003, None));
        a.send(
            "send_sdp_offer",
            json!({"senderId": "bob", "receiverId": "alice", "sdp": "x", "sessionId": "s1"}),
        )
        .await;
        assert_eq!(a.error().await, (4003, Some("s1".into())));
        // Lobby membership.
        a.send("request_match", json!({"requesterId": "alice", "targetId": "alice"}))
            .await;
        assert_eq!(a.error().await.0, 4013);
        d.send("request_match", json!({"requesterId": "dave", "targetId": "alice"}))
            .await;
        assert_eq!(d.error().await.0, 4005);
        a.send("request_match", json!({"requesterId": "alice", "targetId": "dave"}))
            .await;
        assert_eq!(a.error().await.0, 4006);

        let sid = requested(&mut a, &mut b).await;
        // Only the target accepts or declines; only the requester cancels.
        a.send(
            "accept_match",
            json!({"accepterId": "alice", "requesterId": "bob", "sessionId": sid}),
        )
        .await;
        assert_eq!(a.error().await, (4008, Some(sid.clone())));
        a.send(
            "decline_match",
            json!({"declinerId": "alice", "requesterId": "bob", "sessionId": sid}),
        )
        .await;
        assert_eq!(a.error().await, (4008, Some(sid.clone())));
        b.send(
            "cancel_match_request",
            json!({"requesterId": "bob", "targetId": "alice", "sessionId": sid}),
        )
        .await;
        assert_eq!(b.error().await, (4010, Some(sid.clone())));
        // No SDP before the match is accepted.
        a.send(
            "send_sdp_offer",
            json!({"senderId": "alice", "receiverId": "bob", "sdp": "x"}),
        )
        .await;
        assert_eq!(a.error().await, (4009, Some(sid.clone())));
        // One open match per player.
        c.send("request_match", json!({"requesterId": "carol", "targetId": "bob"}))
            .await;
        assert_eq!(c.error().await.0, 4007);
        // Not a player of that session.
        c.send(
            "send_sdp_offer",
            json!({"senderId": "carol", "receiverId": "bob", "sdp": "x", "sessionId": sid}),
        )
        .await;
        assert_eq!(c.error().await, (4012, Some(sid.clone())));
        c.send(
            "report_connection",
            json!({"playerId": "carol", "sessionId": "no-such-session", "connected": true}),
        )
        .await;
        assert_eq!(c.error().await, (4004, Some("no-such-session".into())));
        // After accept: the receiver must be the opponent.
        b.send("accept_match", json!({"accepterId": "bob", "requesterId": "alice"}))
            .await;
        a.next("match_request_accepted").await;
        b.next("match_request_accepted").await;
        a.send(
            "send_sdp_offer",
            json!({"senderId": "alice", "receiverId": "carol", "sdp": "x"}),
        )
        .await;
        assert_eq!(a.error().await, (4012, Some(sid.clone())), "{backend:?}");
        // A second accept is not a transition from Accepted.
        b.send(
            "accept_match",
            json!({"accepterId": "bob", "requesterId": "alice", "sessionId": sid}),
        )
        .await;
        assert_eq!(b.error().await, (4009, Some(sid.clone())), "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_disconnect_mid_match_fails_it_and_tells_the_opponent() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let sid = matched(&mut a, &mut b).await;
        drop(b);
        let failed = a.next("match_failed").await;
        assert_eq!(
            failed,
            json!({"opponentId": "bob", "reason": "opponent_left", "sessionId": sid}),
            "{backend:?}"
        );
        // Snapshots are coalesced: one may show bob gone and alice still in
        // the match; the last one shows her available.
        a.lobby_until(|p| p.len() == 1 && status_of(p, "alice").as_deref() == Some("available"))
            .await;
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn leaving_the_lobby_clears_pending_requests() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        let sid = requested(&mut a, &mut b).await;
        a.send("leave_lobby", json!({"playerId": "alice"})).await;
        let c = b.next("match_request_cancelled").await;
        assert_eq!(c["sessionId"], sid.as_str(), "{backend:?}");
        b.send(
            "accept_match",
            json!({"accepterId": "bob", "requesterId": "alice", "sessionId": sid}),
        )
        .await;
        assert_eq!(b.error().await, (4011, Some(sid)));
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn unanswered_requests_expire() {
    for backend in backends() {
        let flags = ["--match-request-timeout-ms", "300", "--match-sweep-interval-ms", "50"];
        let (mesh, mut a, mut b) = two_players(&backend, &flags).await;
        let sid = requested(&mut a, &mut b).await;
        for p in [&mut a, &mut b] {
            let e = p.next("match_request_expired").await;
            assert_eq!(
                e,
                json!({"requesterId": "alice", "targetId": "bob", "sessionId": sid}),
                "{backend:?}"
            );
        }
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_negotiation_that_does_not_finish_fails() {
    for backend in backends() {
        let flags = [
            "--match-negotiation-timeout-ms",
            "300",
            "--match-sweep-interval-ms",
            "50",
        ];
        let (mesh, mut a, mut b) = two_players(&backend, &flags).await;
        let sid = matched(&mut a, &mut b).await;
        a.send(
            "send_sdp_offer",
            json!({"senderId": "alice", "receiverId": "bob", "sdp": "x"}),
        )
        .await;
        b.next("sdp_offer_received").await;
        for p in [&mut a, &mut b] {
            let f = p.next("match_failed").await;
            assert_eq!(
                (f["reason"].as_str(), f["sessionId"].as_str()),
                (Some("timeout"), Some(sid.as_str()))
            );
        }
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn of_a_racing_accept_and_cancel_exactly_one_wins() {
    for backend in backends() {
        let (mesh, mut a, mut b) = two_players(&backend, &[]).await;
        for _ in 0..5 {
            let sid = requested(&mut a, &mut b).await;
            let accept = json!({"type": "accept_match", "payload": {"accepterId": "bob", "requesterId": "alice", "sessionId": sid}});
            let cancel = json!({"type": "cancel_match_request", "payload": {"requesterId": "alice", "targetId": "bob", "sessionId": sid}});
            tokio::join!(b.client.send_json(accept), a.client.send_json(cancel));
            // Both players hear one outcome, the same; the loser's frame is
            // refused with 4011 (closed) or 4009 (no longer requested).
            let a_outcome = a.outcome().await;
            let b_outcome = b.outcome().await;
            assert_eq!(a_outcome.0, b_outcome.0, "{backend:?}: both hear the winner");
            let accepted = usize::from(a_outcome.0 == "match_request_accepted") * 2;
            let loser_error = match (a_outcome.1, b_outcome.1) {
                (Some(code), None) | (None, Some(code)) => code,
                (None, None) if accepted == 2 => a.error().await.0,
                (None, None) => b.error().await.0,
                (Some(x), Some(y)) => panic!("{backend:?}: both refused ({x}, {y})"),
            };
            assert!(loser_error == 4011 || loser_error == 4009, "{backend:?}: {loser_error}");
            if accepted == 2 {
                a.send("leave_lobby", json!({"playerId": "alice"})).await;
                a.next("match_failed").await;
                b.next("match_failed").await;
                a.send("join_lobby", json!({"playerId": "alice", "playerName": "alice-name"}))
                    .await;
                a.next("lobby_joined").await;
            }
        }
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn lobby_snapshots_are_coalesced() {
    for backend in backends() {
        let mesh = harness::start(&backend, &["--lobby-updates-per-sec", "2"]).await;
        let (mut watcher, _) = Player::joined(mesh.gateway_addr, "watcher").await;
        let mut others = Vec::new();
        for i in 0..30 {
            others.push(Player::joined(mesh.gateway_addr, &format!("p{i}")).await);
        }
        // Every join reached the watcher in some snapshot...
        let players = watcher.lobby_until(|p| p.len() == 31).await;
        assert_eq!(players.len(), 31);
        // ...but far fewer snapshots than joins were sent.
        let mut updates = 1;
        while let Some(v) = watcher.client.try_recv(Duration::from_millis(700)).await {
            assert_eq!(v["type"], "lobby_update");
            updates += 1;
        }
        assert!(updates <= 10, "{backend:?}: {updates} snapshots for 31 joins");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn join_lobby_answers_with_ice_servers_and_turn_credentials() {
    let flags = [
        "--stun-urls",
        "stun:127.0.0.1:3478",
        "--turn-urls",
        "turn:127.0.0.1:3478?transport=udp",
        "--turn-secret",
        "s3cret",
        "--turn-ttl-secs",
        "600",
    ];
    let mesh = harness::start(&Backend::Memory, &flags).await;
    let (_a, joined) = Player::joined(mesh.gateway_addr, "alice").await;
    let servers = joined["iceServers"].as_array().unwrap();
    assert_eq!(servers[0], json!({"urls": ["stun:127.0.0.1:3478"]}));
    let expire = joined["credentialsExpireAt"].as_i64().unwrap();
    assert_eq!(servers[1]["username"], format!("{expire}:alice"));
    let (user, pass) = relaymesh_match::turn::turn_credential("s3cret", "alice", expire);
    assert_eq!(
        (servers[1]["username"].as_str(), servers[1]["credential"].as_str()),
        (Some(user.as_str()), Some(pass.as_str()))
    );
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn malformed_msgpack_gets_the_error_frame_and_the_connection_stays_open() {
    for backend in backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut p = Player::connect_in(mesh.gateway_addr, "alice", true).await;
        // Not MessagePack; a value that is not a map; an unknown type.
        for (bytes, code) in [
            (vec![0xc1], 4000),
            (rmp_serde::to_vec_named(&json!(["join_lobby"])).unwrap(), 4000),
            (
                rmp_serde::to_vec_named(&json!({"type": "dance", "payload": {}})).unwrap(),
                4001,
            ),
        ] {
            p.client.send_binary(bytes).await;
            assert_eq!(p.error().await, (code, None), "{backend:?}");
        }
        // A text frame on a msgpack connection is refused in msgpack.
        p.client
            .send_json(json!({"type": "leave_lobby", "payload": {"playerId": "alice"}}))
            .await;
        assert_eq!(p.error().await.0, 4000);
        // Still open: the same connection joins.
        p.send("join_lobby", json!({"playerId": "alice", "playerName": "A"}))
            .await;
        assert_eq!(p.next("lobby_joined").await["playerId"], "alice");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn json_connections_refuse_binary_and_unknown_formats_are_refused() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut p = Player::connect(mesh.gateway_addr, "alice").await;
    p.client
        .send_binary(rmp_serde::to_vec_named(&json!({"type": "leave_lobby", "payload": {}})).unwrap())
        .await;
    assert_eq!(p.error().await.0, 4000);
    let url = format!(
        "ws://{}/ws/signal?format=cbor&token={}",
        mesh.gateway_addr,
        token("bob", 600)
    );
    assert!(
        tokio_tungstenite::connect_async(url).await.is_err(),
        "an unknown format fails the upgrade"
    );
    mesh.shutdown().await.unwrap();
}
