//! `/ws/livechat`: seed 003's `{op, d}` protocol.

use relaymesh_proto::channel::v1::{
    ChannelInfo, CreateChannelRequest, DeleteChannelRequest, DropSessionRequest, FloorRequest, FloorResponse,
    JoinChannelRequest, LeaveChannelRequest, SendMessageRequest, UpdateChannelRequest,
};
use relaymesh_wire::FrameError;
use relaymesh_wire::livechat::{self as wire, ClientFrame, ErrorCode, Identify, MemberView, op};
use serde::Serialize;
use tonic::Status;

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
        Some("floor_busy") => ErrorCode::FloorBusy,
        Some("no_floor_control") => ErrorCode::NoFloorControl,
        Some("ssrc_in_use") => ErrorCode::SsrcInUse,
        Some("channel_exists") => ErrorCode::ChannelExists,
        Some("invalid") => ErrorCode::InvalidJson,
        _ => ErrorCode::Internal,
    }
}

#[derive(Serialize)]
struct ChannelView {
    channel_id: String,
    name: String,
    creator_id: String,
    capacity: u32,
    floor: String,
    members: Vec<String>,
}

impl From<ChannelInfo> for ChannelView {
    fn from(c: ChannelInfo) -> Self {
        Self {
            channel_id: c.channel_id,
            name: c.name,
            creator_id: c.creator_id,
            capacity: c.capacity,
            floor: c.floor_policy,
            members: c.members,
        }
    }
}

#[derive(Serialize)]
struct ChannelAck {
    channel: ChannelView,
}

#[derive(Serialize)]
struct JoinAck {
    channel_id: String,
    active_members: Vec<MemberView>,
    /// Where to send RTP (host:port); empty when no relay is running.
    media_addr: String,
}

#[derive(Serialize)]
struct ChannelIdAck {
    channel_id: String,
}

#[derive(Serialize)]
struct MessageAck {
    channel_id: String,
    message_id: String,
}

#[derive(Serialize)]
struct FloorAck {
    channel_id: String,
    holder_id: Option<String>,
    holder_ssrc: Option<u32>,
    queue_position: u32,
    expires_at: Option<i64>,
}

impl FloorAck {
    fn new(channel_id: String, r: FloorResponse) -> Self {
        let held = !r.holder_id.is_empty();
        Self {
            channel_id,
            holder_id: held.then_some(r.holder_id),
            holder_ssrc: held.then_some(r.holder_ssrc),
            queue_position: r.queue_position,
            expires_at: held.then_some(r.expires_at_ms),
        }
    }
}

/// ACK with `body`, or the seed's ERROR for the service's refusal.
fn answer<B: Serialize>(request_op: u16, nonce: Option<&str>, r: Result<B, Status>) -> String {
    match r {
        Ok(body) => wire::ack(request_op, nonce, body),
        Err(status) => wire::error(error_code(&status), status.message(), nonce),
    }
}

impl LivechatProtocol {
    /// Turns one channel, chat or floor frame into its RPC and answer.
    async fn channel_op(&self, cx: &Ctx, user_id: &str, frame: ClientFrame) -> String {
        let mut channel = cx.gw.upstreams.channel.clone();
        let session_id = cx.id.to_string();
        let user_id = user_id.to_owned();
        let nonce = frame.nonce().map(str::to_owned);
        let nonce = nonce.as_deref();
        match frame {
            ClientFrame::ChannelCreate(f) => {
                let req = CreateChannelRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id,
                    name: f.name.unwrap_or_default(),
                    capacity: f.capacity.unwrap_or(0),
                    floor_policy: f.floor.unwrap_or_default(),
                    max_talk_ms: f.max_talk_ms.unwrap_or(0),
                };
                let r = channel.create_channel(req).await.map(|r| ChannelAck {
                    channel: r.into_inner().into(),
                });
                answer(op::CHANNEL_CREATE, nonce, r)
            }
            ClientFrame::ChannelJoin(f) => {
                let channel_id = f.channel_id.clone();
                let req = JoinChannelRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id,
                    ssrc: f.ssrc,
                };
                let r = channel.join_channel(req).await.map(|r| {
                    let r = r.into_inner();
                    JoinAck {
                        channel_id,
                        active_members: r
                            .active_members
                            .into_iter()
                            .map(|m| MemberView {
                                user_id: m.user_id,
                                session_id: m.session_id,
                                ssrc: m.ssrc,
                            })
                            .collect(),
                        media_addr: r.media_addr,
                    }
                });
                answer(op::CHANNEL_JOIN, nonce, r)
            }
            ClientFrame::ChannelLeave(f) => {
                let req = LeaveChannelRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id.clone(),
                };
                let r = channel.leave_channel(req).await.map(|_| ChannelIdAck {
                    channel_id: f.channel_id,
                });
                answer(op::CHANNEL_LEAVE, nonce, r)
            }
            ClientFrame::ChannelUpdate(f) => {
                let req = UpdateChannelRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id,
                    name: f.name,
                };
                let r = channel.update_channel(req).await.map(|r| ChannelAck {
                    channel: r.into_inner().into(),
                });
                answer(op::CHANNEL_UPDATE, nonce, r)
            }
            ClientFrame::ChannelDelete(f) => {
                let req = DeleteChannelRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id.clone(),
                };
                let r = channel.delete_channel(req).await.map(|_| ChannelIdAck {
                    channel_id: f.channel_id,
                });
                answer(op::CHANNEL_DELETE, nonce, r)
            }
            ClientFrame::MessageCreate(f) => {
                let req = SendMessageRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id.clone(),
                    content: f.content,
                };
                let r = channel.send_message(req).await.map(|r| MessageAck {
                    channel_id: f.channel_id,
                    message_id: r.into_inner().message_id,
                });
                answer(op::MESSAGE_CREATE, nonce, r)
            }
            ClientFrame::FloorRequest(f) => {
                let req = FloorRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id.clone(),
                };
                let r = channel
                    .request_floor(req)
                    .await
                    .map(|r| FloorAck::new(f.channel_id, r.into_inner()));
                answer(op::FLOOR_REQUEST, nonce, r)
            }
            ClientFrame::FloorRelease(f) => {
                let req = FloorRequest {
                    session_id,
                    user_id,
                    channel_id: f.channel_id.clone(),
                };
                let r = channel
                    .release_floor(req)
                    .await
                    .map(|r| FloorAck::new(f.channel_id, r.into_inner()));
                answer(op::FLOOR_RELEASE, nonce, r)
            }
            ClientFrame::Heartbeat(_) | ClientFrame::Identify(_) => {
                wire::error(ErrorCode::InvalidOp, "not a channel operation", nonce)
            }
        }
    }

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
            Err(err) => return cx.send(wire::frame_error_for(&err, Some(text))),
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
                let user_id = self.user_id.clone().unwrap_or_default();
                let answer = self.channel_op(cx, &user_id, other).await;
                cx.send(answer);
            }
        }
    }

    /// A closed or zombie session leaves every channel it joined; the other
    /// members get the leave events.
    async fn on_close(&mut self, cx: &mut Ctx) {
        if self.user_id.is_some() {
            let mut channel = cx.gw.upstreams.channel.clone();
            if let Err(status) = channel
                .drop_session(DropSessionRequest {
                    session_id: cx.id.to_string(),
                })
                .await
            {
                tracing::warn!(connection_id = %cx.id, error = %status.message(), "channel cleanup failed");
            }
        }
    }

    fn frame_error(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
