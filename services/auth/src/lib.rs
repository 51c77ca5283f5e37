//! The auth service: verifies user JWTs for the copilot, livechat and signal
//! protocols, and node credentials for the device farm.
//!
//! It never issues tokens (the identity provider does) and never logs one.

mod config;
mod error;
mod service;
mod verifier;

use relaymesh_proto::auth::v1::auth_server::AuthServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::AuthConfig;
pub use error::AuthError;
pub use service::AuthService;
pub use verifier::{Claims, TokenVerifier};

/// Serves the auth API on `listener` until `shutdown`.
pub async fn serve(listener: TcpListener, config: AuthConfig, shutdown: CancellationToken) -> Result<(), AuthError> {
    let service = AuthService::new(&config)?;
    GrpcServer::new()
        .add_service(AuthServer::new(service))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
        .map_err(AuthError::from)
}

impl From<RpcError> for AuthError {
    fn from(e: RpcError) -> Self {
        AuthError::Serve(e.to_string())
    }
}
