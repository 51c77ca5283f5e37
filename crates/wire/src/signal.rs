//! Game signaling frames (seed 004) as JSON: `{"type": ..., "payload":
//! {...}}` with camelCase payload fields, exactly the seed's tables. The one
//! place that turns client JSON into the typed
//! `relaymesh.client.v1.SignalRequest` ([`parse`]) and a typed
//! `SignalResponse` into JSON ([`render`]).
//!
//! The same objects travel as MessagePack maps on `?format=msgpack`
//! connections ([`parse_msgpack`], [`render_msgpack`]): one set of serde
//! types, two encodings.
//!
//! The frames are serde mirrors of the proto messages: `type` is the oneof
//! field's name, `payload` its message. Enums travel as the seed's strings
//! (`"available"`, `"in_match"`), error codes as numbers.

use relaymesh_proto::client::v1::{
    self as proto, MatchFailure, PlayerStatus, SignalErrorCode, SignalRequest, SignalResponse, signal_request::Request,
    signal_response::Event,
};
use serde::{Deserialize, Serialize};

use crate::{FrameError, msgpack_map, raw_object};

/// The frame's type, read before its payload so an unknown type is told
/// apart from a malformed payload.
#[derive(Debug, Deserialize)]
struct Head {
    #[serde(rename = "type")]
    kind: String,
}

const REQUEST_TYPES: &[&str] = &[
    "join_lobby",
    "leave_lobby",
    "request_match",
    "accept_match",
    "decline_match",
    "send_sdp_offer",
    "send_sdp_answer",
    "send_ice_candidate",
    "cancel_match_request",
    "report_connection",
];

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RtcIceCandidate {
    candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    sdp_m_line_index: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    username_fragment: Option<String>,
}

impl From<RtcIceCandidate> for proto::RtcIceCandidate {
    fn from(c: RtcIceCandidate) -> Self {
        Self {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_m_line_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
        }
    }
}

impl From<proto::RtcIceCandidate> for RtcIceCandidate {
    fn from(c: proto::RtcIceCandidate) -> Self {
        Self {
            candidate: c.candidate,
            sdp_mid: c.sdp_mid,
            sdp_m_line_index: c.sdp_m_line_index,
            username_fragment: c.username_fragment,
        }
    }
}

