//! The one place that signs the agent's outbound frames and checks inbound
//! ones. The payload types are the hub's own (`relaymesh_wire::node::payload`,
//! re-exported here); envelopes, timestamps and the HMAC come from
//! `relaymesh_wire::node` too. Nothing outside this module touches frame text.

use serde::Serialize;

use relaymesh_wire::node::signature::{self, SignatureError};
use relaymesh_wire::node::{Envelope, FrameType, NodeKey, OutFrame};

pub use relaymesh_proto::scheduler::v1::{CommandType, NodeStatus, ResultStatus};
pub use relaymesh_wire::node::payload::{
    Ack, Command, CommandResult, ErrorCode, ErrorFrame, Heartbeat, Hello, HelloAck,
};

use crate::ids::{CommandId, NodeId};

/// Why an outbound frame could not be signed (only if our own JSON were
/// malformed, which would be a bug).
#[derive(Debug, thiserror::Error)]
#[error("cannot sign {kind:?} frame: {source}")]
pub struct SignError {
    kind: FrameType,
    #[source]
    source: SignatureError,
}

/// An inbound frame whose envelope parsed, with the outcome of its
/// signature check kept beside it so each handler decides what a bad
/// signature means for its type.
#[derive(Debug)]
pub struct Inbound {
    pub envelope: Envelope,
    pub signature: Result<(), SignatureError>,
}

impl Inbound {
    /// The payload as `T`; a missing payload reads as `{}`.
    pub fn payload<T: serde::de::DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_str(self.envelope.payload.as_deref().unwrap_or("{}"))
    }

    pub fn message_id(&self) -> Option<&str> {
        self.envelope.message_id.as_deref()
    }
}

/// Signs what the agent sends and checks what it receives, with one key.
#[derive(Debug, Clone)]
pub struct FrameCodec {
    node_id: NodeId,
    key: NodeKey,
}

impl FrameCodec {
    pub fn new(node_id: NodeId, key: NodeKey) -> Self {
        Self { node_id, key }
    }

    pub fn node_id(&self) -> &NodeId {
        &self.node_id
    }

    /// A signed frame of `kind` carrying `payload`, with a fresh
    /// `message_id` and `timestamp` (so a resent RESULT is never a replay).
    pub fn encode<P: Serialize>(&self, kind: FrameType, payload: &P) -> Result<String, SignError> {
        let text = OutFrame::new(kind, self.node_id.as_str(), payload).to_text();
        signature::signed_frame(&text, &self.key).map_err(|source| SignError { kind, source })
    }

    /// A signed ERROR frame; `command_id` when it is about a command.
    pub fn error(
        &self,
        code: ErrorCode,
        message: &str,
        ref_message_id: Option<&str>,
        command_id: Option<&CommandId>,
    ) -> Result<String, SignError> {
        self.encode(
            FrameType::Error,
            &ErrorFrame {
                code,
                message: message.to_owned(),
                ref_message_id: ref_message_id.map(str::to_owned),
                command_id: command_id.cloned(),
            },
        )
    }

    /// Parses an inbound frame's envelope and checks its signature.
    pub fn decode(&self, text: &str) -> Result<Inbound, relaymesh_wire::FrameError> {
        let envelope = Envelope::parse(text)?;
        let signature = signature::verify(text, &self.key);
        Ok(Inbound { envelope, signature })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn codec() -> FrameCodec {
        FrameCodec::new(NodeId::from("node-A1"), NodeKey::from_secret("c2VjcmV0"))
    }

    #[test]
    fn encoded_frames_verify_with_the_same_key() {
        let c = codec();
        let text = c
            .encode(
                FrameType::Heartbeat,
                &Heartbeat {
                    status: NodeStatus::Ready,
                    free_slots: 20,
                    running: vec![],
                },
            )
            .unwrap();
        let inbound = c.decode(&text).unwrap();
        assert!(inbound.signature.is_ok());
        assert_eq!(inbound.envelope.kind, FrameType::Heartbeat);
        assert_eq!(inbound.envelope.node_id.as_deref(), Some("node-A1"));
        let hb: Heartbeat = inbound.payload().unwrap();
        assert_eq!(hb.status, NodeStatus::Ready);
    }

    #[test]
    fn frames_signed_with_another_key_are_flagged() {
        let other = FrameCodec::new(NodeId::from("node-A1"), NodeKey::from_secret("other"));
        let text = other.error(ErrorCode::DeviceBusy, "busy", None, None).unwrap();
        assert!(codec().decode(&text).unwrap().signature.is_err());
    }
}
