//! The payloads of docs/node-protocol.md as typed data, and the one place
//! that signs outbound frames and checks inbound ones.
//!
//! Envelopes, timestamps and the HMAC itself come from
//! `relaymesh_wire::node`; this module only adds the agent's view of each
//! payload. Nothing outside it touches frame text.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use relaymesh_wire::node::signature::{self, SignatureError};
use relaymesh_wire::node::{Envelope, FrameType, NodeKey, OutFrame};

use crate::ids::{CommandId, DeviceSerial, NodeId, RunId};

/// Codes of the `ERROR` frames the agent sends.
pub mod code {
    pub use relaymesh_wire::node::code::{INVALID_FRAME, INVALID_SIGNATURE, UNAVAILABLE};

    /// A COMMAND for a device that is already running one.
    pub const DEVICE_BUSY: &str = "DEVICE_BUSY";
    /// A COMMAND while every slot is taken.
    pub const NO_FREE_SLOT: &str = "NO_FREE_SLOT";
}

/// `HELLO`: node → hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    pub devices: Vec<DeviceSerial>,
    pub slots: u32,
    pub agent_version: String,
}

/// `HELLO_ACK`: hub → node. Seconds may be fractional; a hub that omits
/// the interval leaves the agent's own.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct HelloAck {
    #[serde(default)]
    pub heartbeat_interval_s: Option<f64>,
    #[serde(default)]
    pub devices: Option<u64>,
}

/// Whether the node can take more commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeStatus {
    Ready,
    Busy,
}

/// `HEARTBEAT`: node → hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub status: NodeStatus,
    pub free_slots: u32,
    pub running: Vec<CommandId>,
}

/// The eight command types of seed 000, plus whatever else a hub sends,
/// kept by name so it can be reported as unsupported rather than refused
/// as a malformed frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum CommandType {
    WatchVideo,
    RandomWatch,
    LikeVideo,
    WriteComment,
    SubscribeChannel,
    RestartDevice,
    UpdatePersona,
    SyncState,
    Other(String),
}

impl CommandType {
    pub fn as_str(&self) -> &str {
        match self {
            Self::WatchVideo => "WATCH_VIDEO",
            Self::RandomWatch => "RANDOM_WATCH",
            Self::LikeVideo => "LIKE_VIDEO",
            Self::WriteComment => "WRITE_COMMENT",
            Self::SubscribeChannel => "SUBSCRIBE_CHANNEL",
            Self::RestartDevice => "RESTART_DEVICE",
            Self::UpdatePersona => "UPDATE_PERSONA",
            Self::SyncState => "SYNC_STATE",
            Self::Other(s) => s,
        }
    }
}

impl From<String> for CommandType {
    fn from(s: String) -> Self {
        match s.as_str() {
            "WATCH_VIDEO" => Self::WatchVideo,
            "RANDOM_WATCH" => Self::RandomWatch,
            "LIKE_VIDEO" => Self::LikeVideo,
            "WRITE_COMMENT" => Self::WriteComment,
            "SUBSCRIBE_CHANNEL" => Self::SubscribeChannel,
            "RESTART_DEVICE" => Self::RestartDevice,
            "UPDATE_PERSONA" => Self::UpdatePersona,
            "SYNC_STATE" => Self::SyncState,
            _ => Self::Other(s),
        }
    }
}

impl From<CommandType> for String {
    fn from(t: CommandType) -> Self {
        match t {
            CommandType::Other(s) => s,
            known => known.as_str().to_owned(),
        }
    }
}

impl std::fmt::Display for CommandType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `COMMAND`: hub → node. `params` stay JSON because each driver reads
/// its own typed view of them (see `driver::adb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: CommandId,
    pub run_id: RunId,
    pub device_serial: DeviceSerial,
    pub command_type: CommandType,
    #[serde(default = "empty_object")]
    pub params: Value,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// How a command ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ResultStatus {
    Success,
    Failed,
    Timeout,
}

/// `RESULT`: node → hub.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: CommandId,
    pub run_id: RunId,
    pub device_serial: DeviceSerial,
    pub status: ResultStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Unix milliseconds.
    pub started_at: i64,
    /// Unix milliseconds.
    pub finished_at: i64,
}

/// `ACK`: both directions; the hub's ACK of a RESULT names its command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub ref_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
}

/// `ERROR`: both directions.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_message_id: Option<String>,
}

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

    /// A signed ERROR frame.
    pub fn error(&self, code: &str, message: &str, ref_message_id: Option<&str>) -> Result<String, SignError> {
        self.encode(
            FrameType::Error,
            &ErrorFrame {
                code: code.to_owned(),
                message: message.to_owned(),
                ref_message_id: ref_message_id.map(str::to_owned),
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
        let text = other.error(code::DEVICE_BUSY, "busy", None).unwrap();
        assert!(codec().decode(&text).unwrap().signature.is_err());
    }

    #[test]
    fn command_types_round_trip_and_keep_unknown_names() {
        let cmd: Command = serde_json::from_str(
            r#"{"command_id":"c1","run_id":"r1","device_serial":"S1","command_type":"LIKE_VIDEO","params":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(cmd.command_type, CommandType::LikeVideo);
        assert_eq!(cmd.timeout_ms, None);
        let other: CommandType = serde_json::from_str(r#""DANCE""#).unwrap();
        assert_eq!(other, CommandType::Other("DANCE".into()));
        assert_eq!(
            serde_json::to_string(&CommandType::SyncState).unwrap(),
            r#""SYNC_STATE""#
        );
    }

    #[test]
    fn results_omit_absent_error_and_result() {
        let r = CommandResult {
            command_id: "c1".into(),
            run_id: "r1".into(),
            device_serial: "S1".into(),
            status: ResultStatus::Timeout,
            error: None,
            result: None,
            started_at: 1,
            finished_at: 2,
        };
        assert_eq!(
            serde_json::to_string(&r).unwrap(),
            r#"{"command_id":"c1","run_id":"r1","device_serial":"S1","status":"TIMEOUT","started_at":1,"finished_at":2}"#
        );
    }
}
