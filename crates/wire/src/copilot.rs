//! Copilot channel frames (seed 001): `{"type": ..., "requestId"?, "data"?}`.
//!
//! The server calls back into the client (`request_available_data`,
//! `request_api`, `clarification_request`) under a one-time `requestId`;
//! the client answers with the matching frame and the same `requestId`.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, raw_object};

/// Error codes carried in `error` frames.
pub mod code {
    pub const INVALID_MESSAGE: &str = "INVALID_MESSAGE";
    pub const UNKNOWN_TYPE: &str = "UNKNOWN_TYPE";
    pub const FRAME_TOO_LARGE: &str = "FRAME_TOO_LARGE";
    pub const RATE_LIMITED: &str = "RATE_LIMITED";
    pub const UNKNOWN_REQUEST_ID: &str = "UNKNOWN_REQUEST_ID";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL";
}

#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "requestId", default)]
    request_id: Option<String>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
}

/// A client -> server frame. JSON payloads stay text: the gateway forwards
/// them, it does not interpret them.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    Query {
        data: String,
    },
    Ping,
    Pong,
    /// `available_data`, `api_result` or `human_response`.
    CallbackAnswer {
        kind: CallbackAnswer,
        request_id: String,
        data: String,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallbackAnswer {
    AvailableData,
    ApiResult,
    HumanResponse,
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let raw = raw_object(text)?;
        let f: RawFrame<'_> = serde_json::from_str(raw.get()).map_err(|e| FrameError::InvalidPayload {
            kind: "frame".into(),
            why: e.to_string(),
        })?;
        let data = || f.data.map_or_else(|| "null".to_owned(), |d| d.get().to_owned());
        let answer = |kind| match &f.request_id {
            Some(id) if !id.is_empty() => Ok(Self::CallbackAnswer {
                kind,
                request_id: id.clone(),
                data: data(),
            }),
            _ => Err(FrameError::InvalidPayload {
                kind: f.kind.clone(),
                why: "missing requestId".into(),
            }),
        };
        match f.kind.as_str() {
            "query" => Ok(Self::Query { data: data() }),
            "ping" => Ok(Self::Ping),
            "pong" => Ok(Self::Pong),
            "available_data" => answer(CallbackAnswer::AvailableData),
            "api_result" => answer(CallbackAnswer::ApiResult),
            "human_response" => answer(CallbackAnswer::HumanResponse),
            other => Err(FrameError::UnknownType(other.to_owned())),
        }
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Connected<'a> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub user_id: &'a str,
    pub connection_id: &'a str,
    pub heartbeat_interval: u64,
}

pub fn connected(user_id: &str, connection_id: &str, heartbeat_interval_ms: u64) -> String {
    to_text(&Connected {
        kind: "connected",
        user_id,
        connection_id,
        heartbeat_interval: heartbeat_interval_ms,
    })
}

#[derive(Debug, Serialize)]
struct Simple {
    #[serde(rename = "type")]
    kind: &'static str,
    timestamp: i64,
}

pub fn ping() -> String {
    to_text(&Simple {
        kind: "ping",
        timestamp: crate::now_ms(),
    })
}

pub fn pong() -> String {
    to_text(&Simple {
        kind: "pong",
        timestamp: crate::now_ms(),
    })
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'a str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    request_id: Option<&'a str>,
}

pub fn error(code: &str, message: &str, request_id: Option<&str>) -> String {
    to_text(&ErrorFrame {
        kind: "error",
        code,
        message,
        request_id,
    })
}

pub fn frame_error(err: &FrameError) -> String {
    let code = match err {
        FrameError::UnknownType(_) => code::UNKNOWN_TYPE,
        FrameError::TooLarge { .. } => code::FRAME_TOO_LARGE,
        _ => code::INVALID_MESSAGE,
    };
    error(code, &err.to_string(), None)
}

fn to_text<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callback_answers_need_a_request_id() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"available_data","data":[]}"#),
            Err(FrameError::InvalidPayload { .. })
        ));
        assert_eq!(
            ClientFrame::parse(r#"{"type":"api_result","requestId":"r1","data":{"ok":true}}"#).unwrap(),
            ClientFrame::CallbackAnswer {
                kind: CallbackAnswer::ApiResult,
                request_id: "r1".into(),
                data: r#"{"ok":true}"#.into()
            }
        );
    }

    #[test]
    fn unknown_type_gets_its_own_code() {
        let v: serde_json::Value =
            serde_json::from_str(&frame_error(&ClientFrame::parse(r#"{"type":"dance"}"#).unwrap_err())).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "UNKNOWN_TYPE");
    }
}
