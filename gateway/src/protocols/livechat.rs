//! LiveChat (seed 003): typed requests to the channel service, typed events
//! back. Its JSON form is `relaymesh_wire::livechat`.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use relaymesh_proto::channel::v1::{
    Caller, CreateChannelRequest, DeleteChannelRequest, DropSessionRequest, ErrorReason, JoinChannelRequest,
    LeaveChannelRequest, ReleaseFloorRequest, RequestFloorRequest, SendMessageRequest, UpdateChannelRequest,
};
use relaymesh_proto::client::v1::{
    self as client, ChannelRef, ClientProtocol, CloseCode, Joined, LivechatErrorCode, LivechatRequest,
    LivechatResponse, MessageSent, ack, livechat_request::Request, livechat_response::Event,
};
use relaymesh_rpc::unary;
use relaymesh_wire::FrameError;
use relaymesh_wire::livechat as wire;
use tonic::Status;

use super::{Ctx, Ended, Protocol};
use crate::Shared;
use crate::identity::{self, AuthFailure, Identity};
use crate::ws::WsCodec;

#[derive(Debug, Default)]
pub struct LivechatProtocol {
    user_id: Option<String>,
}

impl LivechatProtocol {
    /// A session identified before it opened (a gRPC stream with a bearer
    /// token): READY follows HELLO without an IDENTIFY.
    pub fn identified(who: Identity) -> Self {
        Self {
            user_id: Some(who.user_id),
        }
    }
}

/// The seed's error code for a channel service refusal: one table.
pub fn error_code(status: &Status) -> LivechatErrorCode {
    use LivechatErrorCode as C;
    match relaymesh_rpc::reason_of::<ErrorReason>(status) {
        Some(ErrorReason::ChannelNotFound) => C::ChannelNotFound,
        Some(ErrorReason::ChannelFull) => C::ChannelFull,
        Some(ErrorReason::NotAllowed) => C::NotAllowed,
        Some(ErrorReason::AlreadyJoined) => C::AlreadyJoined,
        Some(ErrorReason::NotJoined) => C::NotJoined,
        Some(ErrorReason::EmptyMessage) => C::EmptyMessage,
        Some(ErrorReason::MessageTooLong) => C::MessageTooLong,
        Some(ErrorReason::NotMember) => C::NotMember,
        Some(ErrorReason::FloorBusy) => C::FloorBusy,
        Some(ErrorReason::NoFloorControl) => C::NoFloorControl,
        Some(ErrorReason::SsrcInUse) => C::SsrcInUse,
        Some(ErrorReason::ChannelExists) => C::ChannelExists,
        Some(ErrorReason::InvalidArgument) => C::InvalidPayload,
        Some(ErrorReason::RateLimited) => C::RateLimited,
        Some(ErrorReason::Unavailable | ErrorReason::Unspecified) | None => C::Internal,
    }
}

/// ACK with `result`, or the seed's ERROR for the service's refusal.
fn answer(request_op: client::RequestOp, nonce: Option<String>, r: Result<ack::Result, Status>) -> LivechatResponse {
    match r {
        Ok(result) => wire::ack(request_op, nonce, Some(result)),
        Err(status) => {
            let mut event = wire::error(error_code(&status), status.message(), nonce.as_deref());
            // The channel's fan-out cap says when to retry.
            if let Some(Event::Error(e)) = &mut event.event {
                e.retry_after_ms = relaymesh_rpc::metadata_of(&status, "retry_after_ms").and_then(|ms| ms.parse().ok());
            }
            event
        }
    }
}

