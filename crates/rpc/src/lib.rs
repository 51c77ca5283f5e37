//! gRPC plumbing shared by every service and the gateway.
//!
//! - [`GrpcServer`]: every server gets health checking, reflection, a request
//!   timeout, a concurrency limit, a request span whose parent is the
//!   caller's trace context, and per-method metrics; it drains on shutdown.
//! - [`client`]: lazily connected channels that inject the current trace
//!   context into every call; balanced ones spread calls over every replica
//!   a name resolves to.
//! - [`local`]: calls between roles of one process (`relaymesh up`) handed
//!   to the served routes without the socket; [`LocalOrRemote`] hands them
//!   to the typed handler, without encoding either.
//! - [`calls`]: the typed calls' one name per service (`ChannelCalls`…).
//! - [`tls`]: optional TLS of the mesh's own gRPC.
//! - [`ServiceError`]: the one mapping from a service's error enum to a
//!   `tonic::Status`.

pub mod calls;
pub mod client;
mod error;
pub mod local;
mod local_or_remote;
mod metrics_layer;
mod server;
pub mod tls;

pub use calls::{ChannelCalls, MatchCalls, SignalingCalls};
pub use client::{
    BalanceOptions, DnsResolver, Resolve, RpcChannel, TracedChannel, connect_active, connect_balanced, connect_lazy,
};
pub use error::{RpcError, ServiceError, metadata_of, reason_of};
pub use local_or_remote::{LocalOrRemote, proto_method_len, proto_method_name};
pub use metrics_layer::RpcMetricsLayer;
pub use server::{GrpcServer, ServeOptions};
