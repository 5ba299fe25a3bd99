//! Logging and tracing, set up once per process. Logs: JSON lines in `pim serve`,
//! human-readable in `pim up`, filtered by `RUST_LOG` (default `info`). Traces: OpenTelemetry
//! over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT` is set (with the standard `OTEL_*`
//! variables: `OTEL_SERVICE_NAME`, `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`); without it nothing
//! is exported. W3C trace context crosses gRPC calls (metadata) and events (the envelope's
//! `traceparent`, which the events module reads and writes through this one), so one request
//! and what its events cause form one trace.

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

tokio::task_local! {
    /// The `traceparent` of the operation running, when OpenTelemetry does not trace it (no
    /// exporter): the events it emits and the calls it makes carry it, so every log line of
    /// the operation and of what it causes names one trace. Empty when OpenTelemetry traces.
    static UNEXPORTED: String;
}

/// The current span's context as a W3C `traceparent`, if it belongs to a trace.
pub fn current_traceparent() -> Option<String> {
    let context = tracing::Span::current().context();
    if !context.span().span_context().is_valid() {
        return UNEXPORTED.try_with(|t| t.clone()).ok().filter(|t| !t.is_empty());
    }
    let mut collect = Collect(None);
    TraceContextPropagator::new().inject_context(&context, &mut collect);
    collect.0
}

/// A fresh W3C `traceparent` (sampled), for an operation no trace reached. Its ids only need
/// to be unique, not secret, so they come from the standard library's randomly keyed hasher
/// (no system call on the RPC path).
pub fn new_traceparent() -> String {
    use std::hash::{BuildHasher, RandomState};
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let keyed = RandomState::new();
    let high = keyed.hash_one(NEXT.fetch_add(1, Ordering::Relaxed));
    let low = keyed.hash_one(high) | 1;
    let span = keyed.hash_one(low) | 1;
    format!("00-{high:016x}{low:016x}-{span:016x}-01")
}

/// The trace id a W3C `traceparent` names, if it is well formed.
fn trace_id_of(traceparent: &str) -> Option<&str> {
    let mut parts = traceparent.split('-');
    let (version, trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    let hex = |s: &str, len: usize| s.len() == len && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hex(version, 2) && hex(trace, 32) && hex(span, 16) && hex(flags, 2) && parts.next().is_none()).then_some(trace)
}

/// Runs `operation` in `span` (whose parent is already set). Its log lines name the trace:
/// OpenTelemetry's when it traces the span, otherwise the one `traceparent` names, or a new
/// one, which then travels on with the events and calls the operation makes.
pub fn traced<F: std::future::Future>(
    span: tracing::Span,
    traceparent: Option<&str>,
    operation: F,
) -> impl std::future::Future<Output = F::Output> + use<F> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    let unexported = if span_context.is_valid() {
        span.record("trace_id", span_context.trace_id().to_string().as_str());
        String::new()
    } else {
        let traceparent = traceparent
            .filter(|t| trace_id_of(t).is_some())
            .map_or_else(new_traceparent, str::to_owned);
        span.record("trace_id", trace_id_of(&traceparent).unwrap_or_default());
        traceparent
    };
    UNEXPORTED.scope(unexported, tracing::Instrument::instrument(operation, span))
}

/// Puts the current trace context on an outgoing gRPC request.
pub fn inject<T>(request: &mut tonic::Request<T>) {
    if let Some(traceparent) = current_traceparent()
        && let Ok(value) = traceparent.parse()
    {
        request.metadata_mut().insert("traceparent", value);
    }
}

/// Names the assignment request (and its role) an RPC is about on the RPC's span, as the
/// `pim.request_id` and `pim.role_id` attributes.
pub fn record_request(request_id: &str, role_id: &str) {
    let span = tracing::Span::current();
    span.record("pim.request_id", request_id);
    span.record("pim.role_id", role_id);
}

#[cfg(test)]
mod tests {
    use super::*;

    const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    // One thread: the subscriber set for this test is the thread's default.
    #[tokio::test(flavor = "current_thread")]
    async fn without_an_exporter_an_operation_and_what_it_causes_share_a_trace_id() {
        let (logs, _subscriber) = crate::testing::CapturedLogs::on_this_thread();
        let span = || tracing::info_span!("rpc", trace_id = tracing::field::Empty);

        // A caller's traceparent: logged, and carried by what the operation does (the events
        // it emits take it: `events::tests::an_event_carries_the_trace_of_the_operation_that_emits_it`).
        let carried = traced(span(), Some(CALLER), async {
            tracing::info!("handling a call");
            current_traceparent()
        })
        .await;
        assert_eq!(carried.as_deref(), Some(CALLER));
        assert!(
            logs.text().contains("trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\""),
            "{}",
            logs.text()
        );

        // No traceparent, or a malformed one: a new trace, still named on every line.
        for given in [None, Some("00-not-a-trace-01")] {
            let carried = traced(span(), given, async { current_traceparent() })
                .await
                .expect("a trace");
            let id = trace_id_of(&carried).expect("well formed");
            assert_ne!(id, "4bf92f3577b34da6a3ce929d0e0e4736");
            assert_ne!(carried, new_traceparent(), "each new trace is another");
            traced(span(), Some(&carried), async { tracing::info!("handling its event") }).await;
            assert!(logs.text().contains(&format!("trace_id=\"{id}\"")), "{}", logs.text());
        }
        // Outside any operation there is none.
        assert_eq!(current_traceparent(), None);
    }
}
