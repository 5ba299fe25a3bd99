//! Logging and tracing, set up once per process. Logs: JSON lines in `pim serve`,
//! human-readable in `pim up`, filtered by `RUST_LOG` (default `info`). Traces: OpenTelemetry
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (with the standard `OTEL_*`
//! variables: `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`); without it nothing
//! is exported. W3C trace context crosses gRPC calls (metadata) and events (the envelope's
//! `traceparent`), so one request and what its events cause form one trace.

use std::sync::OnceLock;

use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();
static METERS: OnceLock<opentelemetry_sdk::metrics::SdkMeterProvider> = OnceLock::new();

fn resource() -> opentelemetry_sdk::Resource {
    let service = std::env::var("OTEL_SERVICE_NAME").unwrap_or_else(|_| "pim".to_owned());
    opentelemetry_sdk::Resource::builder()
        .with_service_name(service)
        .build()
}

fn otlp_provider() -> Option<SdkTracerProvider> {
    std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.trim().is_empty())?;

    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(err) => {
            eprintln!("OpenTelemetry export is off: {err}");
            return None;
        }
    };
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource())
        .build();
    Some(provider)
}

/// Must run inside the Tokio runtime (the OTLP exporter's channel lives there).
pub fn init(json: bool) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,sqlx=warn,sea_orm=warn"));
    let otel = otlp_provider().map(|provider| {
        // The metrics go the same way (the Prometheus endpoint serves them too).
        if let Some(meters) = crate::metrics::otlp::start(resource()) {
            let _ = METERS.set(meters);
        }
        let tracer = provider.tracer("pim");
        let _ = PROVIDER.set(provider.clone());
        opentelemetry::global::set_tracer_provider(provider);
        tracing_opentelemetry::layer().with_tracer(tracer)
    });
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let registry = tracing_subscriber::registry().with(filter).with(otel);
    // A second init (tests start several suites in one process) keeps the first subscriber.
    let _ = if json {
        registry.with(fmt.json()).try_init()
    } else {
        registry.with(fmt).try_init()
    };
}

/// For the command line: traces only (its output stays the user's), and only with
/// `OTEL_EXPORTER_OTLP_ENDPOINT` set.
pub fn init_client() {
    if let Some(provider) = otlp_provider() {
        let tracer = provider.tracer("pim-cli");
        let _ = PROVIDER.set(provider.clone());
        opentelemetry::global::set_tracer_provider(provider);
        let _ = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer))
            .try_init();
    }
}

/// Sends the spans still buffered (call before the process exits).
pub fn shutdown() {
    if let Some(provider) = PROVIDER.get() {
        let _ = provider.force_flush();
    }
    if let Some(meters) = METERS.get() {
        let _ = meters.force_flush();
    }
}

struct Headers<'a>(&'a tonic::codegen::http::HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(|k| k.as_str()).collect()
    }
}

struct Traceparent<'a>(Option<&'a str>);

impl Extractor for Traceparent<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        (key == "traceparent").then_some(self.0).flatten()
    }

    fn keys(&self) -> Vec<&str> {
        vec!["traceparent"]
    }
}

struct Collect(Option<String>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        if key == "traceparent" {
            self.0 = Some(value);
        }
    }
}

/// The trace context a request's metadata carries (none when it carries none).
pub fn context_from_headers(headers: &tonic::codegen::http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// The trace context an event's `traceparent` names.
pub fn context_from_traceparent(traceparent: &str) -> Context {
    TraceContextPropagator::new().extract(&Traceparent(Some(traceparent)))
}

/// The current span's context as a W3C `traceparent`, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return None;
    }
    let mut collect = Collect(None);
    TraceContextPropagator::new().inject_context(&context, &mut collect);
    collect.0
}

/// Puts the current trace context on an outgoing gRPC request.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    if let Some(traceparent) = current_traceparent()
        && let Ok(value) = traceparent.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
}

/// A span for handling one event, a child of the span that emitted it.
pub fn event_span(consumer: &str, envelope: &crate::events::Envelope) -> tracing::Span {
    let span = tracing::info_span!(
        "event",
        otel.name = %format!("{consumer} {}", crate::events::short_type(envelope)),
        pim.service = consumer,
        pim.event_id = %envelope.id,
        pim.subject = %envelope.subject,
        trace_id = tracing::field::Empty,
    );
    let _ = span.set_parent(context_from_traceparent(&envelope.traceparent));
    record_trace_id(&span, Some(&envelope.traceparent));
    span
}

/// Names the assignment request (and its role) an RPC is about on the RPC's span, as the
/// `pim.request_id` and `pim.role_id` attributes.
pub fn record_request(request_id: &str, role_id: &str) {
    let span = tracing::Span::current();
    span.record("pim.request_id", request_id);
    span.record("pim.role_id", role_id);
}

/// Puts the span's trace id on it as `trace_id`, so every log line inside carries it: the
/// OpenTelemetry trace when exporting, otherwise the one `traceparent` names.
pub fn record_trace_id(span: &tracing::Span, traceparent: Option<&str>) {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string().as_str());
    } else if let Some(id) = traceparent
        .and_then(|t| t.split('-').nth(1))
        .filter(|id| id.len() == 32)
    {
        span.record("trace_id", id);
    }
}
