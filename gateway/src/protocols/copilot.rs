//! `/ws/copilot`: seed 001's JSON frames, JWT-authenticated at connect.

use axum::extract::ws::{Message, Utf8Bytes};
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_proto::signaling::v1::{QueryRequest, ResolveCallbackRequest};
use relaymesh_wire::FrameError;
use relaymesh_wire::copilot::{self as wire, ClientFrame, code};
use tonic::{Code, Status};

use super::{Ctx, Protocol};
use crate::identity::Identity;
use crate::ws::WsCodec;

pub struct CopilotProtocol {
    who: Identity,
}

impl CopilotProtocol {
    pub fn new(who: Identity) -> Self {
        Self { who }
    }
}

/// The copilot error code for a service's refusal.
fn error_code(status: &Status) -> &'static str {
    match status.code() {
        Code::ResourceExhausted => code::RATE_LIMITED,
        Code::NotFound => code::UNKNOWN_REQUEST_ID,
        Code::InvalidArgument => code::INVALID_MESSAGE,
        Code::Unavailable | Code::Unimplemented | Code::DeadlineExceeded => code::UNAVAILABLE,
        _ => code::INTERNAL,
    }
}

fn status_frame(status: &Status, request_id: Option<&str>) -> String {
    wire::error(error_code(status), status.message(), request_id)
}

impl Protocol for CopilotProtocol {
    const NAME: ClientProtocol = ClientProtocol::Copilot;
    type Request = ClientFrame;
    type Event = String;

    async fn on_open(&mut self, cx: &mut Ctx<String>) {
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

    async fn on_request(&mut self, cx: &mut Ctx<String>, frame: ClientFrame) {
        let mut signaling = cx.gw.upstreams.signaling.clone();
        match frame {
            ClientFrame::Ping => cx.send(wire::pong()),
            // Liveness is recorded by the connection loop for every frame.
            ClientFrame::Pong => {}
            ClientFrame::Query { data } => {
                let req = QueryRequest {
                    connection_id: cx.id.to_string(),
                    user_id: self.who.user_id.clone(),
                    payload_json: data,
                };
                if let Err(status) = signaling.query(req).await {
                    cx.send(status_frame(&status, None));
                }
            }
            ClientFrame::CallbackAnswer { request_id, data, .. } => {
                let req = ResolveCallbackRequest {
                    connection_id: cx.id.to_string(),
                    request_id: request_id.clone(),
                    answer_json: data,
                };
                if let Err(status) = signaling.resolve_callback(req).await {
                    cx.send(status_frame(&status, Some(&request_id)));
                }
            }
        }
    }
}

impl WsCodec for CopilotProtocol {
    fn parse(&self, text: &str) -> Result<ClientFrame, String> {
        ClientFrame::parse(text).map_err(|err| wire::frame_error(&err))
    }

    fn render(event: &String) -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from(event.as_str()))
    }

    fn refused(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }

    fn ping(&self) -> Option<Message> {
        Some(Message::Text(wire::ping().into()))
    }
}
