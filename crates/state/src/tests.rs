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
        let registry = SessionRegistry::new(s.clone(), Duration::from_millis(50));
        let entry = SessionEntry {
            connection_id: "gone".into(),
            gateway_id: "dead-replica".into(),
            protocol: ClientProtocol::Signal as i32,
            user_id: "bob".into(),
            connected_at_ms: 1,
        };
        registry.register(&entry).await.unwrap();
        assert_eq!(
            registry.sessions_of(ClientProtocol::Signal, "bob").await.unwrap().len(),
            1
        );
        tokio::time::sleep(Duration::from_millis(120)).await;
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

#[tokio::test]
async fn racing_rate_limit_callers_get_exactly_the_limit() {
    for s in backends("ratelimit-race").await {
        let calls = (0..20).map(|_| s.rate_limit("rl:race", 10, Duration::from_secs(30)));
        let allowed = futures_util::future::join_all(calls)
            .await
            .into_iter()
            .filter(|d| d.as_ref().unwrap().allowed)
            .count();
        assert_eq!(allowed, 10, "{s:?}");
    }
}
