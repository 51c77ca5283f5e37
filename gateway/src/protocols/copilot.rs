//! `/ws/copilot`: seed 001, JWT-authenticated at connect.
//!
//! A `query` is counted against the rate limit (signaling), then answered by
//! the query service (`QUERY_SERVICE_URL`, the built-in one by default) in a
//! task this connection owns: the query waits for the client's callback
//! answers, which this same connection must keep reading meanwhile. Its
//! `response` or `error` is handed to the connection table, like any
//! delivered event. Callback answers go to signaling's ResolveCallback; on
//! close, running queries are aborted and waiting callbacks released.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use relaymesh_proto::client::v1::{
    ClientProtocol, CloseCode, CopilotAnswer, CopilotCallbackAnswer, CopilotErrorCode, CopilotQuery, CopilotRequest,
    CopilotResponse, copilot_request::Request, copilot_response::Event,
};
use relaymesh_proto::query::v1::{ErrorReason as QueryReason, QueryRequest};
use relaymesh_proto::signaling::v1::{
    CallbackKind, CheckRateLimitRequest, CheckRateLimitResponse, DropSessionRequest, ErrorReason as SignalingReason,
    ResolveCallbackRequest,
};
use relaymesh_rpc::{reason_of, unary};
use relaymesh_state::event_envelope;
use relaymesh_wire::FrameError;
use relaymesh_wire::copilot as wire;
use tokio::task::JoinSet;
use tonic::{Code, Status};

use super::{Ctx, Ended, Liveness, Protocol};
use crate::Shared;
use crate::identity::Identity;
use crate::ws::WsCodec;

/// Queries one connection may have running at once; more get `BUSY`. The
/// rate limit bounds them too, but it is configurable and this must not be.
const MAX_QUERIES_IN_FLIGHT: usize = 16;

pub struct CopilotProtocol {
    who: Identity,
    /// The queries running for this connection, aborted when it closes.
    queries: JoinSet<()>,
}

impl CopilotProtocol {
    pub fn new(who: Identity) -> Self {
        Self {
            who,
            queries: JoinSet::new(),
        }
    }
}

/// The copilot error code for a service's refusal: the one table from the
/// query and signaling services' reasons (and plain gRPC codes, for a query
/// service that gives none) to seed 001's codes.
fn error_code(status: &Status) -> CopilotErrorCode {
    if let Some(reason) = reason_of::<QueryReason>(status) {
        match reason {
            QueryReason::CallbackTimeout => return CopilotErrorCode::Timeout,
            QueryReason::InvalidQuery => return CopilotErrorCode::InvalidMessage,
            QueryReason::ConnectionClosed | QueryReason::Unavailable => return CopilotErrorCode::Unavailable,
            QueryReason::Unspecified => {}
        }
    }
    if let Some(reason) = reason_of::<SignalingReason>(status) {
        match reason {
            SignalingReason::CallbackTimeout => return CopilotErrorCode::Timeout,
            SignalingReason::UnknownRequestId => return CopilotErrorCode::UnknownRequestId,
            SignalingReason::WrongAnswerType | SignalingReason::InvalidArgument => {
                return CopilotErrorCode::InvalidMessage;
            }
            SignalingReason::ConnectionClosed | SignalingReason::StateUnavailable => {
                return CopilotErrorCode::Unavailable;
            }
            SignalingReason::Unspecified => {}
        }
    }
    match status.code() {
        Code::DeadlineExceeded => CopilotErrorCode::Timeout,
        Code::InvalidArgument => CopilotErrorCode::InvalidMessage,
        Code::Unavailable | Code::Unimplemented => CopilotErrorCode::Unavailable,
        _ => CopilotErrorCode::Internal,
    }
}

fn status_error(status: &Status, request_id: Option<String>) -> CopilotResponse {
    wire::error(error_code(status), status.message(), request_id)
}

/// RATE_LIMITED for a query refused by the seed's query limit.
fn rate_limited(decision: &CheckRateLimitResponse, request_id: Option<String>) -> CopilotResponse {
    let retry_after = decision
        .retry_after
        .and_then(|d| std::time::Duration::try_from(d).ok())
        .unwrap_or_default();
    let what = format!("rate limit of {} queries", decision.limit);
    limited(&what, retry_after, decision.remaining, request_id)
}

/// RATE_LIMITED: `what` was exceeded; retry after `retry_after`.
fn limited(what: &str, retry_after: Duration, remaining: u32, request_id: Option<String>) -> CopilotResponse {
    let retry_after_ms = relaymesh_wire::millis(retry_after);
    let message = format!("{what} exceeded; retry in {retry_after_ms} ms");
    let mut event = wire::error(CopilotErrorCode::RateLimited, message, request_id);
    if let Some(Event::Error(e)) = &mut event.event {
        e.retry_after_ms = Some(retry_after_ms);
        e.remaining = Some(remaining);
    }
    event
}

/// The `requestId` a frame carries, for its error.
fn request_id_of(req: &CopilotRequest) -> Option<String> {
    match &req.request {
        Some(Request::Query(q)) => q.request_id.clone(),
        Some(Request::AvailableData(a) | Request::ApiResult(a) | Request::HumanResponse(a)) => {
            Some(a.request_id.clone())
        }
        Some(Request::Ping(_) | Request::Pong(_)) | None => None,
    }
}

