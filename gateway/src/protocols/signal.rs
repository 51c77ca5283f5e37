//! `/ws/signal`: seed 004's lobby, match and WebRTC signaling frames,
//! JWT-authenticated at connect.

use axum::extract::ws::{Message, Utf8Bytes};
use relaymesh_proto::client::v1::{ClientProtocol, CloseCode};
use relaymesh_wire::FrameError;
use relaymesh_wire::signal::{self as wire, ClientFrame, code};

use super::{Ctx, Protocol};
use crate::identity::Identity;
use crate::ws::WsCodec;

pub struct SignalProtocol {
    who: Identity,
}

impl SignalProtocol {
    pub fn new(who: Identity) -> Self {
        Self { who }
    }
}

impl Protocol for SignalProtocol {
    const NAME: ClientProtocol = ClientProtocol::Signal;
    type Request = ClientFrame;
    type Event = String;

    async fn on_open(&mut self, cx: &mut Ctx<String>) {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &self.who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.close(CloseCode::InternalError, "session registry unavailable");
        }
    }

    async fn on_request(&mut self, cx: &mut Ctx<String>, _frame: ClientFrame) {
        // Lobby, match and relay arrive with the game-signaling issue.
        cx.send(wire::error(
            code::UNAVAILABLE,
            "lobby and matches are not available yet",
            None,
        ));
    }
}

impl WsCodec for SignalProtocol {
    fn parse(&self, text: &str) -> Result<ClientFrame, String> {
        ClientFrame::parse(text).map_err(|err| wire::frame_error(&err))
    }

    fn render(event: &String) -> Option<Utf8Bytes> {
        Some(Utf8Bytes::from(event.as_str()))
    }

    fn refused(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }

    /// Browsers answer WebSocket pings by themselves.
    fn ping(&self) -> Option<Message> {
        Some(Message::Ping(Default::default()))
    }
}