impl LivechatProtocol {
    /// Turns one channel, chat or floor request into its RPC and answer.
    async fn channel_op(
        &self,
        cx: &Ctx<LivechatResponse>,
        user_id: &str,
        nonce: Option<String>,
        req: Request,
    ) -> LivechatResponse {
        let channel = &cx.gw.upstreams.channel;
        let caller = Some(Caller {
            session_id: cx.id.to_string(),
            user_id: user_id.to_owned(),
        });
        let op = wire::request_op(&req);
        let result = match req {
            Request::ChannelCreate(f) => {
                let req = CreateChannelRequest {
                    caller,
                    channel_id: f.channel_id,
                    name: f.name,
                    capacity: f.capacity.unwrap_or(0),
                    floor_policy: f.floor,
                    max_talk_ms: f.max_talk_ms.unwrap_or(0),
                };
                let r = unary!(channel, create_channel, req).await;
                r.map(|r| ack::Result::Channel(r.into_inner().channel.unwrap_or_default()))
            }
            Request::ChannelJoin(f) => {
                let channel_id = f.channel_id.clone();
                let req = JoinChannelRequest {
                    caller,
                    channel_id: f.channel_id,
                    ssrc: f.ssrc,
                };
                unary!(channel, join_channel, req).await.map(|r| {
                    let r = r.into_inner();
                    ack::Result::Joined(Joined {
                        channel_id,
                        active_members: r.active_members,
                        media_addr: r.media_addr,
                    })
                })
            }
            Request::ChannelLeave(f) => {
                let req = LeaveChannelRequest {
                    caller,
                    channel_id: f.channel_id.clone(),
                };
                let r = unary!(channel, leave_channel, req).await;
                r.map(|_| {
                    ack::Result::ChannelRef(ChannelRef {
                        channel_id: f.channel_id,
                    })
                })
            }
            Request::ChannelUpdate(f) => {
                let req = UpdateChannelRequest {
                    caller,
                    channel_id: f.channel_id,
                    name: f.name,
                };
                let r = unary!(channel, update_channel, req).await;
                r.map(|r| ack::Result::Channel(r.into_inner().channel.unwrap_or_default()))
            }
            Request::ChannelDelete(f) => {
                let req = DeleteChannelRequest {
                    caller,
                    channel_id: f.channel_id.clone(),
                };
                let r = unary!(channel, delete_channel, req).await;
                r.map(|_| {
                    ack::Result::ChannelRef(ChannelRef {
                        channel_id: f.channel_id,
                    })
                })
            }
            Request::MessageCreate(f) => {
                let req = SendMessageRequest {
                    caller,
                    channel_id: f.channel_id.clone(),
                    content: f.content,
                };
                unary!(channel, send_message, req).await.map(|r| {
                    ack::Result::MessageSent(MessageSent {
                        channel_id: f.channel_id,
                        message_id: r.into_inner().message_id,
                    })
                })
            }
            Request::FloorRequest(f) => {
                let req = RequestFloorRequest {
                    caller,
                    channel_id: f.channel_id,
                };
                let r = unary!(channel, request_floor, req).await;
                r.map(|r| ack::Result::Floor(r.into_inner().floor.unwrap_or_default()))
            }
            Request::FloorRelease(f) => {
                let req = ReleaseFloorRequest {
                    caller,
                    channel_id: f.channel_id,
                };
                let r = unary!(channel, release_floor, req).await;
                r.map(|r| ack::Result::Floor(r.into_inner().floor.unwrap_or_default()))
            }
            Request::Heartbeat(_) | Request::Identify(_) => {
                return wire::error(
                    LivechatErrorCode::InvalidOp,
                    "not a channel operation",
                    nonce.as_deref(),
                );
            }
        };
        answer(op, nonce, result)
    }

    async fn identify(&mut self, cx: &mut Ctx<LivechatResponse>, nonce: Option<String>, f: client::Identify) {
        let nonce = nonce.as_deref();
        if self.user_id.is_some() {
            cx.send(wire::error(LivechatErrorCode::InvalidOp, "already identified", nonce));
            return;
        }
        let who = match identity::verify(&cx.gw, Some(&f.token)).await {
            Ok(who) if who.user_id == f.user_id => who,
            Ok(_) => {
                cx.send(wire::error(
                    LivechatErrorCode::InvalidToken,
                    "token is not for this user_id",
                    nonce,
                ));
                cx.close(CloseCode::AuthFailed, "invalid token");
                return;
            }
            Err(AuthFailure::Unavailable) => {
                cx.send(wire::error(
                    LivechatErrorCode::Internal,
                    "auth unavailable, retry",
                    nonce,
                ));
                return;
            }
            Err(fail) => {
                cx.send(wire::error(LivechatErrorCode::InvalidToken, fail.to_string(), nonce));
                cx.close(CloseCode::AuthFailed, fail.to_string());
                return;
            }
        };
        if self.ready(cx, &who.user_id, nonce).await {
            self.user_id = Some(who.user_id);
        }
    }

