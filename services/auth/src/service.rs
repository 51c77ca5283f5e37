//! The gRPC face of the auth service: each method delegates to the verifier
//! for its credential and maps refusals through [`ServiceError`] once.

use relaymesh_proto::auth::v1::{
    SignNodeFrameRequest, SignNodeFrameResponse, VerifyNodeFrameRequest, VerifyNodeFrameResponse,
    VerifyNodeSecretRequest, VerifyNodeSecretResponse, VerifyTokenRequest, VerifyTokenResponse, auth_service_server,
};
use relaymesh_rpc::ServiceError;
use relaymesh_state::SharedState;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::node_frames::NodeFrames;
use crate::{AuthConfig, AuthError, TokenVerifier};

pub struct AuthService {
    tokens: TokenVerifier,
    node_frames: NodeFrames,
    node_agent_secret: Option<String>,
}

impl AuthService {
    /// A service whose node-frame replay memory is private to it; enough for
    /// one process. Replicas must share state: use [`AuthService::with_state`].
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        Self::with_state(config, SharedState::memory())
    }

    pub fn with_state(config: &AuthConfig, state: SharedState) -> Result<Self, AuthError> {
        if !config.verify_signature {
            tracing::warn!("VERIFY_SIGNATURE=false: node frame signatures are NOT checked; never run so in production");
        } else if config.node_shared_secret.as_deref().is_none_or(str::is_empty) {
            tracing::warn!("NODE_SHARED_SECRET is not set: every node frame will be refused");
        }
        Ok(Self {
            tokens: TokenVerifier::new(config)?,
            node_frames: NodeFrames::new(config, state),
            node_agent_secret: config.node_agent_shared_secret.clone(),
        })
    }
}

/// Counts a refused node frame by reason, then turns it into a status.
fn refuse_node_frame(e: AuthError) -> Status {
    metrics::counter!("relaymesh_auth_node_frames_refused_total", "reason" => e.reason().as_str_name()).increment(1);
    e.into_status()
}

#[tonic::async_trait]
impl auth_service_server::AuthService for AuthService {
    async fn verify_token(&self, req: Request<VerifyTokenRequest>) -> Result<Response<VerifyTokenResponse>, Status> {
        let claims = self.tokens.verify(&req.get_ref().token).map_err(|e| {
            metrics::counter!("relaymesh_auth_token_refused_total", "reason" => e.reason().as_str_name()).increment(1);
            e.into_status()
        })?;
        Ok(Response::new(VerifyTokenResponse {
            roles: claims.all_roles(),
            display_name: claims
                .preferred_username
                .clone()
                .or(claims.name.clone())
                .unwrap_or_default(),
            user_id: claims.sub,
            expires_at: claims.exp,
        }))
    }

    async fn verify_node_frame(
        &self,
        req: Request<VerifyNodeFrameRequest>,
    ) -> Result<Response<VerifyNodeFrameResponse>, Status> {
        let frame = frame_text(&req.get_ref().frame).map_err(ServiceError::into_status)?;
        let accepted = self.node_frames.verify(frame).await.map_err(refuse_node_frame)?;
        Ok(Response::new(VerifyNodeFrameResponse {
            node_id: accepted.node_id,
            verified: accepted.verified,
        }))
    }

    async fn sign_node_frame(
        &self,
        req: Request<SignNodeFrameRequest>,
    ) -> Result<Response<SignNodeFrameResponse>, Status> {
        let frame = frame_text(&req.get_ref().frame).map_err(ServiceError::into_status)?;
        let (signed, signature) = self.node_frames.sign(frame).map_err(ServiceError::into_status)?;
        Ok(Response::new(SignNodeFrameResponse {
            frame: signed.into_bytes(),
            signature,
        }))
    }

    async fn verify_node_secret(
        &self,
        req: Request<VerifyNodeSecretRequest>,
    ) -> Result<Response<VerifyNodeSecretResponse>, Status> {
        let Some(expected) = &self.node_agent_secret else {
            return Err(AuthError::NoKey("NODE_AGENT_SHARED_SECRET".into()).into_status());
        };
        let presented = req.get_ref().presented.as_bytes();
        if bool::from(presented.ct_eq(expected.as_bytes())) {
            Ok(Response::new(VerifyNodeSecretResponse {}))
        } else {
            Err(AuthError::Invalid("node secret".into()).into_status())
        }
    }
}

/// A node frame's bytes as text: JSON is UTF-8.
fn frame_text(bytes: &[u8]) -> Result<&str, AuthError> {
    std::str::from_utf8(bytes).map_err(|_| AuthError::InvalidFrame("not UTF-8".into()))
}
