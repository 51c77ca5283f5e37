//! The whole mesh in one process: six services on loopback gRPC, one or
//! more gateway replicas, shared state in memory or Redis. The roles call
//! each other in process unless `in_process_calls` is off
//! (`relaymesh_rpc::local`); other processes reach them over gRPC.

use std::net::SocketAddr;

use anyhow::Context;
use relaymesh_auth::AuthConfig;
use relaymesh_channel::ChannelConfig;
use relaymesh_gateway::{GatewayConfig, UpstreamArgs};
use relaymesh_match::MatchConfig;
use relaymesh_media_relay::MediaRelayConfig;
use relaymesh_proto::media_relay::v1::RelayRegistration;
use relaymesh_scheduler::SchedulerConfig;
use relaymesh_signaling::SignalingConfig;
use relaymesh_state::SharedState;
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Everything `relaymesh up` can be told.
#[derive(Debug, Clone)]
pub struct MeshOptions {
    /// Address every listener binds.
    pub host: String,
    /// Gateway port; 0 picks a free one.
    pub gateway_port: u16,
    /// First of six consecutive gRPC ports; None picks free ones.
    pub grpc_base_port: Option<u16>,
    /// Roles call each other in process (`relaymesh_rpc::local`); set for
    /// the whole process when a mesh starts.
    pub in_process_calls: bool,
    pub redis_url: Option<String>,
    /// Redis Cluster seed nodes, comma-separated; instead of `redis_url`.
    pub redis_cluster_urls: Option<String>,
    pub redis_key_prefix: String,
    pub gateway: GatewayConfig,
    pub auth: AuthConfig,
    pub signaling: SignalingConfig,
    pub channel: ChannelConfig,
    pub media_relay: MediaRelayConfig,
    pub r#match: MatchConfig,
    pub scheduler: SchedulerConfig,
}

