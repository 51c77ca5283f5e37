//! Workflow recipes: what one task does on one device. A task is the whole
//! workflow on one device (seed 002: one device runs one workflow at a time;
//! a flow is never split into several tasks).
//!
//! The contract's type is `relaymesh.scheduler.v1.Recipe`; the store keeps
//! it as the JSON the HTTP API speaks (`{"command_type": "WATCH_VIDEO",
//! "params": {...}, ...}`), so rows written before the typed contract read
//! back unchanged.

use relaymesh_proto::enum_names::{parse_wire_name, wire_name};
use relaymesh_proto::json::{struct_from_json, struct_to_json, value_from_json, value_to_json};
use relaymesh_proto::scheduler::v1::{self as pb, CommandType};
use serde::{Deserialize, Serialize};

use crate::error::{Result, SchedulerError};

type JsonObject = serde_json::Map<String, serde_json::Value>;

/// A recipe as stored. Only `command_type` is required; `steps` is carried
/// to the node inside `params` untouched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recipe {
    #[serde(with = "relaymesh_proto::enum_names::wire_enum")]
    pub command_type: CommandType,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upload_timeout_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<serde_json::Value>,
}

impl Recipe {
    /// Validates a recipe from the API; an unknown command type is refused
    /// here, at creation, never on a device.
    pub fn from_proto(r: pb::Recipe) -> Result<Self> {
        let command_type = r.command_type();
        if command_type == CommandType::Unspecified {
            return Err(SchedulerError::UnknownCommandType(r.command_type.to_string()));
        }
        Ok(Self {
            command_type,
            params: r.params.map(struct_to_json),
            timeout_ms: (r.timeout_ms > 0).then_some(r.timeout_ms),
            upload_timeout_ms: (r.upload_timeout_ms > 0).then_some(r.upload_timeout_ms),
            steps: r.steps.map(value_to_json),
        })
    }

    pub fn to_proto(&self) -> pb::Recipe {
        pb::Recipe {
            command_type: self.command_type as i32,
            params: self.params.clone().map(struct_from_json),
            timeout_ms: self.timeout_ms.unwrap_or(0),
            upload_timeout_ms: self.upload_timeout_ms.unwrap_or(0),
            steps: self.steps.clone().map(value_from_json),
        }
    }

    /// Reads a stored recipe.
    pub fn parse(json: &str) -> Result<Self> {
        let r: Self = serde_json::from_str(json).map_err(|e| SchedulerError::Store(format!("recipe: {e}")))?;
        if r.command_type == CommandType::Unspecified {
            return Err(SchedulerError::Store("stored recipe has no known command type".into()));
        }
        Ok(r)
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The COMMAND params for one run: the recipe's params, overridden by the
    /// run's, with the recipe's steps and upload timeout carried along.
    pub fn params_for_run(&self, run: Option<JsonObject>, upload_timeout_ms: u64) -> JsonObject {
        let mut params = self.params.clone().unwrap_or_default();
        params.extend(run.unwrap_or_default());
        if let Some(steps) = &self.steps {
            params.insert("steps".into(), steps.clone());
        }
        params.insert("upload_timeout_ms".into(), upload_timeout_ms.into());
        params
    }
}

/// Whether `name` is one of seed 000's command types, by its JSON name.
pub fn is_command_type(name: &str) -> bool {
    parse_wire_name::<CommandType>(name).is_some()
}

/// The JSON name of a command type (`"WATCH_VIDEO"`).
pub fn command_type_name(t: CommandType) -> &'static str {
    wire_name(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_types_are_refused_at_creation() {
        let unknown = pb::Recipe {
            command_type: 99,
            ..Default::default()
        };
        assert!(matches!(
            Recipe::from_proto(unknown),
            Err(SchedulerError::UnknownCommandType(_))
        ));
        assert!(Recipe::from_proto(pb::Recipe::default()).is_err());
        for t in [
            "WATCH_VIDEO",
            "RANDOM_WATCH",
            "LIKE_VIDEO",
            "WRITE_COMMENT",
            "SUBSCRIBE_CHANNEL",
            "RESTART_DEVICE",
            "UPDATE_PERSONA",
            "SYNC_STATE",
        ] {
            assert!(is_command_type(t), "{t}");
            assert!(Recipe::parse(&format!(r#"{{"command_type":"{t}"}}"#)).is_ok(), "{t}");
        }
        assert!(!is_command_type("UNSPECIFIED"));
        assert!(!is_command_type("FORMAT_DISK"));
    }

    #[test]
    fn run_params_override_recipe_params() {
        let r = Recipe::parse(r#"{"command_type":"WATCH_VIDEO","params":{"video_id":"a","seconds":30}}"#).unwrap();
        let run = serde_json::json!({"video_id": "b"});
        let p = r.params_for_run(run.as_object().cloned(), 30000);
        assert_eq!(p["video_id"], "b");
        assert_eq!(p["seconds"], 30);
        assert_eq!(p["upload_timeout_ms"], 30000);
    }

    #[test]
    fn recipes_round_trip_through_the_contract_and_the_store() {
        let json = r#"{"command_type":"WRITE_COMMENT","params":{"text":"hi","x":10},"timeout_ms":5000,"steps":[{"tap":[1,2]}]}"#;
        let r = Recipe::parse(json).unwrap();
        assert_eq!(Recipe::from_proto(r.to_proto()).unwrap(), r);
        assert_eq!(r.to_json(), json);
    }
}
