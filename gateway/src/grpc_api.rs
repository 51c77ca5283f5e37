//! The gateway's gRPC client API (`relaymesh.client.v1.GatewayService`):
//! the same protocol adapters as the JSON WebSockets, carried as typed
//! messages on gRPC streams, on the gateway's own port (HTTP/2 cleartext,
//! and gRPC-Web over HTTP/1.1 for browsers).
//!
//! A stream is a connection: it is registered like a socket, gets delivered
//! events in the same table, and ends with the same close codes (sent as a
//! last `closing` event, then a gRPC status). Browsers, which cannot stream
//! requests over gRPC-Web, use `Open` (a server stream) and `Send` (unary).

use std::pin::Pin;
use std::sync::Arc;

use futures_util::{Stream, StreamExt};
use relaymesh_proto::client::v1::gateway_service_server::{GatewayService, GatewayServiceServer};
use relaymesh_proto::client::v1::{
    ClientProtocol, CloseCode, Closing, CopilotRequest, CopilotResponse, LivechatRequest, LivechatResponse,
    OpenRequest, OpenResponse, Opened, SendRequest, SendResponse, SignalRequest, SignalResponse, copilot_response,
    livechat_response, open_response, send_request, signal_response,
};
use relaymesh_proto::delivery::v1::{Envelope, ForwardedRequest, envelope::Body, forwarded_request};
use relaymesh_state::ConnectionId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use crate::Shared;
use crate::identity::{self, AuthFailure, Identity};
use crate::protocols::{
    Beat, CopilotProtocol, Ctx, Heartbeat, LivechatProtocol, Liveness, Protocol, SignalProtocol, count_frame_in,
    finish, frame_span, handle, protocol_name,
};
use crate::ws::{ConnHandle, Outbound, Transport};

/// How a protocol's typed events travel on a gRPC stream.
pub trait StreamCodec: Protocol {
    /// The protocol's event in a delivered envelope body, if it is one.
    fn from_body(body: &Body) -> Option<Self::Event>;
    /// The protocol's request in a forwarded request, if it is one.
    fn from_forwarded(req: ForwardedRequest) -> Option<Self::Request>;
    /// The last event of a stream the server closes.
    fn closing(code: CloseCode, reason: String) -> Self::Event;
}

/// A stream's heartbeat: where the server pings (seed 001) as on the
/// WebSocket; otherwise only session refreshes, HTTP/2 keeping the stream
/// itself alive.
fn stream_liveness<P: Protocol>() -> Liveness {
    match P::LIVENESS {
        Liveness::PongDeadline => Liveness::PongDeadline,
        Liveness::ClientBeats | Liveness::Unchecked => Liveness::Unchecked,
    }
}

/// Each protocol's [`StreamCodec`] differs only in the names of its
/// envelope body, forwarded request and event types.
macro_rules! stream_codec {
    ($protocol:ty, $variant:ident, $request:ty, $response:ident, $events:ident) => {
        impl StreamCodec for $protocol {
            fn from_body(body: &Body) -> Option<$response> {
                match body {
                    Body::$variant(e) => Some(e.clone()),
                    _ => None,
                }
            }

            fn from_forwarded(req: ForwardedRequest) -> Option<$request> {
                match req.request {
                    Some(forwarded_request::Request::$variant(r)) => Some(r),
                    _ => None,
                }
            }

            fn closing(code: CloseCode, reason: String) -> $response {
                $response {
                    event: Some($events::Event::Closing(Closing {
                        code: code as i32,
                        reason,
                    })),
                }
            }
        }
    };
}

stream_codec!(
    LivechatProtocol,
    Livechat,
    LivechatRequest,
    LivechatResponse,
    livechat_response
);
stream_codec!(SignalProtocol, Signal, SignalRequest, SignalResponse, signal_response);
stream_codec!(
    CopilotProtocol,
    Copilot,
    CopilotRequest,
    CopilotResponse,
    copilot_response
);

/// The gRPC status a stream ends with when the server closes it.
fn close_status(code: CloseCode, reason: &str) -> Status {
    match code {
        CloseCode::PolicyViolation | CloseCode::AuthFailed => Status::unauthenticated(reason),
        CloseCode::Replaced => Status::aborted(reason),
        CloseCode::HeartbeatLost => Status::deadline_exceeded(reason),
        CloseCode::TryAgainLater | CloseCode::MessageTooBig => Status::resource_exhausted(reason),
        CloseCode::InvalidPayload => Status::invalid_argument(reason),
        CloseCode::GoingAway | CloseCode::InternalError | CloseCode::Unspecified => Status::unavailable(reason),
    }
}

