//! NodeRunner hub frames (seed 000):
//! `{version, timestamp, message_id, type, node_id, signature, payload}`.
//!
//! This module gives frames their shape; `relaymesh-node-signature`
//! ([`canonical`], [`signature`]) computes and checks their HMAC on the raw
//! text, byte for byte as seed 000's Python does, for the auth service and
//! the node agent alike.

pub mod ids;
pub mod payload;

pub use ids::{CommandId, DeviceSerial, NodeId, RunId};
pub use payload::{
    Ack, Command, CommandResult, ErrorCode, ErrorFrame, Heartbeat, Hello, HelloAck, WireEnum, parse_wire_name,
    wire_name,
};
pub use relaymesh_node_signature::{
    CanonicalError, CanonicalFrame, parse_rfc3339_ms, rfc3339_millis, rfc3339_millis_now,
};
pub use relaymesh_node_signature::{NodeKey, SignatureError};
pub use relaymesh_node_signature::{canonical, signature, timestamp};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, frame_object};

pub const PROTOCOL_VERSION: &str = "1.0";

/// The eight frame types of the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FrameType {
    Hello,
    HelloAck,
    Heartbeat,
    HeartbeatAck,
    Command,
    Result,
    Ack,
    Error,
}

impl FrameType {
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "HELLO" => Self::Hello,
            "HELLO_ACK" => Self::HelloAck,
            "HEARTBEAT" => Self::Heartbeat,
            "HEARTBEAT_ACK" => Self::HeartbeatAck,
            "COMMAND" => Self::Command,
            "RESULT" => Self::Result,
            "ACK" => Self::Ack,
            "ERROR" => Self::Error,
            _ => return None,
        })
    }
}

#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    #[serde(default)]
    version: Option<String>,
    #[serde(default)]
    timestamp: Option<String>,
    #[serde(default)]
    message_id: Option<String>,
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    node_id: Option<String>,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

/// The envelope of an inbound frame; the payload stays text until the
/// handler of its type parses it.
#[derive(Debug, Clone, PartialEq)]
pub struct Envelope {
    pub version: Option<String>,
    pub timestamp: Option<String>,
    pub message_id: Option<String>,
    pub kind: FrameType,
    pub node_id: Option<String>,
    pub payload: Option<String>,
}

impl Envelope {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let f: RawFrame<'_> = frame_object(text)?;
        let kind = FrameType::parse(&f.kind).ok_or_else(|| FrameError::UnknownType(f.kind.clone()))?;
        Ok(Self {
            version: f.version,
            timestamp: f.timestamp,
            message_id: f.message_id,
            kind,
            node_id: f.node_id,
            payload: f.payload.map(|p| p.get().to_owned()),
        })
    }
}

/// An outbound frame before signing.
#[derive(Debug, Serialize)]
pub struct OutFrame<'a, P: Serialize> {
    pub version: &'static str,
    pub timestamp: String,
    pub message_id: String,
    #[serde(rename = "type")]
    pub kind: FrameType,
    pub node_id: &'a str,
    pub payload: P,
}

impl<'a, P: Serialize> OutFrame<'a, P> {
    pub fn new(kind: FrameType, node_id: &'a str, payload: P) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            timestamp: rfc3339_millis_now(),
            message_id: uuid::Uuid::new_v4().to_string(),
            kind,
            node_id,
            payload,
        }
    }

    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// An unsigned `ERROR` frame.
pub fn error(node_id: &str, payload: &ErrorFrame) -> String {
    OutFrame::new(FrameType::Error, node_id, payload).to_text()
}

pub fn frame_error(err: &FrameError) -> String {
    let code = match err {
        FrameError::UnknownType(_) => ErrorCode::UnknownType,
        FrameError::TooLarge { .. } => ErrorCode::FrameTooLarge,
        _ => ErrorCode::InvalidFrame,
    };
    let payload = ErrorFrame {
        code,
        message: err.to_string(),
        ..ErrorFrame::default()
    };
    error("hub", &payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_frame() {
        let f = Envelope::parse(
            r#"{"version":"1.0","timestamp":"2025-01-07T14:30:00.000Z","message_id":"550e8400-e29b-41d4-a716-446655440000","type":"HELLO","node_id":"node_runner_001","signature":"a1b2","payload":{"devices":[]}}"#,
        )
        .unwrap();
        assert_eq!(f.kind, FrameType::Hello);
        assert_eq!(f.node_id.as_deref(), Some("node_runner_001"));
        assert_eq!(f.payload.as_deref(), Some(r#"{"devices":[]}"#));
    }

    #[test]
    fn unknown_types_are_refused_by_name() {
        assert_eq!(
            Envelope::parse(r#"{"type":"REBOOT"}"#).unwrap_err(),
            FrameError::UnknownType("REBOOT".into())
        );
    }
}
