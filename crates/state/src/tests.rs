//! Every behaviour of the state interface, on every backend under test.

use std::time::Duration;

use bytes::Bytes;

use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};

use crate::testing::backends;
use crate::*;

async fn recv(sub: &mut Subscription) -> Bytes {
    tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("message within 5 s")
        .expect("subscription open")
}

#[tokio::test]
async fn keys_set_get_delete_and_expire() {
    for s in backends("keys").await {
        assert_eq!(s.get("k").await.unwrap(), None, "{s:?}");
        s.set("k", b"v1", None).await.unwrap();
        assert_eq!(s.get("k").await.unwrap().as_deref(), Some(&b"v1"[..]), "{s:?}");
        s.set("t", b"x", Some(Duration::from_millis(50))).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert_eq!(s.get("t").await.unwrap(), None, "{s:?}: ttl honoured");
        assert!(s.delete("k").await.unwrap(), "{s:?}");
        assert!(!s.delete("k").await.unwrap(), "{s:?}");
    }
}

#[tokio::test]
async fn set_nx_admits_exactly_one_writer() {
    for s in backends("setnx").await {
        let ttl = Some(Duration::from_secs(10));
        assert!(s.set_nx("once", b"a", ttl).await.unwrap(), "{s:?}");
        assert!(!s.set_nx("once", b"b", ttl).await.unwrap(), "{s:?}");
        assert_eq!(s.get("once").await.unwrap().as_deref(), Some(&b"a"[..]));
    }
}

#[tokio::test]
async fn compare_and_swap_admits_one_of_two_racing_writers() {
    for s in backends("cas").await {
        s.set("m", b"v1", None).await.unwrap();
        let (a, b) = tokio::join!(
            s.compare_and_swap("m", b"v1", Some(b"a"), None),
            s.compare_and_swap("m", b"v1", Some(b"b"), None)
        );
        assert!(a.unwrap() ^ b.unwrap(), "{s:?}: exactly one winner");
        let now = s.get("m").await.unwrap().unwrap();
        assert!(now == b"a" || now == b"b", "{s:?}");
        assert!(
            !s.compare_and_swap("m", b"v1", Some(b"c"), None).await.unwrap(),
            "{s:?}: stale"
        );
        assert!(
            !s.compare_and_swap("absent", b"v1", Some(b"c"), None).await.unwrap(),
            "{s:?}"
        );
        assert!(
            s.compare_and_swap("m", &now, None, None).await.unwrap(),
            "{s:?}: delete"
        );
        assert_eq!(s.get("m").await.unwrap(), None, "{s:?}");
    }
}

#[tokio::test]
async fn take_returns_the_value_once() {
    for s in backends("take").await {
        s.set("tok", b"payload", None).await.unwrap();
        let (a, b) = tokio::join!(s.take("tok"), s.take("tok"));
        let got: Vec<_> = [a.unwrap(), b.unwrap()].into_iter().flatten().collect();
        assert_eq!(got, vec![b"payload".to_vec()], "{s:?}: exactly one taker");
    }
}

#[tokio::test]
async fn windowed_counter_counts_then_resets() {
    for s in backends("window").await {
        let w = Duration::from_millis(200);
        assert_eq!(s.incr_window("rl", w).await.unwrap().0, 1);
        assert_eq!(s.incr_window("rl", w).await.unwrap().0, 2);
        let (n, left) = s.incr_window("rl", w).await.unwrap();
        assert_eq!(n, 3, "{s:?}");
        assert!(left <= w, "{s:?}: window does not restart on increment");
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert_eq!(s.incr_window("rl", w).await.unwrap().0, 1, "{s:?}: new window");
    }
}

#[tokio::test]
async fn sets_and_hashes() {
    for s in backends("coll").await {
        s.set_add("set", "a", None).await.unwrap();
        s.set_add("set", "b", None).await.unwrap();
        s.set_add("set", "a", None).await.unwrap();
        let mut m = s.set_members("set").await.unwrap();
        m.sort();
        assert_eq!(m, vec!["a", "b"], "{s:?}");
        s.set_remove("set", "a").await.unwrap();
        assert_eq!(s.set_members("set").await.unwrap(), vec!["b"]);

        s.hash_set("h", "f1", b"1").await.unwrap();
        s.hash_set("h", "f2", b"2").await.unwrap();
        assert_eq!(s.hash_get("h", "f1").await.unwrap().as_deref(), Some(&b"1"[..]));
        assert!(s.hash_delete("h", "f1").await.unwrap());
        assert_eq!(s.hash_all("h").await.unwrap(), vec![("f2".to_owned(), b"2".to_vec())]);
        assert_eq!(s.hash_fields("h").await.unwrap(), vec!["f2"], "{s:?}");
        assert!(s.hash_fields("no-such-hash").await.unwrap().is_empty(), "{s:?}");
    }
}

