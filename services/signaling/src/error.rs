use relaymesh_proto::signaling::v1::ErrorReason;
use relaymesh_rpc::ServiceError;
use tonic::Code;

/// What the signaling service refuses or fails with. `reason()` is the proto
/// enum the gateway maps to seed 001's error codes
/// (gateway/src/protocols/copilot.rs).
#[derive(Debug, thiserror::Error)]
pub enum SignalingError {
    #[error("the client did not answer callback {0} in time")]
    CallbackTimeout(String),
    #[error("connection {0} is closed")]
    ConnectionClosed(String),
    #[error("no pending callback {0}: unknown, expired or already answered")]
    UnknownRequestId(String),
    #[error("callback {0} is not answered by this frame type")]
    WrongAnswerType(String),
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("shared state: {0}")]
    State(#[from] relaymesh_state::StateError),
}

impl ServiceError for SignalingError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::CallbackTimeout(_) => Code::DeadlineExceeded,
            Self::ConnectionClosed(_) | Self::UnknownRequestId(_) => Code::NotFound,
            Self::WrongAnswerType(_) | Self::Invalid(_) => Code::InvalidArgument,
            Self::State(_) => Code::Unavailable,
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::CallbackTimeout(_) => ErrorReason::CallbackTimeout,
            Self::ConnectionClosed(_) => ErrorReason::ConnectionClosed,
            Self::UnknownRequestId(_) => ErrorReason::UnknownRequestId,
            Self::WrongAnswerType(_) => ErrorReason::WrongAnswerType,
            Self::Invalid(_) => ErrorReason::InvalidArgument,
            Self::State(_) => ErrorReason::StateUnavailable,
        }
    }
}

pub type Result<T, E = SignalingError> = std::result::Result<T, E>;
