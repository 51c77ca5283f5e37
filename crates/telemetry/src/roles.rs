//! One OpenTelemetry `service.name` per role, also when every role shares a
//! process (`relaymesh up`).
//!
//! A resource (and so `service.name`) belongs to a tracer provider, not to
//! a span. So the provider gets one batch processor per role, each with its
//! own resource `service.name = relaymesh-<role>`, and each exports only the
//! spans of its role. A span's role is its `relaymesh.role` attribute (set
//! by the gateway's frame spans and the gRPC server's request spans) or,
//! without one, its parent's in this process; spans of no role go to the
//! process's own service name.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use opentelemetry::trace::{Span as _, SpanId, TraceContextExt};
use opentelemetry::{Context, KeyValue, Value};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{BatchSpanProcessor, Span, SpanData, SpanProcessor};

/// The span attribute naming a span's role (`gateway`, `channel`, …).
pub const ROLE_ATTRIBUTE: &str = "relaymesh.role";

/// Every role `relaymesh up` runs.
pub const MESH_ROLES: [&str; 7] = [
    "gateway",
    "auth",
    "signaling",
    "channel",
    "media-relay",
    "match",
    "scheduler",
];

/// The `service.name` of `role`.
pub fn service_name(role: &str) -> String {
    format!("relaymesh-{role}")
}

/// Spans whose end has not been seen yet, so their children inherit their
/// role. Bounded: a span that never ends must not grow it forever.
const MAX_OPEN_SPANS: usize = 65_536;

/// Gives every span a role: its own, or its local parent's.
#[derive(Debug, Default)]
pub struct RoleTagger {
    open: Mutex<HashMap<SpanId, Value>>,
}

impl RoleTagger {
    fn own_role(span: &Span) -> Option<Value> {
        let data = span.exported_data()?;
        data.attributes
            .into_iter()
            .find(|kv| kv.key.as_str() == ROLE_ATTRIBUTE)
            .map(|kv| kv.value)
    }
}

impl SpanProcessor for RoleTagger {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        let Ok(mut open) = self.open.lock() else { return };
        let role = match Self::own_role(span) {
            Some(role) => role,
            None => {
                let parent = cx.span().span_context().span_id();
                let Some(role) = open.get(&parent).cloned() else { return };
                span.set_attribute(KeyValue::new(ROLE_ATTRIBUTE, role.clone()));
                role
            }
        };
        if open.len() >= MAX_OPEN_SPANS {
            open.clear();
        }
        open.insert(span.span_context().span_id(), role);
    }

    fn on_end(&self, span: SpanData) {
        if let Ok(mut open) = self.open.lock() {
            open.remove(&span.span_context.span_id());
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// Which spans a [`RoleExport`] takes.
#[derive(Debug)]
pub enum Accept {
    /// Spans of this role.
    Role(&'static str),
    /// Spans of none of these roles (the process's own service name).
    Rest(Vec<&'static str>),
}

impl Accept {
    fn takes(&self, span: &SpanData) -> bool {
        let role = span
            .attributes
            .iter()
            .find(|kv| kv.key.as_str() == ROLE_ATTRIBUTE)
            .map(|kv| kv.value.as_str());
        match (self, role) {
            (Self::Role(want), Some(role)) => role == *want,
            (Self::Role(_), None) => false,
            (Self::Rest(roles), Some(role)) => !roles.iter().any(|r| role == *r),
            (Self::Rest(_), None) => true,
        }
    }
}

/// Exports the spans of one role under that role's `service.name`.
#[derive(Debug)]
pub struct RoleExport {
    accept: Accept,
    service_name: String,
    inner: BatchSpanProcessor,
}

impl RoleExport {
    pub fn new(accept: Accept, service_name: String, inner: BatchSpanProcessor) -> Self {
        Self {
            accept,
            service_name,
            inner,
        }
    }
}

impl SpanProcessor for RoleExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.accept.takes(&span) {
            self.inner.on_end(span);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    /// The provider's resource, with this role's `service.name`.
    fn set_resource(&mut self, resource: &Resource) {
        let ours = Resource::builder_empty()
            .with_attributes(resource.iter().map(|(k, v)| KeyValue::new(k.clone(), v.clone())))
            .with_service_name(self.service_name.clone())
            .build();
        self.inner.set_resource(&ours);
    }
}
