//! The gateway's gRPC client API: the LiveChat and copilot protocols as
//! typed streams, sharing channels and sessions with WebSocket clients.

use std::time::Duration;

use relaymesh_proto::client::v1::gateway_service_client::GatewayServiceClient;
use relaymesh_proto::client::v1::{
    ChannelCreate, ChannelJoin, ChannelRef, ClientProtocol, CloseCode, CopilotCallbackAnswer, CopilotErrorCode,
    CopilotPing, CopilotPong, CopilotQuery, CopilotRequest, CopilotResponse, LivechatErrorCode, LivechatRequest,
    LivechatResponse, MessageCreate, OpenRequest, SendRequest, copilot_request::Request as CopilotReq,
    copilot_response::Event as CopilotEvent, livechat_request::Request, livechat_response::Event, open_response,
    send_request,
};
use relaymesh_wire::json_value::{from_proto, to_proto};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::harness::{self, Backend, Chat, Copilot, WAIT};

async fn client(mesh: &relaymesh::Mesh) -> GatewayServiceClient<Channel> {
    GatewayServiceClient::connect(format!("http://{}", mesh.gateway_addr))
        .await
        .unwrap()
}

fn authorized<T>(msg: T, user: &str) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    let bearer: MetadataValue<_> = format!("Bearer {}", harness::token(user, 600)).parse().unwrap();
    req.metadata_mut().insert("authorization", bearer);
    req
}

/// A LiveChat connection over the gRPC API.
struct Stream {
    tx: mpsc::Sender<LivechatRequest>,
    rx: Streaming<LivechatResponse>,
}

impl Stream {
    async fn open(c: &mut GatewayServiceClient<Channel>, user: Option<&str>) -> Self {
        let (tx, rx) = mpsc::channel(16);
        let outbound = ReceiverStream::new(rx);
        let req = match user {
            Some(u) => authorized(outbound, u),
            None => tonic::Request::new(outbound),
        };
        let rx = c.livechat(req).await.unwrap().into_inner();
        Self { tx, rx }
    }

    async fn send(&self, nonce: &str, r: Request) {
        let req = LivechatRequest {
            nonce: Some(nonce.to_owned()),
            request: Some(r),
        };
        self.tx.send(req).await.unwrap();
    }

    async fn next(&mut self) -> Event {
        let item = tokio::time::timeout(WAIT, self.rx.next())
            .await
            .expect("an event in time");
        item.expect("stream open")
            .expect("no error status")
            .event
            .expect("an event")
    }

    /// The next event that is not a HELLO.
    async fn until(&mut self, pick: impl Fn(&Event) -> bool) -> Event {
        loop {
            let e = self.next().await;
            if pick(&e) {
                return e;
            }
        }
    }
}

