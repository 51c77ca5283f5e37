//! The copilot channel, seed 001, over real sockets on every backend: one
//! test per row of the seed's test tables (phases 1-5), plus callbacks
//! across gateway and signaling replicas and a query service of our own.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use relaymesh::Mesh;
use relaymesh_proto::query::v1::query_service_server::{QueryService, QueryServiceServer};
use relaymesh_proto::query::v1::{QueryRequest, QueryResponse};
use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
use relaymesh_proto::signaling::v1::{CallClientRequest, CallbackKind, ErrorReason};
use relaymesh_wire::json_value::{from_proto, to_proto};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use super::harness::{self, Backend, Client, Copilot, Ended, JWT_SECRET, WAIT, token};

fn signaling_addr(mesh: &Mesh) -> std::net::SocketAddr {
    mesh.services
        .iter()
        .find(|(role, _)| *role == "signaling")
        .map(|(_, a)| *a)
        .expect("a signaling service")
}

async fn signaling_client(addr: std::net::SocketAddr) -> SignalingServiceClient<Channel> {
    SignalingServiceClient::connect(format!("http://{addr}"))
        .await
        .expect("signaling answers")
}

fn call(conn: &str, kind: CallbackKind, data: Value, timeout: Option<Duration>) -> CallClientRequest {
    CallClientRequest {
        connection_id: conn.to_owned(),
        kind: kind as i32,
        data: Some(to_proto(data)),
        timeout: timeout.map(|t| t.try_into().unwrap()),
    }
}

/// A mesh on `backend` with `flags`, and user ann's copilot connection to it.
async fn ann_connected(backend: &Backend, flags: &[&str]) -> (Mesh, Copilot) {
    let mesh = harness::start(backend, flags).await;
    let c = Copilot::connect(mesh.gateway_addr, "ann").await;
    (mesh, c)
}

// ---- Phase 1: connection and basic exchange ----

#[tokio::test]
async fn connected_names_the_user_and_the_heartbeat_and_ping_gets_pong() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &["--heartbeat-interval-ms", "30000"]).await;
        let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("ann", 600))).await;
        let hello = c.recv().await;
        assert_eq!(
            (&hello["type"], &hello["userId"], &hello["heartbeatInterval"]),
            (&json!("connected"), &json!("ann"), &json!(30000)),
            "{backend:?}: {hello}"
        );
        assert!(hello["connectionId"].as_str().is_some_and(|s| !s.is_empty()));
        c.send_json(json!({"type": "ping"})).await;
        let pong = c.recv().await;
        assert_eq!(pong["type"], "pong", "{backend:?}");
        assert!(pong["timestamp"].as_i64().is_some_and(|t| t > 0));
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_query_runs_the_basic_callback_chain_to_a_response() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.send_query("q1", json!({"text": "monthly cost"})).await;

        let asked = c.next_callback().await;
        assert_eq!(asked["type"], "request_available_data", "{backend:?}: {asked}");
        assert_eq!(asked["data"]["query"], "monthly cost");
        c.answer(&asked, json!(["costs-2024"])).await;

        let api = c.next_callback().await;
        assert_eq!(api["type"], "request_api", "{backend:?}: {api}");
        assert_eq!(api["data"]["params"]["datasets"], json!(["costs-2024"]));
        c.answer(&api, json!({"rows": 3})).await;

        let response = c.outcome("q1").await;
        assert_eq!(response["type"], "response", "{backend:?}: {response}");
        assert_eq!(response["data"]["cache"], "hit");
        assert_eq!(response["data"]["apiResult"], json!({"rows": 3}));
        assert_eq!(response["remaining"], 9);
        mesh.shutdown().await.unwrap();
    }
}

// ---- Phase 2: JWT ----

