//! Command-line shapes of the roles: one clap struct each, every flag bound
//! to an environment variable, defaults from the contract.

use clap::Args;
use relaymesh_auth::AuthConfig;
use relaymesh_channel::ChannelConfig;
use relaymesh_config::{GrpcListenArgs, GrpcTlsArgs, StateArgs, TelemetryArgs};
use relaymesh_gateway::GatewayConfig;
use relaymesh_match::MatchConfig;
use relaymesh_media_relay::MediaRelayConfig;
use relaymesh_scheduler::SchedulerConfig;
use relaymesh_signaling::SignalingConfig;

use crate::MeshOptions;

/// `relaymesh up`: the whole mesh in one process.
#[derive(Debug, Clone, Args)]
pub struct UpArgs {
    /// Address every listener binds.
    #[arg(long, env = "HOST", default_value = "127.0.0.1")]
    pub host: String,
    /// Gateway HTTP/WebSocket port.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    /// First of six consecutive service gRPC ports (auth, signaling,
    /// channel, media-relay, match, scheduler); free ports when unset.
    #[arg(long, env = "GRPC_BASE_PORT")]
    pub grpc_base_port: Option<u16>,
    /// Calls between the roles of this process skip the socket: the same
    /// gRPC services, encoding, metadata and status codes, run in the
    /// caller's task (`docs/performance.md`). Every role still serves gRPC
    /// on its port for other processes. `false` sends them over loopback.
    #[arg(long, env = "IN_PROCESS_CALLS", default_value_t = true, action = clap::ArgAction::Set)]
    pub in_process_calls: bool,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub gateway: GatewayConfig,
    #[command(flatten)]
    pub auth: AuthConfig,
    #[command(flatten)]
    pub signaling: SignalingConfig,
    #[command(flatten)]
    pub channel: ChannelConfig,
    #[command(flatten)]
    pub media_relay: MediaRelayConfig,
    #[command(flatten)]
    pub r#match: MatchConfig,
    #[command(flatten)]
    pub scheduler: SchedulerConfig,
}

/// Parses `up`'s flags from `args` (plus the environment), as the CLI does.
#[derive(Debug, clap::Parser)]
struct UpOnly {
    #[command(flatten)]
    up: UpArgs,
}

impl MeshOptions {
    /// The mesh as tests and benchmarks start it: every listener on
    /// 127.0.0.1 at a free port, in-memory shared state, and a private
    /// in-memory scheduler store (meshes running side by side must not share
    /// a database file). `extra` are further `up` flags.
    pub fn loopback(extra: &[&str]) -> Result<Self, clap::Error> {
        let mut args = vec![
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--media-udp-port",
            "0",
            "--database-url",
            "sqlite::memory:",
        ];
        args.extend_from_slice(extra);
        let mut options = UpArgs::parse_from(args)?.into_options();
        // Whatever the environment says: these are the test's own choices.
        options.grpc_base_port = None;
        options.redis_url = None;
        options.redis_cluster_urls = None;
        Ok(options)
    }
}

impl UpArgs {
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser;
        let argv = std::iter::once(std::ffi::OsString::from("up")).chain(args.into_iter().map(Into::into));
        Ok(UpOnly::try_parse_from(argv)?.up)
    }

    pub fn into_options(self) -> MeshOptions {
        MeshOptions {
            host: self.host,
            gateway_port: self.port,
            grpc_base_port: self.grpc_base_port,
            in_process_calls: self.in_process_calls,
            redis_url: self.state.redis_url,
            redis_cluster_urls: self.state.redis_cluster_urls,
            redis_key_prefix: self.state.redis_key_prefix,
            gateway: self.gateway,
            auth: self.auth,
            signaling: self.signaling,
            channel: self.channel,
            media_relay: self.media_relay,
            r#match: self.r#match,
            scheduler: self.scheduler,
        }
    }
}

/// `relaymesh gateway`.
#[derive(Debug, Clone, Args)]
pub struct GatewayRole {
    /// Address to bind.
    #[arg(long, env = "HOST", default_value = "0.0.0.0")]
    pub host: String,
    /// HTTP/WebSocket port.
    #[arg(long, env = "PORT", default_value_t = 8000)]
    pub port: u16,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub tls: GrpcTlsArgs,
    #[command(flatten)]
    pub gateway: GatewayConfig,
}

/// A service role: its gRPC listener, shared state, telemetry and own flags.
#[derive(Debug, Clone, Args)]
pub struct ServiceRole<C: Args> {
    #[command(flatten)]
    pub listen: GrpcListenArgs,
    #[command(flatten)]
    pub state: StateArgs,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    #[command(flatten)]
    pub tls: GrpcTlsArgs,
    #[command(flatten)]
    pub config: C,
}

pub type AuthRole = ServiceRole<AuthConfig>;
pub type SignalingRole = ServiceRole<SignalingConfig>;
pub type ChannelRole = ServiceRole<ChannelConfig>;
pub type MediaRelayRole = ServiceRole<MediaRelayConfig>;
pub type MatchRole = ServiceRole<MatchConfig>;
pub type SchedulerRole = ServiceRole<SchedulerConfig>;

/// `relaymesh node-agent`: the program on each device node (seeds 000, 002).
#[derive(Debug, Clone, Args)]
pub struct NodeAgentRole {
    #[command(flatten)]
    pub agent: relaymesh_node_agent::AgentConfig,
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
}
