//! Clients of every service the gateway turns frames into calls on.
//!
//! Each URL is resolved to every replica of its service and calls are
//! spread over them (`relaymesh_rpc::connect_balanced`); the resolver tasks
//! run until the token given to [`Upstreams::connect`] is cancelled.

use std::time::Duration;

use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::channel::v1::channel_service_client::ChannelServiceClient;
use relaymesh_proto::channel::v1::channel_service_server;
use relaymesh_proto::r#match::v1::match_service_client::MatchServiceClient;
use relaymesh_proto::r#match::v1::match_service_server;
use relaymesh_proto::query::v1::query_service_client::QueryServiceClient;
use relaymesh_proto::scheduler::v1::scheduler_service_client::SchedulerServiceClient;
use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
use relaymesh_proto::signaling::v1::signaling_service_server;
use relaymesh_rpc::{
    BalanceOptions, ChannelCalls, DnsResolver, LocalOrRemote, MatchCalls, RpcChannel, RpcError, SignalingCalls,
    connect_active, connect_balanced,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::config::UpstreamArgs;

/// The scheduler's gRPC service name, as its health check reports it.
const SCHEDULER_SERVICE: &str = "relaymesh.scheduler.v1.SchedulerService";

#[derive(Clone)]
pub struct Upstreams {
    pub auth: AuthServiceClient<RpcChannel>,
    pub signaling: SignalingCalls,
    /// The copilot query service: its own deadline, since a query lasts as
    /// long as its callbacks.
    pub query: QueryServiceClient<RpcChannel>,
    /// The channel, signaling and match services are called through their
    /// typed handlers when this process serves them (`relaymesh up`): every
    /// chat message, relayed signal and copilot rate check is one call.
    pub channel: ChannelCalls,
    pub r#match: MatchCalls,
    pub scheduler: SchedulerServiceClient<RpcChannel>,
    health: Vec<Upstream>,
    /// Follows the active scheduler when SCHEDULER_URL lists several.
    _scheduler_follower: Option<std::sync::Arc<tokio_util::task::AbortOnDropHandle<()>>>,
}

#[derive(Clone)]
struct Upstream {
    role: &'static str,
    service: &'static str,
    /// Whether `/readyz` needs it. The scheduler is not needed: it runs one
    /// active instance, and its restart must not take every gateway out of
    /// service (LiveChat, copilot and signaling do not use it).
    required: bool,
    client: HealthClient<RpcChannel>,
}

/// One upstream's answer to the health check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamHealth {
    pub role: &'static str,
    pub serving: bool,
    /// False for an upstream the gateway is ready without.
    pub required: bool,
}

impl Upstreams {
    /// Channels to every service; `resolvers` gets the tasks that keep
    /// their replica lists current, which stop when `stop` is cancelled.
    pub fn connect(
        args: &UpstreamArgs,
        resolvers: &mut JoinSet<()>,
        stop: &CancellationToken,
    ) -> Result<Self, RpcError> {
        let opts = BalanceOptions {
            request_timeout: Duration::from_millis(args.rpc_timeout_ms),
            refresh: Duration::from_millis(args.resolve_interval_ms.max(100)),
            ..BalanceOptions::default()
        };
        let mut ch_with = |url: &str, opts: BalanceOptions| {
            let (channel, task) = connect_balanced(url, opts, DnsResolver, stop.clone())?;
            resolvers.spawn(async move {
                if let Err(e) = task.await {
                    tracing::error!(error = %e, "upstream resolver task failed");
                }
            });
            Ok::<_, RpcError>(channel)
        };
        // A copilot query lasts as long as its callbacks: its own deadline.
        let query_url = args.query_service_url.as_deref().unwrap_or(&args.signaling_url);
        let query = ch_with(
            query_url,
            BalanceOptions {
                request_timeout: Duration::from_millis(args.query_timeout_ms),
                ..opts.clone()
            },
        )?;
        let mut ch = |url: &str| ch_with(url, opts.clone());
        // Several scheduler URLs: one active, the others standby; calls go
        // to the one whose health says SERVING.
        let scheduler_urls: Vec<&str> = args
            .scheduler_url
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .collect();
        let (scheduler, scheduler_follower) = match scheduler_urls.as_slice() {
            [] | [_] => (ch(&args.scheduler_url)?, None),
            several => {
                let timeout = Duration::from_millis(args.rpc_timeout_ms);
                let (channel, follower) = connect_active(several, SCHEDULER_SERVICE, timeout)?;
                (channel, Some(std::sync::Arc::new(follower)))
            }
        };
        let (auth, signaling, channel, media, matcher) = (
            ch(&args.auth_url)?,
            ch(&args.signaling_url)?,
            ch(&args.channel_url)?,
            ch(&args.media_relay_url)?,
            ch(&args.match_url)?,
        );
        let health = vec![
            Upstream {
                role: "auth",
                required: true,
                service: "relaymesh.auth.v1.AuthService",
                client: HealthClient::new(auth.clone()),
            },
            Upstream {
                role: "signaling",
                required: true,
                service: "relaymesh.signaling.v1.SignalingService",
                client: HealthClient::new(signaling.clone()),
            },
            Upstream {
                role: "channel",
                required: true,
                service: "relaymesh.channel.v1.ChannelService",
                client: HealthClient::new(channel.clone()),
            },
            Upstream {
                role: "media-relay",
                required: true,
                service: "relaymesh.media_relay.v1.MediaRelayService",
                client: HealthClient::new(media),
            },
            Upstream {
                role: "match",
                required: true,
                service: "relaymesh.match.v1.MatchService",
                client: HealthClient::new(matcher.clone()),
            },
            Upstream {
                role: "scheduler",
                required: false,
                service: SCHEDULER_SERVICE,
                client: HealthClient::new(scheduler.clone()),
            },
        ];
        Ok(Self {
            auth: AuthServiceClient::new(auth),
            signaling: LocalOrRemote::new(
                SignalingServiceClient::new(signaling),
                &args.signaling_url,
                signaling_service_server::SERVICE_NAME,
                opts.request_timeout,
            ),
            query: QueryServiceClient::new(query),
            channel: LocalOrRemote::new(
                ChannelServiceClient::new(channel),
                &args.channel_url,
                channel_service_server::SERVICE_NAME,
                opts.request_timeout,
            ),
            r#match: LocalOrRemote::new(
                MatchServiceClient::new(matcher),
                &args.match_url,
                match_service_server::SERVICE_NAME,
                opts.request_timeout,
            ),
            scheduler: SchedulerServiceClient::new(scheduler),
            _scheduler_follower: scheduler_follower,
            health,
        })
    }

    /// Asks every upstream's gRPC health service, concurrently.
    pub async fn health(&self) -> Vec<UpstreamHealth> {
        let checks = self.health.iter().map(|u| {
            let mut client = u.client.clone();
            async move {
                let req = HealthCheckRequest {
                    service: u.service.to_owned(),
                };
                let answer = tokio::time::timeout(Duration::from_secs(2), client.check(req)).await;
                let serving = matches!(answer, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32);
                UpstreamHealth {
                    role: u.role,
                    serving,
                    required: u.required,
                }
            }
        });
        futures_util::future::join_all(checks).await
    }
}
