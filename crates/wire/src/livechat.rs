//! LiveChat / push-to-talk frames (seed 003) as JSON: Discord-style
//! `{op, d}`. The one place that turns client JSON into the typed
//! `relaymesh.client.v1.LivechatRequest` ([`parse`]) and a typed
//! `LivechatResponse` into JSON ([`render`]).
//!
//! Opcode numbers and error codes are the seed's; the floor-control opcodes
//! (30-31 client, 102 server) are ours, in a range the seed leaves free.

use relaymesh_proto::client::v1::{
    self as proto, Ack, ChannelEventType, FloorEventType, FloorHolder, FloorPolicy, LivechatErrorCode, LivechatRequest,
    LivechatResponse, RequestOp, ack, livechat_request::Request, livechat_response::Event,
};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::{FrameError, frame_object, payload};

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

#[derive(Debug, Deserialize)]
struct RawFrame<'a> {
    op: i64,
    #[serde(borrow, default)]
    d: Option<&'a RawValue>,
}

/// Every request frame may carry a `nonce` that its ACK or ERROR echoes.
#[derive(Debug, Deserialize)]
struct Nonce {
    #[serde(default)]
    nonce: Option<String>,
}

#[derive(Debug, Deserialize)]
struct IdentifyD {
    user_id: String,
    token: String,
}

#[derive(Debug, Deserialize)]
struct ChannelRefD {
    channel_id: String,
}

