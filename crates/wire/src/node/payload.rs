//! The payloads of docs/node-protocol.md, written once for both ends: the
//! hub (gateway) and the node agent serialise and parse these same types.
//!
//! Enumerations are the contract's own (`relaymesh.scheduler.v1`):
//! `CommandType`, `NodeStatus`, `ResultStatus` travel in JSON as their
//! names without the proto prefix (`"WATCH_VIDEO"`, `"READY"`, `"SUCCESS"`),
//! through [`wire_name`]. Fields one end may leave out are `#[serde(default)]`
//! so a lenient reader and a strict writer share one type.

use relaymesh_proto::scheduler::v1::{CommandType, NodeStatus, ResultStatus, TaskState};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::ids::{CommandId, DeviceSerial, RunId};

/// A proto enum whose JSON form is its value name without the prefix.
pub trait WireEnum: Sized + Copy {
    /// The proto value-name prefix, e.g. `COMMAND_TYPE_`.
    const PREFIX: &'static str;
    /// The proto value name, e.g. `COMMAND_TYPE_WATCH_VIDEO`.
    fn proto_name(self) -> &'static str;
    fn from_proto_name(name: &str) -> Option<Self>;
    /// What an unknown name reads as; `None` refuses it.
    fn unknown() -> Option<Self>;
}

macro_rules! wire_enum {
    ($ty:ty, $prefix:literal, $unknown:expr) => {
        impl WireEnum for $ty {
            const PREFIX: &'static str = $prefix;
            fn proto_name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_proto_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
            fn unknown() -> Option<Self> {
                $unknown
            }
        }
    };
}

// An unknown command type is kept as UNSPECIFIED so the node can report it
// as unsupported instead of refusing the frame as malformed.
wire_enum!(CommandType, "COMMAND_TYPE_", Some(CommandType::Unspecified));
wire_enum!(NodeStatus, "NODE_STATUS_", Some(NodeStatus::Unspecified));
wire_enum!(ResultStatus, "RESULT_STATUS_", None);
wire_enum!(TaskState, "TASK_STATE_", None);

/// The JSON name of `e`: `CommandType::WatchVideo` is `"WATCH_VIDEO"`.
pub fn wire_name<E: WireEnum>(e: E) -> &'static str {
    let full = e.proto_name();
    full.strip_prefix(E::PREFIX).unwrap_or(full)
}

/// The value named `name` in JSON; `None` when unknown.
pub fn parse_wire_name<E: WireEnum>(name: &str) -> Option<E> {
    if name.is_empty() || name == "UNSPECIFIED" {
        return None;
    }
    E::from_proto_name(&format!("{}{name}", E::PREFIX))
}

/// `#[serde(with = "wire_enum")]` for a [`WireEnum`] field.
pub mod wire_enum {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::{WireEnum, parse_wire_name, wire_name};

    pub fn serialize<E: WireEnum, S: Serializer>(e: &E, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(wire_name(*e))
    }

    pub fn deserialize<'de, E: WireEnum, D: Deserializer<'de>>(d: D) -> Result<E, D::Error> {
        let name = String::deserialize(d)?;
        parse_wire_name(&name)
            .or_else(E::unknown)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown value {name:?}")))
    }
}

/// `HELLO`: node → hub.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    #[serde(default)]
    pub devices: Vec<DeviceSerial>,
    /// Commands the node runs at once; 0 (absent) leaves it to the hub.
    #[serde(default)]
    pub slots: u32,
    #[serde(default)]
    pub agent_version: String,
}

/// `HELLO_ACK`: hub → node. Seconds may be fractional on the wire; a hub
/// that omits the interval leaves the node's own.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HelloAck {
    #[serde(default, skip_serializing_if = "Option::is_none", with = "seconds")]
    pub heartbeat_interval_s: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<u64>,
}

/// Whole seconds are written as integers (`30`, not `30.0`), as the seed shows.
mod seconds {
    use serde::{Deserialize as _, Deserializer, Serializer};

    #[allow(clippy::ref_option)]
    pub fn serialize<S: Serializer>(v: &Option<f64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            #[allow(clippy::cast_possible_truncation)]
            Some(x) if x.fract() == 0.0 && x.abs() < 4e15 => s.serialize_i64(*x as i64),
            Some(x) => s.serialize_f64(*x),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<f64>, D::Error> {
        Option::<f64>::deserialize(d)
    }
}

/// `HEARTBEAT`: node → hub.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    #[serde(default = "unspecified_status", with = "wire_enum")]
    pub status: NodeStatus,
    #[serde(default)]
    pub free_slots: u32,
    #[serde(default)]
    pub running: Vec<CommandId>,
}

fn unspecified_status() -> NodeStatus {
    NodeStatus::Unspecified
}

/// `COMMAND`: hub → node. `params` stay JSON: each driver reads its own
/// typed view of them (see the node agent's `driver::adb`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub command_id: CommandId,
    pub run_id: RunId,
    pub device_serial: DeviceSerial,
    #[serde(with = "wire_enum")]
    pub command_type: CommandType,
    #[serde(default = "empty_object")]
    pub params: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

