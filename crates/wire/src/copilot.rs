//! Copilot channel frames (seed 001) as JSON: `{"type": ..., "requestId"?,
//! "data"?}`. The one place that turns client JSON into the typed
//! `relaymesh.client.v1.CopilotRequest` ([`parse`]) and a typed
//! `CopilotResponse` into JSON ([`render`]).
//!
//! The server calls back into the client (`request_available_data`,
//! `request_api`, `clarification_request`) under a one-time `requestId`;
//! the client answers with the matching frame and the same `requestId`.
//! `data` is free-form JSON, carried as `google.protobuf.Value`.

use relaymesh_proto::client::v1::{
    CopilotCallback, CopilotCallbackAnswer, CopilotConnected, CopilotError, CopilotErrorCode, CopilotHeartbeat,
    CopilotPing, CopilotPong, CopilotQuery, CopilotRequest, CopilotResponse, copilot_request::Request,
    copilot_response::Event,
};
use serde::Deserialize;
use serde_json::{Map, Value as Json, json};

use crate::json_value::{from_proto, to_proto};
use crate::{FrameError, frame_object};

#[derive(Debug, Deserialize)]
struct RawFrame {
    #[serde(rename = "type")]
    kind: String,
    #[serde(rename = "requestId", default)]
    request_id: Option<String>,
    #[serde(default)]
    data: Option<Json>,
}

/// Parses one client frame; a refusal is the `error` event to send back.
pub fn parse(text: &str) -> Result<CopilotRequest, CopilotResponse> {
    parse_request(text).map_err(|err| frame_error(&err))
}

fn parse_request(text: &str) -> Result<CopilotRequest, FrameError> {
    let f: RawFrame = frame_object(text)?;
    let data = f.data.map(to_proto);
    let answer = |request_id: Option<String>, kind: &str| match request_id {
        Some(id) if !id.is_empty() => Ok(CopilotCallbackAnswer {
            request_id: id,
            data: data.clone(),
        }),
        _ => Err(FrameError::InvalidPayload {
            kind: kind.to_owned(),
            why: "missing requestId".into(),
        }),
    };
    let request = match f.kind.as_str() {
        "query" => Request::Query(CopilotQuery {
            request_id: f.request_id,
            data: data.clone(),
        }),
        "ping" => Request::Ping(CopilotPing {}),
        "pong" => Request::Pong(CopilotPong {}),
        "available_data" => Request::AvailableData(answer(f.request_id, "available_data")?),
        "api_result" => Request::ApiResult(answer(f.request_id, "api_result")?),
        "human_response" => Request::HumanResponse(answer(f.request_id, "human_response")?),
        other => return Err(FrameError::UnknownType(other.to_owned())),
    };
    Ok(CopilotRequest { request: Some(request) })
}

/// The `error` event for a frame refused before any service saw it.
pub fn frame_error(err: &FrameError) -> CopilotResponse {
    let code = match err {
        FrameError::UnknownType(_) => CopilotErrorCode::UnknownType,
        FrameError::TooLarge { .. } => CopilotErrorCode::FrameTooLarge,
        _ => CopilotErrorCode::InvalidMessage,
    };
    error(code, err.to_string(), None)
}

/// An `error` event.
pub fn error(code: CopilotErrorCode, message: impl Into<String>, request_id: Option<String>) -> CopilotResponse {
    CopilotResponse {
        event: Some(Event::Error(CopilotError {
            code: code as i32,
            message: message.into(),
            request_id,
            retry_after_ms: None,
            remaining: None,
        })),
    }
}

/// The server's `ping`.
pub fn ping() -> CopilotResponse {
    CopilotResponse {
        event: Some(Event::Ping(CopilotHeartbeat {
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        })),
    }
}

/// The `pong` answering a client's `ping`.
pub fn pong() -> CopilotResponse {
    CopilotResponse {
        event: Some(Event::Pong(CopilotHeartbeat {
            timestamp_ms: chrono::Utc::now().timestamp_millis(),
        })),
    }
}

/// `connected`.
pub fn connected(user_id: &str, connection_id: &str, heartbeat_interval_ms: u64) -> CopilotResponse {
    CopilotResponse {
        event: Some(Event::Connected(CopilotConnected {
            user_id: user_id.to_owned(),
            connection_id: connection_id.to_owned(),
            heartbeat_interval_ms,
        })),
    }
}

/// An error code's name on the wire: the enum value's name without its prefix.
pub fn code_name(code: CopilotErrorCode) -> &'static str {
    code.as_str_name()
        .strip_prefix("COPILOT_ERROR_CODE_")
        .unwrap_or("INTERNAL")
}