#[derive(Debug, Deserialize)]
struct ChannelCreateD {
    channel_id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    capacity: Option<u32>,
    /// "none" (default, as the seed), "exclusive" or "queue".
    #[serde(default)]
    floor: Option<FloorPolicyName>,
    #[serde(default)]
    max_talk_ms: Option<u64>,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum FloorPolicyName {
    None,
    Exclusive,
    Queue,
}

#[derive(Debug, Deserialize)]
struct ChannelJoinD {
    channel_id: String,
    ssrc: u32,
}

#[derive(Debug, Deserialize)]
struct ChannelUpdateD {
    channel_id: String,
    name: String,
}

#[derive(Debug, Deserialize)]
struct MessageCreateD {
    channel_id: String,
    content: String,
}

fn channel_ref(kind: &str, d: Option<&RawValue>) -> Result<proto::ChannelRef, FrameError> {
    let f: ChannelRefD = payload(kind, d)?;
    Ok(proto::ChannelRef {
        channel_id: f.channel_id,
    })
}

/// Parses one client frame. A refusal is the ERROR event to send back, with
/// the seed's code and the frame's `nonce` when it was JSON enough to carry one.
pub fn parse(text: &str) -> Result<LivechatRequest, LivechatResponse> {
    parse_request(text).map_err(|err| frame_error_for(&err, Some(text)))
}

fn parse_request(text: &str) -> Result<LivechatRequest, FrameError> {
    let frame: RawFrame<'_> = frame_object(text)?;
    let d = frame.d;
    let Ok(code) = u16::try_from(frame.op) else {
        return Err(FrameError::UnknownType(frame.op.to_string()));
    };
    let is_object = d.is_some_and(|v| v.get().starts_with('{'));
    let request = match code {
        // Discord clients send `d: <sequence>`; accept any payload.
        op::HEARTBEAT => Request::Heartbeat(proto::Heartbeat {}),
        op::IDENTIFY => {
            let f: IdentifyD = payload("IDENTIFY", d)?;
            Request::Identify(proto::Identify {
                user_id: f.user_id,
                token: f.token,
            })
        }
        op::CHANNEL_CREATE => {
            let f: ChannelCreateD = payload("CHANNEL_CREATE", d)?;
            let floor = match f.floor {
                None => FloorPolicy::Unspecified,
                Some(FloorPolicyName::None) => FloorPolicy::None,
                Some(FloorPolicyName::Exclusive) => FloorPolicy::Exclusive,
                Some(FloorPolicyName::Queue) => FloorPolicy::Queue,
            };
            Request::ChannelCreate(proto::ChannelCreate {
                channel_id: f.channel_id,
                name: f.name.unwrap_or_default(),
                capacity: f.capacity,
                floor: floor as i32,
                max_talk_ms: f.max_talk_ms,
            })
        }
        op::CHANNEL_JOIN => {
            let f: ChannelJoinD = payload("CHANNEL_JOIN", d)?;
            Request::ChannelJoin(proto::ChannelJoin {
                channel_id: f.channel_id,
                ssrc: f.ssrc,
            })
        }
        op::CHANNEL_LEAVE => Request::ChannelLeave(channel_ref("CHANNEL_LEAVE", d)?),
        op::CHANNEL_UPDATE => {
            let f: ChannelUpdateD = payload("CHANNEL_UPDATE", d)?;
            Request::ChannelUpdate(proto::ChannelUpdate {
                channel_id: f.channel_id,
                name: f.name,
            })
        }
        op::CHANNEL_DELETE => Request::ChannelDelete(channel_ref("CHANNEL_DELETE", d)?),
        op::MESSAGE_CREATE => {
            let f: MessageCreateD = payload("MESSAGE_CREATE", d)?;
            Request::MessageCreate(proto::MessageCreate {
                channel_id: f.channel_id,
                content: f.content,
            })
        }
        op::FLOOR_REQUEST => Request::FloorRequest(channel_ref("FLOOR_REQUEST", d)?),
        op::FLOOR_RELEASE => Request::FloorRelease(channel_ref("FLOOR_RELEASE", d)?),
        other => return Err(FrameError::UnknownType(other.to_string())),
    };
    let nonce = if is_object {
        payload::<Nonce>("frame", d).ok().and_then(|n| n.nonce)
    } else {
        None
    };
    Ok(LivechatRequest {
        nonce,
        request: Some(request),
    })
}

/// The opcode of a request, for the ACK that answers it.
pub fn request_op(req: &Request) -> RequestOp {
    match req {
        Request::Heartbeat(_) => RequestOp::Heartbeat,
        Request::Identify(_) => RequestOp::Identify,
        Request::ChannelCreate(_) => RequestOp::ChannelCreate,
        Request::ChannelJoin(_) => RequestOp::ChannelJoin,
        Request::ChannelLeave(_) => RequestOp::ChannelLeave,
        Request::ChannelUpdate(_) => RequestOp::ChannelUpdate,
        Request::ChannelDelete(_) => RequestOp::ChannelDelete,
        Request::MessageCreate(_) => RequestOp::MessageCreate,
        Request::FloorRequest(_) => RequestOp::FloorRequest,
        Request::FloorRelease(_) => RequestOp::FloorRelease,
    }
}

// ---- rendering: the one ServerFrame type of this protocol ----

/// A server -> client frame: `{"op": <op>, "d": <d>}`.
#[derive(Serialize)]
struct ServerFrame<'a> {
    op: u16,
    d: D<'a>,
}

/// The `d` of every server frame, one variant per shape.
#[derive(Serialize)]
#[serde(untagged)]
enum D<'a> {
    Hello {
        heartbeat_interval: u64,
    },
    NonceOnly {
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
    },
    Ready {
        session_id: &'a str,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
    },
    ChannelEvent {
        #[serde(rename = "type")]
        kind: &'static str,
        channel_id: &'a str,
        user_id: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        ssrc: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        name: Option<&'a str>,
    },
    MessageEvent {
        channel_id: &'a str,
        message_id: &'a str,
        user_id: &'a str,
        content: &'a str,
        timestamp: i64,
    },
    FloorEvent {
        #[serde(rename = "type")]
        kind: &'static str,
        channel_id: &'a str,
        /// The holder after the change; null when the floor is free.
        holder_id: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        holder_ssrc: Option<u32>,
        #[serde(skip_serializing_if = "Option::is_none")]
        expires_at: Option<i64>,
    },
    Ack {
        request_op: u16,
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
        #[serde(flatten)]
        body: AckBody<'a>,
    },
    Error {
        code: u16,
        reason: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        nonce: Option<&'a str>,
        #[serde(skip_serializing_if = "Option::is_none")]
        retry_after_ms: Option<u64>,
    },
}

