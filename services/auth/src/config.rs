use std::path::PathBuf;

/// Flags of the auth role.
#[derive(Debug, Clone, Default, clap::Args)]
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

    /// Secret node agents present in `X-Node-Auth` on backend HTTP calls.
    #[arg(long, env = "NODE_AGENT_SHARED_SECRET", hide_env_values = true)]
    pub node_agent_shared_secret: Option<String>,
}
