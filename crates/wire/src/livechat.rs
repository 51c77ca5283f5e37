//! LiveChat / push-to-talk frames (seed 003): Discord-style `{op, d}`.
//!
//! Opcode numbers and error codes are the seed's; the floor-control opcodes
//! (30-32 client, 102 server) are ours, in a range the seed leaves free.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, payload, raw_object};

/// Opcodes, as numbers on the wire.
pub mod op {
    pub const HELLO: u16 = 0;
    pub const HEARTBEAT: u16 = 1;
    pub const HEARTBEAT_ACK: u16 = 2;
    pub const IDENTIFY: u16 = 3;
    pub const READY: u16 = 4;
    pub const CHANNEL_CREATE: u16 = 10;
    pub const CHANNEL_JOIN: u16 = 11;
    pub const CHANNEL_LEAVE: u16 = 12;
    pub const CHANNEL_UPDATE: u16 = 13;
    pub const CHANNEL_DELETE: u16 = 14;
    pub const MESSAGE_CREATE: u16 = 20;
    pub const FLOOR_REQUEST: u16 = 30;
    pub const FLOOR_RELEASE: u16 = 31;
    pub const CHANNEL_EVENT: u16 = 100;
    pub const MESSAGE_EVENT: u16 = 101;
    pub const FLOOR_EVENT: u16 = 102;
    pub const ACK: u16 = 200;
    pub const ERROR: u16 = 201;
}

/// Error codes of the seed's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ErrorCode {
    NotIdentified = 1000,
    InvalidToken = 1001,
    InvalidOp = 1003,
    InvalidJson = 1004,
    ChannelNotFound = 2000,
    ChannelFull = 2001,
    NotAllowed = 2002,
    AlreadyJoined = 2003,
    NotJoined = 2004,
    /// Ours: the floor is held by another member (exclusive policy).
    FloorBusy = 2005,
    /// Ours: floor operations in a channel without floor control.
    NoFloorControl = 2006,
    /// Ours: another live member of the relay holds this SSRC.
    SsrcInUse = 2007,
    /// Ours: CHANNEL_CREATE of an id that exists.
    ChannelExists = 2008,
    EmptyMessage = 3000,
    MessageTooLong = 3001,
    NotMember = 3002,
    Internal = 9000,
}

impl ErrorCode {
    pub fn code(self) -> u16 {
        self as u16
    }
}

#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    op: i64,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct Identify {
    pub user_id: String,
    pub token: String,
    /// Echoed in the answer, when present (client request matching).
    #[serde(default)]
    pub nonce: Option<String>,
}

/// Every request frame may carry a `nonce` that its ACK or ERROR echoes.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChannelRef {
    pub channel_id: String,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChannelCreate {
    pub channel_id: String,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub capacity: Option<u32>,
    /// Floor policy: "none" (default, as the seed), "exclusive" or "queue".
    #[serde(default)]
    pub floor: Option<String>,
    /// Longest a floor holder may talk, when lower than the server's limit.
    #[serde(default)]
    pub max_talk_ms: Option<u64>,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChannelJoin {
    pub channel_id: String,
    pub ssrc: u32,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct ChannelUpdate {
    pub channel_id: String,
    pub name: String,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
pub struct MessageCreate {
    pub channel_id: String,
    pub content: String,
    #[serde(default)]
    pub nonce: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Default)]
pub struct Heartbeat {
    #[serde(default)]
    pub nonce: Option<String>,
}

/// A client -> server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Heartbeat(Heartbeat),
    Identify(Identify),
    ChannelCreate(ChannelCreate),
    ChannelJoin(ChannelJoin),
    ChannelLeave(ChannelRef),
    ChannelUpdate(ChannelUpdate),
    ChannelDelete(ChannelRef),
    MessageCreate(MessageCreate),
    FloorRequest(ChannelRef),
    FloorRelease(ChannelRef),
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let raw = raw_object(text)?;
        let frame: RawFrame<'_> = serde_json::from_str(raw.get()).map_err(|e| FrameError::InvalidPayload {
            kind: "frame".into(),
            why: e.to_string(),
        })?;
        let d = frame.d;
        let Ok(code) = u16::try_from(frame.op) else {
            return Err(FrameError::UnknownType(frame.op.to_string()));
        };
        Ok(match code {
            op::HEARTBEAT => Self::Heartbeat(match d {
                // Discord clients send `d: <sequence>`; accept any payload.
                Some(v) if v.get().starts_with('{') => payload("HEARTBEAT", Some(v))?,
                _ => Heartbeat::default(),
            }),
            op::IDENTIFY => Self::Identify(payload("IDENTIFY", d)?),
            op::CHANNEL_CREATE => Self::ChannelCreate(payload("CHANNEL_CREATE", d)?),
            op::CHANNEL_JOIN => Self::ChannelJoin(payload("CHANNEL_JOIN", d)?),
            op::CHANNEL_LEAVE => Self::ChannelLeave(payload("CHANNEL_LEAVE", d)?),
            op::CHANNEL_UPDATE => Self::ChannelUpdate(payload("CHANNEL_UPDATE", d)?),
            op::CHANNEL_DELETE => Self::ChannelDelete(payload("CHANNEL_DELETE", d)?),
            op::MESSAGE_CREATE => Self::MessageCreate(payload("MESSAGE_CREATE", d)?),
            op::FLOOR_REQUEST => Self::FloorRequest(payload("FLOOR_REQUEST", d)?),
            op::FLOOR_RELEASE => Self::FloorRelease(payload("FLOOR_RELEASE", d)?),
            other => return Err(FrameError::UnknownType(other.to_string())),
        })
    }

    /// The client's `nonce`, echoed in the answer.
    pub fn nonce(&self) -> Option<&str> {
        match self {
            Self::Heartbeat(h) => h.nonce.as_deref(),
            Self::Identify(f) => f.nonce.as_deref(),
            Self::ChannelCreate(f) => f.nonce.as_deref(),
            Self::ChannelJoin(f) => f.nonce.as_deref(),
            Self::ChannelUpdate(f) => f.nonce.as_deref(),
            Self::MessageCreate(f) => f.nonce.as_deref(),
            Self::ChannelLeave(f) | Self::ChannelDelete(f) | Self::FloorRequest(f) | Self::FloorRelease(f) => {
                f.nonce.as_deref()
            }
        }
    }
}

