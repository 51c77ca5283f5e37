//! The auth service's errors and their one mapping to gRPC codes and
//! reasons.

use relaymesh_proto::auth::v1::ErrorReason;
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
    type Reason = ErrorReason;

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

    fn reason(&self) -> ErrorReason {
        match self {
            Self::Expired => ErrorReason::TokenExpired,
            Self::Invalid(_) | Self::NoKey(_) => ErrorReason::TokenInvalid,
            Self::Config(_) => ErrorReason::Misconfigured,
            Self::InvalidFrame(_) => ErrorReason::InvalidFrame,
            Self::InvalidSignature(_) => ErrorReason::InvalidSignature,
            Self::Replayed { .. } => ErrorReason::Replayed,
            Self::StaleTimestamp(_) => ErrorReason::StaleTimestamp,
            Self::NoNodeKey => ErrorReason::NoNodeKey,
            Self::State(_) => ErrorReason::Unavailable,
            Self::Serve(_) => ErrorReason::Internal,
        }
    }
}
