//! Trace context crosses a gRPC call: the server's request span is a child
//! of the caller's span, in the same trace, over the network and in process
//! (`relaymesh_rpc::local`).

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use relaymesh_rpc::{GrpcServer, ServeOptions, connect_lazy};
use tokio_util::sync::CancellationToken;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test(flavor = "current_thread")]
async fn server_span_is_a_child_of_the_callers_span() {
    relaymesh_telemetry::propagation::install_propagator();
    // Over the network first, then with the server taking calls in process.
    for in_process in [false, true] {
        relaymesh_rpc::local::set_enabled(in_process);
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        let _guard = tracing::subscriber::set_default(subscriber);

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
        provider.force_flush().unwrap();
        let spans = exporter.get_finished_spans().unwrap();
        let caller = spans.iter().find(|s| s.name == "caller").expect("caller span exported");
        let server_span = spans
            .iter()
            .find(|s| s.name == "grpc.health.v1.Health/Check")
            .expect("server span exported, named package.Service/Method");
        assert_eq!(
            server_span.span_context.trace_id(),
            caller.span_context.trace_id(),
            "same trace (in process: {in_process})"
        );
        assert_eq!(
            server_span.parent_span_id,
            caller.span_context.span_id(),
            "server span's parent is the caller (in process: {in_process})"
        );
        let attr = |key: &str| {
            server_span
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == key)
                .map(|kv| kv.value.to_string())
        };
        assert_eq!(attr("rpc.system").as_deref(), Some("grpc"));
        assert_eq!(attr("rpc.service").as_deref(), Some("grpc.health.v1.Health"));
        assert_eq!(attr("rpc.method").as_deref(), Some("Check"));
        assert_eq!(attr("rpc.grpc.status_code").as_deref(), Some("0"));
    }
}