#[tokio::test]
async fn wrong_type_is_an_error_not_a_panic() {
    for s in backends("wrongtype").await {
        s.set_add("s", "m", None).await.unwrap();
        assert!(s.get("s").await.is_err(), "{s:?}");
    }
}

#[tokio::test]
async fn pubsub_reaches_every_subscriber_in_order() {
    for s in backends("pubsub").await {
        let mut a = s.subscribe("topic").await.unwrap();
        let mut b = s.subscribe("topic").await.unwrap();
        let mut other = s.subscribe("other").await.unwrap();
        for i in 0..100u32 {
            s.publish("topic", Bytes::from(i.to_be_bytes().to_vec())).await.unwrap();
        }
        for sub in [&mut a, &mut b] {
            for i in 0..100u32 {
                assert_eq!(recv(sub).await.as_ref(), i.to_be_bytes(), "{s:?}");
            }
        }
        s.publish("other", Bytes::from_static(b"x")).await.unwrap();
        assert_eq!(recv(&mut other).await.as_ref(), b"x", "{s:?}: topics are separate");
    }
}

#[tokio::test]
async fn delivery_routes_to_the_gateway_holding_the_connection() {
    for s in backends("delivery").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(s.clone(), registry.clone());
        let (gw_a, gw_b) = (GatewayId::new("a"), GatewayId::new("b"));
        let mut inbox_a = delivery.inbox(&gw_a).await.unwrap();
        let mut inbox_b = delivery.inbox(&gw_b).await.unwrap();
        let entry = SessionEntry {
            connection_id: "c1".into(),
            gateway_id: "b".into(),
            protocol: ClientProtocol::Copilot as i32,
            user_id: "alice".into(),
            connected_at_ms: 1,
            ..Default::default()
        };
        registry.register(&entry).await.unwrap();

        let sent = delivery
            .send_to_user(
                ClientProtocol::Copilot,
                "alice",
                close_envelope(CloseCode::Replaced, "bye"),
            )
            .await
            .unwrap();
        assert_eq!(sent, 1, "{s:?}");
        let env = tokio::time::timeout(Duration::from_secs(5), inbox_b.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(env.connection_ids, vec!["c1".to_owned()]);
        assert!(matches!(env.body, Some(Body::Close(ref c)) if c.code == CloseCode::Replaced as i32));
        assert!(
            tokio::time::timeout(Duration::from_millis(100), inbox_a.recv())
                .await
                .is_err(),
            "{s:?}: the other replica gets nothing"
        );

        registry.unregister(&entry).await.unwrap();
        let unknown = delivery
            .send_to_connection(
                &ConnectionId::new("c1"),
                close_envelope(CloseCode::Replaced, "replaced"),
            )
            .await
            .unwrap();
        assert!(!unknown, "{s:?}: an unregistered connection is not routed");
        assert!(
            registry
                .sessions_of(ClientProtocol::Copilot, "alice")
                .await
                .unwrap()
                .is_empty()
        );
    }
}

