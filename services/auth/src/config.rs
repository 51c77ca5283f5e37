//! Flags of the auth role, with the contract's defaults.

use std::path::PathBuf;

/// How far a node frame's `timestamp` may be from now, and how long its
/// `message_id` is remembered (CONTRACT: five minutes).
pub const DEFAULT_NODE_REPLAY_WINDOW_MS: u64 = 300_000;

/// How often a `JWKS_URL` is fetched again in the background.
pub const DEFAULT_JWKS_REFRESH_SECS: u64 = 300;

/// The least time between two fetches caused by tokens with an unknown
/// `kid`, so forged `kid`s cannot make the service hammer the identity
/// provider.
pub const DEFAULT_JWKS_REFETCH_COOLDOWN_MS: u64 = 10_000;

/// Flags of the auth role.
#[derive(Debug, Clone, clap::Args)]
pub struct AuthConfig {
    /// HS256 secret for user JWTs.
    #[arg(long, env = "JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Required `iss` of user JWTs, when set.
    #[arg(long, env = "JWT_ISSUER")]
    pub jwt_issuer: Option<String>,

    /// Required `aud` of user JWTs, when set.
    #[arg(long, env = "JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,

    /// JWKS document (RS256/ES256 keys by `kid`) read from a file.
    #[arg(long, env = "JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,

    /// JWKS endpoint (https://, or http:// on a trusted network), e.g.
    /// Keycloak's `…/realms/NAME/protocol/openid-connect/certs`. Fetched at
    /// start, every `JWKS_REFRESH_SECS`, and when a token names an unknown
    /// `kid` (at most once per `JWKS_REFETCH_COOLDOWN_MS`).
    #[arg(long, env = "JWKS_URL")]
    pub jwks_url: Option<String>,

    /// PEM certificates trusted for `JWKS_URL` besides the webpki roots
    /// (a private CA).
    #[arg(long, env = "JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,

    /// Seconds between background fetches of `JWKS_URL`.
    #[arg(long, env = "JWKS_REFRESH_SECS", default_value_t = DEFAULT_JWKS_REFRESH_SECS)]
    pub jwks_refresh_secs: u64,

    /// Least milliseconds between two fetches of `JWKS_URL` caused by an
    /// unknown `kid`.
    #[arg(long, env = "JWKS_REFETCH_COOLDOWN_MS", default_value_t = DEFAULT_JWKS_REFETCH_COOLDOWN_MS)]
    pub jwks_refetch_cooldown_ms: u64,

    /// Shared secret of node frames (base64, or raw UTF-8 when not base64).
    #[arg(long, env = "NODE_SHARED_SECRET", hide_env_values = true)]
    pub node_shared_secret: Option<String>,

    /// Verify node frame signatures; `false` is for development only.
    #[arg(long, env = "VERIFY_SIGNATURE", default_value_t = true, action = clap::ArgAction::Set)]
    pub verify_signature: bool,

    /// Node frames whose `timestamp` is further than this from now are
    /// refused, and a `message_id` is refused when seen again within it.
    #[arg(long, env = "NODE_REPLAY_WINDOW_MS", default_value_t = DEFAULT_NODE_REPLAY_WINDOW_MS)]
    pub node_replay_window_ms: u64,

    /// Secret node agents present in `X-Node-Auth` on backend HTTP calls.
    #[arg(long, env = "NODE_AGENT_SHARED_SECRET", hide_env_values = true)]
    pub node_agent_shared_secret: Option<String>,
}

/// The same defaults as the command line, so code that builds a config by
/// hand (tests, benchmarks) gets the contract's behaviour.
impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            jwt_secret: None,
            jwt_issuer: None,
            jwt_audience: None,
            jwks_file: None,
            jwks_url: None,
            jwks_ca_file: None,
            jwks_refresh_secs: DEFAULT_JWKS_REFRESH_SECS,
            jwks_refetch_cooldown_ms: DEFAULT_JWKS_REFETCH_COOLDOWN_MS,
            node_shared_secret: None,
            verify_signature: true,
            node_replay_window_ms: DEFAULT_NODE_REPLAY_WINDOW_MS,
            node_agent_shared_secret: None,
        }
    }
}