    /// Registers the session and sends READY; false (with an ERROR) when the
    /// registry cannot be reached.
    async fn ready(&self, cx: &mut Ctx<LivechatResponse>, user_id: &str, nonce: Option<&str>) -> bool {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.send(wire::error(
                LivechatErrorCode::Internal,
                "session registry unavailable",
                nonce,
            ));
            return false;
        }
        cx.send(wire::event(Event::Ready(client::Ready {
            session_id: cx.id.to_string(),
            user_id: user_id.to_owned(),
            nonce: nonce.map(str::to_owned),
        })));
        true
    }
}

impl Protocol for LivechatProtocol {
    const NAME: ClientProtocol = ClientProtocol::Livechat;
    type Request = LivechatRequest;
    type Event = LivechatResponse;

    fn op_name(req: &LivechatRequest) -> &'static str {
        req.request.as_ref().map_or("EMPTY", |r| {
            let name = wire::request_op(r).as_str_name();
            name.strip_prefix("REQUEST_OP_").unwrap_or(name)
        })
    }

    async fn on_open(&mut self, cx: &mut Ctx<LivechatResponse>) {
        cx.send(wire::event(Event::Hello(client::Hello {
            heartbeat_interval: cx.gw.config.heartbeat_interval_ms,
        })));
        // Identified before it opened (gRPC bearer metadata): READY at once.
        if let Some(user_id) = self.user_id.clone()
            && !self.ready(cx, &user_id, None).await
        {
            cx.close(CloseCode::InternalError, "session registry unavailable");
        }
    }

    async fn on_request(&mut self, cx: &mut Ctx<LivechatResponse>, req: LivechatRequest) {
        let nonce = req.nonce;
        let Some(request) = req.request else {
            return cx.send(wire::error(
                LivechatErrorCode::InvalidOp,
                "empty request",
                nonce.as_deref(),
            ));
        };
        match request {
            Request::Heartbeat(_) => cx.send(wire::event(Event::HeartbeatAck(client::HeartbeatAck { nonce }))),
            Request::Identify(f) => self.identify(cx, nonce, f).await,
            _ if self.user_id.is_none() => cx.send(wire::error(
                LivechatErrorCode::NotIdentified,
                "send IDENTIFY first",
                nonce.as_deref(),
            )),
            other => {
                let user_id = self.user_id.clone().unwrap_or_default();
                let answer = self.channel_op(cx, &user_id, nonce, other).await;
                cx.send(answer);
            }
        }
    }

    async fn on_rate_limited(&mut self, cx: &mut Ctx<LivechatResponse>, req: LivechatRequest, retry_after: Duration) {
        cx.send(wire::rate_limited(retry_after, req.nonce.as_deref()));
    }

    /// A closed or zombie session leaves every channel it joined; the other
    /// members get the leave events.
    async fn on_close(&mut self, cx: &mut Ctx<LivechatResponse>) {
        if let Some(user_id) = &self.user_id {
            let ended = Ended {
                connection_id: cx.id.as_str(),
                user_id,
            };
            if let Err(status) = Self::release(&cx.gw, ended).await {
                tracing::warn!(connection_id = %cx.id, error = %status.message(), "channel cleanup failed");
            }
        }
    }

    /// The session leaves every channel it joined, with the normal events.
    async fn release(gw: &Shared, ended: Ended<'_>) -> Result<(), Status> {
        let req = DropSessionRequest {
            session_id: ended.connection_id.to_owned(),
        };
        unary!(gw.upstreams.channel, drop_session, req).await.map(drop)
    }
}

impl WsCodec for LivechatProtocol {
    fn parse(&self, text: &str) -> Result<LivechatRequest, LivechatResponse> {
        wire::parse(text)
    }

    fn render(event: &LivechatResponse) -> Option<Utf8Bytes> {
        wire::render(event).map(Utf8Bytes::from)
    }

    fn refused(&self, err: &FrameError) -> LivechatResponse {
        wire::frame_error(err)
    }
}
