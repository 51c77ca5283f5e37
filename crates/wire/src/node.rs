//! NodeRunner hub frames (seed 000):
//! `{version, timestamp, message_id, type, node_id, signature, payload}`.
//!
//! This module gives frames their shape; [`canonical`] and [`signature`]
//! compute and check their HMAC on the raw text, byte for byte as seed 000's
//! Python does, for the auth service and the node agent alike.

pub mod canonical;
pub mod ids;
pub mod payload;
pub mod signature;

pub use canonical::{CanonicalError, CanonicalFrame};
pub use ids::{CommandId, DeviceSerial, NodeId, RunId};
pub use payload::{
    Ack, Command, CommandResult, ErrorCode, ErrorFrame, Heartbeat, Hello, HelloAck, WireEnum, parse_wire_name,
    wire_name,
};
pub use signature::{NodeKey, SignatureError};

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

/// Unix milliseconds of an RFC 3339 timestamp such as the seed's
/// `2025-01-07T14:30:00.000Z`: any number of fraction digits (truncated to
/// milliseconds), `Z` or a `±HH:MM` offset. `None` when malformed.
pub fn parse_rfc3339_ms(s: &str) -> Option<i64> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        let part = b.get(r)?;
        if part.is_empty() || !part.iter().all(u8::is_ascii_digit) {
            return None;
        }
        part.iter()
            .try_fold(0i64, |n, d| n.checked_mul(10)?.checked_add(i64::from(d - b'0')))
    };
    let sep = |i: usize, want: &[u8]| b.get(i).is_some_and(|c| want.contains(c));
    if !(sep(4, b"-") && sep(7, b"-") && sep(10, b"Tt") && sep(13, b":") && sep(16, b":")) {
        return None;
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let leap = year % 4 == 0 && (year % 100 != 0 || year % 400 == 0);
    let month_days = [31, if leap { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    let max_day = *month_days.get(usize::try_from(month.checked_sub(1)?).ok()?)?;
    // Second 60 is a leap second, which RFC 3339 allows.
    if !(1..=max_day).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut i = 19;
    let mut millis = 0;
    if sep(i, b".") {
        let start = i + 1;
        i = start;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return None;
        }
        let mut ms = b[start..i.min(start + 3)]
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0'));
        for _ in (i - start)..3 {
            ms *= 10;
        }
        millis = ms;
    }
    let offset_min = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(&c @ (b'+' | b'-')) if i + 6 == b.len() && sep(i + 3, b":") => {
            let (oh, om) = (num(i + 1..i + 3)?, num(i + 4..i + 6)?);
            if oh > 23 || om > 59 {
                return None;
            }
            let m = oh * 60 + om;
            if c == b'-' { -m } else { m }
        }
        _ => return None,
    };
    // Days-from-civil (Howard Hinnant's algorithm), the inverse of the one
    // in `rfc3339_millis`.
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second - offset_min * 60;
    Some(secs * 1000 + millis)
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

    #[test]
    fn timestamps_parse_back_to_the_same_instant() {
        for ms in [0, 1_736_260_200_000, 951_782_400_123, 4_102_444_799_999, -86_400_001] {
            assert_eq!(parse_rfc3339_ms(&rfc3339_millis(ms)), Some(ms), "{ms}");
        }
    }

    #[test]
    fn timestamps_accept_rfc3339_variants() {
        let seed = Some(1_736_260_200_000);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00Z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07t14:30:00.000z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00.000999Z"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T23:30:00.000+09:00"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:00:00-00:30"), seed);
        assert_eq!(parse_rfc3339_ms("2025-01-07T14:30:00.5Z"), Some(1_736_260_200_500));
    }

    #[test]
    fn malformed_timestamps_are_refused() {
        for bad in [
            "",
            "2025-01-07",
            "2025-01-07T14:30:00",
            "2025-01-07 14:30:00Z",
            "2025-13-07T14:30:00Z",
            "2025-02-29T14:30:00Z",
            "2025-01-07T24:30:00Z",
            "2025-01-07T14:30:00.Z",
            "2025-01-07T14:30:00Zjunk",
            "2025-01-07T14:30:00+0900",
            "+025-01-07T14:30:00Z",
            "2025-01-07T14:30:00.000노",
        ] {
            assert_eq!(parse_rfc3339_ms(bad), None, "{bad:?}");
        }
    }
}
