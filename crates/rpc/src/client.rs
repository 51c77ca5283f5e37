//! Channels to upstream services. Connections are lazy, so a process starts
//! even when an upstream is not up yet; `/readyz` reports that instead.
//!
//! Two shapes:
//! - [`connect_lazy`]: one endpoint. For a caller that must reach one
//!   particular instance (the channel service and the relay serving a channel).
//! - [`connect_balanced`]: every replica behind a name. HTTP/2 multiplexes
//!   all calls over one connection, so a channel to a Kubernetes ClusterIP
//!   pins each caller to one pod; instead the name (a headless Service) is
//!   resolved to every pod address, re-resolved every [`BalanceOptions::refresh`],
//!   and calls are spread over the addresses (power of two choices).

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint, Uri};
use tower::BoxError;
use tower::timeout::Timeout;

use relaymesh_config::join_host_port;

use crate::RpcError;
use crate::tls::ClientTls;

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

/// What every generated client is built over. The outer timeout bounds a
/// call that finds no endpoint to go to (a balanced channel whose name
/// resolved to nothing yet waits for one instead of failing); it answers
/// UNAVAILABLE, as a refused connection does.
pub type RpcChannel = InterceptedService<Bounded, TracedChannel>;

/// A channel whose calls end by their deadline even when no replica is
/// there to take them.
#[derive(Debug, Clone)]
pub struct Bounded {
    inner: Timeout<Transport>,
}

/// The network channel, or the server of this process listening on the
/// channel's one address when it takes in-process calls (`crate::local`),
/// looked up again for every call.
#[derive(Debug, Clone)]
pub struct Transport {
    net: Channel,
    local: Option<SocketAddr>,
    /// The in-process server found ready by `poll_ready`, for `call`.
    ready_local: Option<crate::local::LocalService>,
}

impl tower::Service<http::Request<tonic::body::Body>> for Transport {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = TransportCall;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        if let Some(svc) = self.local.and_then(crate::local::lookup) {
            self.ready_local = Some(svc);
            return Poll::Ready(Ok(()));
        }
        self.ready_local = None;
        self.net.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        use tower::ServiceExt;
        match self.ready_local.take() {
            Some(svc) => TransportCall::Local {
                inner: svc.oneshot(req),
            },
            None => TransportCall::Net {
                inner: self.net.call(req),
            },
        }
    }
}

pin_project_lite::pin_project! {
    /// A call on a [`Transport`]: over the network or in process.
    #[project = TransportCallProj]
    pub enum TransportCall {
        Net { #[pin] inner: tonic::transport::channel::ResponseFuture },
        Local { #[pin] inner: tower::util::Oneshot<crate::local::LocalService, http::Request<tonic::body::Body>> },
    }
}

impl Future for TransportCall {
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            TransportCallProj::Net { inner } => inner.poll(cx).map_err(Into::into),
            TransportCallProj::Local { inner } => inner.poll(cx),
        }
    }
}

impl tower::Service<http::Request<tonic::body::Body>> for Bounded {
    type Response = http::Response<tonic::body::Body>;
    type Error = BoxError;
    type Future = BoundedCall;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(unavailable_when_elapsed)
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        BoundedCall {
            inner: self.inner.call(req),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct BoundedCall {
        #[pin]
        inner: <Timeout<Transport> as tower::Service<http::Request<tonic::body::Body>>>::Future,
    }
}

impl Future for BoundedCall {
    type Output = Result<http::Response<tonic::body::Body>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        self.project().inner.poll(cx).map_err(unavailable_when_elapsed)
    }
}

fn unavailable_when_elapsed(err: BoxError) -> BoxError {
    if err.is::<tower::timeout::error::Elapsed>() {
        Box::new(no_answer_in_time())
    } else {
        err
    }
}

/// A call's answer when its deadline passed first.
pub(crate) fn no_answer_in_time() -> tonic::Status {
    tonic::Status::unavailable("no replica of the service answered in time")
}

/// The endpoint settings every channel shares. An `https://` URL speaks
/// TLS verified by `tls`, expecting a certificate for `host` (the name the
/// caller was given, which `url` may have resolved to an address of).
fn endpoint(url: &str, host: &str, request_timeout: Duration, tls: Option<&ClientTls>) -> Result<Endpoint, RpcError> {
    let mut endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| RpcError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    if url.starts_with("https://") {
        let tls = tls.ok_or_else(|| RpcError::TlsNotConfigured { url: url.to_owned() })?;
        endpoint = endpoint.tls_config(tls.for_host(host))?;
    }
    Ok(endpoint)
}

