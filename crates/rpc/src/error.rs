use relaymesh_proto::ErrorReason;
use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

/// An error a service returns to its callers. Each service's error enum
/// implements this once; `into_status` is the only place it becomes a
/// `tonic::Status`, so the mapping is one table per service.
pub trait ServiceError: std::error::Error {
    /// The service's proto enum of refusal reasons.
    type Reason: ErrorReason;

    /// The gRPC code callers see.
    fn code(&self) -> Code;

    /// Why, as a value of the service's `ErrorReason` proto enum. It travels
    /// as the `reason` of a `google.rpc.ErrorInfo` in the status details, so
    /// any client (the gateway, or one generated from `proto/`) maps it to
    /// its own terms without parsing messages.
    fn reason(&self) -> Self::Reason;

    fn into_status(self) -> Status
    where
        Self: Sized,
    {
        let reason = self.reason();
        let details =
            ErrorDetails::with_error_info(reason.name(), Self::Reason::DOMAIN, std::collections::HashMap::new());
        Status::with_error_details(self.code(), self.to_string(), details)
    }
}

/// The reason a relaymesh service gave for `status`, when it is one of `R`'s
/// values (same domain, known name).
pub fn reason_of<R: ErrorReason>(status: &Status) -> Option<R> {
    let info = status.get_details_error_info()?;
    if info.domain != R::DOMAIN {
        return None;
    }
    R::from_name(&info.reason)
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
    use relaymesh_proto::channel::v1::ErrorReason as ChannelReason;
    use relaymesh_proto::media_relay::v1::ErrorReason as RelayReason;

    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("channel is full")]
    struct Full;

    impl ServiceError for Full {
        type Reason = ChannelReason;
        fn code(&self) -> Code {
            Code::ResourceExhausted
        }
        fn reason(&self) -> ChannelReason {
            ChannelReason::ChannelFull
        }
    }

    #[test]
    fn status_carries_code_message_and_error_info() {
        let status = Full.into_status();
        assert_eq!(status.code(), Code::ResourceExhausted);
        assert_eq!(status.message(), "channel is full");
        let info = status.get_details_error_info().expect("error info");
        assert_eq!(
            (info.reason.as_str(), info.domain.as_str()),
            ("ERROR_REASON_CHANNEL_FULL", "relaymesh.channel.v1")
        );
        assert_eq!(reason_of::<ChannelReason>(&status), Some(ChannelReason::ChannelFull));
    }

    #[test]
    fn reasons_of_another_domain_are_not_read() {
        let status = Full.into_status();
        assert_eq!(reason_of::<RelayReason>(&status), None);
        assert_eq!(reason_of::<ChannelReason>(&Status::internal("plain")), None);
    }
}
