//! Flags of the auth role, with the contract's defaults.

use std::path::PathBuf;

/// How far a node frame's `timestamp` may be from now, and how long its
/// `message_id` is remembered (CONTRACT: five minutes).
pub const DEFAULT_NODE_REPLAY_WINDOW_MS: u64 = 300_000;

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
            node_shared_secret: None,
            verify_signature: true,
            node_replay_window_ms: DEFAULT_NODE_REPLAY_WINDOW_MS,
            node_agent_shared_secret: None,
        }
    }
}
