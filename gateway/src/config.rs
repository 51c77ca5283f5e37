use std::time::Duration;

/// Flags of the gateway role (its listener, `HOST`/`PORT`, is the binary's).
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayConfig {
    /// This replica's id in the session registry (random when unset).
    #[arg(long, env = "GATEWAY_ID")]
    pub gateway_id: Option<String>,

    /// Largest text frame handled; larger ones get the protocol's error frame.
    #[arg(long, env = "MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,

    /// Heartbeat period: server pings (copilot, signal) or the interval
    /// clients are told to heartbeat at (livechat HELLO, node).
    #[arg(long, env = "HEARTBEAT_INTERVAL_MS", default_value_t = 30_000)]
    pub heartbeat_interval_ms: u64,

    /// Where the server pings (copilot, signal): how long a `pong` may take
    /// before that ping counts as missed (at most one heartbeat period).
    #[arg(long, env = "PONG_TIMEOUT_MS", default_value_t = 10_000)]
    pub pong_timeout_ms: u64,

    /// Missed heartbeat periods (or unanswered pings) before closing with 4003.
    #[arg(long, env = "HEARTBEAT_MAX_MISSED", default_value_t = 3)]
    pub heartbeat_max_missed: u32,

    /// Close a user's older session (4004) when the same user connects again.
    #[arg(long, env = "SINGLE_SESSION_PER_USER", default_value_t = false, action = clap::ArgAction::Set)]
    pub single_session_per_user: bool,

    /// Frames queued per connection before the slow-consumer policy applies.
    #[arg(long, env = "OUTBOUND_QUEUE", default_value_t = 256)]
    pub outbound_queue: usize,

    /// A socket write that takes longer closes the connection (slow reader).
    #[arg(long, env = "SEND_TIMEOUT_MS", default_value_t = 10_000)]
    pub send_timeout_ms: u64,

    /// Open WebSocket connections accepted at once; more get 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: usize,

    /// Time given to open connections to close on shutdown.
    #[arg(long, env = "DRAIN_TIMEOUT_MS", default_value_t = 10_000)]
    pub drain_timeout_ms: u64,

    #[command(flatten)]
    pub limits: crate::limits::RateLimitArgs,

    #[command(flatten)]
    pub upstreams: UpstreamArgs,
}

impl GatewayConfig {
    pub fn heartbeat_interval(&self) -> Duration {
        Duration::from_millis(self.heartbeat_interval_ms.max(1))
    }
    /// How long a pong may take: PONG_TIMEOUT_MS, capped at one period so
    /// a ping is settled before the next one goes out.
    pub fn pong_timeout(&self) -> Duration {
        Duration::from_millis(self.pong_timeout_ms.max(1)).min(self.heartbeat_interval())
    }
    pub fn send_timeout(&self) -> Duration {
        Duration::from_millis(self.send_timeout_ms.max(1))
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    /// Registry entries outlive a few missed refreshes, no more.
    pub fn session_ttl(&self) -> Duration {
        self.heartbeat_interval() * (self.heartbeat_max_missed + 2)
    }
}

/// Where the gateway finds each service.
#[derive(Debug, Clone, clap::Args)]
pub struct UpstreamArgs {
    /// gRPC URL of the auth service (`up` sets it itself).
    #[arg(long, env = "AUTH_URL", default_value = "http://auth:50051")]
    pub auth_url: String,
    /// gRPC URL of the signaling service (`up` sets it itself).
    #[arg(long, env = "SIGNALING_URL", default_value = "http://signaling:50051")]
    pub signaling_url: String,
    /// gRPC URL of the channel service (`up` sets it itself).
    #[arg(long, env = "CHANNEL_URL", default_value = "http://channel:50051")]
    pub channel_url: String,
    /// gRPC URL of the media-relay service (`up` sets it itself).
    #[arg(long, env = "MEDIA_RELAY_URL", default_value = "http://media-relay:50051")]
    pub media_relay_url: String,
    /// gRPC URL of the match service (`up` sets it itself).
    #[arg(long, env = "MATCH_URL", default_value = "http://match:50051")]
    pub match_url: String,
    /// gRPC URL of the scheduler service (`up` sets it itself); several,
    /// comma-separated, for an active scheduler and its standbys: calls go
    /// to the one whose gRPC health says SERVING.
    #[arg(long, env = "SCHEDULER_URL", default_value = "http://scheduler:50051")]
    pub scheduler_url: String,
    /// gRPC URL of the copilot query service (`relaymesh.query.v1.QueryService`);
    /// unset: the built-in one, served by the signaling role.
    #[arg(long, env = "QUERY_SERVICE_URL")]
    pub query_service_url: Option<String>,
    /// Deadline of one copilot query, callbacks included.
    #[arg(long, env = "QUERY_TIMEOUT_MS", default_value_t = 120_000)]
    pub query_timeout_ms: u64,
    /// How often service names are resolved again to find their replicas
    /// (each URL may also be a comma-separated list of URLs).
    #[arg(long, env = "UPSTREAM_RESOLVE_INTERVAL_MS", default_value_t = 5_000)]
    pub resolve_interval_ms: u64,
    /// Deadline of one call to a service.
    #[arg(long, env = "RPC_TIMEOUT_MS", default_value_t = 5_000)]
    pub rpc_timeout_ms: u64,
}