impl CopilotProtocol {
    async fn query(&mut self, cx: &mut Ctx<CopilotResponse>, q: CopilotQuery) {
        while self.queries.try_join_next().is_some() {}
        if self.queries.len() >= MAX_QUERIES_IN_FLIGHT {
            let message = format!("{MAX_QUERIES_IN_FLIGHT} queries are still running");
            cx.send(wire::error(CopilotErrorCode::Busy, message, q.request_id));
            return;
        }
        let check = CheckRateLimitRequest {
            user_id: self.who.user_id.clone(),
            connection_id: cx.id.to_string(),
        };
        let decision = match unary!(cx.gw.upstreams.signaling, check_rate_limit, check).await {
            Ok(r) => r.into_inner(),
            Err(status) => return cx.send(status_error(&status, q.request_id)),
        };
        if !decision.allowed {
            return cx.send(rate_limited(&decision, q.request_id));
        }
        let (gw, conn) = (cx.gw.clone(), cx.id.clone());
        let req = QueryRequest {
            connection_id: conn.to_string(),
            user_id: self.who.user_id.clone(),
            data: q.data,
        };
        let request_id = q.request_id;
        self.queries.spawn(async move {
            let event = match gw.upstreams.query.clone().query(req).await {
                Ok(r) => CopilotResponse {
                    event: Some(Event::Response(CopilotAnswer {
                        request_id,
                        data: r.into_inner().data,
                        remaining: Some(decision.remaining),
                    })),
                },
                Err(status) => status_error(&status, request_id),
            };
            let mut envelope = event_envelope(event, false);
            envelope.connection_ids = vec![conn.to_string()];
            gw.table.deliver(envelope);
        });
    }

    async fn answer(&self, cx: &mut Ctx<CopilotResponse>, kind: CallbackKind, a: CopilotCallbackAnswer) {
        let req = ResolveCallbackRequest {
            connection_id: cx.id.to_string(),
            request_id: a.request_id.clone(),
            kind: kind as i32,
            data: a.data,
        };
        if let Err(status) = unary!(cx.gw.upstreams.signaling, resolve_callback, req).await {
            cx.send(status_error(&status, Some(a.request_id)));
        }
    }
}

impl Protocol for CopilotProtocol {
    const NAME: ClientProtocol = ClientProtocol::Copilot;

    /// Seed 001: the server pings, and each `ping` needs a `pong` within
    /// PONG_TIMEOUT_MS.
    const LIVENESS: Liveness = Liveness::PongDeadline;

    fn ping_event() -> Option<CopilotResponse> {
        Some(wire::ping())
    }

    /// Seed 001: only a `pong` answers the server's `ping`.
    fn answers_ping(req: &CopilotRequest) -> bool {
        matches!(req.request, Some(Request::Pong(_)))
    }
    type Request = CopilotRequest;
    type Event = CopilotResponse;

    async fn on_open(&mut self, cx: &mut Ctx<CopilotResponse>) {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &self.who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.close(CloseCode::InternalError, "session registry unavailable");
            return;
        }
        let id = cx.id.to_string();
        cx.send(wire::connected(
            &self.who.user_id,
            &id,
            cx.gw.config.heartbeat_interval_ms,
        ));
    }

    fn op_name(req: &CopilotRequest) -> &'static str {
        match req.request {
            Some(Request::Query(_)) => "query",
            Some(Request::Ping(_)) => "ping",
            Some(Request::Pong(_)) => "pong",
            Some(Request::AvailableData(_)) => "available_data",
            Some(Request::ApiResult(_)) => "api_result",
            Some(Request::HumanResponse(_)) => "human_response",
            None => "request",
        }
    }

    async fn on_request(&mut self, cx: &mut Ctx<CopilotResponse>, req: CopilotRequest) {
        match req.request {
            Some(Request::Ping(_)) => cx.send(wire::pong()),
            // Heartbeat answers are counted by the transport (`answers_ping`).
            Some(Request::Pong(_)) => {}
            Some(Request::Query(q)) => self.query(cx, q).await,
            Some(Request::AvailableData(a)) => self.answer(cx, CallbackKind::AvailableData, a).await,
            Some(Request::ApiResult(a)) => self.answer(cx, CallbackKind::Api, a).await,
            Some(Request::HumanResponse(a)) => self.answer(cx, CallbackKind::Clarification, a).await,
            None => cx.send(wire::error(CopilotErrorCode::InvalidMessage, "empty request", None)),
        }
    }

    async fn on_rate_limited(&mut self, cx: &mut Ctx<CopilotResponse>, req: CopilotRequest, retry_after: Duration) {
        cx.send(limited("frame rate limit", retry_after, 0, request_id_of(&req)));
    }

    async fn on_close(&mut self, cx: &mut Ctx<CopilotResponse>) {
        self.queries.abort_all();
        // Unregistered first, so a callback sent from now on finds no
        // connection and fails at once; then the ones already waiting are
        // released instead of running into their timeout.
        cx.unregister().await;
        let ended = Ended {
            connection_id: cx.id.as_str(),
            user_id: &self.who.user_id,
        };
        if let Err(status) = Self::release(&cx.gw, ended).await {
            tracing::warn!(connection_id = %cx.id, code = ?status.code(), "copilot callbacks not released");
        }
    }

    /// Callbacks still waiting for the connection fail at once with
    /// CONNECTION_CLOSED instead of running into their timeout.
    async fn release(gw: &Shared, ended: Ended<'_>) -> Result<(), Status> {
        let req = DropSessionRequest {
            connection_id: ended.connection_id.to_owned(),
        };
        unary!(gw.upstreams.signaling, drop_session, req).await.map(drop)
    }
}

impl WsCodec for CopilotProtocol {
    fn parse(&self, text: &str) -> Result<CopilotRequest, CopilotResponse> {
        wire::parse(text)
    }

    fn render(event: &CopilotResponse) -> Option<Utf8Bytes> {
        wire::render(event).map(Utf8Bytes::from)
    }

    fn refused(&self, err: &FrameError) -> CopilotResponse {
        wire::frame_error(err)
    }
}
