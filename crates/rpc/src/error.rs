use tonic::{Code, Status};

/// An error a service returns to its callers. Each service's error enum
/// implements this once; `into_status` is the only place it becomes a
/// `tonic::Status`, so the mapping is one table per service.
pub trait ServiceError: std::error::Error {
    /// The gRPC code callers see.
    fn code(&self) -> Code;

    /// A stable, machine-readable reason (`"channel_full"`), carried in the
    /// `relaymesh-reason` metadata so the gateway can map it to a protocol's
    /// error code without parsing messages.
    fn reason(&self) -> &'static str;

    fn into_status(self) -> Status
    where
        Self: Sized,
    {
        let mut status = Status::new(self.code(), self.to_string());
        if let Ok(v) = self.reason().parse() {
            status.metadata_mut().insert(REASON_KEY, v);
        }
        status
    }
}

/// Metadata key carrying [`ServiceError::reason`].
pub const REASON_KEY: &str = "relaymesh-reason";

/// The reason a status carries, if a relaymesh service set one.
pub fn reason_of(status: &Status) -> Option<&str> {
    status.metadata().get(REASON_KEY).and_then(|v| v.to_str().ok())
}

/// Failures of the plumbing itself (binding, serving, connecting).
#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("invalid upstream url {url:?}: {source}")]
    InvalidUrl {
        url: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("invalid upstream target {url:?}: expected scheme://host[:port][,…]")]
    InvalidTarget { url: String },
    #[error("{url}: an https:// service needs GRPC_TLS_CA")]
    TlsNotConfigured { url: String },
    #[error("reading {path}: {source}")]
    TlsFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("grpc transport: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("grpc reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("channel is full")]
    struct Full;

    impl ServiceError for Full {
        fn code(&self) -> Code {
            Code::ResourceExhausted
        }
        fn reason(&self) -> &'static str {
            "channel_full"
        }
    }

    #[test]
    fn status_carries_code_message_and_reason() {
        let status = Full.into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "channel is full");
        assert_eq!(reason_of(&status), Some("channel_full"));
    }
}
