//! NodeRunner hub frames (seed 000):
//! `{version, timestamp, message_id, type, node_id, signature, payload}`.
//!
//! Signatures are checked on the raw text by the auth service; this module
//! only gives frames their shape.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, raw_object};

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

/// Error codes carried in hub `ERROR` frames.
pub mod code {
    pub const INVALID_FRAME: &str = "INVALID_FRAME";
    pub const UNKNOWN_TYPE: &str = "UNKNOWN_TYPE";
    pub const FRAME_TOO_LARGE: &str = "FRAME_TOO_LARGE";
    pub const INVALID_SIGNATURE: &str = "INVALID_SIGNATURE";
    pub const REPLAYED: &str = "REPLAYED";
    pub const NOT_REGISTERED: &str = "NOT_REGISTERED";
    pub const UNAVAILABLE: &str = "UNAVAILABLE";
    pub const INTERNAL: &str = "INTERNAL";
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
        let raw = raw_object(text)?;
        let f: RawFrame<'_> = serde_json::from_str(raw.get()).map_err(|e| FrameError::InvalidPayload {
            kind: "frame".into(),
            why: e.to_string(),
        })?;
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

#[derive(Debug, Serialize)]
pub struct ErrorPayload<'a> {
    pub code: &'a str,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ref_message_id: Option<&'a str>,
}

/// An unsigned hub `ERROR` frame.
pub fn error(node_id: &str, code: &str, message: &str, ref_message_id: Option<&str>) -> String {
    OutFrame::new(
        FrameType::Error,
        node_id,
        ErrorPayload {
            code,
            message,
            ref_message_id,
        },
    )
    .to_text()
}

pub fn frame_error(err: &FrameError) -> String {
    let c = match err {
        FrameError::UnknownType(_) => code::UNKNOWN_TYPE,
        FrameError::TooLarge { .. } => code::FRAME_TOO_LARGE,
        _ => code::INVALID_FRAME,
    };
    error("hub", c, &err.to_string(), None)
}

/// `2025-01-07T14:30:00.000Z`, the seed's timestamp format.
pub fn rfc3339_millis_now() -> String {
    let ms = crate::now_ms();
    rfc3339_millis(ms)
}

/// Formats Unix milliseconds as UTC `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub fn rfc3339_millis(ms: i64) -> String {
    let (secs, millis) = (ms.div_euclid(1000), ms.rem_euclid(1000));
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{millis:03}Z",
        sod / 3600,
        (sod % 3600) / 60,
        sod % 60
    )
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

    #[test]
    fn timestamps_match_the_seed_format() {
        assert_eq!(rfc3339_millis(1_736_260_200_000), "2025-01-07T14:30:00.000Z");
        assert_eq!(rfc3339_millis(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339_millis(951_782_400_123), "2000-02-29T00:00:00.123Z");
    }
}
