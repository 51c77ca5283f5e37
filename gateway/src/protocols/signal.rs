//! `/ws/signal`: seed 004's lobby, match and WebRTC signaling, JWT-
//! authenticated at connect. Typed requests become calls on the match
//! service (lobby, state machine) and the signaling service (SDP/ICE
//! relay); their refusals become `error` events through one table
//! ([`error_code`]). Its JSON and MessagePack forms are
//! `relaymesh_wire::signal`.

use std::time::Duration;

use axum::extract::ws::{Message, Utf8Bytes};
use bytes::Bytes;
use relaymesh_proto::client::v1::{
    ClientProtocol, CloseCode, LobbyJoined, SignalErrorCode, SignalRequest, SignalResponse, signal_request::Request,
    signal_response::Event,
};
use relaymesh_proto::r#match::v1::{
    AcceptMatchRequest, CancelMatchRequest, DeclineMatchRequest, ErrorReason, JoinLobbyRequest, LeaveLobbyRequest,
    ReportConnectionRequest, RequestMatchRequest,
};
use relaymesh_proto::signaling::v1::{RelaySignalRequest, relay_signal_request::Body};
use relaymesh_rpc::unary;
use relaymesh_wire::FrameError;
use relaymesh_wire::signal as wire;
use tonic::{Code, Status};

use super::{Ctx, Ended, Protocol};
use crate::Shared;
use crate::identity::Identity;
use crate::ws::WsCodec;

pub struct SignalProtocol {
    who: Identity,
    /// Whether this connection joined the lobby (leaves it on close).
    joined: bool,
}

impl SignalProtocol {
    pub fn new(who: Identity) -> Self {
        Self { who, joined: false }
    }
}

/// The seed's error code for a match or signaling refusal: one table.
pub fn error_code(status: &Status) -> SignalErrorCode {
    use SignalErrorCode as C;
    match relaymesh_rpc::reason_of::<ErrorReason>(status) {
        Some(ErrorReason::InvalidArgument) => C::InvalidMessage,
        Some(ErrorReason::NotInLobby) => C::NotInLobby,
        Some(ErrorReason::PlayerNotFound) => C::PlayerNotFound,
        Some(ErrorReason::SessionNotFound) => C::SessionNotFound,
        Some(ErrorReason::PlayerBusy) => C::PlayerBusy,
        Some(ErrorReason::SelfMatch) => C::SelfMatch,
        Some(ErrorReason::NotTarget) => C::NotTarget,
        Some(ErrorReason::NotRequester) => C::NotRequester,
        Some(ErrorReason::NotAPlayer) => C::NotAPlayer,
        Some(ErrorReason::InvalidTransition) => C::InvalidTransition,
        Some(ErrorReason::MatchClosed) => C::MatchClosed,
        Some(ErrorReason::Unavailable) => C::Unavailable,
        Some(ErrorReason::Unspecified) | None => match status.code() {
            Code::InvalidArgument => C::InvalidMessage,
            Code::Unavailable | Code::DeadlineExceeded | Code::Unimplemented => C::Unavailable,
            _ => C::Internal,
        },
    }
}

/// The `error` event for a refusal, naming the session the service named
/// (or the one the frame named).
fn refused(status: &Status, session_id: Option<String>) -> SignalResponse {
    let session_id = relaymesh_rpc::metadata_of(status, "session_id").or(session_id);
    wire::error(error_code(status), status.message(), session_id)
}

/// The player a frame names as its sender.
fn sender_of(req: &Request) -> &str {
    match req {
        Request::JoinLobby(r) => &r.player_id,
        Request::LeaveLobby(r) => &r.player_id,
        Request::RequestMatch(r) => &r.requester_id,
        Request::AcceptMatch(r) => &r.accepter_id,
        Request::DeclineMatch(r) => &r.decliner_id,
        Request::SendSdpOffer(r) | Request::SendSdpAnswer(r) => &r.sender_id,
        Request::SendIceCandidate(r) => &r.sender_id,
        Request::CancelMatchRequest(r) => &r.requester_id,
        Request::ReportConnection(r) => &r.player_id,
    }
}

/// The session a frame names, for its error event.
fn session_of(req: &Request) -> Option<String> {
    match req {
        Request::AcceptMatch(r) => r.session_id.clone(),
        Request::DeclineMatch(r) => r.session_id.clone(),
        Request::SendSdpOffer(r) | Request::SendSdpAnswer(r) => r.session_id.clone(),
        Request::SendIceCandidate(r) => r.session_id.clone(),
        Request::CancelMatchRequest(r) => Some(r.session_id.clone()),
        Request::ReportConnection(r) => Some(r.session_id.clone()),
        Request::JoinLobby(_) | Request::LeaveLobby(_) | Request::RequestMatch(_) => None,
    }
}

