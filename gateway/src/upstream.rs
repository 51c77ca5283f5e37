//! Clients of every service the gateway turns frames into calls on.

use std::time::Duration;

use relaymesh_proto::auth::v1::auth_service_client::AuthServiceClient;
use relaymesh_proto::channel::v1::channel_service_client::ChannelServiceClient;
use relaymesh_proto::r#match::v1::match_client::MatchClient;
use relaymesh_proto::query::v1::query_service_client::QueryServiceClient;
use relaymesh_proto::scheduler::v1::scheduler_client::SchedulerClient;
use relaymesh_proto::signaling::v1::signaling_service_client::SignalingServiceClient;
use relaymesh_rpc::{RpcChannel, RpcError, connect_lazy};
use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};

use crate::config::UpstreamArgs;

#[derive(Clone)]
pub struct Upstreams {
    pub auth: AuthServiceClient<RpcChannel>,
    pub signaling: SignalingServiceClient<RpcChannel>,
    /// The copilot query service: its own deadline, since a query lasts as
    /// long as its callbacks.
    pub query: QueryServiceClient<RpcChannel>,
    pub channel: ChannelServiceClient<RpcChannel>,
    pub r#match: MatchClient<RpcChannel>,
    pub scheduler: SchedulerClient<RpcChannel>,
    health: Vec<Upstream>,
}

#[derive(Clone)]
struct Upstream {
    role: &'static str,
    service: &'static str,
    client: HealthClient<RpcChannel>,
}

/// One upstream's answer to the health check.
#[derive(Debug, Clone, serde::Serialize)]
pub struct UpstreamHealth {
    pub role: &'static str,
    pub serving: bool,
}

impl Upstreams {
    pub fn connect(args: &UpstreamArgs) -> Result<Self, RpcError> {
        let timeout = Duration::from_millis(args.rpc_timeout_ms);
        let ch = |url: &str| connect_lazy(url, timeout);
        let (auth, signaling, channel, media, matcher, scheduler) = (
            ch(&args.auth_url)?,
            ch(&args.signaling_url)?,
            ch(&args.channel_url)?,
            ch(&args.media_relay_url)?,
            ch(&args.match_url)?,
            ch(&args.scheduler_url)?,
        );
        let query_url = args.query_service_url.as_deref().unwrap_or(&args.signaling_url);
        let query = connect_lazy(query_url, Duration::from_millis(args.query_timeout_ms))?;
        let health = vec![
            Upstream {
                role: "auth",
                service: "relaymesh.auth.v1.AuthService",
                client: HealthClient::new(auth.clone()),
            },
            Upstream {
                role: "signaling",
                service: "relaymesh.signaling.v1.SignalingService",
                client: HealthClient::new(signaling.clone()),
            },
            Upstream {
                role: "channel",
                service: "relaymesh.channel.v1.ChannelService",
                client: HealthClient::new(channel.clone()),
            },
            Upstream {
                role: "media-relay",
                service: "relaymesh.media_relay.v1.MediaRelayService",
                client: HealthClient::new(media),
            },
            Upstream {
                role: "match",
                service: "relaymesh.match.v1.Match",
                client: HealthClient::new(matcher.clone()),
            },
            Upstream {
                role: "scheduler",
                service: "relaymesh.scheduler.v1.Scheduler",
                client: HealthClient::new(scheduler.clone()),
            },
        ];
        Ok(Self {
            auth: AuthServiceClient::new(auth),
            signaling: SignalingServiceClient::new(signaling),
            query: QueryServiceClient::new(query),
            channel: ChannelServiceClient::new(channel),
            r#match: MatchClient::new(matcher),
            scheduler: SchedulerClient::new(scheduler),
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
                UpstreamHealth { role: u.role, serving }
            }
        });
        futures_util::future::join_all(checks).await
    }
}
