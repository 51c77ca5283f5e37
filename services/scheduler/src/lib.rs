//! Device scheduling (seeds 000 and 002): versioned workflows, runs created
//! by the backend, per-device FIFO queues, at most `SLOTS_PER_NODE` running
//! devices per node refilled round-robin, per-task timeouts and fail-soft.
//!
//! Runs and tasks live in a database (PostgreSQL, or SQLite embedded), so a
//! restart loses nothing; queues are rebuilt from it. One active instance:
//! its queues are in memory.

mod artifacts;
mod core;
pub mod dispatch;
mod error;
pub mod recipe;
mod service;
mod store;

use relaymesh_proto::scheduler::v1::scheduler_server::SchedulerServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use artifacts::{ArtifactConfig, ArtifactStore};
pub use error::SchedulerError;
pub use service::SchedulerService;

/// Flags of the scheduler role.
#[derive(Debug, Clone, clap::Args)]
pub struct SchedulerConfig {
    /// Run and task store: postgres://… or sqlite://…
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://relaymesh-scheduler.db?mode=rwc"
    )]
    pub database_url: String,

    /// Devices a node runs at once (a node may declare fewer).
    #[arg(long, env = "SLOTS_PER_NODE", default_value_t = 20)]
    pub slots_per_node: usize,

    /// Default task timeout (seed 002: 90 s).
    #[arg(long, env = "TASK_TIMEOUT_MS", default_value_t = 90_000)]
    pub task_timeout_ms: u64,

    /// Default upload timeout (seed 002: 30 s), passed to the node.
    #[arg(long, env = "UPLOAD_TIMEOUT_MS", default_value_t = 30_000)]
    pub upload_timeout_ms: u64,

    /// Bounds on per-run timeout overrides.
    #[arg(long, env = "MIN_TIMEOUT_MS", default_value_t = 1_000)]
    pub min_timeout_ms: u64,
    #[arg(long, env = "MAX_TIMEOUT_MS", default_value_t = 600_000)]
    pub max_timeout_ms: u64,

    /// Time a node gets past a task's timeout to deliver its RESULT.
    #[arg(long, env = "TIMEOUT_GRACE_MS", default_value_t = 5_000)]
    pub timeout_grace_ms: u64,

    /// How often deadlines are checked.
    #[arg(long = "timeout-sweep-ms", env = "TIMEOUT_SWEEP_MS", default_value_t = 500)]
    pub sweep_interval_ms: u64,

    /// Heartbeat period nodes are told in HELLO_ACK.
    #[arg(long, env = "NODE_HEARTBEAT_INTERVAL_S", default_value_t = 30)]
    pub node_heartbeat_interval_s: u32,

    /// Where artifacts are stored ({youtubeVideoId}/{node_id}/{device_serial}/{run_id}/{timestamp}.png):
    /// a local directory, or an S3-compatible bucket.
    #[command(flatten)]
    pub artifacts: ArtifactConfig,
}

/// Serves the scheduler API on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    config: SchedulerConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let service = SchedulerService::start(state, config, shutdown.clone())
        .await
        .map_err(|e| RpcError::Io(std::io::Error::other(e.to_string())))?;
    GrpcServer::new()
        .add_service(SchedulerServer::new(service))
        .serve(listener, ServeOptions::default(), shutdown)
        .await
}
