//! Typed configuration shared by every role: the arguments that more than one
//! role takes, each bound to its environment variable, with the contract's
//! defaults. A role's own flags live in its crate's config struct.
//!
//! Nothing here reads `std::env` directly: clap does, once, at start.

use clap::{Args, ValueEnum};

/// Environment variable names of the public contract, one place to grep.
pub mod env {
    pub const REDIS_URL: &str = "REDIS_URL";
    pub const REDIS_CLUSTER_URLS: &str = "REDIS_CLUSTER_URLS";
    pub const REDIS_KEY_PREFIX: &str = "REDIS_KEY_PREFIX";
    pub const LOG_FORMAT: &str = "LOG_FORMAT";
    pub const OTEL_EXPORTER_OTLP_ENDPOINT: &str = "OTEL_EXPORTER_OTLP_ENDPOINT";
    pub const HOST: &str = "HOST";
    pub const PORT: &str = "PORT";
    pub const GRPC_PORT: &str = "GRPC_PORT";
    pub const METRICS_PORT: &str = "METRICS_PORT";
    pub const GRPC_TLS_CERT: &str = "GRPC_TLS_CERT";
    pub const GRPC_TLS_KEY: &str = "GRPC_TLS_KEY";
    pub const GRPC_TLS_CA: &str = "GRPC_TLS_CA";
    pub const GRPC_TLS_SERVER_NAME: &str = "GRPC_TLS_SERVER_NAME";
}

/// Default gRPC port of every service role. In Kubernetes each pod has its own
/// address, so one port fits all; `relaymesh up` assigns distinct ones.
pub const DEFAULT_GRPC_PORT: u16 = 50051;

/// Where shared session state lives.
#[derive(Debug, Clone, Args)]
pub struct StateArgs {
    /// Redis URL (`redis://…` or `rediss://…`) for shared session state;
    /// in-memory state when unset (one process only).
    #[arg(long, env = env::REDIS_URL)]
    pub redis_url: Option<String>,

    /// Redis Cluster seed nodes, comma-separated `redis://host:port` (any
    /// of its masters); instead of REDIS_URL (both set is refused at start).
    #[arg(long, env = env::REDIS_CLUSTER_URLS)]
    pub redis_cluster_urls: Option<String>,

    /// Prefix of every Redis key and channel, so deployments can share a Redis.
    #[arg(long, env = env::REDIS_KEY_PREFIX, default_value = "relaymesh:")]
    pub redis_key_prefix: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Logs, traces and metrics.
#[derive(Debug, Clone, Default, Args)]
pub struct TelemetryArgs {
    /// Log line format; filter with RUST_LOG (default `info`).
    #[arg(long, env = env::LOG_FORMAT, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// OTLP/gRPC endpoint for traces (e.g. http://otel-collector:4317);
    /// traces are not exported when unset.
    #[arg(long, env = env::OTEL_EXPORTER_OTLP_ENDPOINT)]
    pub otlp_endpoint: Option<String>,
}

/// The gRPC listener of a service role.
#[derive(Debug, Clone, Args)]
pub struct GrpcListenArgs {
    /// Address to bind.
    #[arg(long, env = env::HOST, default_value = "0.0.0.0")]
    pub host: String,

    /// gRPC port.
    #[arg(long, env = env::GRPC_PORT, default_value_t = DEFAULT_GRPC_PORT)]
    pub grpc_port: u16,

    /// Port of the Prometheus `/metrics` endpoint of this role (0 disables).
    #[arg(long, env = env::METRICS_PORT, default_value_t = 9090)]
    pub metrics_port: u16,
}

impl GrpcListenArgs {
    pub fn grpc_addr(&self) -> String {
        join_host_port(&self.host, self.grpc_port)
    }
}

/// TLS of the mesh's own gRPC (optional; a service mesh doing mTLS is the
/// other way). Files are PEM, e.g. a mounted cert-manager Secret.
#[derive(Debug, Clone, Default, Args)]
pub struct GrpcTlsArgs {
    /// Certificate chain this role's gRPC server presents; with
    /// GRPC_TLS_KEY, the server speaks TLS only.
    #[arg(long, env = env::GRPC_TLS_CERT, requires = "grpc_tls_key")]
    pub grpc_tls_cert: Option<std::path::PathBuf>,

    /// Private key of GRPC_TLS_CERT.
    #[arg(long, env = env::GRPC_TLS_KEY, requires = "grpc_tls_cert")]
    pub grpc_tls_key: Option<std::path::PathBuf>,

    /// CA certificates that service certificates are verified against; calls
    /// to `https://` service URLs need it.
    #[arg(long, env = env::GRPC_TLS_CA)]
    pub grpc_tls_ca: Option<std::path::PathBuf>,

    /// Name every service certificate carries (default: each URL's host).
    /// Needed where callers dial pod addresses (the media relays).
    #[arg(long, env = env::GRPC_TLS_SERVER_NAME)]
    pub grpc_tls_server_name: Option<String>,
}

/// `host:port`, bracketing IPv6 literals.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_hosts_are_bracketed() {
        assert_eq!(join_host_port("::1", 80), "[::1]:80");
        assert_eq!(join_host_port("127.0.0.1", 80), "127.0.0.1:80");
    }
}
