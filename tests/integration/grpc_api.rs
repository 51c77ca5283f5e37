//! The gateway's gRPC client API: the LiveChat protocol as typed streams,
//! sharing channels with WebSocket clients.

use std::time::Duration;

use relaymesh_proto::client::v1::gateway_service_client::GatewayServiceClient;
use relaymesh_proto::client::v1::{
    ChannelCreate, ChannelJoin, ChannelRef, ClientProtocol, CloseCode, LivechatErrorCode, LivechatRequest,
    LivechatResponse, MessageCreate, OpenRequest, SendRequest, livechat_request::Request, livechat_response::Event,
    open_response, send_request,
};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;

use super::harness::{self, Backend, Chat, WAIT};

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
