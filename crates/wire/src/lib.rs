//! Wire types of the four protocols behind the gateway, one module each.
//!
//! Frames are parsed once, at the edge, in two steps: the envelope (which
//! tells malformed JSON, a non-object and an unknown type apart), then the
//! typed payload of that type. Business code sees only the typed enums. Each
//! module also renders its protocol's own error frame.

pub mod copilot;
pub mod json_value;
pub mod livechat;
pub mod node;
pub mod signal;

use serde::de::DeserializeOwned;
use serde_json::value::RawValue;

/// Why an inbound frame was refused, before any business logic ran.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame is not valid JSON: {0}")]
    NotJson(String),
    #[error("frame is not a JSON object")]
    NotObject,
    #[error("frame of {size} bytes exceeds the {max}-byte limit")]
    TooLarge { size: usize, max: usize },
    #[error("binary frames are not accepted")]
    Binary,
    #[error("frame is not valid MessagePack: {0}")]
    NotMsgpack(String),
    #[error("frame is not a MessagePack map")]
    NotMap,
    #[error("text frames are not accepted on a msgpack connection")]
    Text,
    #[error("unknown frame type {0}")]
    UnknownType(String),
    #[error("invalid {kind} frame: {why}")]
    InvalidPayload { kind: String, why: String },
}

/// How a WebSocket connection encodes its frames, chosen at connect
/// (`?format=`). Both carry the same objects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Format {
    /// JSON text frames.
    #[default]
    Json,
    /// MessagePack binary frames: each one map, the JSON frame's object.
    Msgpack,
}

/// Checks that `text` is one JSON object and returns it unparsed.
pub fn raw_object(text: &str) -> Result<&RawValue, FrameError> {
    let raw: &RawValue = serde_json::from_str(text).map_err(|e| FrameError::NotJson(e.to_string()))?;
    if raw.get().starts_with('{') {
        Ok(raw)
    } else {
        Err(FrameError::NotObject)
    }
}

/// Parses `text` as a frame object `T` in one pass over it. When that
/// fails, tells the refusal as [`raw_object`] and then `T` would: not JSON,
/// not an object, or a frame whose fields are wrong (`InvalidPayload` of
/// kind "frame"). A frame is read once, not checked and then read again.
pub fn frame_object<'a, T: serde::Deserialize<'a>>(text: &'a str) -> Result<T, FrameError> {
    // A struct also reads from a JSON array; a frame is an object only.
    if text.trim_start().starts_with('{')
        && let Ok(frame) = serde_json::from_str(text)
    {
        return Ok(frame);
    }
    let raw = raw_object(text)?;
    serde_json::from_str(raw.get()).map_err(|e| FrameError::InvalidPayload {
        kind: "frame".into(),
        why: e.to_string(),
    })
}

/// Checks that `bytes` is one MessagePack value, a map, and nothing after it.
pub fn msgpack_map(bytes: &[u8]) -> Result<(), FrameError> {
    let mut rest = bytes;
    let mut de = rmp_serde::Deserializer::new(&mut rest);
    <serde::de::IgnoredAny as serde::Deserialize>::deserialize(&mut de)
        .map_err(|e| FrameError::NotMsgpack(e.to_string()))?;
    drop(de);
    if !rest.is_empty() {
        return Err(FrameError::NotMsgpack(format!("{} bytes after the value", rest.len())));
    }
    // fixmap, map 16, map 32
    match bytes.first() {
        Some(0x80..=0x8f | 0xde | 0xdf) => Ok(()),
        _ => Err(FrameError::NotMap),
    }
}

/// Parses the payload of a frame of type `kind` into `T`; a missing payload
/// is read as `{}` so payload-less frames need no special case.
pub fn payload<T: DeserializeOwned>(kind: &str, raw: Option<&RawValue>) -> Result<T, FrameError> {
    let text = raw.map_or("{}", RawValue::get);
    serde_json::from_str(text).map_err(|e| FrameError::InvalidPayload {
        kind: kind.to_owned(),
        why: e.to_string(),
    })
}

/// A JSON value the server relays without reading, kept as its text.
#[derive(Debug, Clone, serde::Deserialize, serde::Serialize)]
#[serde(transparent)]
pub struct JsonText(pub Box<RawValue>);

impl JsonText {
    pub fn get(&self) -> &str {
        self.0.get()
    }
}

impl PartialEq for JsonText {
    fn eq(&self, other: &Self) -> bool {
        self.get() == other.get()
    }
}

/// Whole milliseconds of `d`, rounded up (a retry time of 0.4 ms is 1 ms:
/// a client retrying after 0 ms would be refused again).
pub fn millis(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_micros().div_ceil(1000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raw_object_tells_bad_json_from_non_objects() {
        assert!(matches!(raw_object("{nope"), Err(FrameError::NotJson(_))));
        assert_eq!(raw_object("[1,2]").unwrap_err(), FrameError::NotObject);
        assert_eq!(raw_object("42").unwrap_err(), FrameError::NotObject);
        assert!(raw_object(" {\"a\":1} ").is_ok());
    }

    #[test]
    fn a_frame_is_read_in_one_pass_and_refused_as_raw_object_tells() {
        #[derive(Debug, PartialEq, serde::Deserialize)]
        struct F {
            op: i64,
        }
        assert_eq!(frame_object::<F>(" {\"op\":20,\"x\":[1]} "), Ok(F { op: 20 }));
        assert!(matches!(frame_object::<F>("{nope"), Err(FrameError::NotJson(_))));
        // A struct would read from an array; a frame may not be one.
        assert_eq!(frame_object::<F>("[20]"), Err(FrameError::NotObject));
        assert_eq!(frame_object::<F>("42"), Err(FrameError::NotObject));
        // An object with a trailing value is not one JSON text.
        assert!(matches!(
            frame_object::<F>("{\"op\":1} {}"),
            Err(FrameError::NotJson(_))
        ));
        for wrong in ["{\"op\":\"x\"}", "{}", "{\"op\":1,\"op\":2}"] {
            assert!(
                matches!(frame_object::<F>(wrong), Err(FrameError::InvalidPayload { ref kind, .. }) if kind == "frame"),
                "{wrong}"
            );
        }
    }

    #[test]
    fn missing_payload_reads_as_empty_object() {
        #[derive(serde::Deserialize)]
        struct Empty {}
        assert!(payload::<Empty>("x", None).is_ok());
    }

    #[test]
    fn wrong_payload_types_name_the_frame() {
        #[derive(Debug, serde::Deserialize)]
        #[allow(dead_code)]
        struct P {
            n: u32,
        }
        let raw: &RawValue = serde_json::from_str(r#"{"n":"seven"}"#).unwrap();
        let err = payload::<P>("thing", Some(raw)).unwrap_err();
        assert!(
            matches!(err, FrameError::InvalidPayload { ref kind, .. } if kind == "thing"),
            "{err}"
        );
    }
}
