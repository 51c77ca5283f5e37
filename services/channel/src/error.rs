use relaymesh_proto::channel::v1::ErrorReason;
use relaymesh_rpc::ServiceError;
use tonic::Code;

/// What the channel service refuses or fails with. `reason()` is the proto
/// enum the gateway maps to seed 003's error codes (gateway/src/protocols/livechat.rs).
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    #[error("no channel {0}")]
    NotFound(String),
    #[error("channel {0} exists")]
    Exists(String),
    #[error("channel is full ({0} members)")]
    Full(u32),
    #[error("only the channel's creator may do that")]
    NotAllowed,
    #[error("already joined")]
    AlreadyJoined,
    #[error("not joined")]
    NotJoined,
    #[error("message is empty")]
    EmptyMessage,
    #[error("message exceeds {0} characters")]
    MessageTooLong(usize),
    #[error("not a member of the channel")]
    NotMember,
    #[error("the floor is held by {0}")]
    FloorBusy(String),
    #[error("channel has no floor control")]
    NoFloorControl,
    #[error("ssrc {0} is held by another member")]
    SsrcInUse(u32),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("channel {0} is busy, retry")]
    Contended(String),
    #[error("shared state: {0}")]
    State(#[from] relaymesh_state::StateError),
    #[error("media relay: {0}")]
    Relay(String),
    #[error("channel fan-out cap reached; retry in {} ms", .0.as_millis())]
    RateLimited(std::time::Duration),
}

impl ServiceError for ChannelError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::NotFound(_) => Code::NotFound,
            Self::Exists(_) | Self::AlreadyJoined | Self::SsrcInUse(_) => Code::AlreadyExists,
            Self::Full(_) | Self::RateLimited(_) => Code::ResourceExhausted,
            Self::NotAllowed => Code::PermissionDenied,
            Self::NotJoined | Self::NotMember | Self::FloorBusy(_) | Self::NoFloorControl => Code::FailedPrecondition,
            Self::EmptyMessage | Self::MessageTooLong(_) | Self::Invalid(_) => Code::InvalidArgument,
            Self::Contended(_) | Self::State(_) | Self::Relay(_) => Code::Unavailable,
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::NotFound(_) => ErrorReason::ChannelNotFound,
            Self::Exists(_) => ErrorReason::ChannelExists,
            Self::Full(_) => ErrorReason::ChannelFull,
            Self::NotAllowed => ErrorReason::NotAllowed,
            Self::AlreadyJoined => ErrorReason::AlreadyJoined,
            Self::NotJoined => ErrorReason::NotJoined,
            Self::EmptyMessage => ErrorReason::EmptyMessage,
            Self::MessageTooLong(_) => ErrorReason::MessageTooLong,
            Self::NotMember => ErrorReason::NotMember,
            Self::FloorBusy(_) => ErrorReason::FloorBusy,
            Self::NoFloorControl => ErrorReason::NoFloorControl,
            Self::SsrcInUse(_) => ErrorReason::SsrcInUse,
            Self::Invalid(_) => ErrorReason::InvalidArgument,
            Self::RateLimited(_) => ErrorReason::RateLimited,
            Self::Contended(_) | Self::State(_) | Self::Relay(_) => ErrorReason::Unavailable,
        }
    }

    /// RATE_LIMITED says when to retry: `retry_after_ms`.
    fn metadata(&self) -> std::collections::HashMap<String, String> {
        match self {
            Self::RateLimited(after) => {
                let ms = after.as_millis().max(1).to_string();
                std::collections::HashMap::from([(RETRY_AFTER_MS.to_owned(), ms)])
            }
            _ => std::collections::HashMap::new(),
        }
    }
}

/// The ErrorInfo metadata key of a RATE_LIMITED refusal's retry time, in
/// milliseconds (`relaymesh.channel.v1.ErrorReason`).
pub const RETRY_AFTER_MS: &str = "retry_after_ms";

pub type Result<T, E = ChannelError> = std::result::Result<T, E>;
