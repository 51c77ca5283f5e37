//! Channels to upstream services. Connections are lazy, so a process starts
//! even when an upstream is not up yet; `/readyz` reports that instead.

use std::time::Duration;

use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

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
    let endpoint = Endpoint::from_shared(url.to_owned())
        .map_err(|source| RpcError::InvalidUrl {
            url: url.to_owned(),
            source,
        })?
        .connect_timeout(Duration::from_secs(3))
        .timeout(request_timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(30))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(endpoint.connect_lazy(), TracedChannel))
}