#[tokio::test]
async fn expired_sessions_are_pruned_from_the_user_index() {
    for s in backends("prune").await {
        // Long enough to read it back on a loaded machine, short to wait out.
        let registry = SessionRegistry::new(s.clone(), Duration::from_millis(400));
        let entry = SessionEntry {
            connection_id: "gone".into(),
            gateway_id: "dead-replica".into(),
            protocol: ClientProtocol::Signal as i32,
            user_id: "bob".into(),
            connected_at_ms: 1,
            ..Default::default()
        };
        registry.register(&entry).await.unwrap();
        assert_eq!(
            registry.sessions_of(ClientProtocol::Signal, "bob").await.unwrap().len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(
            registry
                .sessions_of(ClientProtocol::Signal, "bob")
                .await
                .unwrap()
                .is_empty(),
            "{s:?}"
        );
    }
}

#[tokio::test]
async fn one_publish_per_gateway_reaches_every_connection_it_holds() {
    for s in backends("fanout").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(s.clone(), registry.clone());
        let mut inbox_a = delivery.inbox(&GatewayId::new("a")).await.unwrap();
        let mut inbox_b = delivery.inbox(&GatewayId::new("b")).await.unwrap();
        let mut conns = Vec::new();
        for i in 0..10 {
            let gateway = if i % 2 == 0 { "a" } else { "b" };
            registry
                .register(&SessionEntry {
                    connection_id: format!("c{i}"),
                    gateway_id: gateway.into(),
                    protocol: ClientProtocol::Livechat as i32,
                    user_id: format!("u{i}"),
                    connected_at_ms: 1,
                    ..Default::default()
                })
                .await
                .unwrap();
            conns.push(ConnectionId::new(format!("c{i}")));
        }
        conns.push(ConnectionId::new("never-registered"));
        let gone = delivery
            .send_to_connections(&conns, close_envelope(CloseCode::GoingAway, "x"))
            .await
            .unwrap();
        assert_eq!(gone, vec![ConnectionId::new("never-registered")], "{s:?}");
        for (inbox, parity) in [(&mut inbox_a, 0), (&mut inbox_b, 1)] {
            let env = tokio::time::timeout(Duration::from_secs(5), inbox.recv())
                .await
                .unwrap()
                .unwrap();
            let want: Vec<String> = (0..10).filter(|i| i % 2 == parity).map(|i| format!("c{i}")).collect();
            assert_eq!(env.connection_ids, want, "{s:?}");
            assert!(
                tokio::time::timeout(Duration::from_millis(100), inbox.recv())
                    .await
                    .is_err(),
                "{s:?}: one envelope per replica"
            );
        }
    }
}

async fn next_envelope(inbox: &mut GatewayInbox) -> Envelope {
    tokio::time::timeout(Duration::from_secs(5), inbox.recv())
        .await
        .expect("an envelope within 5 s")
        .expect("inbox open")
}

/// A delivery that keeps routes reads the registry once per connection
/// while its route lives: a connection unregistered meanwhile still gets
/// the envelope at its (old) replica and is not reported gone until the
/// route expires; one without routes reports it gone at once.
#[tokio::test]
async fn remembered_routes_skip_the_registry_until_they_expire() {
    for s in backends("routes").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let ttl = Duration::from_secs(1);
        let routed = Delivery::new(s.clone(), registry.clone()).with_routes(ttl);
        let plain = Delivery::new(s.clone(), registry.clone());
        let mut inbox = routed.inbox(&GatewayId::new("a")).await.unwrap();
        let entry = entry("c1", "a", "u1");
        registry.register(&entry).await.unwrap();
        let conns = [ConnectionId::new("c1")];
        let send = async |d: &Delivery| {
            d.send_to_connections(&conns, close_envelope(CloseCode::GoingAway, "x"))
                .await
                .unwrap()
        };
        let read_at = std::time::Instant::now();
        assert!(send(&routed).await.is_empty(), "{s:?}");
        assert_eq!(next_envelope(&mut inbox).await.connection_ids, ["c1"]);

        registry.unregister(&entry).await.unwrap();
        assert!(send(&routed).await.is_empty(), "{s:?}: the route is remembered");
        assert!(
            read_at.elapsed() < ttl / 2,
            "{s:?}: the machine was too slow for this test's ttl"
        );
        assert_eq!(next_envelope(&mut inbox).await.connection_ids, ["c1"]);
        assert_eq!(send(&plain).await, conns, "{s:?}: without routes, gone at once");

        tokio::time::sleep(ttl + Duration::from_millis(50)).await;
        assert_eq!(send(&routed).await, conns, "{s:?}: expired, read again, gone");
        assert!(
            tokio::time::timeout(Duration::from_millis(100), inbox.recv())
                .await
                .is_err(),
            "{s:?}: nothing published for a gone connection"
        );
    }
}

