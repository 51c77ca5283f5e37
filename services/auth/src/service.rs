use relaymesh_proto::auth::v1::{
    SignNodeFrameRequest, SignNodeFrameResponse, VerifyNodeFrameRequest, VerifyNodeFrameResponse,
    VerifyNodeSecretRequest, VerifyNodeSecretResponse, VerifyTokenRequest, VerifyTokenResponse, auth_server::Auth,
};
use relaymesh_rpc::ServiceError;
use subtle::ConstantTimeEq;
use tonic::{Request, Response, Status};

use crate::{AuthConfig, AuthError, TokenVerifier};

pub struct AuthService {
    tokens: TokenVerifier,
    node_agent_secret: Option<String>,
}

impl AuthService {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        if !config.verify_signature {
            tracing::warn!("VERIFY_SIGNATURE=false: node frame signatures are NOT checked; never run so in production");
        }
        Ok(Self {
            tokens: TokenVerifier::new(config)?,
            node_agent_secret: config.node_agent_shared_secret.clone(),
        })
    }
}

#[tonic::async_trait]
impl Auth for AuthService {
    async fn verify_token(&self, req: Request<VerifyTokenRequest>) -> Result<Response<VerifyTokenResponse>, Status> {
        let claims = self.tokens.verify(&req.get_ref().token).map_err(|e| {
            metrics::counter!("auth_token_refused_total", "reason" => e.reason()).increment(1);
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
        _req: Request<VerifyNodeFrameRequest>,
    ) -> Result<Response<VerifyNodeFrameResponse>, Status> {
        Err(Status::unimplemented(
            "node frame signatures arrive with the device-farm issue",
        ))
    }

    async fn sign_node_frame(
        &self,
        _req: Request<SignNodeFrameRequest>,
    ) -> Result<Response<SignNodeFrameResponse>, Status> {
        Err(Status::unimplemented(
            "node frame signatures arrive with the device-farm issue",
        ))
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
