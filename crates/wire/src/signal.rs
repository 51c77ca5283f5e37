//! Game signaling frames (seed 004): `{"type": ..., "payload": {...}}` with
//! camelCase payload fields, as the seed's tables give them.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, payload, raw_object};

/// Numeric error codes of `error` frames.
pub mod code {
    pub const INVALID_MESSAGE: u16 = 4000;
    pub const UNKNOWN_TYPE: u16 = 4001;
    pub const FRAME_TOO_LARGE: u16 = 4002;
    pub const FORBIDDEN: u16 = 4003;
    pub const NOT_FOUND: u16 = 4004;
    pub const INVALID_TRANSITION: u16 = 4009;
    pub const RATE_LIMITED: u16 = 4029;
    pub const INTERNAL: u16 = 5000;
    pub const UNAVAILABLE: u16 = 5003;
}

#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    #[serde(rename = "type")]
    kind: String,
    #[serde(borrow, default)]
    payload: Option<&'a RawValue>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct JoinLobby {
    pub player_id: String,
    pub player_name: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaveLobby {
    pub player_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RequestMatch {
    pub requester_id: String,
    pub target_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceptMatch {
    pub accepter_id: String,
    pub requester_id: String,
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeclineMatch {
    pub decliner_id: String,
    pub requester_id: String,
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CancelMatch {
    pub requester_id: String,
    pub target_id: String,
    pub session_id: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Sdp {
    pub sender_id: String,
    pub receiver_id: String,
    pub sdp: String,
    #[serde(default)]
    pub session_id: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub sender_id: String,
    pub receiver_id: String,
    /// The RTCIceCandidate, kept as JSON text: the server relays it.
    pub candidate: crate::JsonText,
    #[serde(default)]
    pub session_id: Option<String>,
}

/// A client -> server frame.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientFrame {
    JoinLobby(JoinLobby),
    LeaveLobby(LeaveLobby),
    RequestMatch(RequestMatch),
    AcceptMatch(AcceptMatch),
    DeclineMatch(DeclineMatch),
    CancelMatchRequest(CancelMatch),
    SendSdpOffer(Sdp),
    SendSdpAnswer(Sdp),
    SendIceCandidate(IceCandidate),
}

impl ClientFrame {
    pub fn parse(text: &str) -> Result<Self, FrameError> {
        let raw = raw_object(text)?;
        let f: RawFrame<'_> = serde_json::from_str(raw.get()).map_err(|e| FrameError::InvalidPayload {
            kind: "frame".into(),
            why: e.to_string(),
        })?;
        let p = f.payload;
        Ok(match f.kind.as_str() {
            "join_lobby" => Self::JoinLobby(payload(&f.kind, p)?),
            "leave_lobby" => Self::LeaveLobby(payload(&f.kind, p)?),
            "request_match" => Self::RequestMatch(payload(&f.kind, p)?),
            "accept_match" => Self::AcceptMatch(payload(&f.kind, p)?),
            "decline_match" => Self::DeclineMatch(payload(&f.kind, p)?),
            "cancel_match_request" => Self::CancelMatchRequest(payload(&f.kind, p)?),
            "send_sdp_offer" => Self::SendSdpOffer(payload(&f.kind, p)?),
            "send_sdp_answer" => Self::SendSdpAnswer(payload(&f.kind, p)?),
            "send_ice_candidate" => Self::SendIceCandidate(payload(&f.kind, p)?),
            other => return Err(FrameError::UnknownType(other.to_owned())),
        })
    }
}

#[derive(Debug, Serialize)]
pub struct ServerFrame<T: Serialize> {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub payload: T,
}

impl<T: Serialize> ServerFrame<T> {
    pub fn to_text(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ErrorPayload<'a> {
    pub code: u16,
    pub message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub session_id: Option<&'a str>,
}

pub fn error(code: u16, message: &str, session_id: Option<&str>) -> String {
    ServerFrame {
        kind: "error",
        payload: ErrorPayload {
            code,
            message,
            session_id,
        },
    }
    .to_text()
}

pub fn frame_error(err: &FrameError) -> String {
    let c = match err {
        FrameError::UnknownType(_) => code::UNKNOWN_TYPE,
        FrameError::TooLarge { .. } => code::FRAME_TOO_LARGE,
        _ => code::INVALID_MESSAGE,
    };
    error(c, &err.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_type_of_the_seed() {
        let frames = [
            r#"{"type":"join_lobby","payload":{"playerId":"p1","playerName":"Ryu"}}"#,
            r#"{"type":"leave_lobby","payload":{"playerId":"p1"}}"#,
            r#"{"type":"request_match","payload":{"requesterId":"p1","targetId":"p2"}}"#,
            r#"{"type":"accept_match","payload":{"accepterId":"p2","requesterId":"p1"}}"#,
            r#"{"type":"decline_match","payload":{"declinerId":"p2","requesterId":"p1"}}"#,
            r#"{"type":"send_sdp_offer","payload":{"senderId":"p1","receiverId":"p2","sdp":"v=0"}}"#,
            r#"{"type":"send_sdp_answer","payload":{"senderId":"p2","receiverId":"p1","sdp":"v=0"}}"#,
            r#"{"type":"send_ice_candidate","payload":{"senderId":"p1","receiverId":"p2","candidate":{"candidate":"c","sdpMid":"0"}}}"#,
            r#"{"type":"cancel_match_request","payload":{"requesterId":"p1","targetId":"p2","sessionId":"s"}}"#,
        ];
        for f in frames {
            assert!(ClientFrame::parse(f).is_ok(), "{f}");
        }
    }

    #[test]
    fn wrong_field_types_are_invalid_payloads() {
        assert!(matches!(
            ClientFrame::parse(r#"{"type":"join_lobby","payload":{"playerId":7,"playerName":"x"}}"#),
            Err(FrameError::InvalidPayload { .. })
        ));
    }
}
