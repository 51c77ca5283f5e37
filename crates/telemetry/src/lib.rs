//! Logs, traces and metrics for every relaymesh process.
//!
//! - `init` installs the `tracing` subscriber (text, or JSON with
//!   `LOG_FORMAT=json`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an
//!   OpenTelemetry layer exporting spans over OTLP/gRPC.
//! - `propagation` carries W3C trace context through HTTP/gRPC headers, so a
//!   span started at the gateway is the parent of the service's span.
//! - `metrics` installs the one Prometheus recorder of the process.

pub mod metrics;
pub mod propagation;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::SdkTracerProvider;
use relaymesh_config::{LogFormat, TelemetryArgs};
use tracing_subscriber::{EnvFilter, Layer, layer::SubscriberExt, util::SubscriberInitExt};

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp exporter: {0}")]
    Exporter(String),
    #[error("tracing subscriber already installed")]
    AlreadyInstalled,
}

/// Flushes and shuts down the trace exporter when dropped.
#[must_use = "dropping the guard stops trace export"]
pub struct TelemetryGuard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for TelemetryGuard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(err) = provider.shutdown()
        {
            eprintln!("trace exporter shutdown: {err}");
        }
    }
}

/// Installs the global subscriber for a process named `service_name`.
pub fn init(args: &TelemetryArgs, service_name: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    propagation::install_propagator();
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_filter(filter()).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter())
            .boxed(),
    };
    let (otel, provider) = match &args.otlp_endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint.clone())
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(service_name)
                        .build(),
                )
                .build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer(service_name))
                .with_filter(filter());
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    tracing_subscriber::registry()
        .with(fmt)
        .with(otel)
        .try_init()
        .map_err(|_| TelemetryError::AlreadyInstalled)?;
    Ok(TelemetryGuard { provider })
}
