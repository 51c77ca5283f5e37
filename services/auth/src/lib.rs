//! The auth service: verifies user JWTs for the copilot, livechat and signal
//! protocols, and node credentials for the device farm: node frame HMACs
//! (with timestamp and replay checks) and the node agent's shared secret.
//!
//! It never issues user tokens (the identity provider does) and never logs
//! one, nor a node secret.

mod config;
mod error;
mod jwks;
mod node_frames;
mod service;
#[cfg(feature = "testing")]
pub mod testing;
mod verifier;

use relaymesh_proto::auth::v1::auth_service_server::AuthServiceServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use relaymesh_state::SharedState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::{
    AuthConfig, DEFAULT_JWKS_REFETCH_COOLDOWN_MS, DEFAULT_JWKS_REFRESH_SECS, DEFAULT_NODE_REPLAY_WINDOW_MS,
};
pub use error::AuthError;
pub use jwks::JwksKeys;
pub use node_frames::{AcceptedFrame, NodeFrames};
pub use service::AuthService;
pub use verifier::{Claims, TokenVerifier};

/// Serves the auth API on `listener` until `shutdown`. `state` remembers
/// node frame message ids, so replicas sharing it refuse each other's
/// replays.
pub async fn serve(
    listener: TcpListener,
    config: AuthConfig,
    state: SharedState,
    shutdown: CancellationToken,
) -> Result<(), AuthError> {
    let service = AuthService::with_state(&config, state)?;
    // The refresh task is owned here: stopped and awaited when serving ends,
    // whether by shutdown or by error.
    let stop = shutdown.child_token();
    let refresh = service.jwks_refresh_task(stop.clone()).map(tokio::spawn);
    let served = GrpcServer::new()
        .add_service(AuthServiceServer::new(service))
        .serve(listener, ServeOptions::default(), shutdown)
        .await;
    stop.cancel();
    if let Some(task) = refresh
        && let Err(err) = task.await
    {
        tracing::warn!(error = %err, "jwks refresh task failed");
    }
    served.map_err(AuthError::from)
}

impl From<RpcError> for AuthError {
    fn from(e: RpcError) -> Self {
        AuthError::Serve(e.to_string())
    }
}
