//! Node frame authentication (seed 000): the HMAC signature, the timestamp
//! window and replayed `message_id`s.
//!
//! Checks run cheapest-and-unauthenticated first: shape, then signature,
//! and only then freshness and replay, so a forged frame can neither learn
//! whether its timestamp would pass nor burn a genuine frame's message id.

use std::time::Duration;

use relaymesh_node_signature::{CanonicalFrame, NodeKey, SignatureError, parse_rfc3339_ms};
use relaymesh_state::SharedState;

use crate::{AuthConfig, AuthError};

/// A frame that passed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcceptedFrame {
    pub node_id: String,
    /// False when `VERIFY_SIGNATURE=false` let it through unchecked.
    pub verified: bool,
}

pub struct NodeFrames {
    key: Option<NodeKey>,
    verify_signature: bool,
    window: Duration,
    state: SharedState,
}

impl NodeFrames {
    pub fn new(config: &AuthConfig, state: SharedState) -> Self {
        Self {
            // An empty variable is how deployments leave a secret unset; an
            // empty HMAC key would accept anything signed with "".
            key: config
                .node_shared_secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(NodeKey::from_secret),
            verify_signature: config.verify_signature,
            window: Duration::from_millis(config.node_replay_window_ms),
            state,
        }
    }

    /// Authenticates one frame as received.
    pub async fn verify(&self, text: &str) -> Result<AcceptedFrame, AuthError> {
        let frame = CanonicalFrame::parse(text).map_err(|e| AuthError::InvalidFrame(e.to_string()))?;
        let field = |name: &'static str| {
            frame
                .str_field(name)
                .filter(|v| !v.is_empty())
                .ok_or_else(|| AuthError::InvalidFrame(format!("{name} is missing or not a string")))
        };
        let (node_id, message_id, timestamp) = (field("node_id")?, field("message_id")?, field("timestamp")?);

        let verified = if self.verify_signature {
            let key = self.key.as_ref().ok_or(AuthError::NoNodeKey)?;
            key.verify_frame(&frame).map_err(|e| match e {
                SignatureError::Frame(e) => AuthError::InvalidFrame(e.to_string()),
                other => AuthError::InvalidSignature(other.to_string()),
            })?;
            true
        } else {
            false
        };

        let sent_ms = parse_rfc3339_ms(&timestamp)
            .ok_or_else(|| AuthError::InvalidFrame(format!("timestamp {timestamp:?} is not RFC 3339")))?;
        let window_ms = u64::try_from(self.window.as_millis()).unwrap_or(u64::MAX);
        if chrono::Utc::now().timestamp_millis().abs_diff(sent_ms) > window_ms {
            return Err(AuthError::StaleTimestamp(timestamp));
        }

        // A frame stamped up to one window ahead stays fresh for up to two
        // windows from now, so remember its id that long.
        let key = format!("node-msg:{node_id}:{message_id}");
        let first = self
            .state
            .set_nx(&key, b"1", Some(self.window.saturating_mul(2)))
            .await
            .map_err(|e| AuthError::State(e.to_string()))?;
        if !first {
            return Err(AuthError::Replayed { node_id, message_id });
        }
        Ok(AcceptedFrame { node_id, verified })
    }

    /// The frame with its `signature` set, and the signature.
    pub fn sign(&self, text: &str) -> Result<(String, String), AuthError> {
        let key = self.key.as_ref().ok_or(AuthError::NoNodeKey)?;
        let frame = CanonicalFrame::parse(text).map_err(|e| AuthError::InvalidFrame(e.to_string()))?;
        let signature = key.sign_frame(&frame);
        Ok((frame.with_signature(&signature), signature))
    }
}
