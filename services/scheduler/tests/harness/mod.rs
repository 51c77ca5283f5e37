//! Shared setup for the scheduler's integration tests: a real scheduler
//! serving gRPC on a loopback port picked by the OS.

use std::net::SocketAddr;

use clap::Parser;
use relaymesh_proto::scheduler::v1::ListNodesRequest;
use relaymesh_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use relaymesh_scheduler::SchedulerConfig;
use relaymesh_state::SharedState;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

#[derive(Parser)]
struct Flags {
    #[command(flatten)]
    config: SchedulerConfig,
}

/// A fresh SQLite database file for one scheduler.
pub fn sqlite_url() -> String {
    let file = std::env::temp_dir().join(format!("rm-sched-{}.db", uuid::Uuid::new_v4().simple()));
    format!("sqlite://{}?mode=rwc", file.display())
}

/// Starts a scheduler configured by the command-line `flags` (the
/// environment fills the rest, as in production) and connects to it.
pub async fn start(
    flags: &[&str],
) -> (
    SchedulerServiceClient<Channel>,
    CancellationToken,
    tokio::task::JoinHandle<()>,
) {
    let config = Flags::try_parse_from(std::iter::once("scheduler").chain(flags.iter().copied()))
        .expect("valid scheduler flags")
        .config;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind loopback");
    let addr: SocketAddr = listener.local_addr().expect("bound address");
    let stop = CancellationToken::new();
    let task = tokio::spawn({
        let stop = stop.clone();
        async move {
            relaymesh_scheduler::serve(listener, config, SharedState::memory(), stop)
                .await
                .expect("scheduler serves until stopped")
        }
    });
    let client = loop {
        assert!(
            !task.is_finished(),
            "the scheduler stopped before serving (see the panic above)"
        );
        // Serving once it holds the lease and has loaded its state.
        if let Ok(mut c) = SchedulerServiceClient::connect(format!("http://{addr}")).await
            && c.list_nodes(ListNodesRequest {}).await.is_ok()
        {
            break c;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    (client, stop, task)
}
