use relaymesh_proto::r#match::v1::ErrorReason;
use relaymesh_rpc::ServiceError;
use tonic::Code;

use crate::fsm::Refusal;

/// What the match service refuses or fails with. `reason()` is the proto
/// enum the gateway maps to seed 004's error codes
/// (gateway/src/protocols/signal.rs); `metadata()` carries the session id.
#[derive(Debug, thiserror::Error)]
pub enum MatchError {
    #[error("invalid request: {0}")]
    Invalid(&'static str),
    #[error("join the lobby first")]
    NotInLobby,
    #[error("player {0} is not in the lobby")]
    PlayerNotFound(String),
    #[error("no such match session")]
    SessionNotFound(Option<String>),
    #[error("player {0} already has an open match")]
    PlayerBusy(String),
    #[error("a player cannot ask themselves for a match")]
    SelfMatch,
    #[error("{}", refusal_text(*.refusal))]
    Refused { refusal: Refusal, session_id: String },
    #[error("not a player of this match")]
    NotAPlayer(String),
    #[error("match session {0} is busy, retry")]
    Contended(String),
    #[error("shared state: {0}")]
    State(#[from] relaymesh_state::StateError),
    #[error("stored session is corrupt")]
    Corrupt(#[from] prost::DecodeError),
}

fn refusal_text(r: Refusal) -> &'static str {
    match r {
        Refusal::NotTarget => "only the requested player may accept or decline",
        Refusal::NotRequester => "only the requester may cancel",
        Refusal::Closed => "the match has already ended",
        Refusal::InvalidTransition => "not allowed in the match's current state",
    }
}

impl MatchError {
    fn session_id(&self) -> Option<&str> {
        match self {
            Self::Refused { session_id, .. } | Self::NotAPlayer(session_id) | Self::Contended(session_id) => {
                Some(session_id)
            }
            Self::SessionNotFound(id) => id.as_deref(),
            _ => None,
        }
    }
}

impl ServiceError for MatchError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::Invalid(_) | Self::SelfMatch => Code::InvalidArgument,
            Self::NotInLobby | Self::Refused { .. } | Self::PlayerBusy(_) => Code::FailedPrecondition,
            Self::PlayerNotFound(_) | Self::SessionNotFound(_) => Code::NotFound,
            Self::NotAPlayer(_) => Code::PermissionDenied,
            Self::Contended(_) | Self::State(_) => Code::Unavailable,
            Self::Corrupt(_) => Code::Internal,
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::Invalid(_) => ErrorReason::InvalidArgument,
            Self::NotInLobby => ErrorReason::NotInLobby,
            Self::PlayerNotFound(_) => ErrorReason::PlayerNotFound,
            Self::SessionNotFound(_) => ErrorReason::SessionNotFound,
            Self::PlayerBusy(_) => ErrorReason::PlayerBusy,
            Self::SelfMatch => ErrorReason::SelfMatch,
            Self::Refused { refusal, .. } => match refusal {
                Refusal::NotTarget => ErrorReason::NotTarget,
                Refusal::NotRequester => ErrorReason::NotRequester,
                Refusal::Closed => ErrorReason::MatchClosed,
                Refusal::InvalidTransition => ErrorReason::InvalidTransition,
            },
            Self::NotAPlayer(_) => ErrorReason::NotAPlayer,
            Self::Contended(_) | Self::State(_) | Self::Corrupt(_) => ErrorReason::Unavailable,
        }
    }

    fn metadata(&self) -> std::collections::HashMap<String, String> {
        self.session_id()
            .map(|id| ("session_id".to_owned(), id.to_owned()))
            .into_iter()
            .collect()
    }
}

pub type Result<T, E = MatchError> = std::result::Result<T, E>;
