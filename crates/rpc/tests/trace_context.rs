//! Trace context crosses a gRPC call: the server's request span is a child
//! of the caller's span, in the same trace, over the network, in process
//! (`relaymesh_rpc::local`) and as a typed in-process call
//! (`relaymesh_rpc::LocalOrRemote`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use relaymesh_proto::query::v1::query_service_client::QueryServiceClient;
use relaymesh_proto::query::v1::query_service_server::{self, QueryService, QueryServiceServer};
use relaymesh_proto::query::v1::{QueryRequest, QueryResponse};
use relaymesh_rpc::{GrpcServer, LocalOrRemote, ServeOptions, connect_lazy, unary};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

/// Spans of this thread, exported to memory until the guard drops.
struct Traced {
    exporter: InMemorySpanExporter,
    provider: SdkTracerProvider,
    _guard: tracing::subscriber::DefaultGuard,
}

impl Traced {
    fn start() -> Self {
        relaymesh_telemetry::propagation::install_propagator();
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);
        Self {
            exporter,
            provider,
            _guard,
        }
    }

    /// Checks that the span `name` (a call's, `package.Service/Method`) is
    /// the child of the span "caller", in its trace, with the RPC
    /// attributes and `code`; `how` names the case in failures.
    fn assert_call_span(&self, name: &str, code: tonic::Code, how: &str) {
        self.provider.force_flush().unwrap();
        let spans = self.exporter.get_finished_spans().unwrap();
        let caller = spans.iter().find(|s| s.name == "caller").expect("caller span exported");
        let call: &SpanData = spans
            .iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("the call's span, named package.Service/Method ({how})"));
        assert_eq!(
            call.span_context.trace_id(),
            caller.span_context.trace_id(),
            "same trace ({how})"
        );
        assert_eq!(
            call.parent_span_id,
            caller.span_context.span_id(),
            "the call's span's parent is the caller ({how})"
        );
        let attr = |key: &str| {
            call.attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        let (service, method) = name.split_once('/').unwrap();
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some(service));
        assert_eq!(attr("rpc.method").as_deref(), Some(method));
        assert_eq!(
            attr("rpc.grpc.status_code").as_deref(),
            Some((code as i32).to_string().as_str()),
            "{how}"
        );
    }
}

#[tokio::test(flavor = "current_thread")]
async fn server_span_is_a_child_of_the_callers_span() {
    // Over the network first, then with the server taking calls in process.
    for in_process in [false, true] {
        relaymesh_rpc::local::set_enabled(in_process);
        let traced = Traced::start();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        // A server with only the built-in health service is enough.
        let server = tokio::spawn(GrpcServer::new().serve(listener, ServeOptions::default(), shutdown.clone()));
        while in_process && relaymesh_rpc::local::lookup(addr).is_none() {
            tokio::task::yield_now().await;
        }

        let channel = connect_lazy(&format!("http://{addr}"), Duration::from_secs(5)).unwrap();
        let mut client = HealthClient::new(channel);
        async {
            client
                .check(HealthCheckRequest { service: String::new() })
                .await
                .unwrap();
        }
        .instrument(tracing::info_span!("caller"))
        .await;

        shutdown.cancel();
        server.await.unwrap().unwrap();
        traced.assert_call_span(
            "grpc.health.v1.Health/Check",
            tonic::Code::Ok,
            &format!("in process: {in_process}"),
        );
    }
    // In this test rather than its own: whether servers take in-process
    // calls is one setting for the process, which the loop above changes.
    a_typed_in_process_calls_span_is_a_child_of_the_callers_and_carries_its_code().await;
}

/// A query service that refuses every query.
struct Refuses;

#[tonic::async_trait]
impl QueryService for Refuses {
    async fn query(&self, _: tonic::Request<QueryRequest>) -> Result<tonic::Response<QueryResponse>, tonic::Status> {
        Err(tonic::Status::invalid_argument("refused"))
    }
}

/// A typed in-process call carries no metadata: its span's parent is the
/// caller's span, as the current one.
async fn a_typed_in_process_calls_span_is_a_child_of_the_callers_and_carries_its_code() {
    relaymesh_rpc::local::set_enabled(true);
    let traced = Traced::start();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let shutdown = CancellationToken::new();
    let server = GrpcServer::new()
        .add_service(QueryServiceServer::new(Refuses))
        .handles_in_process::<dyn QueryService>(std::sync::Arc::new(Refuses));
    let served = tokio::spawn(server.serve(listener, ServeOptions::default(), shutdown.clone()));
    while relaymesh_rpc::local::lookup(addr).is_none() {
        tokio::task::yield_now().await;
    }
    let url = format!("http://{addr}");
    let calls: LocalOrRemote<QueryServiceClient<relaymesh_rpc::RpcChannel>, dyn QueryService> = LocalOrRemote::new(
        QueryServiceClient::new(connect_lazy(&url, Duration::from_secs(5)).unwrap()),
        &url,
        query_service_server::SERVICE_NAME,
        Duration::from_secs(5),
    );
    let refused = async { unary!(calls, query, QueryRequest::default()).await }
        .instrument(tracing::info_span!("caller"))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    shutdown.cancel();
    served.await.unwrap().unwrap();
    traced.assert_call_span(
        "relaymesh.query.v1.QueryService/Query",
        tonic::Code::InvalidArgument,
        "typed, in process",
    );
}
