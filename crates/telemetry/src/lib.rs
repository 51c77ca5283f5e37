//! Logs, traces and metrics for every relaymesh process.
//!
//! - `init` installs the `tracing` subscriber (text, or JSON with
//!   `LOG_FORMAT=json`) and, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an
//!   OpenTelemetry layer exporting spans over OTLP/gRPC.
//! - `propagation` carries W3C trace context through HTTP/gRPC headers, so a
//!   span started at the gateway is the parent of the service's span.
//! - `metrics` installs the one Prometheus recorder of the process.
//! - `roles` gives each role its own `service.name`, also inside `up`.
//!
//! Logs go to stderr (stdout is left to what a command prints).

pub mod metrics;
pub mod propagation;
pub mod roles;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
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

/// Installs the global subscriber for a process running one `role`
/// (`gateway`, `channel`, `node-agent`…): its spans are exported as
/// service `relaymesh-<role>`.
pub fn init(args: &TelemetryArgs, role: &'static str) -> Result<TelemetryGuard, TelemetryError> {
    install(args, &roles::service_name(role), &[])
}

/// Installs the global subscriber for `relaymesh up`, where every role
/// shares the process: each role's spans are still exported as its own
/// service (see [`roles`]); spans of no role as `relaymesh`.
pub fn init_mesh(args: &TelemetryArgs) -> Result<TelemetryGuard, TelemetryError> {
    install(args, "relaymesh", &roles::MESH_ROLES)
}

fn install(
    args: &TelemetryArgs,
    process_name: &str,
    role_names: &[&'static str],
) -> Result<TelemetryGuard, TelemetryError> {
    propagation::install_propagator();
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = match args.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(filter())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .flatten_event(true)
            .with_current_span(true)
            .with_filter(filter())
            .boxed(),
    };
    let (otel, provider) = match &args.otlp_endpoint {
        Some(endpoint) => {
            let export = |accept: roles::Accept, name: String| {
                let exporter = opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(endpoint.clone())
                    .build()
                    .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
                let batch = BatchSpanProcessor::builder(exporter).build();
                Ok::<_, TelemetryError>(roles::RoleExport::new(accept, name, batch))
            };
            let mut builder = SdkTracerProvider::builder()
                .with_span_processor(roles::RoleTagger::default())
                .with_resource(
                    opentelemetry_sdk::Resource::builder()
                        .with_service_name(process_name.to_owned())
                        .build(),
                );
            for role in role_names {
                builder = builder.with_span_processor(export(roles::Accept::Role(role), roles::service_name(role))?);
            }
            builder = builder.with_span_processor(export(
                roles::Accept::Rest(role_names.to_vec()),
                process_name.to_owned(),
            )?);
            let provider = builder.build();
            opentelemetry::global::set_tracer_provider(provider.clone());
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("relaymesh"))
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