/// A running mesh. Dropping it does not stop it: call [`Mesh::shutdown`].
pub struct Mesh {
    pub gateway_addr: SocketAddr,
    /// (role, gRPC address) of every service.
    pub services: Vec<(&'static str, SocketAddr)>,
    pub state: SharedState,
    options: MeshOptions,
    upstreams: UpstreamArgs,
    shutdown: CancellationToken,
    /// Each gateway replica's own stop switch (children of `shutdown`).
    gateways: Vec<(SocketAddr, CancellationToken)>,
    tasks: RoleTasks,
}

type RoleTasks = JoinSet<(String, anyhow::Result<()>)>;

/// Runs one role's `serve` future as a task named for the role.
fn spawn_role<E>(
    tasks: &mut RoleTasks,
    role: impl Into<String>,
    serve: impl std::future::Future<Output = Result<(), E>> + Send + 'static,
) where
    E: Into<anyhow::Error>,
{
    let role = role.into();
    tasks.spawn(async move { (role, serve.await.map_err(Into::into)) });
}

async fn bind(host: &str, port: u16) -> anyhow::Result<TcpListener> {
    let addr = relaymesh_config::join_host_port(host, port);
    TcpListener::bind(&addr)
        .await
        .with_context(|| format!("binding {addr}"))
}

impl MeshOptions {
    /// Shared state as `redis_url` / `redis_cluster_urls` say; a new
    /// connection each call.
    pub async fn connect_state(&self) -> Result<SharedState, relaymesh_state::StateError> {
        SharedState::connect_settings(
            self.redis_url.as_deref(),
            self.redis_cluster_urls.as_deref(),
            &self.redis_key_prefix,
        )
        .await
    }
}

impl Mesh {
    /// Binds every listener first (so ports are known), then starts the
    /// services, then the gateway.
    pub async fn start(mut options: MeshOptions) -> anyhow::Result<Self> {
        // Media is served where everything else is.
        options.media_relay.media_udp_host.clone_from(&options.host);
        // Everything stops together here, so the channels a relay serves
        // cannot move elsewhere: no point waiting for them.
        options.media_relay.media_drain_timeout_ms = 0;
        let state = options.connect_state().await.context("connecting shared state")?;
        relaymesh_rpc::local::set_enabled(options.in_process_calls);
        let shutdown = CancellationToken::new();
        let mut tasks = JoinSet::new();
        let port = |i: u16| options.grpc_base_port.map_or(0, |b| b + i);
        let host = options.host.as_str();
        let (auth, signaling, channel, media, matcher, scheduler) = (
            bind(host, port(0)).await?,
            bind(host, port(1)).await?,
            bind(host, port(2)).await?,
            bind(host, port(3)).await?,
            bind(host, port(4)).await?,
            bind(host, port(5)).await?,
        );
        let services = vec![
            ("auth", auth.local_addr()?),
            ("signaling", signaling.local_addr()?),
            ("channel", channel.local_addr()?),
            ("media-relay", media.local_addr()?),
            ("match", matcher.local_addr()?),
            ("scheduler", scheduler.local_addr()?),
        ];
        let url = |i: usize| format!("http://{}", services[i].1);
        let upstreams = UpstreamArgs {
            auth_url: url(0),
            signaling_url: url(1),
            channel_url: url(2),
            media_relay_url: url(3),
            match_url: url(4),
            scheduler_url: url(5),
            query_service_url: options.gateway.upstreams.query_service_url.clone(),
            query_timeout_ms: options.gateway.upstreams.query_timeout_ms,
            resolve_interval_ms: options.gateway.upstreams.resolve_interval_ms,
            rpc_timeout_ms: options.gateway.upstreams.rpc_timeout_ms,
        };

        // Signaling vets relayed SDP/ICE with this mesh's match service.
        options.signaling.match_service_url = url(4);
        let (o, st, sd) = (&options, &state, &shutdown);
        spawn_role(
            &mut tasks,
            "auth",
            relaymesh_auth::serve(auth, o.auth.clone(), st.clone(), sd.clone()),
        );
        spawn_role(
            &mut tasks,
            "signaling",
            relaymesh_signaling::serve(signaling, o.signaling.clone(), st.clone(), sd.clone()),
        );
        spawn_role(
            &mut tasks,
            "channel",
            relaymesh_channel::serve(channel, o.channel.clone(), st.clone(), sd.clone()),
        );
        spawn_role(
            &mut tasks,
            "media-relay",
            relaymesh_media_relay::serve(media, o.media_relay.clone(), st.clone(), sd.clone()),
        );
        spawn_role(
            &mut tasks,
            "match",
            relaymesh_match::serve(matcher, o.r#match.clone(), st.clone(), sd.clone()),
        );
        spawn_role(
            &mut tasks,
            "scheduler",
            relaymesh_scheduler::serve(scheduler, o.scheduler.clone(), st.clone(), sd.clone()),
        );

        let mut mesh = Self {
            gateway_addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            services,
            state,
            options,
            upstreams,
            shutdown,
            gateways: Vec::new(),
            tasks,
        };
        mesh.wait_services_ready(std::time::Duration::from_secs(30)).await?;
        mesh.gateway_addr = mesh.add_gateway(mesh.options.gateway_port, None).await?;
        Ok(mesh)
    }

    /// Waits until every service answers its gRPC health check with
    /// SERVING. A role that stops while starting (a database it cannot open,
    /// a port it cannot bind) fails this with its own error, instead of
    /// leaving callers a listener that resets their connections.
    async fn wait_services_ready(&mut self, within: std::time::Duration) -> anyhow::Result<()> {
        use tonic_health::pb::health_check_response::ServingStatus;
        use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
        let deadline = tokio::time::Instant::now() + within;
        for (role, addr) in self.services.clone() {
            loop {
                if let Some(joined) = self.tasks.try_join_next() {
                    return Err(match joined {
                        Ok((role, Err(err))) => err.context(format!("{role} failed to start")),
                        Ok((role, Ok(()))) => anyhow::anyhow!("{role} stopped while starting"),
                        Err(join) => anyhow::Error::new(join).context("a role panicked while starting"),
                    });
                }
                let serving = async {
                    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
                        .connect()
                        .await?;
                    let status = HealthClient::new(channel)
                        .check(HealthCheckRequest { service: String::new() })
                        .await?
                        .into_inner()
                        .status;
                    anyhow::Ok(status == ServingStatus::Serving as i32)
                };
                if let Ok(Ok(true)) = tokio::time::timeout(std::time::Duration::from_secs(2), serving).await {
                    break;
                }
                anyhow::ensure!(
                    tokio::time::Instant::now() < deadline,
                    "{role} at {addr} not serving after {within:?}"
                );
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
        }
        Ok(())
    }

    /// Starts one more gateway replica on the same services and shared
    /// state (with its own state connection), on `port` (0: any free one).
    pub async fn add_gateway(&mut self, port: u16, gateway_id: Option<String>) -> anyhow::Result<SocketAddr> {
        let listener = bind(&self.options.host, port).await?;
        let addr = listener.local_addr()?;
        let mut config = self.options.gateway.clone();
        config.upstreams = self.upstreams.clone();
        if gateway_id.is_some() {
            config.gateway_id = gateway_id;
        }
        // Each replica gets its own Redis connections, as separate processes
        // would; in memory, replicas share the one store.
        let state = match self.state {
            SharedState::Memory(_) => self.state.clone(),
            SharedState::Redis(_) => self.options.connect_state().await?,
        };
        let role = format!("gateway {addr}");
        let stop = self.shutdown.child_token();
        self.gateways.push((addr, stop.clone()));
        spawn_role(
            &mut self.tasks,
            role,
            relaymesh_gateway::serve(listener, config, state, stop),
        );
        Ok(addr)
    }

    /// Stops one gateway replica (its sockets get 1001), as a restart or a
    /// crash of that process would; the rest of the mesh keeps running.
    /// The newest replica bound to `addr` (one restarted on the same port).
    pub fn stop_gateway(&self, addr: SocketAddr) -> bool {
        match self.gateways.iter().rev().find(|(a, _)| *a == addr) {
            Some((_, stop)) => {
                stop.cancel();
                true
            }
            None => false,
        }
    }

    /// Where the media relays take RTP, as they registered in shared state;
    /// waits up to `wait` for the first registration.
    pub async fn media_addrs(&self, wait: std::time::Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let mut out = Vec::new();
            for id in self.state.set_members("media-relays").await.unwrap_or_default() {
                if let Ok(Some(bytes)) = self.state.get(&format!("media-relay:{id}")).await
                    && let Ok(reg) = <RelayRegistration as prost::Message>::decode(bytes.as_slice())
                {
                    out.push(reg.media_addr);
                }
            }
            if !out.is_empty() || tokio::time::Instant::now() >= deadline {
                return out;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    pub fn options(&self) -> &MeshOptions {
        &self.options
    }

    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until a role stops by itself (an error) or `shutdown` fires.
    ///
    /// A role that ends after `shutdown` fired is stopping as asked, not
    /// unexpectedly: the signal and a role's exit race (a gateway drains in
    /// milliseconds), so the outcome is judged by the token, not by which
    /// branch won. Its error, if any, is reported by [`Mesh::shutdown`].
    pub async fn run_until_stopped(&mut self) -> anyhow::Result<()> {
        let joined = tokio::select! {
            biased;
            () = self.shutdown.cancelled() => return Ok(()),
            joined = self.tasks.join_next() => joined,
        };
        match joined {
            Some(Ok((role, Err(err)))) => Err(err.context(format!("{role} failed"))),
            Some(Ok(_)) | None if self.shutdown.is_cancelled() => Ok(()),
            Some(Ok((role, Ok(())))) => anyhow::bail!("{role} stopped unexpectedly"),
            Some(Err(join)) => Err(anyhow::Error::new(join).context("role task panicked")),
            None => Ok(()),
        }
    }

    /// Stops every role and waits for them to drain.
    pub async fn shutdown(mut self) -> anyhow::Result<()> {
        self.shutdown.cancel();
        let mut first_err = None;
        while let Some(joined) = self.tasks.join_next().await {
            match joined {
                Ok((_, Ok(()))) => {}
                Ok((role, Err(err))) => {
                    tracing::error!(role = %role, error = %err, "role failed during shutdown");
                    first_err.get_or_insert(err);
                }
                Err(join) => {
                    first_err.get_or_insert(anyhow::Error::new(join));
                }
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}