/// A server -> client frame: `{"op": <op>, "d": <d>}`.
#[derive(Debug, Serialize)]
pub struct ServerFrame<T: Serialize> {
    pub op: u16,
    pub d: T,
}

impl<T: Serialize> ServerFrame<T> {
    pub fn to_text(&self) -> String {
        // Serializing our own structs cannot fail.
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
pub struct Hello {
    pub heartbeat_interval: u64,
}

#[derive(Debug, Serialize)]
pub struct Ready<'a> {
    pub session_id: &'a str,
    pub user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct ErrorBody<'a> {
    pub code: u16,
    pub reason: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
}

#[derive(Debug, Serialize)]
pub struct NonceOnly<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nonce: Option<&'a str>,
}

/// `{"op":200,"d":{"request_op":…,"nonce":…, …body}}`: the answer to one
/// request, naming the op it answers.
pub fn ack<B: Serialize>(request_op: u16, nonce: Option<&str>, body: B) -> String {
    #[derive(Serialize)]
    struct Ack<'a, B: Serialize> {
        request_op: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
        #[serde(flatten)]
        body: B,
    }
    ServerFrame {
        op: op::ACK,
        d: Ack {
            request_op,
            nonce,
            body,
        },
    }
    .to_text()
}

/// One member as events and acknowledgements show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MemberView {
    pub user_id: String,
    pub session_id: String,
    pub ssrc: u32,
}

/// CHANNEL_EVENT `kind`: "join", "leave", "update" or "delete".
#[derive(Debug, Serialize)]
pub struct ChannelEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub channel_id: &'a str,
    pub user_id: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssrc: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<&'a str>,
}

pub fn channel_event(e: &ChannelEvent<'_>) -> String {
    ServerFrame {
        op: op::CHANNEL_EVENT,
        d: e,
    }
    .to_text()
}

#[derive(Debug, Serialize)]
pub struct MessageEvent<'a> {
    pub channel_id: &'a str,
    pub message_id: &'a str,
    pub user_id: &'a str,
    pub content: &'a str,
    pub timestamp: i64,
}

pub fn message_event(e: &MessageEvent<'_>) -> String {
    ServerFrame {
        op: op::MESSAGE_EVENT,
        d: e,
    }
    .to_text()
}

/// FLOOR_EVENT (ours, op 102): who holds the floor now. `kind` is "granted",
/// "released", "revoked" (max talk time) or "left" (the holder left).
#[derive(Debug, Serialize)]
pub struct FloorEvent<'a> {
    #[serde(rename = "type")]
    pub kind: &'a str,
    pub channel_id: &'a str,
    /// The holder after the change; None when the floor is free.
    pub holder_id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_ssrc: Option<u32>,
    /// Unix ms when the grant ends unless released earlier.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

pub fn floor_event(e: &FloorEvent<'_>) -> String {
    ServerFrame {
        op: op::FLOOR_EVENT,
        d: e,
    }
    .to_text()
}

pub fn hello(heartbeat_interval_ms: u64) -> String {
    ServerFrame {
        op: op::HELLO,
        d: Hello {
            heartbeat_interval: heartbeat_interval_ms,
        },
    }
    .to_text()
}

