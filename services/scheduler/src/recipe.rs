//! Workflow recipes: versioned JSON that says what one task does on one
//! device. A task is the whole workflow on one device (seed 002: one device
//! runs one workflow at a time; a flow is never split into several tasks).

use serde::Deserialize;

use crate::error::{Result, SchedulerError};

use relaymesh_proto::scheduler::v1::CommandType;

/// Whether `name` is one of seed 000's command types, as the contract
/// (`relaymesh.scheduler.v1.CommandType`) lists them.
pub fn is_command_type(name: &str) -> bool {
    CommandType::from_str_name(name).is_some_and(|t| t != CommandType::Unspecified)
}

/// `{"command_type": "WATCH_VIDEO", "params": {...}, "timeout_ms": 90000,
///   "upload_timeout_ms": 30000, "steps": [...]}`; only `command_type` is
/// required. `steps` is carried to the node inside `params` untouched.
#[derive(Debug, Clone, Deserialize)]
pub struct Recipe {
    pub command_type: String,
    #[serde(default)]
    pub params: Option<serde_json::Map<String, serde_json::Value>>,
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    #[serde(default)]
    pub upload_timeout_ms: Option<u64>,
    #[serde(default)]
    pub steps: Option<serde_json::Value>,
}

impl Recipe {
    /// Parses and validates; an unknown command type is refused here, at
    /// creation, never on a device.
    pub fn parse(json: &str) -> Result<Self> {
        let r: Recipe = serde_json::from_str(json).map_err(|e| SchedulerError::Invalid(format!("recipe: {e}")))?;
        if !is_command_type(&r.command_type) {
            return Err(SchedulerError::UnknownCommandType(r.command_type));
        }
        Ok(r)
    }

    /// The COMMAND params for one run: the recipe's params, overridden by the
    /// run's, with the recipe's steps and upload timeout carried along.
    pub fn params_for_run(&self, run_params_json: &str, upload_timeout_ms: u64) -> Result<String> {
        let mut params = self.params.clone().unwrap_or_default();
        if !run_params_json.trim().is_empty() {
            let run: serde_json::Map<String, serde_json::Value> = serde_json::from_str(run_params_json)
                .map_err(|e| SchedulerError::Invalid(format!("params must be a JSON object: {e}")))?;
            params.extend(run);
        }
        if let Some(steps) = &self.steps {
            params.insert("steps".into(), steps.clone());
        }
        params.insert("upload_timeout_ms".into(), upload_timeout_ms.into());
        Ok(serde_json::Value::Object(params).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_command_types_are_refused_at_creation() {
        assert!(matches!(
            Recipe::parse(r#"{"command_type":"FORMAT_DISK"}"#),
            Err(SchedulerError::UnknownCommandType(_))
        ));
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
            assert!(Recipe::parse(&format!(r#"{{"command_type":"{t}"}}"#)).is_ok(), "{t}");
        }
        assert!(Recipe::parse(r#"{"command_type":"COMMAND_TYPE_UNSPECIFIED"}"#).is_err());
    }

    #[test]
    fn run_params_override_recipe_params() {
        let r = Recipe::parse(r#"{"command_type":"WATCH_VIDEO","params":{"video_id":"a","seconds":30}}"#).unwrap();
        let p: serde_json::Value =
            serde_json::from_str(&r.params_for_run(r#"{"video_id":"b"}"#, 30000).unwrap()).unwrap();
        assert_eq!(p["video_id"], "b");
        assert_eq!(p["seconds"], 30);
        assert_eq!(p["upload_timeout_ms"], 30000);
        assert!(r.params_for_run("[1]", 1).is_err());
    }
}
