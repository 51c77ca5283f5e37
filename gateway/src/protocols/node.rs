//! `/ws/node`: seed 000's NodeRunner hub frames.

use relaymesh_wire::FrameError;
use relaymesh_wire::node::{self as wire, Envelope, code};

use crate::ws::{Ctx, Protocol};

#[derive(Debug, Default)]
pub struct NodeProtocol;

impl Protocol for NodeProtocol {
    const NAME: &'static str = "node";

    async fn on_open(&mut self, _cx: &mut Ctx) {}

    async fn on_text(&mut self, cx: &mut Ctx, text: &str) {
        match Envelope::parse(text) {
            Err(err) => cx.send(self.frame_error(&err)),
            // Registration, heartbeats and commands arrive with the device-farm issue.
            Ok(env) => cx.send(wire::error(
                env.node_id.as_deref().unwrap_or("hub"),
                code::UNAVAILABLE,
                "the device hub is not available yet",
                env.message_id.as_deref(),
            )),
        }
    }

    fn frame_error(&self, err: &FrameError) -> String {
        wire::frame_error(err)
    }
}
