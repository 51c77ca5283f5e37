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
    #[error("serve: {0}")]
    Serve(String),
}

impl ServiceError for AuthError {
    fn code(&self) -> Code {
        match self {
            Self::Expired | Self::Invalid(_) | Self::NoKey(_) => Code::Unauthenticated,
            Self::Config(_) => Code::FailedPrecondition,
            Self::Serve(_) => Code::Internal,
        }
    }

    fn reason(&self) -> &'static str {
        match self {
            Self::Expired => "token_expired",
            Self::Invalid(_) | Self::NoKey(_) => "token_invalid",
            Self::Config(_) => "misconfigured",
            Self::Serve(_) => "internal",
        }
    }
}
