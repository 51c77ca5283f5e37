//! `relaymesh`: every role of the mesh in one binary.

use std::future::Future;

use anyhow::Context;
use clap::{Parser, Subcommand};
use relaymesh::Mesh;
use relaymesh::roles::{
    AuthRole, ChannelRole, GatewayRole, MatchRole, MediaRelayRole, NodeAgentRole, SchedulerRole, ServiceRole,
    SignalingRole, UpArgs,
};
use relaymesh_state::SharedState;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Parser)]
#[command(
    name = "relaymesh",
    version,
    about = "Phones, people and players connected through one gateway"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the whole mesh on this machine (in-memory state unless REDIS_URL or REDIS_CLUSTER_URLS).
    Up(Box<UpArgs>),
    /// The HTTP/WebSocket gateway.
    Gateway(Box<GatewayRole>),
    /// JWT and node-credential verification.
    Auth(Box<AuthRole>),
    /// Copilot callbacks and WebRTC signal relay.
    Signaling(Box<SignalingRole>),
    /// LiveChat channels, chat and floor control.
    Channel(Box<ChannelRole>),
    /// The UDP RTP media relay.
    MediaRelay(Box<MediaRelayRole>),
    /// Lobby and match state machine.
    Match(Box<MatchRole>),
    /// Device scheduling.
    Scheduler(Box<SchedulerRole>),
    /// The agent on a device node (drivers: adb, sim).
    NodeAgent(Box<NodeAgentRole>),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    runtime.block_on(run(cli.command))
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Up(args) => up(*args).await,
        Command::Gateway(args) => gateway(*args).await,
        Command::Auth(args) => service("auth", *args, relaymesh_auth::serve).await,
        Command::Signaling(args) => service("signaling", *args, relaymesh_signaling::serve).await,
        Command::Channel(args) => service("channel", *args, relaymesh_channel::serve).await,
        Command::MediaRelay(args) => service("media-relay", *args, relaymesh_media_relay::serve).await,
        Command::Match(args) => service("match", *args, relaymesh_match::serve).await,
        Command::Scheduler(args) => service("scheduler", *args, relaymesh_scheduler::serve).await,
        Command::NodeAgent(args) => node_agent(*args).await,
    }
}

/// Cancels the returned token on SIGINT (Ctrl-C) or SIGTERM. The handlers
/// are installed before this returns, so a signal that arrives while the
/// process is still starting is seen (not the default action: death).
fn shutdown_on_signal() -> anyhow::Result<CancellationToken> {
    let token = CancellationToken::new();
    let t = token.clone();
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        }
    };
    #[cfg(not(unix))]
    let signals = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tokio::spawn(async move {
        signals.await;
        tracing::info!("shutdown signal received; draining");
        t.cancel();
    });
    Ok(token)
}

async fn up(args: UpArgs) -> anyhow::Result<()> {
    let _telemetry = relaymesh_telemetry::init_mesh(&args.telemetry)?;
    let signal = shutdown_on_signal()?;
    let options = args.into_options();
    let mut mesh = Mesh::start(options).await?;
    println!("relaymesh up (state: {})", mesh.state.backend_name());
    println!(
        "  gateway      http://{}  (ws: /ws/node /ws/copilot /ws/livechat /ws/signal)",
        mesh.gateway_addr
    );
    for (role, addr) in &mesh.services {
        println!("  {role:<12} grpc://{addr}");
    }
    for addr in mesh.media_addrs(std::time::Duration::from_secs(2)).await {
        println!("  media (RTP)  udp://{addr}");
    }
    println!("  ready:       curl http://{}/readyz", mesh.gateway_addr);
    // Roles see the signal only through `mesh.shutdown()`, so a role that
    // stops after the signal cannot be taken for one that failed.
    let outcome = tokio::select! {
        biased;
        () = signal.cancelled() => Ok(()),
        outcome = mesh.run_until_stopped() => outcome,
    };
    mesh.shutdown().await?;
    println!("relaymesh stopped");
    outcome
}

async fn gateway(args: GatewayRole) -> anyhow::Result<()> {
    let _telemetry = relaymesh_telemetry::init(&args.telemetry, "gateway")?;
    relaymesh_rpc::tls::install(relaymesh_rpc::tls::load(&args.tls)?);
    let shutdown = shutdown_on_signal()?;
    let state = SharedState::connect_settings(
        args.state.redis_url.as_deref(),
        args.state.redis_cluster_urls.as_deref(),
        &args.state.redis_key_prefix,
    )
    .await?;
    let addr = relaymesh_config::join_host_port(&args.host, args.port);
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    relaymesh_gateway::serve(listener, args.gateway, state, shutdown).await?;
    Ok(())
}

/// Runs one service role: telemetry, metrics endpoint, state, gRPC listener.
async fn service<C, F, Fut, E>(role: &'static str, args: ServiceRole<C>, serve: F) -> anyhow::Result<()>
where
    C: clap::Args,
    F: FnOnce(TcpListener, C, SharedState, CancellationToken) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: Into<anyhow::Error>,
{
    let _telemetry = relaymesh_telemetry::init(&args.telemetry, role)?;
    // Before any server or channel is built: they read it.
    relaymesh_rpc::tls::install(relaymesh_rpc::tls::load(&args.tls)?);
    let shutdown = shutdown_on_signal()?;
    if args.listen.metrics_port != 0 {
        let addr = relaymesh_config::join_host_port(&args.listen.host, args.listen.metrics_port);
        let addr = addr.parse().with_context(|| format!("metrics address {addr}"))?;
        relaymesh_telemetry::metrics::spawn_endpoint(addr, shutdown.clone()).await?;
    }
    let state = SharedState::connect_settings(
        args.state.redis_url.as_deref(),
        args.state.redis_cluster_urls.as_deref(),
        &args.state.redis_key_prefix,
    )
    .await?;
    let addr = args.listen.grpc_addr();
    let listener = TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    tracing::info!(role, addr = %listener.local_addr()?, "grpc listening");
    serve(listener, args.config, state, shutdown).await.map_err(Into::into)
}

async fn node_agent(args: NodeAgentRole) -> anyhow::Result<()> {
    let _telemetry = relaymesh_telemetry::init(&args.telemetry, "node-agent")?;
    let shutdown = shutdown_on_signal()?;
    relaymesh_node_agent::run(args.agent, shutdown).await?;
    Ok(())
}
