//! The channel service over gRPC on port 0, on every backend, with its
//! event delivery replaced by one the test holds shut: the sender's answer
//! does not wait for the fan-out.

use std::sync::Arc;
use std::time::Duration;

use relaymesh_proto::channel::v1::channel_service_client::ChannelServiceClient;
use relaymesh_proto::channel::v1::channel_service_server::ChannelServiceServer;
use relaymesh_proto::channel::v1::{Caller, CreateChannelRequest, JoinChannelRequest, SendMessageRequest};
use relaymesh_proto::client::v1::livechat_response::Event;
use relaymesh_rpc::{GrpcServer, ServeOptions};
use relaymesh_state::{Body, ConnectionId, Envelope, testing};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use relaymesh_channel::{ChannelConfig, ChannelService, Deliver};

/// A delivery that waits at a gate the test opens, then reports what it
/// was given: a member's gateway (or the registry) that does not answer.
#[derive(Clone)]
struct GatedDelivery {
    gate: Arc<Semaphore>,
    delivered: mpsc::UnboundedSender<(Vec<ConnectionId>, Envelope)>,
}

impl Deliver for GatedDelivery {
    async fn send_to_connections(
        &self,
        conns: &[ConnectionId],
        envelope: Envelope,
    ) -> relaymesh_state::Result<Vec<ConnectionId>> {
        // Closed only when the test ends; then nothing is delivered.
        if let Ok(_pass) = self.gate.acquire().await {
            let _ = self.delivered.send((conns.to_vec(), envelope));
        }
        Ok(Vec::new())
    }
}

fn config() -> ChannelConfig {
    ChannelConfig {
        max_channel_members: 50,
        max_message_len: 2000,
        floor_max_talk_ms: 30_000,
        channel_fanout_per_sec: relaymesh_channel::DEFAULT_CHANNEL_FANOUT_PER_SEC,
        channel_fanout_burst: relaymesh_channel::DEFAULT_CHANNEL_FANOUT_BURST,
    }
}

fn caller(session: &str) -> Option<Caller> {
    Some(Caller {
        session_id: session.to_owned(),
        user_id: format!("user-{session}"),
    })
}

/// The message event in an envelope, if it is one.
fn message_content(envelope: &Envelope) -> Option<&str> {
    match &envelope.body {
        Some(Body::Livechat(r)) => match &r.event {
            Some(Event::MessageEvent(m)) => Some(m.content.as_str()),
            _ => None,
        },
        _ => None,
    }
}

/// The ACK of MESSAGE_CREATE is the answer of `SendMessage`: it must come
/// back while the message's fan-out is still stuck, and the members get the
/// message once the fan-out moves again. No clock is involved: with the
/// gate shut, an answer that waited for delivery would never come (the
/// outer timeout only turns that hang into a failure).
#[tokio::test]
async fn the_sender_is_answered_while_the_fan_out_is_stalled() {
    for state in testing::backends("channel-ack-before-fanout").await {
        let backend = state.backend_name();
        let gate = Arc::new(Semaphore::new(0));
        let (delivered_tx, mut delivered) = mpsc::unbounded_channel();
        let shutdown = CancellationToken::new();
        let delivery = GatedDelivery {
            gate: gate.clone(),
            delivered: delivered_tx,
        };
        let service = ChannelService::with_delivery(state, delivery, config(), shutdown.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(
            GrpcServer::new()
                .add_service(ChannelServiceServer::new(service.clone()))
                .serve(listener, ServeOptions::default(), shutdown.clone()),
        );
        let channel = relaymesh_rpc::connect_lazy(&format!("http://{addr}"), Duration::from_secs(30)).unwrap();
        let mut client = ChannelServiceClient::new(channel);

        let answered = tokio::time::timeout(Duration::from_secs(60), async {
            let create = CreateChannelRequest {
                caller: caller("a"),
                channel_id: "stalled".into(),
                ..Default::default()
            };
            client.create_channel(create).await.unwrap();
            for (session, ssrc) in [("a", 1), ("b", 2)] {
                let join = JoinChannelRequest {
                    caller: caller(session),
                    channel_id: "stalled".into(),
                    ssrc,
                };
                client.join_channel(join).await.unwrap();
            }
            let send = SendMessageRequest {
                caller: caller("a"),
                channel_id: "stalled".into(),
                content: "while stalled".into(),
            };
            client.send_message(send).await.unwrap().into_inner()
        })
        .await
        .unwrap_or_else(|_| panic!("{backend}: MESSAGE_CREATE waited for its fan-out"));
        assert!(!answered.message_id.is_empty(), "{backend}");
        assert!(
            delivered.try_recv().is_err(),
            "{backend}: nothing got through the shut gate"
        );

        // The fan-out moves again: the message reaches both members, after
        // the join event queued before it.
        gate.add_permits(Semaphore::MAX_PERMITS / 2);
        let (recipients, envelope) = loop {
            let (recipients, envelope) = delivered.recv().await.unwrap();
            if message_content(&envelope).is_some() {
                break (recipients, envelope);
            }
        };
        assert_eq!(message_content(&envelope), Some("while stalled"), "{backend}");
        let mut recipients: Vec<String> = recipients.iter().map(ToString::to_string).collect();
        recipients.sort();
        assert_eq!(recipients, ["a", "b"], "{backend}");

        shutdown.cancel();
        gate.close();
        server.await.unwrap().unwrap();
        service.drained().await;
    }
}
