//! What the media relay refuses, and the one table mapping each refusal to
//! a gRPC code and a stable reason.

use relaymesh_proto::media_relay::v1::ErrorReason;
use relaymesh_rpc::ServiceError;
use tonic::Code;

use crate::rtp::Ssrc;

/// Everything the media relay's API can refuse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaRelayError {
    #[error("ssrc {ssrc} is held by another live member")]
    SsrcInUse { ssrc: Ssrc },
    #[error("no peer with ssrc {ssrc} in channel {channel_id:?}")]
    UnknownPeer { channel_id: String, ssrc: Ssrc },
    #[error("no channel {0:?} on this relay")]
    UnknownChannel(String),
    #[error("floor holder {ssrc} is not a member of channel {channel_id:?}")]
    HolderNotMember { channel_id: String, ssrc: Ssrc },
    #[error("invalid argument: {0}")]
    InvalidArgument(&'static str),
}

pub type Result<T, E = MediaRelayError> = std::result::Result<T, E>;

impl ServiceError for MediaRelayError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::SsrcInUse { .. } => Code::AlreadyExists,
            Self::UnknownPeer { .. } | Self::UnknownChannel(_) => Code::NotFound,
            Self::HolderNotMember { .. } => Code::FailedPrecondition,
            Self::InvalidArgument(_) => Code::InvalidArgument,
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::SsrcInUse { .. } => ErrorReason::SsrcInUse,
            Self::UnknownPeer { .. } => ErrorReason::UnknownPeer,
            Self::UnknownChannel(_) => ErrorReason::UnknownChannel,
            Self::HolderNotMember { .. } => ErrorReason::HolderNotMember,
            Self::InvalidArgument(_) => ErrorReason::InvalidArgument,
        }
    }
}
