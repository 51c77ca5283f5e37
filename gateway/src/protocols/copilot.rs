//! `/ws/copilot`: seed 001's JSON frames, JWT-authenticated at connect.

use axum::extract::ws::Message;
use relaymesh_proto::signaling::v1::{QueryRequest, ResolveCallbackRequest};
use relaymesh_wire::FrameError;
use relaymesh_wire::copilot::{self as wire, ClientFrame, code};
use tonic::{Code, Status};

use crate::identity::Identity;
use crate::ws::{Ctx, Protocol, close};

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
    const NAME: &'static str = "copilot";

    fn ping(&self) -> Option<Message> {
        Some(Message::Text(wire::ping().into()))
    }

    async fn on_open(&mut self, cx: &mut Ctx) {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &self.who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.close(close::INTERNAL, "session registry unavailable");
            return;
        }
        let id = cx.id.to_string();
        cx.send(wire::connected(
            &self.who.user_id,
            &id,
            cx.gw.config.heartbeat_interval_ms,
        ));
    }

    async fn on_text(&mut self, cx: &mut Ctx, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(err) => return cx.send(self.frame_error(&err)),
        };
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

    fn frame_error(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
