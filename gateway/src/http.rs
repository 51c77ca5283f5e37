//! HTTP routes: health, readiness, metrics, the console, and the WebSocket
//! upgrades of the four protocols.

use std::sync::Arc;

use axum::extract::ws::{CloseFrame, Message, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use relaymesh_state::ConnectionId;
use relaymesh_wire::Format;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::Shared;
use crate::identity::{self, AuthFailure, Identity};
use crate::protocols::{CopilotProtocol, LivechatProtocol, NodeProtocol, SignalProtocol};
use crate::ws::{self, ConnHandle, Transport, WsCodec};

pub fn router(gw: Arc<Shared>) -> Router {
    Router::new()
        .route("/", get(console))
        .route("/copilot-client.js", get(copilot_client))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/ws/node", get(ws_node))
        .route("/ws/copilot", get(ws_copilot))
        .route("/ws/livechat", get(ws_livechat))
        .route("/ws/signal", get(ws_signal))
        .merge(crate::api::router())
        .with_state(gw)
}

async fn console() -> Html<&'static str> {
    Html(include_str!("console.html"))
}

/// The browser client of seed 001 as an ES module (the console imports it).
async fn copilot_client() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        include_str!("copilot-client.js"),
    )
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        relaymesh_telemetry::metrics::render(),
    )
}

#[derive(serde::Serialize)]
struct Readiness {
    ready: bool,
    state_backend: &'static str,
    state_ok: bool,
    upstreams: Vec<crate::UpstreamHealth>,
}

/// 200 only while every required upstream answers SERVING and shared state
/// answers (the scheduler is reported but not required).
async fn readyz(State(gw): State<Arc<Shared>>) -> Response {
    let (upstreams, state) = tokio::join!(gw.upstreams.health(), gw.state.ping());
    let state_ok = state.is_ok();
    let ready = state_ok && !gw.shutdown.is_cancelled() && upstreams.iter().all(|u| u.serving || !u.required);
    let code = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Readiness {
        ready,
        state_backend: gw.state.backend_name(),
        state_ok,
        upstreams,
    };
    (code, Json(body)).into_response()
}

#[derive(serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

/// The token from `?token=` or, for non-browser clients, `Authorization: Bearer`.
fn bearer<'a>(q: &'a TokenQuery, headers: &'a HeaderMap) -> Option<&'a str> {
    q.token.as_deref().or_else(|| {
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
    })
}

async fn ws_node(ws: WebSocketUpgrade, State(gw): State<Arc<Shared>>) -> Response {
    upgrade(ws, gw, Ok(()), Format::Json, |_, _| NodeProtocol::default())
}

async fn ws_livechat(ws: WebSocketUpgrade, State(gw): State<Arc<Shared>>) -> Response {
    upgrade(ws, gw, Ok(()), Format::Json, |_, _| LivechatProtocol::default())
}

async fn ws_copilot(
    ws: WebSocketUpgrade,
    State(gw): State<Arc<Shared>>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    let who = identity::verify(&gw, bearer(&q, &headers)).await;
    upgrade(ws, gw, who, Format::Json, |who: Identity, _| CopilotProtocol::new(who))
}

/// `?format=json` (the default) or `?format=msgpack`; any other value is
/// refused with 400 before the upgrade.
#[derive(serde::Deserialize)]
struct FormatQuery {
    #[serde(default)]
    format: Format,
}

async fn ws_signal(
    ws: WebSocketUpgrade,
    State(gw): State<Arc<Shared>>,
    Query(q): Query<TokenQuery>,
    Query(f): Query<FormatQuery>,
    headers: HeaderMap,
) -> Response {
    let who = identity::verify(&gw, bearer(&q, &headers)).await;
    upgrade(ws, gw, who, f.format, |who: Identity, _| SignalProtocol::new(who))
}

/// Accepts the upgrade and runs the connection in `format`, or, when authentication
/// failed, accepts it only to close it with the contract's close code (a
/// browser cannot read an HTTP status from a failed WebSocket handshake).
fn upgrade<A, P>(
    ws: WebSocketUpgrade,
    gw: Arc<Shared>,
    auth: Result<A, AuthFailure>,
    format: Format,
    make: impl FnOnce(A, &Arc<Shared>) -> P + Send + 'static,
) -> Response
where
    A: Send + 'static,
    P: WsCodec,
{
    let Ok(permit) = gw.slots.clone().try_acquire_owned() else {
        metrics::counter!("relaymesh_gateway_connections_refused_total", "reason" => "capacity").increment(1);
        return (StatusCode::SERVICE_UNAVAILABLE, "connection limit reached").into_response();
    };
    if gw.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, "shutting down").into_response();
    }
    let hard_cap = gw.config.max_frame_bytes.saturating_mul(4).max(64 * 1024);
    let token = gw.tracker.token();
    ws
        // Small buffers keep an idle socket cheap; they grow while a large
        // frame is read or written and shrink back with the frame. Frames
        // fed together (`ws::flush`) are written together, up to 16 KiB.
        .read_buffer_size(1024)
        .write_buffer_size(16 * 1024)
        .max_write_buffer_size(hard_cap.saturating_mul(2))
        // Frames over MAX_FRAME_BYTES (but under the hard cap) reach the
        // protocol, which answers its own error frame; beyond the cap
        // tungstenite closes with 1009.
        .max_message_size(hard_cap)
        .max_frame_size(hard_cap)
        .on_upgrade(move |mut socket| async move {
            let _permit = permit;
            let _token = token;
            let who = match auth {
                Ok(who) => who,
                Err(fail) => {
                    metrics::counter!("relaymesh_gateway_connections_refused_total", "reason" => "auth").increment(1);
                    let frame = CloseFrame {
                        code: fail.close_code() as u16,
                        reason: fail.to_string().into(),
                    };
                    if socket.send(Message::Close(Some(frame))).await.is_ok() {
                        ws::finish_close_handshake(&mut socket).await;
                    }
                    return;
                }
            };
            let proto = make(who, &gw);
            let id = ConnectionId::random();
            let (tx, rx) = mpsc::channel(gw.config.outbound_queue.max(1));
            let evict = CancellationToken::new();
            gw.table.insert(
                id.clone(),
                ConnHandle::new(tx, evict.clone(), Transport::WebSocket(format)),
            );
            ws::run(socket, format, proto, gw, id, rx, evict).await;
        })
}