/// What an ACK carries after `request_op` and `nonce`.
#[derive(Serialize)]
#[serde(untagged)]
enum AckBody<'a> {
    Empty {},
    Channel {
        channel: ChannelView<'a>,
    },
    Joined {
        channel_id: &'a str,
        active_members: Vec<MemberView<'a>>,
        media_addr: &'a str,
    },
    ChannelId {
        channel_id: &'a str,
    },
    MessageSent {
        channel_id: &'a str,
        message_id: &'a str,
    },
    Floor {
        channel_id: &'a str,
        holder_id: Option<&'a str>,
        holder_ssrc: Option<u32>,
        queue_position: u32,
        expires_at: Option<i64>,
    },
}

#[derive(Serialize)]
struct ChannelView<'a> {
    channel_id: &'a str,
    name: &'a str,
    creator_id: &'a str,
    capacity: u32,
    floor: &'static str,
    members: &'a [String],
}

#[derive(Serialize)]
struct MemberView<'a> {
    user_id: &'a str,
    session_id: &'a str,
    ssrc: u32,
}

fn floor_policy_name(p: i32) -> &'static str {
    match FloorPolicy::try_from(p).unwrap_or_default() {
        FloorPolicy::Exclusive => "exclusive",
        FloorPolicy::Queue => "queue",
        FloorPolicy::None | FloorPolicy::Unspecified => "none",
    }
}

fn channel_event_name(t: i32) -> &'static str {
    match ChannelEventType::try_from(t).unwrap_or_default() {
        ChannelEventType::Join => "join",
        ChannelEventType::Leave => "leave",
        ChannelEventType::Update => "update",
        ChannelEventType::Delete => "delete",
        ChannelEventType::Unspecified => "unspecified",
    }
}

fn floor_event_name(t: i32) -> &'static str {
    match FloorEventType::try_from(t).unwrap_or_default() {
        FloorEventType::Granted => "granted",
        FloorEventType::Released => "released",
        FloorEventType::Revoked => "revoked",
        FloorEventType::Left => "left",
        FloorEventType::Unspecified => "unspecified",
    }
}

fn ack_body(result: Option<&ack::Result>) -> AckBody<'_> {
    match result {
        None => AckBody::Empty {},
        Some(ack::Result::Channel(c)) => AckBody::Channel {
            channel: ChannelView {
                channel_id: &c.channel_id,
                name: &c.name,
                creator_id: &c.creator_id,
                capacity: c.capacity,
                floor: floor_policy_name(c.floor),
                members: &c.members,
            },
        },
        Some(ack::Result::Joined(j)) => AckBody::Joined {
            channel_id: &j.channel_id,
            active_members: j
                .active_members
                .iter()
                .map(|m| MemberView {
                    user_id: &m.user_id,
                    session_id: &m.session_id,
                    ssrc: m.ssrc,
                })
                .collect(),
            media_addr: &j.media_addr,
        },
        Some(ack::Result::ChannelRef(r)) => AckBody::ChannelId {
            channel_id: &r.channel_id,
        },
        Some(ack::Result::MessageSent(m)) => AckBody::MessageSent {
            channel_id: &m.channel_id,
            message_id: &m.message_id,
        },
        Some(ack::Result::Floor(f)) => {
            let h: Option<&FloorHolder> = f.holder.as_ref();
            AckBody::Floor {
                channel_id: &f.channel_id,
                holder_id: h.map(|h| h.user_id.as_str()),
                holder_ssrc: h.map(|h| h.ssrc),
                queue_position: f.queue_position,
                expires_at: h.map(|h| h.expires_at),
            }
        }
    }
}

