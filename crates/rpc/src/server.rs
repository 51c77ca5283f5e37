use std::convert::Infallible;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::RoutesBuilder;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic_health::ServingStatus;
use tower::limit::GlobalConcurrencyLimitLayer;

use crate::{RpcError, RpcMetricsLayer};

/// Limits every relaymesh gRPC server applies.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// A request that takes longer is answered DEADLINE_EXCEEDED.
    pub request_timeout: Duration,
    /// Requests in flight across all connections; more wait (backpressure).
    pub max_concurrent_requests: usize,
    /// Requests in flight on one HTTP/2 connection.
    pub max_concurrent_per_connection: usize,
    /// Serve TLS only (default: what the process installed, see [`crate::tls`]).
    pub tls: Option<tonic::transport::ServerTlsConfig>,
}

impl Default for ServeOptions {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            max_concurrent_requests: 4096,
            max_concurrent_per_connection: 512,
            tls: crate::tls::installed_server(),
        }
    }
}

/// A gRPC server for one or more services, with the stack every relaymesh
/// server shares. Build with [`GrpcServer::add_service`], then [`GrpcServer::serve`].
#[derive(Default)]
pub struct GrpcServer {
    routes: RoutesBuilder,
    names: Vec<&'static str>,
    /// When set, health follows it instead of saying SERVING from the start.
    serving: Option<watch::Receiver<bool>>,
    /// Typed handlers for in-process callers (`crate::local`).
    handlers: crate::local::Handlers,
}

impl GrpcServer {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a generated tonic service; health checking reports it by name.
    pub fn add_service<S>(mut self, svc: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Error = Infallible> + NamedService + Clone + Send + Sync + 'static,
        S::Response: axum::response::IntoResponse,
        S::Future: Send + 'static,
    {
        self.names.push(S::NAME);
        self.routes.add_service(svc);
        self
    }

    /// Lets callers of this process call `handler` (the generated service
    /// trait object, `Arc<dyn FooService>`, of a service added with
    /// [`GrpcServer::add_service`]) directly, with typed messages, when
    /// in-process calls are on: see [`crate::LocalOrRemote`].
    pub fn handles_in_process<T: ?Sized + Send + Sync + 'static>(mut self, handler: std::sync::Arc<T>) -> Self {
        self.handlers.add(handler);
        self
    }

    /// Health says SERVING only while `serving` holds `true` (a standby
    /// replica says NOT_SERVING, so load balancers and the gateway route to
    /// the active one).
    pub fn health_follows(mut self, serving: watch::Receiver<bool>) -> Self {
        self.serving = Some(serving);
        self
    }

