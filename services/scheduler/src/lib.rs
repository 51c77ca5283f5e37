//! Device scheduling (seeds 000 and 002): versioned workflows, runs created
//! by the backend, per-device FIFO queues, at most `SLOTS_PER_NODE` running
//! devices per node refilled round-robin, per-task timeouts and fail-soft.
//!
//! Runs and tasks live in a database (PostgreSQL, or SQLite embedded), so a
//! restart loses nothing; queues are rebuilt from it. One active instance,
//! since its queues are in memory: it holds a lease (see `lease`); others
//! stand by, NOT_SERVING on gRPC health, and take over when it goes.

mod artifacts;
mod core;
pub mod dispatch;
mod error;
mod lease;
pub mod recipe;
mod service;
mod store;

use std::time::Duration;

use relaymesh_proto::scheduler::v1::scheduler_service_server::SchedulerServiceServer;
use relaymesh_rpc::{GrpcServer, RpcError, ServeOptions};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

pub use artifacts::{ArtifactConfig, ArtifactStore};
pub use error::SchedulerError;
pub use service::{Scheduler, SchedulerApi};

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

    /// Lifetime of the Redis scheduler lease (when the store is not
    /// PostgreSQL and REDIS_URL is set): a standby takes over at most this
    /// long after the active scheduler dies.
    #[arg(long, env = "SCHEDULER_LEASE_TTL_MS", default_value_t = 5_000)]
    pub lease_ttl_ms: u64,

    /// How often a standby tries to take the lease.
    #[arg(long, env = "SCHEDULER_LEASE_RETRY_MS", default_value_t = 1_000)]
    pub lease_retry_ms: u64,

    /// Heartbeat period nodes are told in HELLO_ACK.
    #[arg(long, env = "NODE_HEARTBEAT_INTERVAL_S", default_value_t = 30)]
    pub node_heartbeat_interval_s: u32,

    /// Where artifacts are stored ({youtubeVideoId}/{node_id}/{device_serial}/{run_id}/{timestamp}.png):
    /// a local directory, or an S3-compatible bucket.
    #[command(flatten)]
    pub artifacts: ArtifactConfig,
}

/// Serves the scheduler API on `listener` until `shutdown`: as a standby
/// (UNAVAILABLE, health NOT_SERVING) until it holds the lease, then active.
/// Losing the lease stops it with an error, so it never dispatches beside
/// another active scheduler; its supervisor restarts it as a standby.
pub async fn serve(
    listener: TcpListener,
    config: SchedulerConfig,
    state: relaymesh_state::SharedState,
    shutdown: CancellationToken,
) -> Result<(), RpcError> {
    let stop = shutdown.child_token();
    let api = SchedulerApi::default();
    let (serving_tx, serving_rx) = watch::channel(false);
    let lease = lease::Lease::for_store(
        &config.database_url,
        &state,
        Duration::from_millis(config.lease_ttl_ms.max(300)),
    );
    let retry = Duration::from_millis(config.lease_retry_ms.max(50));
    let lead = {
        let (api, stop) = (api.clone(), stop.clone());
        async move {
            let Some(held) = lease.acquire(retry, &stop).await? else {
                return Ok(());
            };
            let scheduler = Scheduler::start(state, config, stop.clone()).await?;
            api.activate(scheduler);
            let _ = serving_tx.send(true);
            tracing::info!(lease = lease.kind(), "scheduler active");
            held.keep(&stop).await
        }
    };
    let lead = async {
        let r: Result<(), SchedulerError> = lead.await;
        if let Err(err) = &r {
            tracing::error!(error = %err, "scheduler stopping");
            stop.cancel();
        }
        r
    };
    let server = GrpcServer::new()
        .add_service(SchedulerServiceServer::new(api))
        .health_follows(serving_rx)
        .serve(listener, ServeOptions::default(), stop.clone());
    let (led, served) = tokio::join!(lead, server);
    served?;
    led.map_err(|e| RpcError::Io(std::io::Error::other(e.to_string())))
}