/// Renders one server event as its JSON frame; None for what has no JSON
/// frame (a close, which the WebSocket layer sends as a close frame).
pub fn render(event: &LivechatResponse) -> Option<String> {
    let (op, d) = match event.event.as_ref()? {
        Event::Hello(h) => (
            op::HELLO,
            D::Hello {
                heartbeat_interval: h.heartbeat_interval,
            },
        ),
        Event::HeartbeatAck(a) => (
            op::HEARTBEAT_ACK,
            D::NonceOnly {
                nonce: a.nonce.as_deref(),
            },
        ),
        Event::Ready(r) => (
            op::READY,
            D::Ready {
                session_id: &r.session_id,
                user_id: &r.user_id,
                nonce: r.nonce.as_deref(),
            },
        ),
        Event::ChannelEvent(e) => (
            op::CHANNEL_EVENT,
            D::ChannelEvent {
                kind: channel_event_name(e.r#type),
                channel_id: &e.channel_id,
                user_id: &e.user_id,
                session_id: e.session_id.as_deref(),
                ssrc: e.ssrc,
                name: e.name.as_deref(),
            },
        ),
        Event::MessageEvent(m) => (
            op::MESSAGE_EVENT,
            D::MessageEvent {
                channel_id: &m.channel_id,
                message_id: &m.message_id,
                user_id: &m.user_id,
                content: &m.content,
                timestamp: m.timestamp,
            },
        ),
        Event::FloorEvent(f) => {
            let h = f.holder.as_ref();
            (
                op::FLOOR_EVENT,
                D::FloorEvent {
                    kind: floor_event_name(f.r#type),
                    channel_id: &f.channel_id,
                    holder_id: h.map(|h| h.user_id.as_str()),
                    holder_ssrc: h.map(|h| h.ssrc),
                    expires_at: h.map(|h| h.expires_at),
                },
            )
        }
        Event::Ack(a) => (
            op::ACK,
            D::Ack {
                request_op: u16::try_from(a.request_op).unwrap_or(0),
                nonce: a.nonce.as_deref(),
                body: ack_body(a.result.as_ref()),
            },
        ),
        Event::Error(e) => (
            op::ERROR,
            D::Error {
                code: u16::try_from(e.code).unwrap_or(9000),
                reason: &e.reason,
                nonce: e.nonce.as_deref(),
                retry_after_ms: e.retry_after_ms,
            },
        ),
        Event::Closing(_) => return None,
    };
    // Serializing our own structs cannot fail.
    serde_json::to_string(&ServerFrame { op, d }).ok()
}

// ---- constructors the gateway uses ----

/// An event of this protocol.
pub fn event(e: Event) -> LivechatResponse {
    LivechatResponse { event: Some(e) }
}

/// ERROR with `code`, echoing `nonce`.
pub fn error(code: LivechatErrorCode, reason: impl Into<String>, nonce: Option<&str>) -> LivechatResponse {
    event(Event::Error(proto::LivechatError {
        code: code as i32,
        reason: reason.into(),
        nonce: nonce.map(str::to_owned),
        retry_after_ms: None,
    }))
}

/// ERROR 4290 for a request refused by a rate limit, echoing `nonce`; the
/// connection stays open and `retry_after_ms` says when to try again.
pub fn rate_limited(retry_after: std::time::Duration, nonce: Option<&str>) -> LivechatResponse {
    let ms = crate::millis(retry_after);
    let mut event = error(
        LivechatErrorCode::RateLimited,
        format!("rate limit exceeded; retry in {ms} ms"),
        nonce,
    );
    if let Some(Event::Error(e)) = &mut event.event {
        e.retry_after_ms = Some(ms);
    }
    event
}

/// ACK of `request_op` with `result`, echoing `nonce`.
pub fn ack(request_op: RequestOp, nonce: Option<String>, result: Option<ack::Result>) -> LivechatResponse {
    event(Event::Ack(Ack {
        request_op: request_op as i32,
        nonce,
        result,
    }))
}

/// The seed's ERROR for a frame refused before business logic.
pub fn frame_error(err: &FrameError) -> LivechatResponse {
    frame_error_for(err, None)
}

/// As [`frame_error`], echoing the refused request's `nonce` when the frame
/// was JSON enough to carry one, so the client can match the answer.
pub fn frame_error_for(err: &FrameError, text: Option<&str>) -> LivechatResponse {
    let code = match err {
        FrameError::UnknownType(_) => LivechatErrorCode::InvalidOp,
        _ => LivechatErrorCode::InvalidPayload,
    };
    let nonce = text.and_then(nonce_of);
    error(code, err.to_string(), nonce.as_deref())
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

    fn json(e: &LivechatResponse) -> serde_json::Value {
        serde_json::from_str(&render(e).unwrap()).unwrap()
    }

    #[test]
    fn parses_the_seed_example() {
        let f = parse(r#"{ "op": 11, "d": { "channel_id": "CH_001", "ssrc": 12345 } }"#).unwrap();
        assert_eq!(
            f,
            LivechatRequest {
                nonce: None,
                request: Some(Request::ChannelJoin(proto::ChannelJoin {
                    channel_id: "CH_001".into(),
                    ssrc: 12345
                }))
            }
        );
    }

    #[test]
    fn unknown_op_and_bad_types_are_told_apart() {
        let code = |text: &str| match parse(text).unwrap_err().event {
            Some(Event::Error(e)) => e.code,
            other => panic!("{other:?}"),
        };
        assert_eq!(code(r#"{"op":99,"d":{}}"#), 1003);
        assert_eq!(code(r#"{"op":11,"d":{"channel_id":"a","ssrc":"x"}}"#), 1004);
        assert_eq!(code(r#"{"d":{}}"#), 1004);
        assert_eq!(code(r#"{"op":10,"d":{"channel_id":"a","floor":"chaos"}}"#), 1004);
    }

    #[test]
    fn error_frames_use_seed_codes() {
        let v = json(&frame_error(&FrameError::UnknownType("7".into())));
        assert_eq!((v["op"].as_u64(), v["d"]["code"].as_u64()), (Some(201), Some(1003)));
        let v = json(&frame_error(&FrameError::NotObject));
        assert_eq!(v["d"]["code"], 1004);
    }

    #[test]
    fn ack_names_the_request_and_flattens_its_body() {
        let sent = ack::Result::MessageSent(proto::MessageSent {
            channel_id: "c".into(),
            message_id: "m1".into(),
        });
        let v = json(&ack(RequestOp::MessageCreate, Some("n".into()), Some(sent)));
        assert_eq!(
            v,
            serde_json::json!({"op":200,"d":{"request_op":20,"nonce":"n","channel_id":"c","message_id":"m1"}})
        );
    }

    #[test]
    fn floor_acks_and_events_show_a_free_floor_as_null() {
        let free = ack::Result::Floor(proto::FloorState {
            channel_id: "c".into(),
            holder: None,
            queue_position: 0,
        });
        let v = json(&ack(RequestOp::FloorRelease, None, Some(free)));
        assert_eq!(
            v,
            serde_json::json!({"op":200,"d":{"request_op":31,"channel_id":"c","holder_id":null,"holder_ssrc":null,"queue_position":0,"expires_at":null}})
        );
        let e = event(Event::FloorEvent(proto::FloorEvent {
            r#type: FloorEventType::Released as i32,
            channel_id: "c".into(),
            holder: None,
        }));
        assert_eq!(
            json(&e),
            serde_json::json!({"op":102,"d":{"type":"released","channel_id":"c","holder_id":null}})
        );
    }

    #[test]
    fn refusals_of_json_frames_echo_their_nonce() {
        let text = r#"{"op":11,"d":{"channel_id":"c","ssrc":"one","nonce":"n9"}}"#;
        let v = json(&parse(text).unwrap_err());
        assert_eq!(
            (v["d"]["code"].as_u64(), v["d"]["nonce"].as_str()),
            (Some(1004), Some("n9"))
        );
        assert_eq!(nonce_of("{broken"), None);
        assert_eq!(nonce_of(r#"{"op":1,"d":{"nonce":7}}"#), None);
    }

    #[test]
    fn nonce_is_echoed() {
        let f = parse(r#"{"op":1,"d":{"nonce":"n1"}}"#).unwrap();
        assert_eq!(f.nonce.as_deref(), Some("n1"));
        let ack = event(Event::HeartbeatAck(proto::HeartbeatAck { nonce: f.nonce }));
        assert_eq!(json(&ack)["d"]["nonce"], "n1");
        assert!(parse(r#"{"op":1,"d":17}"#).is_ok(), "discord-style sequence heartbeat");
    }

    #[test]
    fn closes_have_no_json_frame() {
        let closing = event(Event::Closing(proto::Closing::default()));
        assert_eq!(render(&closing), None);
    }
}
