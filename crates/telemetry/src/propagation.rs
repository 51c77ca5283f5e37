//! W3C trace context over HTTP headers (gRPC metadata is HTTP/2 headers).
//!
//! The client side injects the current span's context into outgoing headers;
//! the server side makes the extracted context the parent of its request span.

use http::HeaderMap;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Installs the W3C `traceparent` propagator globally (idempotent).
pub fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::header::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

/// Writes the context of `span` into `headers`.
pub fn inject(span: &tracing::Span, headers: &mut HeaderMap) {
    inject_context(&span.context(), headers);
}

fn inject_context(cx: &opentelemetry::Context, headers: &mut HeaderMap) {
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

/// Makes the context carried by `headers`, if any, the parent of `span`.
pub fn set_parent_from(span: &tracing::Span, headers: &HeaderMap) {
    if headers.contains_key("traceparent") {
        let cx = opentelemetry::global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(headers)));
        let _ = span.set_parent(cx);
    }
}

/// Makes the W3C `traceparent` carried by a message, if any, the parent of
/// `span`.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: &str) {
    if let Ok(value) = http::HeaderValue::from_str(traceparent) {
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", value);
        set_parent_from(span, &headers);
    }
}

/// The W3C `traceparent` of the current span; empty when not traced.
pub fn current_traceparent() -> String {
    traceparent(&tracing::Span::current())
}

/// The W3C `traceparent` of `span`, for carrying it through a message
/// (a delivery envelope) rather than a header. Empty when not traced.
pub fn traceparent(span: &tracing::Span) -> String {
    let cx = span.context();
    // W3C trace context carries only a valid span context: without one
    // there is nothing to write, and no header map need be built (a chat
    // message's event asks this of every untraced send).
    if !cx.span().span_context().is_valid() {
        return String::new();
    }
    let mut headers = HeaderMap::new();
    inject_context(&cx, &mut headers);
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

#[cfg(test)]
mod tests {
    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::layer::SubscriberExt;

    use super::{install_propagator, traceparent};

    #[test]
    fn a_traced_span_carries_its_traceparent_and_an_untraced_one_none() {
        install_propagator();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let subscriber =
            tracing_subscriber::registry().with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
        tracing::subscriber::with_default(subscriber, || {
            let span = tracing::info_span!("traced");
            let carried = traceparent(&span);
            let parts: Vec<&str> = carried.split('-').collect();
            assert_eq!(parts.len(), 4, "{carried}");
            assert_eq!((parts[0], parts[1].len(), parts[2].len()), ("00", 32, 16), "{carried}");
            // Filtered out, or outside any subscriber: nothing to carry.
            assert_eq!(traceparent(&tracing::Span::none()), "");
        });
        assert_eq!(traceparent(&tracing::info_span!("no subscriber")), "");
    }
}