/// `local`: the one address the channel goes to, which a server of this
/// process may take calls for in process (`crate::local`).
fn wrap(channel: Channel, request_timeout: Duration, local: Option<SocketAddr>) -> RpcChannel {
    let transport = Transport {
        net: channel,
        local,
        ready_local: None,
    };
    let bounded = Bounded {
        inner: Timeout::new(transport, request_timeout),
    };
    InterceptedService::new(bounded, TracedChannel)
}

/// A lazily connected, trace-propagating channel to `url` (`http://host:port`,
/// or `https://` with the process's TLS settings, see [`crate::tls`]).
pub fn connect_lazy(url: &str, request_timeout: Duration) -> Result<RpcChannel, RpcError> {
    let host = url
        .parse::<Uri>()
        .ok()
        .and_then(|u| u.host().map(str::to_owned))
        .unwrap_or_default();
    let tls = crate::tls::installed_client();
    Ok(wrap(
        endpoint(
            url,
            host.trim_start_matches('[').trim_end_matches(']'),
            request_timeout,
            tls.as_ref(),
        )?
        .connect_lazy(),
        request_timeout,
        plain_single_target(url),
    ))
}

/// How a balanced channel finds and spreads over replicas.
#[derive(Debug, Clone)]
pub struct BalanceOptions {
    /// Deadline of one call.
    pub request_timeout: Duration,
    /// How often the names are resolved again, so new replicas get calls
    /// and removed ones stop getting them.
    pub refresh: Duration,
    /// Verification of `https://` services (default: what the process
    /// installed, see [`crate::tls`]).
    pub tls: Option<ClientTls>,
}

impl Default for BalanceOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(5),
            refresh: Duration::from_secs(5),
            tls: crate::tls::installed_client(),
        }
    }
}

/// Turns a host name into the addresses of its replicas.
pub trait Resolve: Send + Sync + 'static {
    fn resolve(&self, host: &str, port: u16) -> impl Future<Output = std::io::Result<Vec<SocketAddr>>> + Send;
}

/// The system resolver (in Kubernetes: cluster DNS, where a headless
/// Service's name answers with the address of every ready pod).
#[derive(Debug, Clone, Copy, Default)]
pub struct DnsResolver;

impl Resolve for DnsResolver {
    async fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<SocketAddr>> {
        Ok(tokio::net::lookup_host((host, port)).await?.collect())
    }
}

/// One `scheme://host:port` of the comma-separated list a balanced URL is.
#[derive(Debug, Clone)]
struct Target {
    scheme: String,
    host: String,
    port: u16,
}

fn parse_targets(urls: &str) -> Result<Vec<Target>, RpcError> {
    let invalid = |url: &str| RpcError::InvalidTarget { url: url.to_owned() };
    urls.split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|url| {
            let uri: Uri = url.parse().map_err(|_| invalid(url))?;
            let scheme = uri.scheme_str().ok_or_else(|| invalid(url))?.to_owned();
            let host = uri.host().ok_or_else(|| invalid(url))?;
            let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
            let port = uri.port_u16().unwrap_or(if scheme == "https" { 443 } else { 80 });
            Ok(Target { scheme, host, port })
        })
        .collect::<Result<Vec<_>, _>>()
        .and_then(|t| if t.is_empty() { Err(invalid(urls)) } else { Ok(t) })
}

/// The address of a plain-HTTP URL naming one IP address and port: the
/// only channels that may be handed to a server of this process.
pub(crate) fn plain_single_target(urls: &str) -> Option<SocketAddr> {
    match parse_targets(urls).ok()?.as_slice() {
        [t] if t.scheme == "http" => crate::local::target(&t.host, t.port),
        _ => None,
    }
}

/// A channel spreading calls over every address `urls` resolves to.
/// `urls` is one URL (`http://auth-headless:50051`) or a comma-separated
/// list; each host is resolved with `resolver` now and every
/// `opts.refresh` by a task that stops when `shutdown` is cancelled or the
/// channel is dropped.
pub fn connect_balanced<R: Resolve>(
    urls: &str,
    opts: BalanceOptions,
    resolver: R,
    shutdown: CancellationToken,
) -> Result<(RpcChannel, tokio::task::JoinHandle<()>), RpcError> {
    let targets = parse_targets(urls)?;
    // Validate the endpoint settings once, so a bad URL fails at start.
    for t in &targets {
        let url = format!("{}://{}", t.scheme, join_host_port(&t.host, t.port));
        endpoint(&url, &t.host, opts.request_timeout, opts.tls.as_ref())?;
    }
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let timeout = opts.request_timeout;
    let task = tokio::spawn(keep_resolved(targets, opts, resolver, changes, shutdown));
    Ok((wrap(channel, timeout, plain_single_target(urls)), task))
}