impl SignalProtocol {
    /// Performs one request; Ok carries the answer event, if it has one.
    async fn perform(&mut self, cx: &Ctx<SignalResponse>, req: Request) -> Result<Option<Event>, Status> {
        let matches = &cx.gw.upstreams.r#match;
        let relay = |session_id: Option<String>, sender_id: String, receiver_id: String, body: Body| {
            let signaling = &cx.gw.upstreams.signaling;
            let req = RelaySignalRequest {
                session_id: session_id.unwrap_or_default(),
                sender_id,
                receiver_id,
                body: Some(body),
            };
            async move { unary!(signaling, relay_signal, req).await.map(|_| None) }
        };
        match req {
            Request::JoinLobby(r) => {
                let req = JoinLobbyRequest {
                    player_id: r.player_id.clone(),
                    player_name: r.player_name,
                    connection_id: cx.id.to_string(),
                };
                let answer = unary!(matches, join_lobby, req).await?.into_inner();
                self.joined = true;
                Ok(Some(Event::LobbyJoined(LobbyJoined {
                    player_id: r.player_id,
                    ice_servers: answer.ice_servers,
                    credentials_expire_at: answer.credentials_expire_at,
                })))
            }
            Request::LeaveLobby(r) => {
                let req = LeaveLobbyRequest {
                    player_id: r.player_id,
                    connection_id: cx.id.to_string(),
                };
                unary!(matches, leave_lobby, req).await?;
                self.joined = false;
                Ok(None)
            }
            Request::RequestMatch(r) => {
                let req = RequestMatchRequest {
                    requester_id: r.requester_id,
                    target_id: r.target_id,
                };
                unary!(matches, request_match, req).await.map(|_| None)
            }
            Request::AcceptMatch(r) => {
                let req = AcceptMatchRequest {
                    player_id: r.accepter_id,
                    requester_id: r.requester_id,
                    session_id: r.session_id,
                };
                unary!(matches, accept_match, req).await.map(|_| None)
            }
            Request::DeclineMatch(r) => {
                let req = DeclineMatchRequest {
                    player_id: r.decliner_id,
                    requester_id: r.requester_id,
                    session_id: r.session_id,
                };
                unary!(matches, decline_match, req).await.map(|_| None)
            }
            Request::CancelMatchRequest(r) => {
                let req = CancelMatchRequest {
                    player_id: r.requester_id,
                    target_id: r.target_id,
                    session_id: r.session_id,
                };
                unary!(matches, cancel_match, req).await.map(|_| None)
            }
            Request::ReportConnection(r) => {
                let req = ReportConnectionRequest {
                    session_id: r.session_id,
                    player_id: r.player_id,
                    connected: r.connected,
                };
                unary!(matches, report_connection, req).await.map(|_| None)
            }
            Request::SendSdpOffer(r) => relay(r.session_id, r.sender_id, r.receiver_id, Body::SdpOffer(r.sdp)).await,
            Request::SendSdpAnswer(r) => relay(r.session_id, r.sender_id, r.receiver_id, Body::SdpAnswer(r.sdp)).await,
            Request::SendIceCandidate(r) => {
                let candidate = r.candidate.unwrap_or_default();
                relay(r.session_id, r.sender_id, r.receiver_id, Body::IceCandidate(candidate)).await
            }
        }
    }
}

impl Protocol for SignalProtocol {
    const NAME: ClientProtocol = ClientProtocol::Signal;
    type Request = SignalRequest;
    type Event = SignalResponse;

    async fn on_open(&mut self, cx: &mut Ctx<SignalResponse>) {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &self.who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.close(CloseCode::InternalError, "session registry unavailable");
        }
    }

    async fn on_request(&mut self, cx: &mut Ctx<SignalResponse>, req: SignalRequest) {
        let Some(req) = req.request else {
            return cx.send(wire::error(SignalErrorCode::InvalidMessage, "empty request", None));
        };
        // A player acts only as themselves.
        if sender_of(&req) != self.who.user_id {
            return cx.send(wire::error(
                SignalErrorCode::Forbidden,
                "the frame names another player than the token's user",
                session_of(&req),
            ));
        }
        let session_id = session_of(&req);
        match self.perform(cx, req).await {
            Ok(Some(answer)) => cx.send(SignalResponse { event: Some(answer) }),
            Ok(None) => {}
            Err(status) => cx.send(refused(&status, session_id)),
        }
    }

    async fn on_rate_limited(&mut self, cx: &mut Ctx<SignalResponse>, req: SignalRequest, retry_after: Duration) {
        let session_id = req.request.as_ref().and_then(session_of);
        cx.send(wire::rate_limited(retry_after, session_id));
    }

    /// A disconnect leaves the lobby: the player's pending request is
    /// cancelled and an open match fails, telling the opponent.
    async fn on_close(&mut self, cx: &mut Ctx<SignalResponse>) {
        if !self.joined {
            return;
        }
        let ended = Ended {
            connection_id: cx.id.as_str(),
            user_id: &self.who.user_id,
        };
        if let Err(status) = Self::release(&cx.gw, ended).await {
            tracing::warn!(connection_id = %cx.id, error = %status.message(), "lobby cleanup failed");
        }
    }

    /// As leaving the lobby: the pending request is cancelled and an open
    /// match fails, telling the opponent.
    async fn release(gw: &Shared, ended: Ended<'_>) -> Result<(), Status> {
        let req = LeaveLobbyRequest {
            player_id: ended.user_id.to_owned(),
            connection_id: ended.connection_id.to_owned(),
        };
        unary!(gw.upstreams.r#match, leave_lobby, req).await.map(drop)
    }
}

impl WsCodec for SignalProtocol {
    fn parse(&self, text: &str) -> Result<SignalRequest, SignalResponse> {
        wire::parse(text)
    }

    fn render(event: &SignalResponse) -> Option<Utf8Bytes> {
        wire::render(event).map(Utf8Bytes::from)
    }

    fn parse_msgpack(&self, bytes: &[u8]) -> Result<SignalRequest, SignalResponse> {
        wire::parse_msgpack(bytes)
    }

    fn render_msgpack(event: &SignalResponse) -> Option<Bytes> {
        wire::render_msgpack(event).map(Bytes::from)
    }

    fn refused(&self, err: &FrameError) -> SignalResponse {
        wire::frame_error(err)
    }

    /// Browsers answer WebSocket pings by themselves.
    fn ping(&self) -> Option<Message> {
        Some(Message::Ping(Default::default()))
    }
}