#[tokio::test]
async fn rate_limit_allows_exactly_the_limit_per_sliding_window() {
    for s in backends("ratelimit").await {
        let w = Duration::from_millis(400);
        let first = s.rate_limit("rl:a", 3, w).await.unwrap();
        assert_eq!((first.allowed, first.remaining), (true, 2), "{s:?}");
        assert_eq!(s.rate_limit("rl:a", 3, w).await.unwrap().remaining, 1, "{s:?}");
        assert_eq!(s.rate_limit("rl:a", 3, w).await.unwrap().remaining, 0, "{s:?}");
        let refused = s.rate_limit("rl:a", 3, w).await.unwrap();
        assert!(!refused.allowed, "{s:?}");
        assert_eq!(refused.remaining, 0, "{s:?}");
        assert!(
            refused.reset_after <= w && refused.reset_after > Duration::ZERO,
            "{s:?}: {refused:?}"
        );
        assert!(
            s.rate_limit("rl:b", 3, w).await.unwrap().allowed,
            "{s:?}: keys are independent"
        );
        tokio::time::sleep(refused.reset_after + Duration::from_millis(50)).await;
        assert!(
            s.rate_limit("rl:a", 3, w).await.unwrap().allowed,
            "{s:?}: the window slid"
        );
    }
}

/// How many of `calls`, run at once, were allowed.
async fn allowed_of<F, E>(calls: impl Iterator<Item = F>) -> usize
where
    F: std::future::Future<Output = std::result::Result<RateDecision, E>>,
    E: std::fmt::Debug,
{
    futures_util::future::join_all(calls)
        .await
        .into_iter()
        .filter(|d| d.as_ref().unwrap().allowed)
        .count()
}

#[tokio::test]
async fn racing_rate_limit_callers_get_exactly_the_limit() {
    for s in backends("ratelimit-race").await {
        let calls = (0..20).map(|_| s.rate_limit("rl:race", 10, Duration::from_secs(30)));
        assert_eq!(allowed_of(calls).await, 10, "{s:?}");
    }
}

#[tokio::test]
async fn throttle_allows_a_burst_then_refuses_with_the_time_to_retry() {
    // A token every 200 ms, 3 at once.
    let rate = Rate::new(5.0, 3).unwrap();
    for s in backends("throttle").await {
        let first = s.throttle("tb:a", rate, 1).await.unwrap();
        assert_eq!((first.allowed, first.remaining), (true, 2), "{s:?}");
        assert!(s.throttle("tb:a", rate, 2).await.unwrap().allowed, "{s:?}");
        let refused = s.throttle("tb:a", rate, 1).await.unwrap();
        assert!(!refused.allowed, "{s:?}");
        assert!(
            refused.reset_after > Duration::ZERO && refused.reset_after <= Duration::from_millis(200),
            "{s:?}: {refused:?}"
        );
        assert!(
            s.throttle("tb:b", rate, 3).await.unwrap().allowed,
            "{s:?}: keys are independent"
        );
        tokio::time::sleep(refused.reset_after + Duration::from_millis(20)).await;
        assert!(
            s.throttle("tb:a", rate, 1).await.unwrap().allowed,
            "{s:?}: a token came back"
        );
        // Full again (its key expired, or is rewritten in place): the whole
        // burst is back, and charged to the same key.
        tokio::time::sleep(Duration::from_millis(650)).await;
        let full = s.throttle("tb:a", rate, 3).await.unwrap();
        assert_eq!((full.allowed, full.remaining), (true, 0), "{s:?}");
        assert!(!s.throttle("tb:a", rate, 1).await.unwrap().allowed, "{s:?}");
    }
}

#[tokio::test]
async fn racing_throttle_callers_get_exactly_the_burst() {
    // Practically no refill during the test: only the burst passes.
    let rate = Rate::new(0.001, 10).unwrap();
    for s in backends("throttle-race").await {
        let calls = (0..30).map(|_| s.throttle("tb:race", rate, 1));
        assert_eq!(allowed_of(calls).await, 10, "{s:?}");
    }
}