/// Resolves `targets` every `opts.refresh` and tells the balancer which
/// addresses appeared and which went away. A failed or empty resolution
/// keeps the current set: a DNS blip must not take every replica away.
async fn keep_resolved<R: Resolve>(
    targets: Vec<Target>,
    opts: BalanceOptions,
    resolver: R,
    changes: mpsc::Sender<Change<SocketAddr, Endpoint>>,
    shutdown: CancellationToken,
) {
    let mut current: BTreeSet<SocketAddr> = BTreeSet::new();
    let mut tick = tokio::time::interval(opts.refresh.max(Duration::from_millis(10)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = changes.closed() => return,
            _ = tick.tick() => {}
        }
        let mut found: BTreeSet<(SocketAddr, usize)> = BTreeSet::new();
        let mut failed = false;
        for (i, t) in targets.iter().enumerate() {
            match resolver.resolve(&t.host, t.port).await {
                Ok(addrs) => found.extend(addrs.into_iter().map(|a| (a, i))),
                Err(e) => {
                    failed = true;
                    tracing::warn!(host = %t.host, error = %e, "upstream resolution failed");
                }
            }
        }
        if found.is_empty() {
            if !failed {
                tracing::warn!(hosts = ?targets.iter().map(|t| &t.host).collect::<Vec<_>>(), "upstream resolved to no address");
            }
            continue;
        }
        let wanted: BTreeMap<SocketAddr, usize> = found.into_iter().collect();
        for gone in current
            .iter()
            .filter(|a| !wanted.contains_key(a))
            .copied()
            .collect::<Vec<_>>()
        {
            current.remove(&gone);
            tracing::info!(addr = %gone, "upstream replica removed");
            if changes.send(Change::Remove(gone)).await.is_err() {
                return;
            }
        }
        for (addr, i) in wanted {
            if current.contains(&addr) {
                continue;
            }
            let t = &targets[i];
            let url = format!("{}://{addr}", t.scheme);
            let Ok(ep) = endpoint(&url, &t.host, opts.request_timeout, opts.tls.as_ref()) else {
                continue;
            };
            tracing::info!(addr = %addr, host = %t.host, "upstream replica added");
            if changes.send(Change::Insert(addr, ep)).await.is_err() {
                return;
            }
            current.insert(addr);
        }
    }
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
) -> Result<(RpcChannel, tokio_util::task::AbortOnDropHandle<()>), RpcError> {
    let tls = crate::tls::installed_client();
    let endpoints = urls
        .iter()
        .map(|u| {
            let host = u
                .parse::<Uri>()
                .ok()
                .and_then(|u| u.host().map(str::to_owned))
                .unwrap_or_default();
            endpoint(u, &host, request_timeout, tls.as_ref())
        })
        .collect::<Result<Vec<_>, _>>()?;
    let (channel, changes) = Channel::balance_channel::<usize>(endpoints.len().max(1));
    let watcher = tokio::spawn(follow_active(endpoints, service, changes));
    Ok((
        wrap(channel, request_timeout, None),
        tokio_util::task::AbortOnDropHandle::new(watcher),
    ))
}

async fn follow_active(
    endpoints: Vec<Endpoint>,
    service: &'static str,
    changes: tokio::sync::mpsc::Sender<Change<usize, Endpoint>>,
) {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_a_comma_separated_list_of_urls() {
        let t = parse_targets("http://auth:50051, http://[::1]:7,https://x").unwrap();
        assert_eq!(t.len(), 3);
        assert_eq!((t[0].host.as_str(), t[0].port), ("auth", 50051));
        assert_eq!((t[1].host.as_str(), t[1].port), ("::1", 7));
        assert_eq!((t[2].scheme.as_str(), t[2].port), ("https", 443));
    }

    #[test]
    fn only_one_plain_address_may_be_called_in_process() {
        let addr = |s: &str| Some(s.parse::<SocketAddr>().unwrap());
        assert_eq!(plain_single_target("http://127.0.0.1:7"), addr("127.0.0.1:7"));
        assert_eq!(plain_single_target("http://[::1]:7"), addr("[::1]:7"));
        assert_eq!(
            plain_single_target("http://auth:7"),
            None,
            "a name may resolve elsewhere"
        );
        assert_eq!(plain_single_target("https://127.0.0.1:7"), None, "TLS asked for");
        assert_eq!(plain_single_target("http://127.0.0.1:7,http://127.0.0.1:8"), None);
    }

    #[test]
    fn an_empty_or_hostless_target_is_refused() {
        assert!(parse_targets("").is_err());
        assert!(parse_targets("auth:50051").is_err());
    }
}