/// A client -> server frame.
#[derive(Debug, Deserialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum ClientFrame {
    #[serde(rename_all = "camelCase")]
    JoinLobby {
        player_id: String,
        player_name: String,
    },
    #[serde(rename_all = "camelCase")]
    LeaveLobby {
        player_id: String,
    },
    #[serde(rename_all = "camelCase")]
    RequestMatch {
        requester_id: String,
        target_id: String,
    },
    #[serde(rename_all = "camelCase")]
    AcceptMatch {
        accepter_id: String,
        requester_id: String,
        #[serde(default)]
        session_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    DeclineMatch {
        decliner_id: String,
        requester_id: String,
        #[serde(default)]
        session_id: Option<String>,
    },
    SendSdpOffer(Sdp),
    SendSdpAnswer(Sdp),
    #[serde(rename_all = "camelCase")]
    SendIceCandidate {
        sender_id: String,
        receiver_id: String,
        candidate: RtcIceCandidate,
        #[serde(default)]
        session_id: Option<String>,
    },
    #[serde(rename_all = "camelCase")]
    CancelMatchRequest {
        requester_id: String,
        target_id: String,
        session_id: String,
    },
    #[serde(rename_all = "camelCase")]
    ReportConnection {
        player_id: String,
        session_id: String,
        connected: bool,
    },
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Sdp {
    sender_id: String,
    receiver_id: String,
    sdp: String,
    #[serde(default)]
    session_id: Option<String>,
}

impl From<Sdp> for proto::SendSdp {
    fn from(s: Sdp) -> Self {
        Self {
            sender_id: s.sender_id,
            receiver_id: s.receiver_id,
            sdp: s.sdp,
            session_id: s.session_id,
        }
    }
}

impl From<ClientFrame> for Request {
    fn from(f: ClientFrame) -> Self {
        use ClientFrame as F;
        match f {
            F::JoinLobby { player_id, player_name } => Self::JoinLobby(proto::JoinLobby { player_id, player_name }),
            F::LeaveLobby { player_id } => Self::LeaveLobby(proto::LeaveLobby { player_id }),
            F::RequestMatch {
                requester_id,
                target_id,
            } => Self::RequestMatch(proto::RequestMatch {
                requester_id,
                target_id,
            }),
            F::AcceptMatch {
                accepter_id,
                requester_id,
                session_id,
            } => Self::AcceptMatch(proto::AcceptMatch {
                accepter_id,
                requester_id,
                session_id,
            }),
            F::DeclineMatch {
                decliner_id,
                requester_id,
                session_id,
            } => Self::DeclineMatch(proto::DeclineMatch {
                decliner_id,
                requester_id,
                session_id,
            }),
            F::SendSdpOffer(s) => Self::SendSdpOffer(s.into()),
            F::SendSdpAnswer(s) => Self::SendSdpAnswer(s.into()),
            F::SendIceCandidate {
                sender_id,
                receiver_id,
                candidate,
                session_id,
            } => Self::SendIceCandidate(proto::SendIceCandidate {
                sender_id,
                receiver_id,
                candidate: Some(candidate.into()),
                session_id,
            }),
            F::CancelMatchRequest {
                requester_id,
                target_id,
                session_id,
            } => Self::CancelMatchRequest(proto::CancelMatchRequest {
                requester_id,
                target_id,
                session_id,
            }),
            F::ReportConnection {
                player_id,
                session_id,
                connected,
            } => Self::ReportConnection(proto::ReportConnection {
                player_id,
                session_id,
                connected,
            }),
        }
    }
}

/// Parses one JSON text frame. A refusal is the `error` event to send back.
pub fn parse(text: &str) -> Result<SignalRequest, SignalResponse> {
    parse_json(text).map_err(|err| frame_error(&err))
}

fn parse_json(text: &str) -> Result<SignalRequest, FrameError> {
    let raw = raw_object(text)?;
    typed(|| serde_json::from_str(raw.get()), || serde_json::from_str(raw.get()))
}

/// Parses one binary frame of a msgpack connection: a MessagePack map with
/// the JSON frame's keys and values. A refusal is the `error` event.
pub fn parse_msgpack(bytes: &[u8]) -> Result<SignalRequest, SignalResponse> {
    parse_map(bytes).map_err(|err| frame_error(&err))
}

fn parse_map(bytes: &[u8]) -> Result<SignalRequest, FrameError> {
    msgpack_map(bytes)?;
    typed(|| rmp_serde::from_slice(bytes), || rmp_serde::from_slice(bytes))
}

/// The typed request of an object, read in two steps whatever its encoding:
/// its `type` first, so an unknown type is told apart from a bad payload.
fn typed<E: std::fmt::Display>(
    head: impl FnOnce() -> Result<Head, E>,
    frame: impl FnOnce() -> Result<ClientFrame, E>,
) -> Result<SignalRequest, FrameError> {
    let head = head().map_err(|e| invalid("frame", &e))?;
    if !REQUEST_TYPES.contains(&head.kind.as_str()) {
        return Err(FrameError::UnknownType(head.kind));
    }
    let frame = frame().map_err(|e| invalid(&head.kind, &e))?;
    Ok(SignalRequest {
        request: Some(frame.into()),
    })
}

fn invalid(kind: &str, e: &dyn std::fmt::Display) -> FrameError {
    FrameError::InvalidPayload {
        kind: kind.to_owned(),
        why: e.to_string(),
    }
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct IceServer<'a> {
    urls: &'a [String],
    #[serde(skip_serializing_if = "str::is_empty")]
    username: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    credential: &'a str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct LobbyPlayer<'a> {
    player_id: &'a str,
    player_name: &'a str,
    status: &'static str,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct Players<'a> {
    players: Vec<LobbyPlayer<'a>>,
}

/// A server -> client frame, borrowing the typed event.
#[derive(Debug, Serialize)]
#[serde(tag = "type", content = "payload", rename_all = "snake_case")]
enum ServerFrame<'a> {
    #[serde(rename_all = "camelCase")]
    LobbyJoined {
        player_id: &'a str,
        ice_servers: Vec<IceServer<'a>>,
        credentials_expire_at: i64,
    },
    LobbyUpdate(Players<'a>),
    #[serde(rename_all = "camelCase")]
    MatchRequestReceived {
        requester_id: &'a str,
        requester_name: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchRequestSent {
        target_id: &'a str,
        target_name: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchRequestAccepted {
        accepter_id: &'a str,
        accepter_name: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchRequestDeclined {
        decliner_id: &'a str,
        decliner_name: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchRequestCancelled {
        requester_id: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchRequestExpired {
        requester_id: &'a str,
        target_id: &'a str,
        session_id: &'a str,
    },
    SdpOfferReceived(SdpOut<'a>),
    SdpAnswerReceived(SdpOut<'a>),
    #[serde(rename_all = "camelCase")]
    IceCandidateReceived {
        sender_id: &'a str,
        candidate: RtcIceCandidate,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchStarted {
        opponent_id: &'a str,
        opponent_name: &'a str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    MatchFailed {
        opponent_id: &'a str,
        reason: &'static str,
        session_id: &'a str,
    },
    #[serde(rename_all = "camelCase")]
    Error {
        code: i32,
        message: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct SdpOut<'a> {
    sender_id: &'a str,
    sdp: &'a str,
    session_id: &'a str,
}

/// The seed's status string.
fn status_name(s: i32) -> &'static str {
    match PlayerStatus::try_from(s) {
        Ok(PlayerStatus::InMatch) => "in_match",
        _ => "available",
    }
}

fn failure_name(r: i32) -> &'static str {
    match MatchFailure::try_from(r) {
        Ok(MatchFailure::Timeout) => "timeout",
        Ok(MatchFailure::OpponentLeft) => "opponent_left",
        Ok(MatchFailure::PeerFailed) => "peer_failed",
        _ => "unspecified",
    }
}

fn sdp_out(s: &proto::SdpReceived) -> SdpOut<'_> {
    SdpOut {
        sender_id: &s.sender_id,
        sdp: &s.sdp,
        session_id: &s.session_id,
    }
}

/// The frame of an event; None for events that are not frames (closing).
fn server_frame(event: &SignalResponse) -> Option<ServerFrame<'_>> {
    use ServerFrame as F;
    Some(match event.event.as_ref()? {
        Event::Closing(_) => return None,
        Event::LobbyJoined(e) => F::LobbyJoined {
            player_id: &e.player_id,
            ice_servers: e
                .ice_servers
                .iter()
                .map(|s| IceServer {
                    urls: &s.urls,
                    username: &s.username,
                    credential: &s.credential,
                })
                .collect(),
            credentials_expire_at: e.credentials_expire_at,
        },
        Event::LobbyUpdate(e) => F::LobbyUpdate(Players {
            players: e
                .players
                .iter()
                .map(|p| LobbyPlayer {
                    player_id: &p.player_id,
                    player_name: &p.player_name,
                    status: status_name(p.status),
                })
                .collect(),
        }),
        Event::MatchRequestReceived(e) => F::MatchRequestReceived {
            requester_id: &e.requester_id,
            requester_name: &e.requester_name,
            session_id: &e.session_id,
        },
        Event::MatchRequestSent(e) => F::MatchRequestSent {
            target_id: &e.target_id,
            target_name: &e.target_name,
            session_id: &e.session_id,
        },
        Event::MatchRequestAccepted(e) => F::MatchRequestAccepted {
            accepter_id: &e.accepter_id,
            accepter_name: &e.accepter_name,
            session_id: &e.session_id,
        },
        Event::MatchRequestDeclined(e) => F::MatchRequestDeclined {
            decliner_id: &e.decliner_id,
            decliner_name: &e.decliner_name,
            session_id: &e.session_id,
        },
        Event::MatchRequestCancelled(e) => F::MatchRequestCancelled {
            requester_id: &e.requester_id,
            session_id: &e.session_id,
        },
        Event::MatchRequestExpired(e) => F::MatchRequestExpired {
            requester_id: &e.requester_id,
            target_id: &e.target_id,
            session_id: &e.session_id,
        },
        Event::SdpOfferReceived(e) => F::SdpOfferReceived(sdp_out(e)),
        Event::SdpAnswerReceived(e) => F::SdpAnswerReceived(sdp_out(e)),
        Event::IceCandidateReceived(e) => F::IceCandidateReceived {
            sender_id: &e.sender_id,
            candidate: e.candidate.clone().unwrap_or_default().into(),
            session_id: &e.session_id,
        },
        Event::MatchStarted(e) => F::MatchStarted {
            opponent_id: &e.opponent_id,
            opponent_name: &e.opponent_name,
            session_id: &e.session_id,
        },
        Event::MatchFailed(e) => F::MatchFailed {
            opponent_id: &e.opponent_id,
            reason: failure_name(e.reason),
            session_id: &e.session_id,
        },
        Event::Error(e) => F::Error {
            code: e.code,
            message: &e.message,
            session_id: e.session_id.as_deref(),
            retry_after_ms: e.retry_after_ms,
        },
    })
}

/// Renders one event as a JSON text frame; None for a closing (it goes out
/// as a close frame).
pub fn render(event: &SignalResponse) -> Option<String> {
    serde_json::to_string(&server_frame(event)?).ok()
}

/// Renders one event as a MessagePack map (keys by name, as in JSON) for a
/// binary frame; None for a closing.
pub fn render_msgpack(event: &SignalResponse) -> Option<Vec<u8>> {
    rmp_serde::to_vec_named(&server_frame(event)?).ok()
}

/// An `error` event.
pub fn error(code: SignalErrorCode, message: impl Into<String>, session_id: Option<String>) -> SignalResponse {
    SignalResponse {
        event: Some(Event::Error(proto::SignalError {
            code: code as i32,
            message: message.into(),
            session_id,
            retry_after_ms: None,
        })),
    }
}

/// The `error` for a frame refused by a rate limit: the connection stays
/// open, and `retryAfterMs` says when a frame is accepted again.
pub fn rate_limited(retry_after: std::time::Duration, session_id: Option<String>) -> SignalResponse {
    let ms = crate::millis(retry_after);
    let mut event = error(
        SignalErrorCode::RateLimited,
        format!("rate limit exceeded; retry in {ms} ms"),
        session_id,
    );
    if let Some(Event::Error(e)) = &mut event.event {
        e.retry_after_ms = Some(ms);
    }
    event
}

/// The `error` event for a frame refused before any business logic ran.
pub fn frame_error(err: &FrameError) -> SignalResponse {
    let code = match err {
        FrameError::UnknownType(_) => SignalErrorCode::UnknownType,
        FrameError::TooLarge { .. } => SignalErrorCode::FrameTooLarge,
        _ => SignalErrorCode::InvalidMessage,
    };
    error(code, err.to_string(), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One frame of each client type.
    const FRAMES: [&str; 10] = [
        r#"{"type":"join_lobby","payload":{"playerId":"p1","playerName":"Ryu"}}"#,
        r#"{"type":"leave_lobby","payload":{"playerId":"p1"}}"#,
        r#"{"type":"request_match","payload":{"requesterId":"p1","targetId":"p2"}}"#,
        r#"{"type":"accept_match","payload":{"accepterId":"p2","requesterId":"p1"}}"#,
        r#"{"type":"decline_match","payload":{"declinerId":"p2","requesterId":"p1"}}"#,
        r#"{"type":"send_sdp_offer","payload":{"senderId":"p1","receiverId":"p2","sdp":"v=0"}}"#,
        r#"{"type":"send_sdp_answer","payload":{"senderId":"p2","receiverId":"p1","sdp":"v=0"}}"#,
        r#"{"type":"send_ice_candidate","payload":{"senderId":"p1","receiverId":"p2","candidate":{"candidate":"c","sdpMid":"0","sdpMLineIndex":0}}}"#,
        r#"{"type":"cancel_match_request","payload":{"requesterId":"p1","targetId":"p2","sessionId":"s"}}"#,
        r#"{"type":"report_connection","payload":{"playerId":"p1","sessionId":"s","connected":true}}"#,
    ];

    #[test]
    fn parses_every_client_type_of_the_seed() {
        let frames = FRAMES;
        for f in frames {
            assert!(parse(f).is_ok(), "{f}");
        }
        let ice = parse(frames[7]).unwrap();
        let Some(Request::SendIceCandidate(c)) = ice.request else {
            panic!("not an ICE candidate")
        };
        let c = c.candidate.unwrap();
        assert_eq!((c.sdp_mid.as_deref(), c.sdp_m_line_index), (Some("0"), Some(0)));
    }

    fn code_of(r: Result<SignalRequest, SignalResponse>) -> i32 {
        match r.unwrap_err().event {
            Some(Event::Error(e)) => e.code,
            other => panic!("not an error: {other:?}"),
        }
    }

    #[test]
    fn refusals_carry_the_seed_codes() {
        assert_eq!(code_of(parse("{nope")), 4000);
        assert_eq!(code_of(parse("[1]")), 4000);
        assert_eq!(code_of(parse(r#"{"type":"dance","payload":{}}"#)), 4001);
        assert_eq!(
            code_of(parse(
                r#"{"type":"join_lobby","payload":{"playerId":7,"playerName":"x"}}"#
            )),
            4000
        );
        assert_eq!(code_of(parse(r#"{"type":"join_lobby"}"#)), 4000);
    }

    /// An `ice_candidate_received` event.
    fn ice_event() -> SignalResponse {
        SignalResponse {
            event: Some(Event::IceCandidateReceived(proto::IceCandidateReceived {
                sender_id: "p1".into(),
                candidate: Some(proto::RtcIceCandidate {
                    candidate: "candidate:1".into(),
                    sdp_mid: Some("0".into()),
                    sdp_m_line_index: Some(0),
                    username_fragment: None,
                }),
                session_id: "s".into(),
            })),
        }
    }

    #[test]
    fn renders_the_seed_shapes() {
        let update = SignalResponse {
            event: Some(Event::LobbyUpdate(proto::LobbyUpdate {
                players: vec![proto::LobbyPlayer {
                    player_id: "p1".into(),
                    player_name: "Ryu".into(),
                    status: PlayerStatus::InMatch as i32,
                }],
            })),
        };
        assert_eq!(
            render(&update).unwrap(),
            r#"{"type":"lobby_update","payload":{"players":[{"playerId":"p1","playerName":"Ryu","status":"in_match"}]}}"#
        );
        let ice = ice_event();
        assert_eq!(
            render(&ice).unwrap(),
            r#"{"type":"ice_candidate_received","payload":{"senderId":"p1","candidate":{"candidate":"candidate:1","sdpMid":"0","sdpMLineIndex":0},"sessionId":"s"}}"#
        );
        let err = error(SignalErrorCode::NotTarget, "no", Some("s".into()));
        assert_eq!(
            render(&err).unwrap(),
            r#"{"type":"error","payload":{"code":4008,"message":"no","sessionId":"s"}}"#
        );
    }

    /// `value` as a msgpack client would send it.
    fn msgpack(value: &serde_json::Value) -> Vec<u8> {
        rmp_serde::to_vec_named(value).unwrap()
    }

    #[test]
    fn msgpack_frames_carry_the_json_objects() {
        for f in FRAMES {
            let value: serde_json::Value = serde_json::from_str(f).unwrap();
            assert_eq!(parse_msgpack(&msgpack(&value)).unwrap(), parse(f).unwrap(), "{f}");
        }
        let ice = ice_event();
        let err = error(SignalErrorCode::NotTarget, "no", Some("s".into()));
        for event in [ice, err] {
            let bytes = render_msgpack(&event).unwrap();
            let decoded: serde_json::Value = rmp_serde::from_slice(&bytes).unwrap();
            let json: serde_json::Value = serde_json::from_str(&render(&event).unwrap()).unwrap();
            assert_eq!(decoded, json);
        }
    }

    #[test]
    fn msgpack_refusals_carry_the_seed_codes() {
        use serde_json::json;
        assert_eq!(code_of(parse_msgpack(&[0xc1])), 4000, "never used marker");
        assert_eq!(code_of(parse_msgpack(&[0x82, 0xa1])), 4000, "truncated");
        assert_eq!(code_of(parse_msgpack(&msgpack(&json!([1])))), 4000, "not a map");
        let mut trailing = msgpack(&json!({"type": "leave_lobby", "payload": {"playerId": "p1"}}));
        trailing.push(0xc0);
        assert_eq!(code_of(parse_msgpack(&trailing)), 4000, "bytes after the map");
        assert_eq!(
            code_of(parse_msgpack(&msgpack(&json!({"type": "dance", "payload": {}})))),
            4001
        );
        let bad = json!({"type": "join_lobby", "payload": {"playerId": 7, "playerName": "x"}});
        assert_eq!(code_of(parse_msgpack(&msgpack(&bad))), 4000);
    }
}