#[tokio::test]
async fn a_keycloak_style_token_is_accepted_and_sub_is_the_user() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let claims = json!({
        "sub": "997726f9-ce0f-470d-af5c-1ebe858e5bf3", "exp": now + 600, "iat": now,
        "aud": ["platform_api", "account"], "preferred_username": "user@example.com", "name": "홍길동",
        "currentCompanyId": "ae06161e", "realm_access": {"roles": ["platform_admin"]}
    });
    let t = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .unwrap();
    let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={t}")).await;
    let hello = c.recv().await;
    assert_eq!(hello["userId"], "997726f9-ce0f-470d-af5c-1ebe858e5bf3", "{hello}");
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn after_4001_a_refreshed_token_connects() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut stale = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("ann", -60))).await;
    assert_eq!(stale.close_code().await, 4001);
    let mut fresh = Copilot::connect(mesh.gateway_addr, "ann").await;
    assert!(fresh.still_open().await);
    mesh.shutdown().await.unwrap();
}

// ---- Phase 3-1: one-time requestIds ----

#[tokio::test]
async fn each_callback_gets_a_fresh_request_id() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        let mut ids = Vec::new();
        for q in ["q1", "q2"] {
            c.send_query(q, json!({"text": "x"})).await;
            for _ in 0..2 {
                let cb = c.next_callback().await;
                ids.push(cb["requestId"].as_str().unwrap().to_owned());
                c.answer(&cb, harness::callback_answer(cb["type"].as_str().unwrap()))
                    .await;
            }
            assert_eq!(c.outcome(q).await["type"], "response");
        }
        let distinct: std::collections::HashSet<_> = ids.iter().collect();
        assert_eq!(distinct.len(), 4, "{backend:?}: {ids:?}");
        assert!(ids.iter().all(|id| !id.is_empty() && id != "q1" && id != "q2"));
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_unknown_request_id_gets_an_error_and_the_connection_stays_open() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.client
            .send_json(json!({"type": "available_data", "requestId": "never-issued", "data": []}))
            .await;
        let err = c.next("error").await;
        assert_eq!(
            (&err["code"], &err["requestId"]),
            (&json!("UNKNOWN_REQUEST_ID"), &json!("never-issued")),
            "{backend:?}"
        );
        assert!(c.still_open().await);
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_request_id_matches_only_once() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.send_query("q1", json!({"text": "x"})).await;
        let cb = c.next_callback().await;
        c.answer(&cb, json!(["a"])).await;
        assert_eq!(
            c.next_callback().await["type"],
            "request_api",
            "{backend:?}: the first answer matched"
        );
        c.answer(&cb, json!(["a"])).await;
        let err = c.next("error").await;
        assert_eq!(err["code"], "UNKNOWN_REQUEST_ID", "{backend:?}: the second did not");
        assert_eq!(err["requestId"], cb["requestId"]);
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_request_id_of_another_connection_does_not_match() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut mine = Copilot::connect(mesh.gateway_addr, "ann").await;
        let mut other = Copilot::connect(mesh.gateway_addr, "ann").await;
        mine.send_query("q1", json!({"text": "x"})).await;
        let cb = mine.next_callback().await;
        other.answer(&cb, json!(["stolen"])).await;
        assert_eq!(other.next("error").await["code"], "UNKNOWN_REQUEST_ID", "{backend:?}");
        mine.answer(&cb, json!([])).await;
        assert_eq!(mine.outcome("q1").await["type"], "response", "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_answer_of_the_wrong_type_is_refused_and_the_callback_stays_pending() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.send_query("q1", json!({"text": "x"})).await;
        let cb = c.next_callback().await;
        let id = cb["requestId"].clone();
        c.client
            .send_json(json!({"type": "api_result", "requestId": id, "data": {}}))
            .await;
        let err = c.next("error").await;
        assert_eq!(
            (&err["code"], &err["requestId"]),
            (&json!("INVALID_MESSAGE"), &id),
            "{backend:?}"
        );
        c.answer(&cb, json!([])).await;
        assert_eq!(c.outcome("q1").await["type"], "response", "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

// ---- Phase 3-2: callback scenarios ----

#[tokio::test]
async fn a_clarification_is_answered_by_a_human_response() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.send_query("q1", json!({"scenario": "clarification", "text": "cost"}))
            .await;
        let cb = c.next_callback().await;
        assert_eq!(cb["type"], "clarification_request", "{backend:?}: {cb}");
        assert!(cb["data"]["question"].as_str().is_some_and(|q| q.contains("cost")));
        c.answer(&cb, json!("the monthly cost")).await;
        let response = c.outcome("q1").await;
        assert_eq!(
            response["data"]["answer"], "the monthly cost",
            "{backend:?}: {response}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_late_answer_times_the_query_out_and_is_refused_as_expired() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &["--callback-timeout-ms", "300"]).await;
        c.send_query("q1", json!({"text": "slow"})).await;
        let cb = c.next_callback().await;
        // The client answers after the server's timeout (seed: 15 s vs 10 s).
        let err = c.outcome("q1").await;
        assert_eq!(err["code"], "TIMEOUT", "{backend:?}: {err}");
        c.answer(&cb, json!(["late"])).await;
        let late = c.next("error").await;
        assert_eq!(
            (&late["code"], &late["requestId"]),
            (&json!("UNKNOWN_REQUEST_ID"), &cb["requestId"]),
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_unanswered_callback_ends_the_query_with_timeout_and_the_connection_stays_usable() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &["--callback-timeout-ms", "200"]).await;
        c.send_query("q1", json!({"text": "x"})).await;
        c.next_callback().await; // never answered
        assert_eq!(c.outcome("q1").await["code"], "TIMEOUT", "{backend:?}");
        assert!(c.still_open().await);
        assert_eq!(
            c.ask("q2", json!({"text": "y"})).await["type"],
            "response",
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn empty_available_data_answers_without_an_api_call() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        c.send_query("q1", json!({"text": "x"})).await;
        let cb = c.next_callback().await;
        c.answer(&cb, json!([])).await;
        let next = c
            .next_where(WAIT, |v| harness::is_callback(v) || v["requestId"] == "q1")
            .await
            .unwrap();
        assert_eq!(next["type"], "response", "{backend:?}: no request_api first: {next}");
        assert_eq!(
            (&next["data"]["cache"], &next["data"]["datasets"]),
            (&json!("miss"), &json!([]))
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn an_unknown_scenario_is_an_invalid_message() {
    let (mesh, mut c) = ann_connected(&Backend::Memory, &[]).await;
    c.send_query("q1", json!({"scenario": "dance"})).await;
    assert_eq!(c.outcome("q1").await["code"], "INVALID_MESSAGE");
    mesh.shutdown().await.unwrap();
}

// ---- Callbacks across replicas, and their release ----

/// A second signaling replica, as another process would run it.
async fn second_signaling(mesh: &Mesh, backend: &Backend, stop: &CancellationToken) -> std::net::SocketAddr {
    let state = match backend {
        Backend::Memory => mesh.state.clone(),
        Backend::Redis(_) | Backend::Cluster(_) => mesh.options().connect_state().await.unwrap(),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(relaymesh_signaling::serve(
        listener,
        relaymesh_signaling::SignalingConfig::default(),
        state,
        stop.clone(),
    ));
    addr
}

#[tokio::test]
async fn a_callback_reaches_the_user_on_another_gateway_replica_and_the_answer_returns_to_the_asking_replica() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let mut c = Copilot::connect(replica_a, "ann").await;
        let stop = CancellationToken::new();
        // Asked through a signaling replica the gateway never calls; the
        // answer goes gateway A -> the mesh's signaling -> this replica.
        let mut asker = signaling_client(second_signaling(&mesh, &backend, &stop).await).await;
        let conn = c.connection_id.clone();
        let asking = tokio::spawn(async move {
            asker
                .call_client(call(&conn, CallbackKind::Api, json!({"api": "cost"}), None))
                .await
        });
        let cb = c.next_callback().await;
        assert_eq!(
            (&cb["type"], &cb["data"]["api"]),
            (&json!("request_api"), &json!("cost")),
            "{backend:?}"
        );
        c.answer(&cb, json!({"total": 42})).await;
        let answered = asking.await.unwrap().expect("answered").into_inner();
        assert_eq!(answered.request_id, cb["requestId"].as_str().unwrap(), "{backend:?}");
        assert_eq!(from_proto(&answered.data.unwrap()), json!({"total": 42}), "{backend:?}");
        stop.cancel();
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_waiting_callback_is_released_when_the_user_disconnects() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let mut c = Copilot::connect(replica_a, "ann").await;
        let mut asker = signaling_client(signaling_addr(&mesh)).await;
        let conn = c.connection_id.clone();
        let long = Some(Duration::from_secs(300));
        let asking = tokio::spawn(async move {
            asker
                .call_client(call(&conn, CallbackKind::AvailableData, json!({}), long))
                .await
        });
        c.next_callback().await;
        drop(c); // the user goes away without answering
        let status = tokio::time::timeout(Duration::from_secs(30), asking)
            .await
            .expect("released, not left to its 300 s timeout")
            .unwrap()
            .expect_err("no answer");
        assert_eq!(
            relaymesh_rpc::reason_of::<ErrorReason>(&status),
            Some(ErrorReason::ConnectionClosed),
            "{backend:?}: {status:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn calling_a_connection_that_is_not_open_fails_at_once() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut asker = signaling_client(signaling_addr(&mesh)).await;
        let status = asker
            .call_client(call("no-such-connection", CallbackKind::Api, json!({}), None))
            .await
            .expect_err("nobody to ask");
        assert_eq!(
            relaymesh_rpc::reason_of::<ErrorReason>(&status),
            Some(ErrorReason::ConnectionClosed),
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
    }
}

/// A query service of our own: asks the client one `request_api` through
/// the mesh's signaling service and answers with what it got.
struct ExternalQueries {
    signaling: Arc<OnceLock<std::net::SocketAddr>>,
}

#[tonic::async_trait]
impl QueryService for ExternalQueries {
    async fn query(&self, req: tonic::Request<QueryRequest>) -> Result<tonic::Response<QueryResponse>, tonic::Status> {
        let req = req.into_inner();
        let addr = self
            .signaling
            .get()
            .ok_or_else(|| tonic::Status::unavailable("not wired yet"))?;
        let question = json!({"api": "external", "asked": from_proto(&req.data.unwrap_or_default())});
        let answer = signaling_client(*addr)
            .await
            .call_client(call(&req.connection_id, CallbackKind::Api, question, None))
            .await?
            .into_inner();
        let data = json!({"implementation": "test-suite", "user": req.user_id,
                          "apiResult": from_proto(&answer.data.unwrap_or_default())});
        Ok(tonic::Response::new(QueryResponse {
            data: Some(to_proto(data)),
        }))
    }
}

#[tokio::test]
async fn query_service_url_points_the_mesh_at_another_query_service() {
    for backend in harness::backends() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let signaling = Arc::new(OnceLock::new());
        let service = QueryServiceServer::new(ExternalQueries {
            signaling: signaling.clone(),
        });
        let stop = CancellationToken::new();
        let serving = tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    stop.clone().cancelled_owned(),
                ),
        );
        let mesh = harness::start(&backend, &["--query-service-url", &url]).await;
        signaling.set(signaling_addr(&mesh)).unwrap();

        let mut c = Copilot::connect(mesh.gateway_addr, "ann").await;
        c.send_query("q1", json!({"text": "x"})).await;
        let cb = c.next_callback().await;
        assert_eq!(
            (&cb["type"], &cb["data"]["api"]),
            (&json!("request_api"), &json!("external")),
            "{backend:?}"
        );
        assert_eq!(cb["data"]["asked"], json!({"text": "x"}));
        c.answer(&cb, json!({"ok": true})).await;
        let response = c.outcome("q1").await;
        assert_eq!(
            response["data"],
            json!({"implementation": "test-suite", "user": "ann", "apiResult": {"ok": true}}),
            "{backend:?}"
        );
        mesh.shutdown().await.unwrap();
        stop.cancel();
        serving.await.unwrap().unwrap();
    }
}

// ---- Phase 4-1: rate limiting ----

#[tokio::test]
async fn remaining_counts_down_and_the_eleventh_query_is_rate_limited() {
    for backend in harness::backends() {
        let (mesh, mut c) = ann_connected(&backend, &[]).await;
        for i in 1..=10 {
            let r = c.ask(&format!("q{i}"), json!({"text": "x"})).await;
            assert_eq!(r["type"], "response", "{backend:?}: query {i}: {r}");
            assert_eq!(r["remaining"], 10 - i, "{backend:?}: query {i}");
        }
        for i in 11..=12 {
            let id = format!("q{i}");
            let r = c.ask(&id, json!({"text": "x"})).await;
            assert_eq!(
                (&r["code"], &r["remaining"]),
                (&json!("RATE_LIMITED"), &json!(0)),
                "{backend:?}: {r}"
            );
            let retry = r["retryAfterMs"].as_u64().unwrap();
            assert!(retry > 0 && retry <= 60_000, "{backend:?}: {r}");
        }
        assert!(c.still_open().await, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn once_the_window_has_passed_queries_are_accepted_again() {
    for backend in harness::backends() {
        let flags = ["--rate-limit-requests", "2", "--rate-limit-window-ms", "600"];
        let (mesh, mut c) = ann_connected(&backend, &flags).await;
        c.ask("q1", json!({})).await;
        c.ask("q2", json!({})).await;
        let limited = c.ask("q3", json!({})).await;
        assert_eq!(limited["code"], "RATE_LIMITED", "{backend:?}");
        let retry = limited["retryAfterMs"].as_u64().unwrap();
        tokio::time::sleep(Duration::from_millis(retry + 50)).await;
        assert_eq!(c.ask("q4", json!({})).await["type"], "response", "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

// ---- Phase 4-2: server ping, client pong ----

#[tokio::test]
async fn a_client_that_answers_every_ping_stays_connected() {
    for backend in harness::backends() {
        let flags = ["--heartbeat-interval-ms", "100", "--pong-timeout-ms", "50"];
        let (mesh, mut c) = ann_connected(&backend, &flags).await;
        let mut pings = 0;
        let until = tokio::time::Instant::now() + Duration::from_millis(800);
        while tokio::time::Instant::now() < until {
            if let Some(v) = c.client.try_recv_any(Duration::from_millis(50)).await
                && v["type"] == "ping"
            {
                pings += 1;
                c.client.send_json(json!({"type": "pong"})).await;
            }
        }
        assert!(pings >= 4, "{backend:?}: the server pinged ({pings})");
        assert!(c.still_open().await, "{backend:?}");
        mesh.shutdown().await.unwrap();
    }
}

/// Reads until the socket closes; returns the pings seen and how it ended.
async fn pings_until_closed(c: &mut Client, mut on_ping: impl AsyncFnMut(&mut Client)) -> (u32, Ended) {
    let mut pings = 0;
    loop {
        match c.try_recv_any(WAIT).await {
            Some(v) if v["type"] == "ping" => {
                pings += 1;
                on_ping(c).await;
            }
            Some(_) => {}
            None => return (pings, c.ended(Duration::from_millis(500), true).await),
        }
    }
}

#[tokio::test]
async fn the_third_unanswered_ping_closes_with_4003() {
    for backend in harness::backends() {
        let flags = ["--heartbeat-interval-ms", "150", "--pong-timeout-ms", "60"];
        let mesh = harness::start(&backend, &flags).await;
        let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("ann", 600))).await;
        let (pings, end) = pings_until_closed(&mut c, async |_| {}).await;
        assert!(matches!(end, Ended::Closed(4003, _)), "{backend:?}: {end:?}");
        assert_eq!(pings, 3, "{backend:?}: closed after three unanswered pings");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn only_a_pong_answers_a_ping() {
    let flags = ["--heartbeat-interval-ms", "150", "--pong-timeout-ms", "60"];
    let mesh = harness::start(&Backend::Memory, &flags).await;
    let mut c = Client::connect(mesh.gateway_addr, &format!("/ws/copilot?token={}", token("ann", 600))).await;
    // Busy with its own pings, but never a pong.
    let (pings, end) = pings_until_closed(&mut c, async |c| c.send_json(json!({"type": "ping"})).await).await;
    assert!(matches!(end, Ended::Closed(4003, _)), "{end:?}");
    assert_eq!(pings, 3);
    mesh.shutdown().await.unwrap();
}

// ---- Phase 5: many users ----

#[tokio::test]
async fn without_single_session_both_connections_of_a_user_live_on_any_replica() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &["--single-session-per-user", "false"]).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let mut tab1 = Copilot::connect(mesh.gateway_addr, "ann").await;
        let mut tab2 = Copilot::connect(replica_a, "ann").await;
        assert_eq!(tab1.ask("q1", json!({})).await["type"], "response", "{backend:?}");
        assert_eq!(tab2.ask("q1", json!({})).await["type"], "response", "{backend:?}");
        assert!(tab1.still_open().await && tab2.still_open().await);
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_shared_rate_limit_counts_every_connection_of_the_user_across_replicas() {
    for backend in harness::backends() {
        let flags = ["--rate-limit-requests", "3", "--share-rate-limit", "true"];
        let mut mesh = harness::start(&backend, &flags).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let mut tab1 = Copilot::connect(mesh.gateway_addr, "ann").await;
        let mut tab2 = Copilot::connect(replica_a, "ann").await;
        let mut bob = Copilot::connect(replica_a, "bob").await;
        tab1.ask("q1", json!({})).await;
        tab1.ask("q2", json!({})).await;
        assert_eq!(tab2.ask("q3", json!({})).await["remaining"], 0, "{backend:?}");
        assert_eq!(tab2.ask("q4", json!({})).await["code"], "RATE_LIMITED", "{backend:?}");
        assert_eq!(tab1.ask("q5", json!({})).await["code"], "RATE_LIMITED", "{backend:?}");
        assert_eq!(
            bob.ask("q1", json!({})).await["type"],
            "response",
            "{backend:?}: other users unaffected"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_per_connection_rate_limit_counts_each_connection_alone() {
    for backend in harness::backends() {
        let flags = ["--rate-limit-requests", "2", "--share-rate-limit", "false"];
        let mesh = harness::start(&backend, &flags).await;
        let mut tab1 = Copilot::connect(mesh.gateway_addr, "ann").await;
        let mut tab2 = Copilot::connect(mesh.gateway_addr, "ann").await;
        for q in ["q1", "q2"] {
            assert_eq!(tab1.ask(q, json!({})).await["type"], "response", "{backend:?}");
        }
        assert_eq!(tab1.ask("q3", json!({})).await["code"], "RATE_LIMITED", "{backend:?}");
        for q in ["q1", "q2"] {
            assert_eq!(tab2.ask(q, json!({})).await["type"], "response", "{backend:?}");
        }
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn concurrent_queries_of_several_users_get_their_own_callbacks_and_answers() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        let replica_a = mesh.add_gateway(0, None).await.unwrap();
        let users = ["ann", "bob", "cho"];
        let mut clients = Vec::new();
        for (i, user) in users.iter().enumerate() {
            let addr = if i % 2 == 0 { mesh.gateway_addr } else { replica_a };
            clients.push(Copilot::connect(addr, user).await);
        }
        for (c, user) in clients.iter_mut().zip(users) {
            c.send_query("q", json!({"text": user})).await;
        }
        for (c, user) in clients.iter_mut().zip(users) {
            let cb = c.next_callback().await;
            assert_eq!(cb["data"]["query"], user, "{backend:?}: {user} got its own callback");
            c.answer(&cb, json!([])).await;
            let r = c.outcome("q").await;
            assert!(r["data"]["answer"].as_str().unwrap().contains(user), "{backend:?}: {r}");
        }
        // One user leaves; the others are unaffected.
        let gone = clients.remove(0);
        drop(gone);
        for c in &mut clients {
            assert_eq!(c.ask("q2", json!({})).await["type"], "response", "{backend:?}");
        }
        mesh.shutdown().await.unwrap();
    }
}
