//! Channels to upstream services. Connections are lazy, so a process starts
//! even when an upstream is not up yet; `/readyz` reports that instead.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::task::AbortOnDropHandle;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

use crate::RpcError;

/// Injects the current span's W3C trace context into every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct TracedChannel;

impl Interceptor for TracedChannel {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        let mut headers = std::mem::take(req.metadata_mut()).into_headers();
        relaymesh_telemetry::propagation::inject(&tracing::Span::current(), &mut headers);
        *req.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
        Ok(req)
    }
}

/// What every generated client is built over.
pub type RpcChannel = InterceptedService<Channel, TracedChannel>;

/// A lazily connected, trace-propagating channel to `url` (`http://host:port`).
pub fn connect_lazy(url: &str, request_timeout: Duration) -> Result<RpcChannel, RpcError> {
    Ok(InterceptedService::new(
        endpoint(url, request_timeout)?.connect_lazy(),
        TracedChannel,
    ))
}

/// How often [`connect_active`] asks each replica whether it is the active one.
const ACTIVE_CHECK_EVERY: Duration = Duration::from_millis(500);

/// A channel to whichever of `urls` reports `service` SERVING on gRPC
/// health: for a service with one active replica and standbys (the
/// scheduler). Calls go to the active one; when another becomes active,
/// calls follow within [`ACTIVE_CHECK_EVERY`]. The returned handle owns the
/// watcher; dropping it stops following.
pub fn connect_active(
    urls: &[&str],
    service: &'static str,
    request_timeout: Duration,
) -> Result<(RpcChannel, AbortOnDropHandle<()>), RpcError> {
    let endpoints = urls
        .iter()
        .map(|u| endpoint(u, request_timeout))
        .collect::<Result<Vec<_>, _>>()?;
    let (channel, changes) = Channel::balance_channel::<usize>(endpoints.len().max(1));
    let watcher = tokio::spawn(follow_active(endpoints, service, changes));
    Ok((
        InterceptedService::new(channel, TracedChannel),
        AbortOnDropHandle::new(watcher),
    ))
}

async fn follow_active(
    endpoints: Vec<Endpoint>,
    service: &'static str,
    changes: mpsc::Sender<Change<usize, Endpoint>>,
) {
    let mut health: Vec<HealthClient<Channel>> =
        endpoints.iter().map(|e| HealthClient::new(e.connect_lazy())).collect();
    let mut current: Option<usize> = None;
    loop {
        let mut active = None;
        for (i, client) in health.iter_mut().enumerate() {
            let req = HealthCheckRequest {
                service: service.to_owned(),
            };
            let answer = tokio::time::timeout(ACTIVE_CHECK_EVERY, client.check(req)).await;
            if matches!(answer, Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32) {
                active = Some(i);
                break;
            }
        }
        // With none active, calls keep going to the last one (and fail
        // UNAVAILABLE) rather than waiting for an endpoint.
        if let Some(i) = active
            && active != current
        {
            if let Some(old) = current {
                let _ = changes.send(Change::Remove(old)).await;
            }
            let Some(endpoint) = endpoints.get(i) else { return };
            if changes.send(Change::Insert(i, endpoint.clone())).await.is_err() {
                return;
            }
            tracing::info!(service, url = %endpoint.uri(), "following the active replica");
            current = active;
        }
        tokio::time::sleep(ACTIVE_CHECK_EVERY).await;
    }
}

fn endpoint(url: &str, request_timeout: Duration) -> Result<Endpoint, RpcError> {
    Ok(Endpoint::from_shared(url.to_owned())
        .map_err(|source| RpcError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true))
}
