//! The gRPC contracts of every relaymesh service, compiled from `proto/`.
//!
//! One module per package (`relaymesh.<service>.v1`). Client and server
//! code for each service comes from the same generated module.

#![allow(clippy::all)]
#![allow(missing_docs)]

pub mod enum_names;
pub mod json;

pub mod auth {
    pub mod v1 {
        tonic::include_proto!("relaymesh.auth.v1");
    }
}
pub mod signaling {
    pub mod v1 {
        tonic::include_proto!("relaymesh.signaling.v1");
    }
}
pub mod query {
    pub mod v1 {
        tonic::include_proto!("relaymesh.query.v1");
    }
}
pub mod channel {
    pub mod v1 {
        tonic::include_proto!("relaymesh.channel.v1");
    }
}
pub mod media_relay {
    pub mod v1 {
        tonic::include_proto!("relaymesh.media_relay.v1");
    }
}
pub mod r#match {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/relaymesh.r#match.v1.rs"));
    }
}
pub mod scheduler {
    pub mod v1 {
        tonic::include_proto!("relaymesh.scheduler.v1");
    }
}
pub mod client {
    pub mod v1 {
        tonic::include_proto!("relaymesh.client.v1");
    }
}
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("relaymesh.delivery.v1");
    }
}

/// A proto enum that names why a service refused a call: its value's name is
/// the `reason` of the `google.rpc.ErrorInfo` in the status details, and its
/// package is the `domain`.
pub trait ErrorReason: Sized + Copy + 'static {
    /// The proto package that defines the enum: the ErrorInfo domain.
    const DOMAIN: &'static str;
    /// The value's name as written in the proto (`ERROR_REASON_CHANNEL_FULL`).
    fn name(self) -> &'static str;
    /// The value with this name, if any.
    fn from_name(name: &str) -> Option<Self>;
}

macro_rules! error_reason {
    ($ty:ty, $domain:literal) => {
        impl ErrorReason for $ty {
            const DOMAIN: &'static str = $domain;
            fn name(self) -> &'static str {
                self.as_str_name()
            }
            fn from_name(name: &str) -> Option<Self> {
                Self::from_str_name(name)
            }
        }
    };
}

error_reason!(auth::v1::ErrorReason, "relaymesh.auth.v1");
error_reason!(channel::v1::ErrorReason, "relaymesh.channel.v1");
error_reason!(media_relay::v1::ErrorReason, "relaymesh.media_relay.v1");
error_reason!(scheduler::v1::ErrorReason, "relaymesh.scheduler.v1");
error_reason!(signaling::v1::ErrorReason, "relaymesh.signaling.v1");
error_reason!(query::v1::ErrorReason, "relaymesh.query.v1");
error_reason!(r#match::v1::ErrorReason, "relaymesh.match.v1");

// A client event is a delivery envelope's body.
impl From<client::v1::LivechatResponse> for delivery::v1::envelope::Body {
    fn from(e: client::v1::LivechatResponse) -> Self {
        Self::Livechat(e)
    }
}

impl From<client::v1::CopilotResponse> for delivery::v1::envelope::Body {
    fn from(e: client::v1::CopilotResponse) -> Self {
        Self::Copilot(e)
    }
}

impl From<client::v1::SignalResponse> for delivery::v1::envelope::Body {
    fn from(e: client::v1::SignalResponse) -> Self {
        Self::Signal(e)
    }
}

/// Encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relaymesh_descriptor.bin"));
