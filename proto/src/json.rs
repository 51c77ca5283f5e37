//! Conversions between JSON (serde_json) and the protobuf well-known types
//! that carry free-form values (`google.protobuf.Struct` / `Value`), for the
//! edges that speak JSON: the gateway's HTTP API and node frames, and the
//! scheduler's store.
//!
//! Protobuf numbers are doubles: an integral number within ±2^53 comes back
//! as a JSON integer, so `30000` round-trips as `30000`, not `30000.0`.

use prost_types::value::Kind;
use prost_types::{ListValue, Struct, Value};

/// The largest integer a double holds exactly.
const EXACT_INT: f64 = 9_007_199_254_740_992.0;

pub fn value_from_json(v: serde_json::Value) -> Value {
    let kind = match v {
        serde_json::Value::Null => Kind::NullValue(0),
        serde_json::Value::Bool(b) => Kind::BoolValue(b),
        serde_json::Value::Number(n) => Kind::NumberValue(n.as_f64().unwrap_or(0.0)),
        serde_json::Value::String(s) => Kind::StringValue(s),
        serde_json::Value::Array(a) => Kind::ListValue(ListValue {
            values: a.into_iter().map(value_from_json).collect(),
        }),
        serde_json::Value::Object(o) => Kind::StructValue(struct_from_json(o)),
    };
    Value { kind: Some(kind) }
}

pub fn struct_from_json(o: serde_json::Map<String, serde_json::Value>) -> Struct {
    Struct {
        fields: o.into_iter().map(|(k, v)| (k, value_from_json(v))).collect(),
    }
}

pub fn value_to_json(v: Value) -> serde_json::Value {
    match v.kind {
        None | Some(Kind::NullValue(_)) => serde_json::Value::Null,
        Some(Kind::BoolValue(b)) => serde_json::Value::Bool(b),
        Some(Kind::NumberValue(n)) => number(n),
        Some(Kind::StringValue(s)) => serde_json::Value::String(s),
        Some(Kind::ListValue(l)) => serde_json::Value::Array(l.values.into_iter().map(value_to_json).collect()),
        Some(Kind::StructValue(s)) => serde_json::Value::Object(struct_to_json(s)),
    }
}

pub fn struct_to_json(s: Struct) -> serde_json::Map<String, serde_json::Value> {
    s.fields.into_iter().map(|(k, v)| (k, value_to_json(v))).collect()
}

#[allow(clippy::cast_possible_truncation)]
fn number(n: f64) -> serde_json::Value {
    if n.fract() == 0.0 && n.abs() <= EXACT_INT {
        // Exact: |n| <= 2^53 fits an i64 without loss.
        serde_json::Value::from(n as i64)
    } else {
        serde_json::Number::from_f64(n).map_or(serde_json::Value::Null, serde_json::Value::Number)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trips_through_struct_with_integers_kept_integral() {
        let j = serde_json::json!({"a": 30000, "b": 1.5, "c": [true, null, "x"], "d": {"e": -7}});
        let serde_json::Value::Object(o) = j.clone() else {
            unreachable!()
        };
        assert_eq!(serde_json::Value::Object(struct_to_json(struct_from_json(o))), j);
    }
}
