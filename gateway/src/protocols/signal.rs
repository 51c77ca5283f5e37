//! `/ws/signal`: seed 004's lobby, match and WebRTC signaling frames,
//! JWT-authenticated at connect.

use axum::extract::ws::Message;
use relaymesh_wire::FrameError;
use relaymesh_wire::signal::{self as wire, ClientFrame, code};

use crate::identity::Identity;
use crate::ws::{Ctx, Protocol, close};

pub struct SignalProtocol {
    who: Identity,
}

impl SignalProtocol {
    pub fn new(who: Identity) -> Self {
        Self { who }
    }
}

impl Protocol for SignalProtocol {
    const NAME: &'static str = "signal";

    /// Browsers answer WebSocket pings by themselves.
    fn ping(&self) -> Option<Message> {
        Some(Message::Ping(Default::default()))
    }

    async fn on_open(&mut self, cx: &mut Ctx) {
        let single = cx.gw.config.single_session_per_user;
        if let Err(err) = cx.register(Self::NAME, &self.who.user_id, single).await {
            tracing::warn!(error = %err, "session registry unavailable");
            cx.close(close::INTERNAL, "session registry unavailable");
        }
    }

    async fn on_text(&mut self, cx: &mut Ctx, text: &str) {
        match ClientFrame::parse(text) {
            Err(err) => cx.send(self.frame_error(&err)),
            // Lobby, match and relay arrive with the game-signaling issue.
            Ok(_) => cx.send(wire::error(
                code::UNAVAILABLE,
                "lobby and matches are not available yet",
                None,
            )),
        }
    }

    fn frame_error(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