#[tokio::test]
async fn sessions_lists_live_connections_of_one_protocol_on_every_live_replica() {
    for s in backends("list").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        for gw in ["a", "b", "dead"] {
            let liveness = GatewayLiveness::new(registry.clone(), GatewayId::new(gw));
            let liveness = if gw == "dead" {
                liveness.with_ttl(Duration::from_millis(50))
            } else {
                liveness
            };
            liveness.heartbeat().await.unwrap();
        }
        let entry = |conn: &str, gateway: &str, protocol: ClientProtocol, at: i64| SessionEntry {
            connection_id: conn.into(),
            gateway_id: gateway.into(),
            protocol: protocol as i32,
            user_id: format!("user-{conn}"),
            connected_at_ms: at,
            last_activity_ms: at + 5,
        };
        registry
            .register(&entry("c2", "b", ClientProtocol::Copilot, 20))
            .await
            .unwrap();
        registry
            .register(&entry("c1", "a", ClientProtocol::Copilot, 10))
            .await
            .unwrap();
        registry
            .register(&entry("s1", "a", ClientProtocol::Signal, 5))
            .await
            .unwrap();
        registry
            .register(&entry("on-dead", "dead", ClientProtocol::Copilot, 1))
            .await
            .unwrap();
        registry
            .register(&entry("c3", "a", ClientProtocol::Copilot, 30))
            .await
            .unwrap();
        registry
            .unregister(&entry("c3", "a", ClientProtocol::Copilot, 30))
            .await
            .unwrap();
        // Refreshing an entry (the heartbeat) updates its last activity.
        let mut c1 = entry("c1", "a", ClientProtocol::Copilot, 10);
        c1.last_activity_ms = 99;
        registry.register(&c1).await.unwrap();
        tokio::time::sleep(Duration::from_millis(120)).await;

        let listed = registry.sessions(ClientProtocol::Copilot).await.unwrap();
        assert_eq!(
            listed,
            vec![c1, entry("c2", "b", ClientProtocol::Copilot, 20)],
            "{s:?}: oldest first; other protocols, unregistered sessions and dead replicas left out"
        );
    }
}

#[tokio::test]
async fn hash_take_all_hands_the_fields_to_one_taker() {
    for s in backends("hashtake").await {
        s.hash_set("h", "a", b"1").await.unwrap();
        s.hash_set("h", "b", b"2").await.unwrap();
        let (x, y) = tokio::join!(s.hash_take_all("h"), s.hash_take_all("h"));
        let (mut x, y) = (x.unwrap(), y.unwrap());
        let mut got = if x.is_empty() { y } else { std::mem::take(&mut x) };
        got.sort();
        assert_eq!(
            got,
            vec![("a".into(), b"1".to_vec()), ("b".into(), b"2".to_vec())],
            "{s:?}"
        );
        assert!(x.is_empty(), "{s:?}: the other taker gets nothing");
        assert!(s.hash_all("h").await.unwrap().is_empty(), "{s:?}");
    }
}

