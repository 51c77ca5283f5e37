//! Proto enums written as their value names without the prefix: the JSON
//! form of `CommandType`, `NodeStatus`, `ResultStatus` and `TaskState` in the
//! node protocol and the scheduler's HTTP API (`"WATCH_VIDEO"`, `"READY"`).
//! The names come from the generated `as_str_name`, so they cannot drift
//! from the `.proto` files.

use crate::scheduler::v1::{CommandType, NodeStatus, ResultStatus, TaskState};

/// A proto enum whose JSON form is its value name without the prefix.
pub trait WireEnum: Sized + Copy {
    /// The proto value-name prefix, e.g. `COMMAND_TYPE_`.
    const PREFIX: &'static str;
    /// The proto value name, e.g. `COMMAND_TYPE_WATCH_VIDEO`.
    fn proto_name(self) -> &'static str;
    fn from_proto_name(name: &str) -> Option<Self>;
    /// What an unknown name reads as; `None` refuses it.
    fn unknown() -> Option<Self>;
}

macro_rules! wire_enum {
    ($ty:ty, $prefix:literal, $unknown:expr) => {
        impl WireEnum for $ty {
            const PREFIX: &'static str = $prefix;
            fn proto_name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_proto_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
            fn unknown() -> Option<Self> {
                $unknown
            }
        }
    };
}

// An unknown command type is kept as UNSPECIFIED so the node can report it
// as unsupported instead of refusing the frame as malformed.
wire_enum!(CommandType, "COMMAND_TYPE_", Some(CommandType::Unspecified));
wire_enum!(NodeStatus, "NODE_STATUS_", Some(NodeStatus::Unspecified));
wire_enum!(ResultStatus, "RESULT_STATUS_", None);
wire_enum!(TaskState, "TASK_STATE_", None);

/// The JSON name of `e`: `CommandType::WatchVideo` is `"WATCH_VIDEO"`.
pub fn wire_name<E: WireEnum>(e: E) -> &'static str {
    let full = e.proto_name();
    full.strip_prefix(E::PREFIX).unwrap_or(full)
}

/// The value named `name` in JSON; `None` when unknown.
pub fn parse_wire_name<E: WireEnum>(name: &str) -> Option<E> {
    if name.is_empty() || name == "UNSPECIFIED" {
        return None;
    }
    E::from_proto_name(&format!("{}{name}", E::PREFIX))
}

/// `#[serde(with = "wire_enum")]` for a [`WireEnum`] field.
pub mod wire_enum {
    use serde::{Deserialize as _, Deserializer, Serializer};

    use super::{WireEnum, parse_wire_name, wire_name};

    pub fn serialize<E: WireEnum, S: Serializer>(e: &E, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(wire_name(*e))
    }

    pub fn deserialize<'de, E: WireEnum, D: Deserializer<'de>>(d: D) -> Result<E, D::Error> {
        let name = String::deserialize(d)?;
        parse_wire_name(&name)
            .or_else(E::unknown)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown value {name:?}")))
    }
}