#[tokio::test]
async fn a_grpc_client_and_a_websocket_client_share_a_channel() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut c = client(&mesh).await;
        let mut g = Stream::open(&mut c, Some("grpc-user")).await;
        assert!(matches!(g.next().await, Event::Hello(_)), "{backend:?}");
        let Event::Ready(ready) = g.next().await else {
            panic!("READY first")
        };
        assert_eq!(ready.user_id, "grpc-user");

        g.send(
            "c1",
            Request::ChannelCreate(ChannelCreate {
                channel_id: "mixed".into(),
                ..Default::default()
            }),
        )
        .await;
        let ack = g.until(|e| matches!(e, Event::Ack(_))).await;
        assert!(
            matches!(ack, Event::Ack(ref a) if a.nonce.as_deref() == Some("c1")),
            "{ack:?}"
        );
        g.send(
            "j1",
            Request::ChannelJoin(ChannelJoin {
                channel_id: "mixed".into(),
                ssrc: 7,
            }),
        )
        .await;
        g.until(|e| matches!(e, Event::Ack(_))).await;

        let mut ws = Chat::ready(mesh.gateway_addr, "ws-user").await;
        ws.ok(11, json!({"channel_id": "mixed", "ssrc": 8})).await;
        let joined = g.until(|e| matches!(e, Event::ChannelEvent(_))).await;
        assert!(
            matches!(joined, Event::ChannelEvent(ref e) if e.user_id == "ws-user"),
            "{joined:?}"
        );

        ws.ok(20, json!({"channel_id": "mixed", "content": "from the socket"}))
            .await;
        let msg = g.until(|e| matches!(e, Event::MessageEvent(_))).await;
        assert!(
            matches!(msg, Event::MessageEvent(ref m) if m.content == "from the socket"),
            "{backend:?}: {msg:?}"
        );
        g.send(
            "m1",
            Request::MessageCreate(MessageCreate {
                channel_id: "mixed".into(),
                content: "from the stream".into(),
            }),
        )
        .await;
        // The socket's own message comes back to it first (every member gets it).
        assert_eq!(ws.event(101).await["d"]["content"], "from the socket");
        assert_eq!(ws.event(101).await["d"]["content"], "from the stream", "{backend:?}");

        // A refusal arrives as the proto enum value.
        g.send(
            "bad",
            Request::MessageCreate(MessageCreate {
                channel_id: "nowhere".into(),
                content: "x".into(),
            }),
        )
        .await;
        let err = g.until(|e| matches!(e, Event::Error(_))).await;
        let Event::Error(err) = err else { unreachable!() };
        assert_eq!(err.code(), LivechatErrorCode::ChannelNotFound, "{backend:?}");
        assert_eq!(err.nonce.as_deref(), Some("bad"));

        // Ending the stream leaves the channel, as closing a socket does.
        drop(g);
        let left = ws.event(100).await;
        assert_eq!(
            (left["d"]["type"].as_str(), left["d"]["user_id"].as_str()),
            (Some("leave"), Some("grpc-user"))
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn without_metadata_the_stream_identifies_like_a_socket() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    let mut g = Stream::open(&mut c, None).await;
    assert!(matches!(g.next().await, Event::Hello(_)));
    g.send("early", Request::ChannelLeave(ChannelRef { channel_id: "x".into() }))
        .await;
    let Event::Error(e) = g.next().await else {
        panic!("ERROR")
    };
    assert_eq!(e.code(), LivechatErrorCode::NotIdentified);
    g.send(
        "id",
        Request::Identify(relaymesh_proto::client::v1::Identify {
            user_id: "later".into(),
            token: harness::token("later", 60),
        }),
    )
    .await;
    let Event::Ready(r) = g.next().await else {
        panic!("READY")
    };
    assert_eq!(r.nonce.as_deref(), Some("id"));
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn bad_tokens_are_refused_with_unauthenticated() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    let (_tx, rx) = mpsc::channel::<LivechatRequest>(1);
    let mut req = tonic::Request::new(ReceiverStream::new(rx));
    req.metadata_mut()
        .insert("authorization", "Bearer nope".parse().unwrap());
    let status = c.livechat(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn shutdown_ends_streams_with_a_going_away_close() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    let mut g = Stream::open(&mut c, Some("leaver")).await;
    g.next().await;
    g.next().await;
    let stopping = tokio::spawn(mesh.shutdown());
    let Event::Closing(closing) = g.next().await else {
        panic!("closing event")
    };
    assert_eq!(closing.code(), CloseCode::GoingAway);
    let end = tokio::time::timeout(WAIT, g.rx.next()).await.unwrap();
    assert_eq!(end.unwrap().unwrap_err().code(), tonic::Code::Unavailable);
    stopping.await.unwrap().unwrap();
}

#[tokio::test]
async fn open_and_send_carry_a_connection_for_clients_that_cannot_stream_requests() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &[]).await;
        // The two calls may reach different replicas: Send goes to a second one.
        let other = mesh.add_gateway(0, None).await.unwrap();
        let mut c = client(&mesh).await;
        let mut c2 = GatewayServiceClient::connect(format!("http://{other}")).await.unwrap();
        let open = OpenRequest {
            protocol: ClientProtocol::Livechat as i32,
        };
        let mut events = c.open(authorized(open, "web")).await.unwrap().into_inner();
        let mut next = async || {
            tokio::time::timeout(WAIT, events.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .event
                .unwrap()
        };
        let open_response::Event::Opened(opened) = next().await else {
            panic!("opened first")
        };
        let send = |session_id: String, r: Request| SendRequest {
            session_id,
            request: Some(send_request::Request::Livechat(LivechatRequest {
                nonce: Some("w1".into()),
                request: Some(r),
            })),
        };
        let create = Request::ChannelCreate(ChannelCreate {
            channel_id: "web".into(),
            ..Default::default()
        });
        c2.send(authorized(send(opened.session_id.clone(), create.clone()), "web"))
            .await
            .unwrap();
        let acked = loop {
            match next().await {
                open_response::Event::Livechat(LivechatResponse {
                    event: Some(Event::Ack(a)),
                }) => break a,
                _ => continue,
            }
        };
        assert_eq!(acked.nonce.as_deref(), Some("w1"), "{backend:?}");
        let stolen = c2
            .send(authorized(send(opened.session_id.clone(), create), "mallory"))
            .await
            .unwrap_err();
        assert_eq!(stolen.code(), tonic::Code::PermissionDenied, "{backend:?}");
        let gone = c2
            .send(authorized(
                send("no-such".into(), Request::Heartbeat(Default::default())),
                "web",
            ))
            .await
            .unwrap_err();
        assert_eq!(gone.code(), tonic::Code::NotFound);
        tokio::time::sleep(Duration::from_millis(10)).await;
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn the_gateway_serves_grpc_health_and_reflection() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let channel = Channel::from_shared(format!("http://{}", mesh.gateway_addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let answer = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "relaymesh.client.v1.GatewayService".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        answer.status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection = tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient::new(channel);
    let ask = tonic_reflection::pb::v1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(
            tonic_reflection::pb::v1::server_reflection_request::MessageRequest::ListServices(String::new()),
        ),
    };
    let mut answers = reflection
        .server_reflection_info(tokio_stream::once(ask))
        .await
        .unwrap()
        .into_inner();
    let listed = format!("{:?}", answers.next().await.unwrap().unwrap());
    assert!(listed.contains("relaymesh.client.v1.GatewayService"), "{listed}");
    mesh.shutdown().await.unwrap();
}

// ---- copilot (seed 001) over gRPC ----

/// A copilot connection over the gRPC API (a bidirectional stream).
struct CopilotStream {
    tx: mpsc::Sender<CopilotRequest>,
    rx: Streaming<CopilotResponse>,
}

fn copilot_query(request_id: &str, data: serde_json::Value) -> CopilotReq {
    CopilotReq::Query(CopilotQuery {
        request_id: Some(request_id.to_owned()),
        data: Some(to_proto(data)),
    })
}

/// The answer a cooperative client gives to a callback event, if it is one.
fn copilot_answer(event: &CopilotEvent) -> Option<CopilotReq> {
    let (cb, kind) = match event {
        CopilotEvent::RequestAvailableData(cb) => (cb, "request_available_data"),
        CopilotEvent::RequestApi(cb) => (cb, "request_api"),
        CopilotEvent::ClarificationRequest(cb) => (cb, "clarification_request"),
        _ => return None,
    };
    let answer = CopilotCallbackAnswer {
        request_id: cb.request_id.clone(),
        data: Some(to_proto(harness::callback_answer(kind))),
    };
    Some(match event {
        CopilotEvent::RequestAvailableData(_) => CopilotReq::AvailableData(answer),
        CopilotEvent::RequestApi(_) => CopilotReq::ApiResult(answer),
        _ => CopilotReq::HumanResponse(answer),
    })
}

impl CopilotStream {
    async fn try_open(c: &mut GatewayServiceClient<Channel>, user: &str) -> Result<Self, tonic::Status> {
        let (tx, rx) = mpsc::channel(16);
        let rx = c.copilot(authorized(ReceiverStream::new(rx), user)).await?.into_inner();
        Ok(Self { tx, rx })
    }

    /// Opened as `user`, past its `connected` event (returned).
    async fn open(c: &mut GatewayServiceClient<Channel>, user: &str) -> (Self, String) {
        let mut s = Self::try_open(c, user).await.expect("the stream opens");
        let CopilotEvent::Connected(connected) = s.next().await else {
            panic!("connected first")
        };
        assert_eq!(connected.user_id, user);
        (s, connected.connection_id)
    }

    async fn send(&self, r: CopilotReq) {
        self.tx
            .send(CopilotRequest { request: Some(r) })
            .await
            .expect("stream open");
    }

    async fn next(&mut self) -> CopilotEvent {
        let item = tokio::time::timeout(WAIT, self.rx.next())
            .await
            .expect("an event in time");
        item.expect("stream open")
            .expect("no error status")
            .event
            .expect("an event")
    }

    /// The next event that is not the server's heartbeat `ping`.
    async fn next_not_ping(&mut self) -> CopilotEvent {
        loop {
            match self.next().await {
                CopilotEvent::Ping(_) => self.send(CopilotReq::Pong(CopilotPong {})).await,
                e => return e,
            }
        }
    }

    /// The stream's end: its `closing` code and the final status.
    async fn ended(&mut self) -> (CloseCode, tonic::Code) {
        let code = loop {
            match self.next().await {
                CopilotEvent::Closing(c) => break c.code(),
                _ => continue,
            }
        };
        let end = tokio::time::timeout(WAIT, self.rx.next())
            .await
            .expect("the status in time");
        (code, end.expect("a status").expect_err("an error status").code())
    }
}

#[tokio::test]
async fn a_grpc_copilot_client_answers_callbacks_and_gets_its_response() {
    for backend in harness::backends() {
        let mesh = harness::start(&backend, &[]).await;
        let mut c = client(&mesh).await;
        let (mut s, conn) = CopilotStream::open(&mut c, "ann").await;
        assert!(!conn.is_empty());

        s.send(CopilotReq::Ping(CopilotPing {})).await;
        assert!(
            matches!(s.next().await, CopilotEvent::Pong(p) if p.timestamp_ms > 0),
            "{backend:?}"
        );

        s.send(copilot_query("q1", json!({"text": "monthly cost"}))).await;
        let asked = s.next_not_ping().await;
        let CopilotEvent::RequestAvailableData(cb) = &asked else {
            panic!("{backend:?}: request_available_data, got {asked:?}")
        };
        assert_eq!(from_proto(cb.data.as_ref().unwrap())["query"], "monthly cost");
        s.send(copilot_answer(&asked).unwrap()).await;
        let api = s.next_not_ping().await;
        let CopilotEvent::RequestApi(cb) = &api else {
            panic!("{backend:?}: request_api, got {api:?}")
        };
        assert_eq!(
            from_proto(cb.data.as_ref().unwrap())["params"]["datasets"],
            harness::callback_answer("request_available_data")
        );
        s.send(copilot_answer(&api).unwrap()).await;
        let CopilotEvent::Response(answer) = s.next_not_ping().await else {
            panic!("{backend:?}: a response")
        };
        assert_eq!(answer.request_id.as_deref(), Some("q1"));
        assert_eq!(answer.remaining, Some(9));
        let data = from_proto(answer.data.as_ref().unwrap());
        assert_eq!(
            (&data["cache"], &data["apiResult"]),
            (&json!("hit"), &json!({"rows": 3}))
        );

        // A used requestId is refused with the enum value; the stream stays open.
        s.send(copilot_answer(&api).unwrap()).await;
        let CopilotEvent::Error(err) = s.next_not_ping().await else {
            panic!("{backend:?}: an error")
        };
        assert_eq!(err.code(), CopilotErrorCode::UnknownRequestId, "{backend:?}");
        s.send(CopilotReq::Ping(CopilotPing {})).await;
        assert!(matches!(s.next_not_ping().await, CopilotEvent::Pong(_)));

        // The operators' listing shows the stream like a socket.
        let (status, body) =
            harness::operator_call(mesh.gateway_addr, "GET", "/api/v1/copilot/connections", None).await;
        assert_eq!(status, 200);
        assert_eq!(
            body["connections"][0]["connection_id"],
            conn.as_str(),
            "{backend:?}: {body}"
        );
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn open_and_send_carry_copilot_callbacks_and_the_rate_limit() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &["--rate-limit-requests", "1"]).await;
        let other = mesh.add_gateway(0, None).await.unwrap();
        let mut c = client(&mesh).await;
        let mut c2 = GatewayServiceClient::connect(format!("http://{other}")).await.unwrap();
        let open = OpenRequest {
            protocol: ClientProtocol::Copilot as i32,
        };
        let mut events = c.open(authorized(open, "web")).await.unwrap().into_inner();
        let mut next = async || loop {
            let e = tokio::time::timeout(WAIT, events.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap()
                .event
                .unwrap();
            match e {
                open_response::Event::Copilot(CopilotResponse {
                    event: Some(CopilotEvent::Ping(_)),
                }) => continue,
                e => return e,
            }
        };
        let open_response::Event::Opened(opened) = next().await else {
            panic!("opened first")
        };
        let copilot_event = |e| match e {
            open_response::Event::Copilot(CopilotResponse { event: Some(e) }) => e,
            other => panic!("a copilot event, got {other:?}"),
        };
        assert!(matches!(copilot_event(next().await), CopilotEvent::Connected(_)));
        let send = |r: CopilotReq| {
            authorized(
                SendRequest {
                    session_id: opened.session_id.clone(),
                    request: Some(send_request::Request::Copilot(CopilotRequest { request: Some(r) })),
                },
                "web",
            )
        };
        // Requests reach the session's replica from the other one.
        c2.send(send(copilot_query("q1", json!({"scenario": "clarification"}))))
            .await
            .unwrap();
        let asked = copilot_event(next().await);
        assert!(
            matches!(asked, CopilotEvent::ClarificationRequest(_)),
            "{backend:?}: {asked:?}"
        );
        c2.send(send(copilot_answer(&asked).unwrap())).await.unwrap();
        let CopilotEvent::Response(answer) = copilot_event(next().await) else {
            panic!("{backend:?}: a response")
        };
        assert_eq!((answer.request_id.as_deref(), answer.remaining), (Some("q1"), Some(0)));

        c2.send(send(copilot_query("q2", json!({})))).await.unwrap();
        let CopilotEvent::Error(limited) = copilot_event(next().await) else {
            panic!("{backend:?}: RATE_LIMITED")
        };
        assert_eq!(limited.code(), CopilotErrorCode::RateLimited, "{backend:?}");
        assert_eq!(
            (limited.request_id.as_deref(), limited.remaining),
            (Some("q2"), Some(0))
        );
        assert!(limited.retry_after_ms.is_some_and(|ms| ms > 0), "{limited:?}");
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn a_grpc_and_a_websocket_copilot_session_of_one_user_replace_each_other() {
    for backend in harness::backends() {
        let mut mesh = harness::start(&backend, &["--single-session-per-user", "true"]).await;
        let other = mesh.add_gateway(0, None).await.unwrap();
        let mut c = client(&mesh).await;
        let (mut grpc, _) = CopilotStream::open(&mut c, "ann").await;

        // A socket of the same user, on the other replica, replaces the stream.
        let mut ws = Copilot::connect(other, "ann").await;
        assert_eq!(
            grpc.ended().await,
            (CloseCode::Replaced, tonic::Code::Aborted),
            "{backend:?}"
        );
        assert!(ws.still_open().await, "{backend:?}");

        // And a newer stream replaces the socket.
        let (mut newer, _) = CopilotStream::open(&mut c, "ann").await;
        assert_eq!(ws.client.close_code().await, 4004, "{backend:?}");
        newer.send(CopilotReq::Ping(CopilotPing {})).await;
        assert!(matches!(newer.next_not_ping().await, CopilotEvent::Pong(_)));
        mesh.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn copilot_streams_need_a_valid_token() {
    let mesh = harness::start(&Backend::Memory, &[]).await;
    let mut c = client(&mesh).await;
    let bearer = |t: &str| {
        let (_tx, rx) = mpsc::channel::<CopilotRequest>(1);
        let mut req = tonic::Request::new(ReceiverStream::new(rx));
        if !t.is_empty() {
            req.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        req
    };
    let wrong = harness::token_with_secret("ann", 600, "another-secret");
    for (case, token) in [
        ("missing", String::new()),
        ("garbage", "nope".to_owned()),
        ("expired", harness::token("ann", -60)),
        ("badly signed", wrong),
    ] {
        let status = c.copilot(bearer(&token)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::Unauthenticated, "{case}");
    }
    let open = OpenRequest {
        protocol: ClientProtocol::Copilot as i32,
    };
    let status = c.open(tonic::Request::new(open)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unauthenticated);
    mesh.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_grpc_copilot_stream_that_misses_three_pongs_closes_with_4003() {
    let flags = ["--heartbeat-interval-ms", "200", "--pong-timeout-ms", "100"];
    let mesh = harness::start(&Backend::Memory, &flags).await;
    let mut c = client(&mesh).await;
    let (mut silent, _) = CopilotStream::open(&mut c, "quiet").await;
    let (mut lively, _) = CopilotStream::open(&mut c, "lively").await;
    let answering = tokio::spawn(async move {
        // Answers every ping for a while, so it outlives the silent one.
        for _ in 0..5 {
            match lively.next().await {
                CopilotEvent::Ping(_) => lively.send(CopilotReq::Pong(CopilotPong {})).await,
                e => panic!("a ping, got {e:?}"),
            }
        }
        lively
    });
    assert_eq!(
        silent.ended().await,
        (CloseCode::HeartbeatLost, tonic::Code::DeadlineExceeded)
    );
    let mut lively = answering.await.unwrap();
    lively.send(CopilotReq::Ping(CopilotPing {})).await;
    assert!(matches!(lively.next_not_ping().await, CopilotEvent::Pong(_)));
    mesh.shutdown().await.unwrap();
}
