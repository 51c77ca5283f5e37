//! JWT verification: HS256 with a shared secret, RS256/ES256 with JWKS keys
//! chosen by the token's `kid`.

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::{AuthConfig, AuthError};

/// What relaymesh reads from a user token.
#[derive(Debug, Clone, Deserialize)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    #[serde(default)]
    pub preferred_username: Option<String>,
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub roles: Vec<String>,
    #[serde(default)]
    pub realm_access: Option<RealmAccess>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct RealmAccess {
    #[serde(default)]
    pub roles: Vec<String>,
}

impl Claims {
    /// Top-level `roles` and Keycloak's `realm_access.roles`, merged.
    pub fn all_roles(&self) -> Vec<String> {
        let mut roles = self.roles.clone();
        if let Some(r) = &self.realm_access {
            roles.extend(r.roles.iter().cloned());
        }
        roles.sort();
        roles.dedup();
        roles
    }
}

pub struct TokenVerifier {
    hs256: Option<DecodingKey>,
    jwks: JwkSet,
    issuer: Option<String>,
    audience: Option<String>,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let jwks = match &config.jwks_file {
            None => JwkSet { keys: Vec::new() },
            Some(path) => {
                let text = std::fs::read_to_string(path)
                    .map_err(|e| AuthError::Config(format!("JWKS_FILE {}: {e}", path.display())))?;
                serde_json::from_str(&text)
                    .map_err(|e| AuthError::Config(format!("JWKS_FILE {}: {e}", path.display())))?
            }
        };
        Ok(Self {
            hs256: config
                .jwt_secret
                .as_deref()
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks,
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        if token.is_empty() {
            return Err(AuthError::Invalid("empty token".into()));
        }
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Invalid(e.to_string()))?;
        let key = match header.alg {
            Algorithm::HS256 => self.hs256.clone().ok_or_else(|| AuthError::NoKey("HS256".into()))?,
            Algorithm::RS256 | Algorithm::ES256 => {
                let kid = header
                    .kid
                    .as_deref()
                    .ok_or_else(|| AuthError::Invalid("token has no kid".into()))?;
                let jwk = self
                    .jwks
                    .find(kid)
                    .ok_or_else(|| AuthError::NoKey(format!("kid {kid}")))?;
                DecodingKey::from_jwk(jwk).map_err(|e| AuthError::Invalid(e.to_string()))?
            }
            other => return Err(AuthError::Invalid(format!("algorithm {other:?} not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        validation.set_required_spec_claims(&["exp", "sub"]);
        match &self.issuer {
            Some(iss) => validation.set_issuer(&[iss]),
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => validation.set_audience(&[aud]),
            None => validation.validate_aud = false,
        }
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(AuthError::Expired),
            Err(e) => Err(AuthError::Invalid(e.to_string())),
        }
    }
}
