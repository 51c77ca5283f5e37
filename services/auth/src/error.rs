//! The auth service's errors and their one mapping to gRPC codes and
//! reasons.

use relaymesh_rpc::ServiceError;
use tonic::Code;

/// Everything the auth service can refuse or fail with.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("expired")]
    Expired,
    #[error("invalid: {0}")]
    Invalid(String),
    #[error("no key configured for {0}")]
    NoKey(String),
    #[error("configuration: {0}")]
    Config(String),
    #[error("invalid node frame: {0}")]
    InvalidFrame(String),
    #[error("invalid node frame signature: {0}")]
    InvalidSignature(String),
    #[error("node frame {message_id} of {node_id} was already seen")]
    Replayed { node_id: String, message_id: String },
    #[error("node frame timestamp {0} is outside the replay window")]
    StaleTimestamp(String),
    #[error("NODE_SHARED_SECRET is not set; node frames cannot be signed or verified")]
    NoNodeKey,
    #[error("shared state: {0}")]
    State(String),
    #[error("serve: {0}")]
    Serve(String),
}

impl ServiceError for AuthError {
    fn code(&self) -> Code {
        match self {
            Self::Expired
            | Self::Invalid(_)
            | Self::NoKey(_)
            | Self::InvalidSignature(_)
            | Self::Replayed { .. }
            | Self::StaleTimestamp(_) => Code::Unauthenticated,
            Self::InvalidFrame(_) => Code::InvalidArgument,
            Self::Config(_) | Self::NoNodeKey => Code::FailedPrecondition,
            Self::State(_) => Code::Unavailable,
            Self::Serve(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::Invalid(_) | Self::NoKey(_) => "token_invalid",
            Self::Config(_) => "misconfigured",
            Self::InvalidFrame(_) => "invalid_frame",
            Self::InvalidSignature(_) => "invalid_signature",
            Self::Replayed { .. } => "replayed",
            Self::StaleTimestamp(_) => "stale_timestamp",
            Self::NoNodeKey => "no_key",
            Self::State(_) => "unavailable",
            Self::Serve(_) => "internal",
        }
    }
}
