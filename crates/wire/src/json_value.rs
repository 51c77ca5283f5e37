//! JSON values as `google.protobuf.Value` and back: the free-form `data` of
//! frames whose shape is an agreement between a client and a service, carried
//! typed as protobuf's JSON value rather than as JSON text in a string.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};
use serde_json::Value as Json;

/// The protobuf form of a JSON value.
pub fn to_proto(json: Json) -> Value {
    let kind = match json {
        Json::Null => Kind::NullValue(0),
        Json::Bool(b) => Kind::BoolValue(b),
        Json::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        Json::String(s) => Kind::StringValue(s),
        Json::Array(items) => Kind::ListValue(ListValue {
            values: items.into_iter().map(to_proto).collect(),
        }),
        Json::Object(map) => Kind::StructValue(Struct {
            fields: map.into_iter().map(|(k, v)| (k, to_proto(v))).collect(),
        }),
    };
    Value { kind: Some(kind) }
}

/// The JSON form of a protobuf value. Whole numbers that fit an `i64`
/// exactly render without a fraction (`3`, not `3.0`), as JSON clients wrote
/// them; other numbers as floats; NaN and infinities (which JSON lacks) as null.
pub fn from_proto(value: &Value) -> Json {
    match &value.kind {
        None | Some(Kind::NullValue(_)) => Json::Null,
        Some(Kind::BoolValue(b)) => Json::Bool(*b),
        Some(Kind::NumberValue(n)) => number(*n),
        Some(Kind::StringValue(s)) => Json::String(s.clone()),
        Some(Kind::ListValue(list)) => Json::Array(list.values.iter().map(from_proto).collect()),
        Some(Kind::StructValue(s)) => Json::Object(s.fields.iter().map(|(k, v)| (k.clone(), from_proto(v))).collect()),
    }
}

/// 2^53: above it, not every integer is an f64.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

// Whole and within ±2^53: the cast is exact.
fn number(n: f64) -> Json {
    if n.fract() == 0.0 && n.abs() <= EXACT_INT {
        Json::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(Json::Null, Json::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_protobuf_values() {
        let json: Json =
            serde_json::from_str(r#"{"a":[1,2.5,"x",null,true,{"b":{}}],"n":-7,"big":12345678901}"#).unwrap();
        assert_eq!(from_proto(&to_proto(json.clone())), json);
    }

    #[test]
    fn non_finite_numbers_render_as_null() {
        let v = Value {
            kind: Some(Kind::NumberValue(f64::NAN)),
        };
        assert_eq!(from_proto(&v), Json::Null);
    }
}
