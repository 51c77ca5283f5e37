//! Per-method call counts and latencies of a gRPC server.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{LazyLock, PoisonError, RwLock};
use std::task::{Context, Poll};
use std::time::Instant;

use tower::{Layer, Service};

/// Calls of a method, by `grpc_code`.
const REQUESTS_TOTAL: &str = "relaymesh_grpc_server_requests_total";
/// Handling time of a method's calls.
const HANDLING_SECONDS: &str = "relaymesh_grpc_server_handling_seconds";

/// Records `relaymesh_grpc_server_requests_total{grpc_service, grpc_method,
/// grpc_code}` and `relaymesh_grpc_server_handling_seconds{grpc_service,
/// grpc_method}` for every call, and the status code on the call's span
/// (`rpc.grpc.status_code`).
///
/// The code is the `grpc-status` of the response head: a handler's error is
/// there (a trailers-only response); a call answered with a message has its
/// status in the trailers, which for a unary call is OK. A stream that fails
/// after its first message counts as OK.
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

impl<S, B, RB> Service<http::Request<B>> for RpcMetrics<S>
where
    S: Service<http::Request<B>, Response = http::Response<RB>>,
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

impl<F, RB, E> Future for Timed<F>
where
    F: Future<Output = Result<http::Response<RB>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let out = std::task::ready!(this.inner.poll(cx));
        let code = match &out {
            Ok(response) => response
                .headers()
                .get("grpc-status")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.parse::<i32>().ok())
                .map_or(tonic::Code::Ok, tonic::Code::from_i32),
            Err(_) => tonic::Code::Unknown,
        };
        // The request span is current here (tonic polls the call inside it).
        tracing::Span::current().record("rpc.grpc.status_code", code as i32);
        let (service, method) = split_path(this.method);
        record_call(
            service.to_owned().into(),
            method.to_owned().into(),
            code,
            this.start.elapsed(),
        );
        Poll::Ready(out)
    }
}

/// Counts one call of `service`/`method` that ended with `code`, and its
/// handling time.
pub(crate) fn record_call(
    service: metrics::SharedString,
    method: metrics::SharedString,
    code: tonic::Code,
    took: std::time::Duration,
) {
    metrics::histogram!(HANDLING_SECONDS,
        "grpc_service" => service.clone(), "grpc_method" => method.clone())
    .record(took.as_secs_f64());
    metrics::counter!(REQUESTS_TOTAL,
        "grpc_service" => service, "grpc_method" => method, "grpc_code" => code_name(code))
    .increment(1);
}

/// [`record_call`] for an in-process call, whose service and method names
/// are static: the handles of an OK call (the usual end) are registered at
/// the method's first call and kept, rather than each being looked up by
/// name and labels on every call. Other codes go through [`record_call`].
pub(crate) fn record_local_call(
    service: &'static str,
    method: &'static str,
    code: tonic::Code,
    took: std::time::Duration,
) {
    /// A method's handling-time histogram and its OK counter.
    struct Handles {
        seconds: metrics::Histogram,
        ok: metrics::Counter,
    }
    type ByMethod = HashMap<(&'static str, &'static str), Handles>;
    static KEPT: LazyLock<RwLock<ByMethod>> = LazyLock::new(Default::default);
    if code != tonic::Code::Ok {
        return record_call(service.into(), method.into(), code, took);
    }
    let record = |h: &Handles| {
        h.seconds.record(took.as_secs_f64());
        h.ok.increment(1);
    };
    let kept = KEPT.read().unwrap_or_else(PoisonError::into_inner);
    if let Some(handles) = kept.get(&(service, method)) {
        return record(handles);
    }
    drop(kept);
    let mut kept = KEPT.write().unwrap_or_else(PoisonError::into_inner);
    let handles = kept.entry((service, method)).or_insert_with(|| Handles {
        seconds: metrics::histogram!(HANDLING_SECONDS,
            "grpc_service" => service, "grpc_method" => method),
        ok: metrics::counter!(REQUESTS_TOTAL,
            "grpc_service" => service, "grpc_method" => method, "grpc_code" => code_name(tonic::Code::Ok)),
    });
    record(handles);
}

/// `(service, method)` of a gRPC path `/package.Service/Method`.
pub(crate) fn split_path(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}

/// The canonical name of a gRPC status code (`OK`, `NOT_FOUND`…), as
/// grpc-go and the OpenTelemetry conventions spell it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/relaymesh.channel.v1.ChannelService/Join"),
            ("relaymesh.channel.v1.ChannelService", "Join")
        );
        assert_eq!(split_path("/odd"), ("odd", ""));
    }

    #[test]
    fn codes_are_named_as_grpc_spells_them() {
        assert_eq!(code_name(tonic::Code::Ok), "OK");
        assert_eq!(code_name(tonic::Code::ResourceExhausted), "RESOURCE_EXHAUSTED");
        assert_eq!(code_name(tonic::Code::from_i32(99)), "UNKNOWN");
    }
}
