use relaymesh_proto::scheduler::v1::ErrorReason;
use relaymesh_rpc::ServiceError;
use tonic::Code;

/// What the scheduler refuses or fails with.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    #[error("no workflow {0}")]
    WorkflowNotFound(String),
    #[error("no run {0}")]
    RunNotFound(String),
    #[error("no command {0}")]
    CommandNotFound(String),
    #[error("unknown command type {0:?}")]
    UnknownCommandType(String),
    #[error("unknown device {0}")]
    UnknownDevice(String),
    #[error("unknown node {0}")]
    UnknownNode(String),
    #[error("invalid request: {0}")]
    Invalid(String),
    #[error("command {0} belongs to another node")]
    WrongNode(String),
    #[error("store: {0}")]
    Store(String),
    #[error("artifact storage: {0}")]
    Artifact(String),
    /// This instance is a standby: another scheduler holds the lease.
    #[error("this scheduler is a standby; another one is active")]
    Standby,
    #[error("scheduler lease: {0}")]
    Lease(String),
}

impl From<sqlx::Error> for SchedulerError {
    fn from(e: sqlx::Error) -> Self {
        Self::Store(e.to_string())
    }
}

impl ServiceError for SchedulerError {
    type Reason = ErrorReason;

    fn code(&self) -> Code {
        match self {
            Self::WorkflowNotFound(_) | Self::RunNotFound(_) | Self::CommandNotFound(_) | Self::UnknownNode(_) => {
                Code::NotFound
            }
            Self::UnknownCommandType(_) | Self::UnknownDevice(_) | Self::Invalid(_) => Code::InvalidArgument,
            Self::WrongNode(_) => Code::PermissionDenied,
            Self::Store(_) | Self::Artifact(_) | Self::Standby | Self::Lease(_) => Code::Unavailable,
        }
    }

    fn reason(&self) -> ErrorReason {
        match self {
            Self::WorkflowNotFound(_) => ErrorReason::WorkflowNotFound,
            Self::RunNotFound(_) => ErrorReason::RunNotFound,
            Self::CommandNotFound(_) => ErrorReason::CommandNotFound,
            Self::UnknownCommandType(_) => ErrorReason::UnknownCommandType,
            Self::UnknownDevice(_) => ErrorReason::UnknownDevice,
            Self::UnknownNode(_) => ErrorReason::UnknownNode,
            Self::Invalid(_) => ErrorReason::InvalidArgument,
            Self::WrongNode(_) => ErrorReason::WrongNode,
            Self::Store(_) => ErrorReason::StoreUnavailable,
            Self::Artifact(_) => ErrorReason::ArtifactStore,
            Self::Standby => ErrorReason::Standby,
            Self::Lease(_) => ErrorReason::LeaseLost,
        }
    }
}

pub type Result<T, E = SchedulerError> = std::result::Result<T, E>;