fn empty_object() -> Value {
    Value::Object(serde_json::Map::new())
}

/// `RESULT`: node → hub (also the body of the HTTP result callback).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: CommandId,
    #[serde(default)]
    pub run_id: RunId,
    #[serde(default)]
    pub device_serial: DeviceSerial,
    #[serde(with = "wire_enum")]
    pub status: ResultStatus,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Value>,
    /// Unix milliseconds.
    #[serde(default)]
    pub started_at: i64,
    /// Unix milliseconds.
    #[serde(default)]
    pub finished_at: i64,
}

/// `ACK` (and `HEARTBEAT_ACK`): both directions; the hub's ACK of a RESULT
/// names its command.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ack {
    #[serde(default)]
    pub ref_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
}

/// The codes of `ERROR` frames, both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ErrorCode {
    /// Not JSON, not an object, or a payload that does not fit its type.
    InvalidFrame,
    /// A `type` the protocol does not have.
    UnknownType,
    /// Larger than the hub's frame limit.
    FrameTooLarge,
    /// The HMAC does not verify.
    InvalidSignature,
    /// A `message_id` seen before, or a timestamp outside the window.
    Replayed,
    /// A frame other than HELLO before HELLO was accepted.
    NotRegistered,
    /// A service behind the hub (or the node, shutting down) cannot answer now.
    Unavailable,
    /// A COMMAND for a device that is already running one.
    DeviceBusy,
    /// A COMMAND while every slot is taken.
    NoFreeSlot,
    /// Hub to node: too many frames from this socket or node; the frame was
    /// not handled (resend it later). The connection stays open.
    RateLimited,
    /// Anything else; also what an unknown code reads as.
    #[default]
    #[serde(other)]
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidFrame => "INVALID_FRAME",
            Self::UnknownType => "UNKNOWN_TYPE",
            Self::FrameTooLarge => "FRAME_TOO_LARGE",
            Self::InvalidSignature => "INVALID_SIGNATURE",
            Self::Replayed => "REPLAYED",
            Self::NotRegistered => "NOT_REGISTERED",
            Self::Unavailable => "UNAVAILABLE",
            Self::DeviceBusy => "DEVICE_BUSY",
            Self::NoFreeSlot => "NO_FREE_SLOT",
            Self::RateLimited => "RATE_LIMITED",
            Self::Internal => "INTERNAL",
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `ERROR`: both directions. `command_id` is set on every error about a
/// command (a refused COMMAND, a RESULT that could not be recorded).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorFrame {
    #[serde(default)]
    pub code: ErrorCode,
    #[serde(default)]
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ref_message_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_id: Option<CommandId>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_types_travel_by_their_seed_names() {
        let cmd: Command = serde_json::from_str(
            r#"{"command_id":"c1","run_id":"r1","device_serial":"S1","command_type":"LIKE_VIDEO","params":{"x":1}}"#,
        )
        .unwrap();
        assert_eq!(cmd.command_type, CommandType::LikeVideo);
        assert_eq!(cmd.timeout_ms, None);
        let other: Command =
            serde_json::from_str(r#"{"command_id":"c1","run_id":"r1","device_serial":"S1","command_type":"DANCE"}"#)
                .unwrap();
        assert_eq!(
            other.command_type,
            CommandType::Unspecified,
            "kept, reported as unsupported"
        );
        assert_eq!(wire_name(CommandType::SyncState), "SYNC_STATE");
        assert_eq!(parse_wire_name::<CommandType>("UNSPECIFIED"), None);
        assert_eq!(
            parse_wire_name::<CommandType>("WATCH_VIDEO"),
            Some(CommandType::WatchVideo)
        );
    }

    #[test]
    fn results_omit_absent_error_and_result_and_refuse_unknown_statuses() {
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
        assert!(serde_json::from_str::<CommandResult>(r#"{"command_id":"c","status":"MAYBE"}"#).is_err());
    }

    #[test]
    fn hello_ack_writes_whole_seconds_as_integers() {
        let ack = HelloAck {
            heartbeat_interval_s: Some(30.0),
            devices: Some(3),
        };
        assert_eq!(
            serde_json::to_string(&ack).unwrap(),
            r#"{"heartbeat_interval_s":30,"devices":3}"#
        );
        let back: HelloAck = serde_json::from_str(r#"{"heartbeat_interval_s":0.5}"#).unwrap();
        assert_eq!(back.heartbeat_interval_s, Some(0.5));
    }

    #[test]
    fn error_codes_keep_their_names_and_unknown_ones_read_as_internal() {
        let e = ErrorFrame {
            code: ErrorCode::DeviceBusy,
            message: "busy".into(),
            ref_message_id: Some("m1".into()),
            command_id: Some("c1".into()),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"code":"DEVICE_BUSY","message":"busy","ref_message_id":"m1","command_id":"c1"}"#
        );
        let odd: ErrorFrame = serde_json::from_str(r#"{"code":"WHATEVER","message":"m"}"#).unwrap();
        assert_eq!(odd.code, ErrorCode::Internal);
        assert_eq!(serde_json::to_value(ErrorCode::NoFreeSlot).unwrap(), "NO_FREE_SLOT");
    }
}
