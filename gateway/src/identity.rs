//! User identity from a JWT, verified by the auth service.

use relaymesh_proto::auth::v1::{ErrorReason, VerifyTokenRequest};
use relaymesh_proto::client::v1::CloseCode;
use tonic::Code;

use crate::Shared;

#[derive(Debug, Clone)]
pub struct Identity {
    pub user_id: String,
    pub roles: Vec<String>,
}

/// Why a token was not accepted, in the terms close codes need.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthFailure {
    #[error("missing token")]
    Missing,
    #[error("token expired")]
    Expired,
    #[error("invalid token")]
    Invalid,
    #[error("auth service unavailable")]
    Unavailable,
}

impl AuthFailure {
    /// The contract's close code: 1008 no credentials, 4001 expired or
    /// invalid, 1011 when we could not check.
    pub fn close_code(&self) -> CloseCode {
        match self {
            Self::Missing => CloseCode::PolicyViolation,
            Self::Expired | Self::Invalid => CloseCode::AuthFailed,
            Self::Unavailable => CloseCode::InternalError,
        }
    }
}

pub async fn verify(gw: &Shared, token: Option<&str>) -> Result<Identity, AuthFailure> {
    let token = token.filter(|t| !t.is_empty()).ok_or(AuthFailure::Missing)?;
    let mut auth = gw.upstreams.auth.clone();
    match auth
        .verify_token(VerifyTokenRequest {
            token: token.to_owned(),
        })
        .await
    {
        Ok(resp) => {
            let r = resp.into_inner();
            Ok(Identity {
                user_id: r.user_id,
                roles: r.roles,
            })
        }
        Err(status) if status.code() == Code::Unauthenticated => {
            if relaymesh_rpc::reason_of::<ErrorReason>(&status) == Some(ErrorReason::TokenExpired) {
                Err(AuthFailure::Expired)
            } else {
                Err(AuthFailure::Invalid)
            }
        }
        Err(status) => {
            tracing::warn!(code = ?status.code(), status_message = status.message(), "token check failed");
            Err(AuthFailure::Unavailable)
        }
    }
}