fn auth_status(fail: &AuthFailure) -> Status {
    match fail {
        AuthFailure::Unavailable => Status::unavailable(fail.to_string()),
        _ => Status::unauthenticated(fail.to_string()),
    }
}

/// The bearer token of `authorization` metadata, if any.
fn bearer<T>(req: &Request<T>) -> Option<&str> {
    let value = req.metadata().get("authorization")?.to_str().ok()?;
    value.strip_prefix("Bearer ").or_else(|| value.strip_prefix("bearer "))
}

type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Serves `GatewayService` for one gateway replica.
#[derive(Clone)]
pub struct GatewayApi {
    gw: Arc<Shared>,
}

impl GatewayApi {
    pub fn server(gw: Arc<Shared>) -> GatewayServiceServer<Self> {
        GatewayServiceServer::new(Self { gw })
    }

    async fn identify<T>(&self, req: &Request<T>) -> Result<Option<Identity>, Status> {
        match bearer(req) {
            None => Ok(None),
            Some(token) => identity::verify(&self.gw, Some(token))
                .await
                .map(Some)
                .map_err(|f| auth_status(&f)),
        }
    }

    /// Accepts a stream connection: registers it in the table and runs it
    /// on a task the gateway's drain waits for. Events go out through `wrap`.
    fn accept<P, O>(
        &self,
        proto: P,
        inbound: impl Stream<Item = Result<P::Request, Status>> + Send + Unpin + 'static,
        wrap: fn(P::Event) -> O,
    ) -> Result<(ConnectionId, EventStream<O>), Status>
    where
        P: StreamCodec,
        O: Send + 'static,
    {
        let gw = self.gw.clone();
        if gw.shutdown.is_cancelled() {
            return Err(Status::unavailable("shutting down"));
        }
        let Ok(permit) = gw.slots.clone().try_acquire_owned() else {
            metrics::counter!("relaymesh_gateway_connections_refused_total", "reason" => "capacity").increment(1);
            return Err(Status::resource_exhausted("connection limit reached"));
        };
        let id = ConnectionId::random();
        let (tx, rx) = mpsc::channel(gw.config.outbound_queue.max(1));
        let evict = CancellationToken::new();
        gw.table
            .insert(id.clone(), ConnHandle::new(tx, evict.clone(), Transport::Grpc));
        let (out_tx, out_rx) = mpsc::channel(gw.config.outbound_queue.max(1));
        let conn = id.clone();
        let token = gw.tracker.token();
        tokio::spawn(async move {
            let _permit = permit;
            let _token = token;
            run_stream(proto, gw, conn, inbound, rx, evict, out_tx, wrap).await;
        });
        Ok((id, Box::pin(ReceiverStream::new(out_rx))))
    }
}

/// This transport's name in traces.
const TRANSPORT: &str = "grpc";