    /// Serves on `listener` until `shutdown` is cancelled, then flips health
    /// to NOT_SERVING and drains the requests in flight.
    pub async fn serve(
        mut self,
        listener: TcpListener,
        opts: ServeOptions,
        shutdown: CancellationToken,
    ) -> Result<(), RpcError> {
        relaymesh_telemetry::metrics::handle();
        let (health, health_service) = tonic_health::server::health_reporter();
        if self.serving.is_some() {
            // The server as a whole ("") follows too, for checks that name no service.
            self.names.push("");
        }
        let initially = self.serving.as_ref().is_none_or(|s| *s.borrow());
        for name in &self.names {
            let status = if initially {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            };
            health.set_service_status(*name, status).await;
        }
        let follow = {
            let (health, names, serving) = (health.clone(), self.names.clone(), self.serving.take());
            async move {
                let Some(mut serving) = serving else {
                    return std::future::pending().await;
                };
                // Ends with the sender; health then stays where it is.
                while serving.changed().await.is_ok() {
                    let status = if *serving.borrow_and_update() {
                        ServingStatus::Serving
                    } else {
                        ServingStatus::NotServing
                    };
                    for name in &names {
                        health.set_service_status(*name, status).await;
                    }
                }
                std::future::pending::<()>().await;
            }
        };
        let reflection_v1 = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(relaymesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1()?;
        let reflection_v1alpha = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(relaymesh_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
            .build_v1alpha()?;
        self.routes
            .add_service(health_service)
            .add_service(reflection_v1)
            .add_service(reflection_v1alpha);

        let routes = self.routes.routes();
        let limit = std::sync::Arc::new(tokio::sync::Semaphore::new(opts.max_concurrent_requests));
        // In-process callers (see `crate::local`) get the same routes and
        // layers, and count against the same concurrency limit.
        let registration = match (&opts.tls, crate::local::enabled()) {
            (None, true) => {
                let local = tower::ServiceBuilder::new()
                    .map_err(|never: Infallible| -> tower::BoxError { match never {} })
                    .layer(tower::layer::layer_fn(|inner| Spanned { inner }))
                    .layer(GlobalConcurrencyLimitLayer::with_semaphore(limit.clone()))
                    .layer(RpcMetricsLayer)
                    .service(routes.clone());
                Some(crate::local::register_server(
                    listener.local_addr()?,
                    tower::util::BoxCloneSyncService::new(local),
                    Some(std::mem::take(&mut self.handlers).limited_by(limit.clone())),
                ))
            }
            _ => None,
        };
        let names = self.names.clone();
        let drain = async move {
            shutdown.cancelled().await;
            // From now on callers in this process go the network way, and
            // are refused as other processes are.
            drop(registration);
            for name in &names {
                health.set_service_status(*name, ServingStatus::NotServing).await;
            }
            tracing::info!(services = ?names, "grpc server draining");
        };
        let mut builder = Server::builder();
        if let Some(tls) = opts.tls {
            builder = builder.tls_config(tls)?;
        }
        let server = builder
            .timeout(opts.request_timeout)
            .concurrency_limit_per_connection(opts.max_concurrent_per_connection)
            .trace_fn(request_span)
            .layer(GlobalConcurrencyLimitLayer::with_semaphore(limit))
            .layer(RpcMetricsLayer)
            .add_routes(routes)
            // With an incoming stream tonic applies none of its TCP settings;
            // without TCP_NODELAY small HTTP/2 frames wait behind Nagle.
            .serve_with_incoming_shutdown(TcpIncoming::from(listener).with_nodelay(Some(true)), drain);
        tokio::select! {
            served = server => served?,
            () = follow => {}
        }
        Ok(())
    }
}

/// Runs an in-process call inside the span a network call gets from the
/// server's `trace_fn`.
#[derive(Debug, Clone)]
struct Spanned<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<Body>> for Spanned<S>
where
    S: tower::Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = tracing::instrument::Instrumented<S::Future>;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        use tracing::Instrument;
        let span = call_span(req.uri().path(), req.headers());
        self.inner.call(req).instrument(span)
    }
}

/// The span of one incoming call, as the OpenTelemetry RPC conventions name
/// it (`package.Service/Method`, `rpc.system`, `rpc.service`, `rpc.method`,
/// `rpc.grpc.status_code` when it ends); child of the caller's span when the
/// call carries a `traceparent`. Its `relaymesh.role` is the service's
/// (`relaymesh.channel.v1.…` is `channel`), so inside `relaymesh up` it is
/// exported under that role's `service.name`.
fn request_span(req: &http::Request<()>) -> tracing::Span {
    call_span(req.uri().path(), req.headers())
}

fn call_span(path: &str, headers: &http::HeaderMap) -> tracing::Span {
    let (service, method) = crate::metrics_layer::split_path(path);
    let span = method_span(service, method);
    relaymesh_telemetry::propagation::set_parent_from(&span, headers);
    span
}

/// The span of a call to `service`/`method`, without a parent from the
/// wire: the current span is its parent (an in-process call's caller).
pub(crate) fn method_span(service: &str, method: &str) -> tracing::Span {
    tracing::info_span!(
        "grpc.request",
        otel.name = %format_args!("{service}/{method}"),
        otel.kind = "server",
        rpc.system = "grpc",
        rpc.service = service,
        rpc.method = method,
        rpc.grpc.status_code = tracing::field::Empty,
        relaymesh.role = role_of(service),
    )
}

/// The role serving `service`, from its package (`relaymesh.<role>.v1`);
/// the gateway serves the client API; `grpc` for health and reflection.
fn role_of(service: &str) -> &'static str {
    match service.split('.').nth(1).unwrap_or_default() {
        "auth" => "auth",
        "signaling" => "signaling",
        "channel" => "channel",
        "media_relay" => "media-relay",
        "match" => "match",
        "scheduler" => "scheduler",
        "client" => "gateway",
        _ => "grpc",
    }
}

#[cfg(test)]
mod tests {
    use super::role_of;

    #[test]
    fn a_service_is_served_by_the_role_its_package_names() {
        assert_eq!(role_of("relaymesh.channel.v1.ChannelService"), "channel");
        assert_eq!(role_of("relaymesh.media_relay.v1.MediaRelay"), "media-relay");
        assert_eq!(role_of("grpc.health.v1.Health"), "grpc");
    }
}
