//! Per-method call counts and latencies of a gRPC server.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

/// Records `grpc_server_requests_total{method}` and
/// `grpc_server_request_duration_seconds{method}` for every call.
#[derive(Debug, Clone, Copy, Default)]
pub struct RpcMetricsLayer;

impl<S> Layer<S> for RpcMetricsLayer {
    type Service = RpcMetrics<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RpcMetrics { inner }
    }
}

#[derive(Debug, Clone)]
pub struct RpcMetrics<S> {
    inner: S,
}

impl<S, B> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Timed<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        Timed {
            inner: self.inner.call(req),
            method,
            start: Instant::now(),
        }
    }
}

pin_project_lite::pin_project! {
    pub struct Timed<F> {
        #[pin]
        inner: F,
        method: String,
        start: Instant,
    }
}

impl<F: Future> Future for Timed<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let method = std::mem::take(this.method);
        metrics::histogram!("grpc_server_request_duration_seconds", "method" => method.clone())
            .record(this.start.elapsed().as_secs_f64());
        metrics::counter!("grpc_server_requests_total", "method" => method).increment(1);
        Poll::Ready(out)
    }
}