pub fn heartbeat_ack(nonce: Option<&str>) -> String {
    ServerFrame {
        op: op::HEARTBEAT_ACK,
        d: NonceOnly { nonce },
    }
    .to_text()
}

pub fn error(code: ErrorCode, reason: &str, nonce: Option<&str>) -> String {
    ServerFrame {
        op: op::ERROR,
        d: ErrorBody {
            code: code.code(),
            reason,
            nonce,
        },
    }
    .to_text()
}

/// The seed's code for a frame refused before business logic.
pub fn frame_error(err: &FrameError) -> String {
    frame_error_for(err, None)
}

/// As [`frame_error`], echoing the refused request's `nonce` when the frame
/// was JSON enough to carry one, so the client can match the answer.
pub fn frame_error_for(err: &FrameError, text: Option<&str>) -> String {
    let code = match err {
        FrameError::UnknownType(_) => ErrorCode::InvalidOp,
        _ => ErrorCode::InvalidJson,
    };
    let nonce = text.and_then(nonce_of);
    error(code, &err.to_string(), nonce.as_deref())
}

/// The `d.nonce` of a frame whose other fields may be wrong.
pub fn nonce_of(text: &str) -> Option<String> {
    #[derive(Deserialize)]
    struct D {
        #[serde(default)]
        nonce: Option<serde_json::Value>,
    }
    #[derive(Deserialize)]
    struct F {
        #[serde(default)]
        d: Option<D>,
    }
    match serde_json::from_str::<F>(text).ok()?.d?.nonce? {
        serde_json::Value::String(s) => Some(s),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_seed_example() {
        let f = ClientFrame::parse(r#"{ "op": 11, "d": { "channel_id": "CH_001", "ssrc": 12345 } }"#).unwrap();
        assert_eq!(
            f,
            ClientFrame::ChannelJoin(ChannelJoin {
                channel_id: "CH_001".into(),
                ssrc: 12345,
                nonce: None
            })
        );
    }

    #[test]
    fn unknown_op_and_bad_types_are_told_apart() {
        assert_eq!(
            ClientFrame::parse(r#"{"op":99,"d":{}}"#).unwrap_err(),
            FrameError::UnknownType("99".into())
        );
        assert!(matches!(
            ClientFrame::parse(r#"{"op":11,"d":{"channel_id":"a","ssrc":"x"}}"#),
            Err(FrameError::InvalidPayload { .. })
        ));
        assert!(matches!(
            ClientFrame::parse(r#"{"d":{}}"#),
            Err(FrameError::InvalidPayload { .. })
        ));
    }

    #[test]
    fn error_frames_use_seed_codes() {
        let v: serde_json::Value = serde_json::from_str(&frame_error(&FrameError::UnknownType("7".into()))).unwrap();
        assert_eq!(v["op"], 201);
        assert_eq!(v["d"]["code"], 1003);
        let v: serde_json::Value = serde_json::from_str(&frame_error(&FrameError::NotObject)).unwrap();
        assert_eq!(v["d"]["code"], 1004);
    }

    #[test]
    fn ack_names_the_request_and_flattens_its_body() {
        #[derive(Serialize)]
        struct B {
            message_id: &'static str,
        }
        let v: serde_json::Value =
            serde_json::from_str(&ack(op::MESSAGE_CREATE, Some("n"), B { message_id: "m1" })).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"op":200,"d":{"request_op":20,"nonce":"n","message_id":"m1"}})
        );
    }

    #[test]
    fn refusals_of_json_frames_echo_their_nonce() {
        let text = r#"{"op":11,"d":{"channel_id":"c","ssrc":"one","nonce":"n9"}}"#;
        let err = ClientFrame::parse(text).unwrap_err();
        let v: serde_json::Value = serde_json::from_str(&frame_error_for(&err, Some(text))).unwrap();
        assert_eq!(
            (v["d"]["code"].as_u64(), v["d"]["nonce"].as_str()),
            (Some(1004), Some("n9"))
        );
        assert_eq!(nonce_of("{broken"), None);
        assert_eq!(nonce_of(r#"{"op":1,"d":{"nonce":7}}"#), None);
    }

    #[test]
    fn nonce_is_echoed() {
        let f = ClientFrame::parse(r#"{"op":1,"d":{"nonce":"n1"}}"#).unwrap();
        assert_eq!(f.nonce(), Some("n1"));
        let v: serde_json::Value = serde_json::from_str(&heartbeat_ack(f.nonce())).unwrap();
        assert_eq!(v["d"]["nonce"], "n1");
        assert!(
            ClientFrame::parse(r#"{"op":1,"d":17}"#).is_ok(),
            "discord-style sequence heartbeat"
        );
    }
}