/// Runs one stream connection to its end: the gRPC twin of `ws::run`.
#[allow(clippy::too_many_arguments)]
async fn run_stream<P, O>(
    mut proto: P,
    gw: Arc<Shared>,
    id: ConnectionId,
    mut inbound: impl Stream<Item = Result<P::Request, Status>> + Send + Unpin,
    mut rx: mpsc::Receiver<Outbound>,
    evict: CancellationToken,
    out: mpsc::Sender<Result<O, Status>>,
    wrap: fn(P::Event) -> O,
) where
    P: StreamCodec,
    O: Send + 'static,
{
    let name = protocol_name(P::NAME);
    let mut cx = Ctx::<P::Event>::new(id.clone(), gw.clone());
    let cfg = &gw.config;
    let mut heartbeat = Heartbeat::new(cfg, stream_liveness::<P>());
    metrics::gauge!("relaymesh_gateway_grpc_streams", "protocol" => name).increment(1.0);
    let span = frame_span(P::NAME, TRANSPORT, "open", &cx);
    Box::pin(proto.on_open(&mut cx)).instrument(span).await;
    let mut open = flush(&mut cx, &out, wrap, cfg.send_timeout()).await;
    // Made once, not per turn (see `ws::run`).
    let shutdown = gw.shutdown.cancelled();
    let evicted = evict.cancelled();
    tokio::pin!(shutdown, evicted);
    while open && !cx.closing() {
        tokio::select! {
            biased;
            () = &mut shutdown => cx.close(CloseCode::GoingAway, "server shutting down"),
            () = &mut evicted => cx.close(CloseCode::TryAgainLater, "slow consumer: outbound queue full"),
            () = out.closed() => break,
            item = rx.recv() => match item {
                Some(Outbound::Event(body)) => {
                    if let Some(event) = P::from_body(&body) {
                        cx.send(event);
                    }
                }
                Some(Outbound::Close(code, reason)) => cx.close(code, reason),
                Some(Outbound::Nudge(reason)) => {
                    let span = frame_span(P::NAME, TRANSPORT, "nudge", &cx);
                    Box::pin(proto.on_nudge(&mut cx, reason)).instrument(span).await;
                }
                Some(Outbound::Forwarded(f)) => match P::from_forwarded(*f) {
                    Some(req) => take(&mut proto, &mut cx, &mut heartbeat, req).await,
                    None => tracing::debug!(connection_id = %id, "forwarded request of another protocol"),
                },
                // A snapshot, the newest of its kind (see `LatestSlot`).
                Some(Outbound::Latest(slot)) => {
                    if let Some(Outbound::Event(body)) = slot.take()
                        && let Some(event) = P::from_body(&body)
                    {
                        cx.send(event);
                    }
                }
                // Rendered frames are for WebSockets.
                Some(Outbound::Text(_) | Outbound::Binary(_)) => {}
                None => break,
            },
            req = inbound.next() => match req {
                Some(Ok(req)) => {
                    count_frame_in(P::NAME);
                    take(&mut proto, &mut cx, &mut heartbeat, req).await;
                }
                // The client ended its side, or the stream broke.
                Some(Err(_)) | None => break,
            },
            beat = heartbeat.next() => match beat {
                Beat::Period { heard } => {
                    if heard {
                        cx.touch();
                    }
                    if let Some(ping) = P::ping_event() {
                        cx.send(ping);
                    }
                    cx.refresh_session().await;
                }
                Beat::Lost(reason) => cx.close(CloseCode::HeartbeatLost, reason),
                Beat::Missed => {}
            },
        }
        open = open && flush(&mut cx, &out, wrap, cfg.send_timeout()).await;
    }
    if open && let Some((code, reason)) = cx.take_close() {
        let _ = out.try_send(Ok(wrap(P::closing(code, reason.clone()))));
        let _ = out.try_send(Err(close_status(code, &reason)));
    }
    finish(&mut proto, &mut cx, TRANSPORT).await;
    metrics::gauge!("relaymesh_gateway_grpc_streams", "protocol" => name).decrement(1.0);
}

/// Runs one request from the stream (or forwarded to it from `Send`); a
/// request that answers the server's ping tells `heartbeat`.
async fn take<P: Protocol>(proto: &mut P, cx: &mut Ctx<P::Event>, heartbeat: &mut Heartbeat, req: P::Request) {
    heartbeat.heard();
    handle(proto, cx, heartbeat, TRANSPORT, req).await;
}

/// Sends the handler's events; false when the client is gone or too slow.
async fn flush<E, O>(
    cx: &mut Ctx<E>,
    out: &mpsc::Sender<Result<O, Status>>,
    wrap: fn(E) -> O,
    timeout: std::time::Duration,
) -> bool {
    let events: Vec<E> = cx.take_out().collect();
    for event in events {
        match tokio::time::timeout(timeout, out.send(Ok(wrap(event)))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return false,
            Err(_) => {
                metrics::counter!("relaymesh_gateway_send_timeouts_total").increment(1);
                return false;
            }
        }
    }
    true
}

fn identity_event<T>(e: T) -> T {
    e
}

fn open_livechat(e: LivechatResponse) -> OpenResponse {
    OpenResponse {
        event: Some(open_response::Event::Livechat(e)),
    }
}

/// An `Open` stream: its first message names its connection, for `Send`.
fn opened(id: &ConnectionId, stream: EventStream<OpenResponse>) -> EventStream<OpenResponse> {
    let opened = OpenResponse {
        event: Some(open_response::Event::Opened(Opened {
            session_id: id.to_string(),
        })),
    };
    Box::pin(futures_util::stream::once(async move { Ok(opened) }).chain(stream))
}

fn open_copilot(e: CopilotResponse) -> OpenResponse {
    OpenResponse {
        event: Some(open_response::Event::Copilot(e)),
    }
}

fn open_signal(e: SignalResponse) -> OpenResponse {
    OpenResponse {
        event: Some(open_response::Event::Signal(e)),
    }
}

#[tonic::async_trait]
impl GatewayService for GatewayApi {
    type LivechatStream = EventStream<LivechatResponse>;
    type CopilotStream = EventStream<CopilotResponse>;
    type SignalStream = EventStream<SignalResponse>;
    type OpenStream = EventStream<OpenResponse>;