/// Renders one event as its JSON frame; None for a close (a close frame).
pub fn render(event: &CopilotResponse) -> Option<String> {
    let v = match event.event.as_ref()? {
        Event::Connected(c) => json!({
            "type": "connected",
            "userId": c.user_id,
            "connectionId": c.connection_id,
            "heartbeatInterval": c.heartbeat_interval_ms,
        }),
        Event::Response(r) => {
            let mut m = typed("response", r.request_id.as_deref());
            m.insert("data".into(), r.data.as_ref().map_or(Json::Null, from_proto));
            if let Some(n) = r.remaining {
                m.insert("remaining".into(), n.into());
            }
            Json::Object(m)
        }
        Event::Pong(h) => json!({"type": "pong", "timestamp": h.timestamp_ms}),
        Event::Ping(h) => json!({"type": "ping", "timestamp": h.timestamp_ms}),
        Event::RequestAvailableData(c) => callback("request_available_data", c),
        Event::RequestApi(c) => callback("request_api", c),
        Event::ClarificationRequest(c) => callback("clarification_request", c),
        Event::Error(e) => {
            let code = CopilotErrorCode::try_from(e.code).unwrap_or(CopilotErrorCode::Internal);
            let mut m = Map::new();
            m.insert("type".into(), "error".into());
            m.insert("code".into(), code_name(code).into());
            m.insert("message".into(), e.message.clone().into());
            if let Some(id) = &e.request_id {
                m.insert("requestId".into(), id.clone().into());
            }
            if let Some(ms) = e.retry_after_ms {
                m.insert("retryAfterMs".into(), ms.into());
            }
            if let Some(n) = e.remaining {
                m.insert("remaining".into(), n.into());
            }
            Json::Object(m)
        }
        Event::Closing(_) => return None,
    };
    Some(v.to_string())
}

fn typed(kind: &str, request_id: Option<&str>) -> Map<String, Json> {
    let mut m = Map::new();
    m.insert("type".into(), kind.into());
    if let Some(id) = request_id {
        m.insert("requestId".into(), id.into());
    }
    m
}

fn callback(kind: &str, c: &CopilotCallback) -> Json {
    let mut m = typed(kind, Some(&c.request_id));
    m.insert("data".into(), c.data.as_ref().map_or(Json::Null, from_proto));
    Json::Object(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rendered(e: &CopilotResponse) -> Json {
        serde_json::from_str(&render(e).unwrap()).unwrap()
    }

    #[test]
    fn callback_answers_need_a_request_id() {
        let refused = parse(r#"{"type":"available_data","data":[]}"#).unwrap_err();
        assert_eq!(rendered(&refused)["code"], "INVALID_MESSAGE");
        let req = parse(r#"{"type":"api_result","requestId":"r1","data":{"ok":true}}"#).unwrap();
        let Some(Request::ApiResult(a)) = req.request else {
            panic!("{req:?}")
        };
        assert_eq!(a.request_id, "r1");
        assert_eq!(from_proto(&a.data.unwrap()), json!({"ok": true}));
    }

    #[test]
    fn unknown_type_gets_its_own_code() {
        let v = rendered(&parse(r#"{"type":"dance"}"#).unwrap_err());
        assert_eq!(v["type"], "error");
        assert_eq!(v["code"], "UNKNOWN_TYPE");
    }

    #[test]
    fn queries_keep_their_request_id_and_data() {
        let req = parse(r#"{"type":"query","requestId":"q1","data":{"text":"hi","n":3}}"#).unwrap();
        let Some(Request::Query(q)) = req.request else {
            panic!("{req:?}")
        };
        assert_eq!(q.request_id.as_deref(), Some("q1"));
        assert_eq!(from_proto(&q.data.unwrap()), json!({"text": "hi", "n": 3}));
    }

    #[test]
    fn rate_limited_carries_retry_time_and_remaining() {
        let mut e = error(CopilotErrorCode::RateLimited, "slow down", Some("q9".into()));
        if let Some(Event::Error(err)) = &mut e.event {
            err.retry_after_ms = Some(41_000);
            err.remaining = Some(0);
        }
        assert_eq!(
            rendered(&e),
            json!({"type": "error", "code": "RATE_LIMITED", "message": "slow down", "requestId": "q9",
                   "retryAfterMs": 41000, "remaining": 0})
        );
    }

    #[test]
    fn callbacks_and_connected_render_as_the_seed_writes_them() {
        let cb = CopilotResponse {
            event: Some(Event::RequestApi(CopilotCallback {
                request_id: "r2".into(),
                data: Some(to_proto(json!({"api": "cost"}))),
            })),
        };
        assert_eq!(
            rendered(&cb),
            json!({"type": "request_api", "requestId": "r2", "data": {"api": "cost"}})
        );
        assert_eq!(
            rendered(&connected("u", "c", 30_000)),
            json!({"type": "connected", "userId": "u", "connectionId": "c", "heartbeatInterval": 30000})
        );
        assert_eq!(rendered(&pong())["type"], "pong");
    }
}