fn entry(conn: &str, gateway: &str, user: &str) -> SessionEntry {
    SessionEntry {
        connection_id: conn.into(),
        gateway_id: gateway.into(),
        protocol: ClientProtocol::Livechat as i32,
        user_id: user.into(),
        connected_at_ms: 1,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_dead_gateways_sessions_go_to_exactly_one_cleaner() {
    for s in backends("liveness").await {
        let ttl = Duration::from_secs(1);
        let registry = |_: &str| SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let dead = GatewayLiveness::new(registry("dead"), GatewayId::new("gw-dead")).with_ttl(ttl);
        let cleaners: Vec<GatewayLiveness> = ["gw-a", "gw-b", "gw-c"]
            .into_iter()
            .map(|g| GatewayLiveness::new(registry(g), GatewayId::new(g)).with_ttl(ttl))
            .collect();
        assert_eq!(dead.heartbeat().await.unwrap(), Beat::Started, "{s:?}");
        assert_eq!(dead.heartbeat().await.unwrap(), Beat::Alive, "{s:?}");
        let dead_registry = registry("dead");
        let held = [entry("d1", "gw-dead", "ann"), entry("d2", "gw-dead", "bob")];
        for e in &held {
            dead_registry.register(e).await.unwrap();
        }
        // A session of another gateway is not the dead one's.
        cleaners[0]
            .registry_for_test()
            .register(&entry("a1", "gw-a", "cid"))
            .await
            .unwrap();
        for c in &cleaners {
            c.heartbeat().await.unwrap();
        }
        assert!(
            cleaners[0].dead_gateways().await.unwrap().is_empty(),
            "{s:?}: all alive"
        );
        assert_eq!(
            cleaners[0].claim_cleanup(&GatewayId::new("gw-dead")).await.unwrap(),
            None,
            "{s:?}: an alive gateway is not cleaned up"
        );

        // gw-dead stops beating; the others keep beating.
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        for c in &cleaners {
            c.heartbeat().await.unwrap();
        }
        for c in &cleaners {
            assert_eq!(
                c.dead_gateways().await.unwrap(),
                vec![GatewayId::new("gw-dead")],
                "{s:?}"
            );
        }
        let gw_dead = GatewayId::new("gw-dead");
        let claims = futures_util::future::join_all(cleaners.iter().map(|c| c.claim_cleanup(&gw_dead))).await;
        let mut won: Vec<Vec<SessionEntry>> = claims.into_iter().filter_map(|c| c.unwrap()).collect();
        assert_eq!(won.len(), 1, "{s:?}: exactly one cleaner");
        let mut sessions = won.remove(0);
        sessions.sort_by(|a, b| a.connection_id.cmp(&b.connection_id));
        assert_eq!(sessions, held.to_vec(), "{s:?}");
        assert_eq!(
            registry("x")
                .lookup_many(&[ConnectionId::new("d1"), ConnectionId::new("d2")])
                .await
                .unwrap(),
            vec![None, None],
            "{s:?}: the dead sessions left the registry"
        );
        assert!(
            registry("x")
                .sessions_of(ClientProtocol::Livechat, "ann")
                .await
                .unwrap()
                .is_empty(),
            "{s:?}"
        );
        assert!(
            registry("x").lookup(&ConnectionId::new("a1")).await.unwrap().is_some(),
            "{s:?}"
        );
        assert!(
            cleaners[1].dead_gateways().await.unwrap().is_empty(),
            "{s:?}: forgotten once cleaned"
        );
        assert_eq!(
            cleaners[2].claim_cleanup(&GatewayId::new("gw-dead")).await.unwrap(),
            None
        );
    }
}

#[tokio::test]
async fn a_gateway_that_stalled_past_its_ttl_registers_its_sessions_again() {
    for s in backends("revive").await {
        let ttl = Duration::from_secs(1);
        let stalled_registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let stalled = GatewayLiveness::new(stalled_registry.clone(), GatewayId::new("gw-slow")).with_ttl(ttl);
        let other = GatewayLiveness::new(
            SessionRegistry::new(s.clone(), Duration::from_secs(60)),
            GatewayId::new("gw-other"),
        )
        .with_ttl(ttl);
        stalled.heartbeat().await.unwrap();
        let e = entry("s1", "gw-slow", "dan");
        stalled_registry.register(&e).await.unwrap();
        tokio::time::sleep(ttl + Duration::from_millis(300)).await;
        other.heartbeat().await.unwrap();
        let cleaned = other.claim_cleanup(&GatewayId::new("gw-slow")).await.unwrap();
        assert_eq!(cleaned, Some(vec![e.clone()]), "{s:?}");
        assert_eq!(stalled.heartbeat().await.unwrap(), Beat::Revived, "{s:?}");
        assert_eq!(
            other
                .registry_for_test()
                .lookup(&ConnectionId::new("s1"))
                .await
                .unwrap(),
            Some(e),
            "{s:?}: the live session is back"
        );
    }
}

#[tokio::test]
async fn a_retired_gateway_is_dead_at_once_and_unregister_forgets_sessions() {
    for s in backends("retire").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let leaving = GatewayLiveness::new(registry.clone(), GatewayId::new("gw-leaving"));
        let staying = GatewayLiveness::new(registry.clone(), GatewayId::new("gw-staying"));
        leaving.heartbeat().await.unwrap();
        staying.heartbeat().await.unwrap();
        let (a, b) = (entry("r1", "gw-leaving", "eve"), entry("r2", "gw-leaving", "fay"));
        registry.register(&a).await.unwrap();
        registry.register(&b).await.unwrap();
        registry.unregister(&a).await.unwrap();
        assert_eq!(registry.held_sessions(), vec![b.clone()], "{s:?}");
        leaving.retire().await.unwrap();
        assert_eq!(
            staying.dead_gateways().await.unwrap(),
            vec![GatewayId::new("gw-leaving")]
        );
        assert_eq!(
            staying.claim_cleanup(&GatewayId::new("gw-leaving")).await.unwrap(),
            Some(vec![b]),
            "{s:?}: only what was still registered"
        );
    }
}

#[tokio::test]
async fn every_configured_backend_is_under_test() {
    let names: Vec<&str> = backends("names").await.iter().map(SharedState::backend_name).collect();
    let want: Vec<&str> = testing::backend_list()
        .iter()
        .map(|b| match b {
            Backend::Memory => "memory",
            Backend::Redis(_) => "redis",
            Backend::Cluster(_) => "redis-cluster",
        })
        .collect();
    assert_eq!(names, want);
}

#[test]
fn backend_settings() {
    assert_eq!(Backend::from_settings(None, None).unwrap(), Backend::Memory);
    assert_eq!(Backend::from_settings(Some(" "), Some(",")).unwrap(), Backend::Memory);
    assert_eq!(
        Backend::from_settings(Some("redis://r:6379"), None).unwrap(),
        Backend::Redis("redis://r:6379".into())
    );
    assert_eq!(
        Backend::from_settings(None, Some("redis://a:7000, redis://b:7001,")).unwrap(),
        Backend::Cluster(vec!["redis://a:7000".into(), "redis://b:7001".into()])
    );
    assert!(matches!(
        Backend::from_settings(Some("redis://r"), Some("redis://a:7000")),
        Err(StateError::TwoBackends)
    ));
}

/// A gateway's view of a backend about to be restarted: live sessions,
/// its inbox, and its upkeep task (`GatewayLiveness::run`).
struct Gateway {
    state: SharedState,
    registry: SessionRegistry,
    delivery: Delivery,
    inbox: GatewayInbox,
    live: Vec<ConnectionId>,
    reconnected: tokio::sync::watch::Receiver<u64>,
    epoch: u64,
    stop: tokio_util::sync::CancellationToken,
    upkeep: tokio::task::JoinHandle<()>,
}

impl Gateway {
    async fn start(state: SharedState, sessions: usize) -> Self {
        let registry = SessionRegistry::new(state.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(state.clone(), registry.clone());
        let gw = GatewayId::new("gw-restart");
        let inbox = delivery.inbox(&gw).await.unwrap();
        let mut live = Vec::new();
        for i in 0..sessions {
            let e = entry(&format!("live-{i}"), gw.as_str(), "gus");
            registry.register(&e).await.unwrap();
            live.push(ConnectionId::new(e.connection_id));
        }
        let stop = tokio_util::sync::CancellationToken::new();
        let upkeep = tokio::spawn(GatewayLiveness::new(registry.clone(), gw).run(stop.clone()));
        let mut reconnected = state.reconnected();
        let epoch = *reconnected.borrow_and_update();
        Self {
            state,
            registry,
            delivery,
            inbox,
            live,
            reconnected,
            epoch,
            stop,
            upkeep,
        }
    }

    /// Asserts that the first command after the restart succeeds, every
    /// live session is registered again and the inbox receives; returns
    /// how long after `restarted` the sessions were back.
    async fn check_recovered(mut self, restarted: tokio::time::Instant) -> Duration {
        self.state
            .set("after", b"1", None)
            .await
            .expect("the first command after the restart");
        let back = loop {
            let got = self.registry.lookup_many(&self.live).await;
            if got.is_ok_and(|got| got.iter().all(Option::is_some)) {
                break restarted.elapsed();
            }
            assert!(
                restarted.elapsed() < Duration::from_secs(10),
                "sessions not registered again"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        assert!(
            *self.reconnected.borrow_and_update() > self.epoch,
            "reconnected() was bumped"
        );
        assert_eq!(
            self.registry
                .sessions_of(ClientProtocol::Livechat, "gus")
                .await
                .unwrap()
                .len(),
            self.live.len(),
            "the user index is back too"
        );
        let sent = self
            .delivery
            .send_to_connection(&self.live[0], close_envelope(CloseCode::GoingAway, "after restart"))
            .await
            .unwrap();
        assert!(sent);
        let env = tokio::time::timeout(Duration::from_secs(5), self.inbox.recv())
            .await
            .expect("the inbox receives after the restart")
            .expect("inbox open");
        assert!(matches!(env.body, Some(Body::Close(ref c)) if c.reason == "after restart"));
        self.stop.cancel();
        self.upkeep.await.unwrap();
        back
    }
}

/// A Redis restart (kill -9, start again empty on the same port) under a
/// gateway's upkeep task: the first command after it succeeds, the
/// gateway's live session is registered again without waiting for a
/// heartbeat, and its inbox subscription keeps receiving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_restart_loses_no_live_session_and_no_subscription() {
    let server = testing::RedisServer::start();
    let state = SharedState::connect(Some(&server.url()), &testing::unique_prefix("restart"))
        .await
        .unwrap();
    let gateway = Gateway::start(state.clone(), 1).await;
    // A client issuing commands all along, to count what the outage costs.
    let probing = tokio_util::sync::CancellationToken::new();
    let probe = tokio::spawn({
        let probing = probing.clone();
        async move {
            let (mut ok, mut failed) = (0u32, 0u32);
            while !probing.is_cancelled() {
                match state.get("probe").await {
                    Ok(_) => ok += 1,
                    Err(_) => failed += 1,
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            (ok, failed)
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let server = server.restarted().await;
    let back = gateway.check_recovered(tokio::time::Instant::now()).await;
    probing.cancel();
    let (ok, failed) = probe.await.unwrap();
    eprintln!(
        "redis: sessions registered again {} ms after the restart; probe commands {ok} ok, {failed} failed",
        back.as_millis()
    );
    // The session refresh heartbeat is 30 s; only the reconnect hook can
    // have written it this soon.
    assert!(back < Duration::from_secs(1), "re-registered in {back:?}");
    drop(server);
}

/// The same on a Redis Cluster whose three masters are all killed and
/// started again empty (keeping their ids and slots).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restart_loses_no_live_session_and_no_subscription() {
    let cluster = testing::RedisCluster::start();
    let state = SharedState::open(&Backend::Cluster(cluster.urls()), &testing::unique_prefix("crestart"))
        .await
        .unwrap();
    let gateway = Gateway::start(state, 8).await;
    let cluster = cluster.restarted().await;
    let back = gateway.check_recovered(tokio::time::Instant::now()).await;
    eprintln!(
        "cluster: sessions registered again {} ms after the cluster served again",
        back.as_millis()
    );
    drop(cluster);
}

#[tokio::test]
async fn a_topic_dropped_by_its_last_subscriber_can_be_subscribed_again() {
    for s in backends("resub").await {
        let first = s.subscribe("t").await.unwrap();
        drop(first);
        // Delivery to the dropped subscriber finds it gone and unsubscribes
        // the topic in the background; a new subscriber must not lose to that.
        for round in 0..5u8 {
            s.publish("t", Bytes::from(vec![round])).await.unwrap();
            let mut again = s.subscribe("t").await.unwrap();
            s.publish("t", Bytes::from_static(b"live")).await.unwrap();
            let mut got = recv(&mut again).await;
            while got.as_ref() != b"live" {
                got = recv(&mut again).await;
            }
            drop(again);
        }
    }
}

/// A served inbox gets every envelope for its replica: in memory handed
/// over in the publisher's task (there before the send returns, with no
/// task run in between), on Redis through its subscription; once the
/// server is dropped, nothing reaches its sink.
#[tokio::test]
async fn a_served_inbox_gets_its_envelopes_in_the_publishers_task_in_memory() {
    for s in backends("served-inbox").await {
        let registry = SessionRegistry::new(s.clone(), Duration::from_secs(60));
        let delivery = Delivery::new(s.clone(), registry.clone());
        let got = Arc::new(std::sync::Mutex::new(Vec::<Envelope>::new()));
        let server = {
            let got = got.clone();
            delivery
                .serve_inbox(&GatewayId::new("a"), move |env| got.lock().unwrap().push(env))
                .await
                .unwrap()
        };
        let running = tokio::spawn(server.run());
        let entry = entry("c1", "a", "alice");
        registry.register(&entry).await.unwrap();
        let conn = ConnectionId::new("c1");
        assert!(
            delivery
                .send_to_connection(&conn, close_envelope(CloseCode::Replaced, "one"))
                .await
                .unwrap()
        );
        if delivery.in_process() {
            assert_eq!(
                got.lock().unwrap().len(),
                1,
                "{s:?}: handed over before the send returned"
            );
        }
        tokio::time::timeout(Duration::from_secs(5), async {
            while got.lock().unwrap().is_empty() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the envelope arrives");
        let env = got.lock().unwrap()[0].clone();
        assert_eq!(env.connection_ids, vec!["c1".to_owned()], "{s:?}");
        assert!(
            matches!(env.body, Some(Body::Close(ref c)) if c.reason == "one"),
            "{s:?}"
        );

        running.abort();
        let _ = running.await;
        delivery
            .send_to_connection(&conn, close_envelope(CloseCode::Replaced, "two"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            got.lock().unwrap().len(),
            1,
            "{s:?}: a stopped server's sink gets nothing"
        );
    }
}