    async fn livechat(
        &self,
        req: Request<Streaming<LivechatRequest>>,
    ) -> Result<Response<Self::LivechatStream>, Status> {
        let proto = match self.identify(&req).await? {
            Some(who) => LivechatProtocol::identified(who),
            None => LivechatProtocol::default(),
        };
        let (_, stream) = self.accept(proto, req.into_inner(), identity_event)?;
        Ok(Response::new(stream))
    }

    async fn copilot(&self, req: Request<Streaming<CopilotRequest>>) -> Result<Response<Self::CopilotStream>, Status> {
        let who = self
            .identify(&req)
            .await?
            .ok_or_else(|| Status::unauthenticated("missing token"))?;
        let (_, stream) = self.accept(CopilotProtocol::new(who), req.into_inner(), identity_event)?;
        Ok(Response::new(stream))
    }

    async fn signal(&self, req: Request<Streaming<SignalRequest>>) -> Result<Response<Self::SignalStream>, Status> {
        let who = self
            .identify(&req)
            .await?
            .ok_or_else(|| Status::unauthenticated("missing token"))?;
        let (_, stream) = self.accept(SignalProtocol::new(who), req.into_inner(), identity_event)?;
        Ok(Response::new(stream))
    }

    async fn open(&self, req: Request<OpenRequest>) -> Result<Response<Self::OpenStream>, Status> {
        let who = self
            .identify(&req)
            .await?
            .ok_or_else(|| Status::unauthenticated("missing token"))?;
        let protocol = req.into_inner().protocol();
        let inbound = futures_util::stream::pending();
        match protocol {
            ClientProtocol::Livechat => {
                let (id, stream) = self.accept(LivechatProtocol::identified(who), inbound, open_livechat)?;
                Ok(Response::new(opened(&id, stream)))
            }
            ClientProtocol::Copilot => {
                let (id, stream) =
                    self.accept(CopilotProtocol::new(who), futures_util::stream::pending(), open_copilot)?;
                Ok(Response::new(opened(&id, stream)))
            }
            ClientProtocol::Signal => {
                let (id, stream) =
                    self.accept(SignalProtocol::new(who), futures_util::stream::pending(), open_signal)?;
                Ok(Response::new(opened(&id, stream)))
            }
            _ => Err(Status::unimplemented(format!(
                "{} is not offered over gRPC",
                protocol_name(protocol)
            ))),
        }
    }

    async fn send(&self, req: Request<SendRequest>) -> Result<Response<SendResponse>, Status> {
        let who = self
            .identify(&req)
            .await?
            .ok_or_else(|| Status::unauthenticated("missing token"))?;
        let send = req.into_inner();
        let conn = ConnectionId::new(send.session_id);
        let registry = self.gw.delivery.registry();
        let entry = registry
            .lookup(&conn)
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?
            .ok_or_else(|| Status::not_found("no such session"))?;
        if entry.user_id != who.user_id {
            return Err(Status::permission_denied("the session is another user's"));
        }
        let request = match send.request {
            Some(send_request::Request::Livechat(r)) if entry.protocol == ClientProtocol::Livechat as i32 => {
                forwarded_request::Request::Livechat(r)
            }
            Some(send_request::Request::Copilot(r)) if entry.protocol == ClientProtocol::Copilot as i32 => {
                forwarded_request::Request::Copilot(r)
            }
            Some(send_request::Request::Signal(r)) if entry.protocol == ClientProtocol::Signal as i32 => {
                forwarded_request::Request::Signal(r)
            }
            _ => return Err(Status::invalid_argument("the request is not of the session's protocol")),
        };
        let forwarded = ForwardedRequest {
            user_id: who.user_id,
            request: Some(request),
        };
        // Held here: queue it. Held elsewhere: its replica gets it.
        if self.gw.table.holds(&conn, Transport::Grpc) {
            if self
                .gw
                .table
                .offer(&conn, Outbound::Forwarded(Box::new(forwarded)), false)
                != crate::ws::Offered::Queued
            {
                return Err(Status::resource_exhausted("the session's queue is full"));
            }
        } else {
            let envelope = Envelope {
                body: Some(Body::Forwarded(forwarded)),
                ..Envelope::default()
            };
            self.gw
                .delivery
                .send_to_session(&entry, envelope)
                .await
                .map_err(|e| Status::unavailable(e.to_string()))?;
        }
        Ok(Response::new(SendResponse {}))
    }
}
