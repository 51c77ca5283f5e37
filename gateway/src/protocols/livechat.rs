//! `/ws/livechat`: seed 003's `{op, d}` protocol.

use relaymesh_wire::FrameError;
use relaymesh_wire::livechat::{self as wire, ClientFrame, ErrorCode, Identify};
use tonic::{Code, Status};

use crate::identity::{self, AuthFailure};
use crate::ws::{Ctx, Protocol, close};

#[derive(Debug, Default)]
pub struct LivechatProtocol {
    user_id: Option<String>,
}

/// The seed's error code for a service's refusal, by the reason it carries.
pub fn error_code(status: &Status) -> ErrorCode {
    match relaymesh_rpc::reason_of(status) {
        Some("channel_not_found") => ErrorCode::ChannelNotFound,
        Some("channel_full") => ErrorCode::ChannelFull,
        Some("not_allowed") => ErrorCode::NotAllowed,
        Some("already_joined") => ErrorCode::AlreadyJoined,
        Some("not_joined") => ErrorCode::NotJoined,
        Some("empty_message") => ErrorCode::EmptyMessage,
        Some("message_too_long") => ErrorCode::MessageTooLong,
        Some("not_member") => ErrorCode::NotMember,
        _ => ErrorCode::Internal,
    }
}

impl LivechatProtocol {
    async fn identify(&mut self, cx: &mut Ctx, f: Identify) {
        let nonce = f.nonce.as_deref();
        if self.user_id.is_some() {
            cx.send(wire::error(ErrorCode::InvalidOp, "already identified", nonce));
            return;
        }
        let who = match identity::verify(&cx.gw, Some(&f.token)).await {
            Ok(who) if who.user_id == f.user_id => who,
            Ok(_) => {
                cx.send(wire::error(
                    ErrorCode::InvalidToken,
                    "token is not for this user_id",
                    nonce,
                ));
                cx.close(close::AUTH_FAILED, "invalid token");
                return;
            }
            Err(AuthFailure::Unavailable) => {
                cx.send(wire::error(ErrorCode::Internal, "auth unavailable, retry", nonce));
                return;
            }
            Err(fail) => {
                cx.send(wire::error(ErrorCode::InvalidToken, &fail.to_string(), nonce));
                cx.close(close::AUTH_FAILED, fail.to_string());
                return;
            }
        };
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.send(wire::error(ErrorCode::Internal, "session registry unavailable", nonce));
            return;
        }
        let session_id = cx.id.to_string();
        cx.send(
            wire::ServerFrame {
                op: wire::op::READY,
                d: wire::Ready {
                    session_id: &session_id,
                    user_id: &who.user_id,
                    nonce,
                },
            }
            .to_text(),
        );
        self.user_id = Some(who.user_id);
    }
}

impl Protocol for LivechatProtocol {
    const NAME: &'static str = "livechat";

    async fn on_open(&mut self, cx: &mut Ctx) {
        cx.send(wire::hello(cx.gw.config.heartbeat_interval_ms));
    }

    async fn on_text(&mut self, cx: &mut Ctx, text: &str) {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(err) => return cx.send(self.frame_error(&err)),
        };
        match frame {
            ClientFrame::Heartbeat(h) => cx.send(wire::heartbeat_ack(h.nonce.as_deref())),
            ClientFrame::Identify(f) => self.identify(cx, f).await,
            other if self.user_id.is_none() => cx.send(wire::error(
                ErrorCode::NotIdentified,
                "send IDENTIFY first",
                other.nonce(),
            )),
            other => {
                // Channel, chat and floor operations arrive with the LiveChat issue.
                let status = Status::new(Code::Unimplemented, "channel operations are not available yet");
                cx.send(wire::error(error_code(&status), status.message(), other.nonce()));
            }
        }
    }

    fn frame_error(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
