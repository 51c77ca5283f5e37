//! JWT verification: HS256 with a shared secret, RS256/ES256 with JWKS keys
//! chosen by the token's `kid` (see [`crate::jwks`]).

use std::sync::Arc;

use jsonwebtoken::jwk::KeyAlgorithm;
use jsonwebtoken::{Algorithm, DecodingKey, Validation, errors::ErrorKind};
use serde::Deserialize;

use crate::jwks::JwksKeys;
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
    jwks: Arc<JwksKeys>,
    issuer: Option<String>,
    audience: Option<String>,
}

impl TokenVerifier {
    pub fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        Ok(Self {
            // An empty variable is how deployments leave a secret unset; an
            // empty HMAC key would accept anything signed with "".
            hs256: config
                .jwt_secret
                .as_deref()
                .filter(|s| !s.is_empty())
                .map(|s| DecodingKey::from_secret(s.as_bytes())),
            jwks: Arc::new(JwksKeys::new(config)?),
            issuer: config.jwt_issuer.clone(),
            audience: config.jwt_audience.clone(),
        })
    }

    /// The keys, for the background refresh of `JWKS_URL`.
    pub fn jwks(&self) -> &Arc<JwksKeys> {
        &self.jwks
    }

    pub async fn verify(&self, token: &str) -> Result<Claims, AuthError> {
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
                let entry = self.jwks.find(kid).await?;
                // A key the provider bound to one algorithm verifies no other.
                if entry.alg.is_some_and(|alg| !binds(alg, header.alg)) {
                    return Err(AuthError::Invalid(format!("kid {kid} is not a {:?} key", header.alg)));
                }
                entry.key
            }
            other => return Err(AuthError::Invalid(format!("algorithm {other:?} not accepted"))),
        };
        let mut validation = Validation::new(header.alg);
        validation.leeway = 5;
        // A configured issuer or audience is required, not only checked
        // when present: jsonwebtoken skips absent claims it was not told
        // are required.
        let mut required = vec!["exp", "sub"];
        match &self.issuer {
            Some(iss) => {
                validation.set_issuer(&[iss]);
                required.push("iss");
            }
            None => validation.iss = None,
        }
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        validation.set_required_spec_claims(&required);
        match jsonwebtoken::decode::<Claims>(token, &key, &validation) {
            Ok(data) => Ok(data.claims),
            Err(e) if matches!(e.kind(), ErrorKind::ExpiredSignature) => Err(AuthError::Expired),
            Err(e) => Err(AuthError::Invalid(e.to_string())),
        }
    }
}

/// Whether a JWK's `alg` allows tokens of `alg`.
fn binds(key: KeyAlgorithm, alg: Algorithm) -> bool {
    matches!(
        (key, alg),
        (KeyAlgorithm::RS256, Algorithm::RS256) | (KeyAlgorithm::ES256, Algorithm::ES256)
    )
}
