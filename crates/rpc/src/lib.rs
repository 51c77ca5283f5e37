//! gRPC plumbing shared by every service and the gateway.
//!
//! - [`GrpcServer`]: every server gets health checking, reflection, a request
//!   timeout, a concurrency limit, a request span whose parent is the
//!   caller's trace context, and per-method metrics; it drains on shutdown.
//! - [`client`]: lazily connected channels that inject the current trace
//!   context into every call.
//! - [`ServiceError`]: the one mapping from a service's error enum to a
//!   `tonic::Status`.

pub mod client;
mod error;
mod metrics_layer;
mod server;

pub use client::{RpcChannel, TracedChannel, connect_lazy};
pub use error::{RpcError, ServiceError, metadata_of, reason_of};
pub use metrics_layer::RpcMetricsLayer;
pub use server::{GrpcServer, ServeOptions};
