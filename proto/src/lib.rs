//! The gRPC contracts of every relaymesh service, compiled from `proto/`.
//!
//! One module per package (`relaymesh.<service>.v1`). Client and server
//! code for each service comes from the same generated module.

#![allow(clippy::all)]
#![allow(missing_docs)]

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
pub mod delivery {
    pub mod v1 {
        tonic::include_proto!("relaymesh.delivery.v1");
    }
}

/// Encoded `FileDescriptorSet` of every package, for gRPC reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/relaymesh_descriptor.bin"));
