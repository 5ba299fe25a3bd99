//! Metrics in a Prometheus registry, served as text on the admin address
//! (`PIM_ADMIN_ADDR`, `GET /metrics`), apart from the gRPC port. Labels stay low-cardinality:
//! service and method names, status codes, stream and group names.

use std::net::SocketAddr;
use std::sync::OnceLock;

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    /// RPCs by gRPC service, method and status code.
    pub rpc_requests: IntCounterVec,
    pub rpc_seconds: HistogramVec,
    /// Events the relay published, by stream.
    pub events_published: IntCounterVec,
    /// Events applied, retried (a batch or entry failed) and dead-lettered, by stream and group.
    pub events_consumed: IntCounterVec,
    pub events_retried: IntCounterVec,
    pub events_dead_lettered: IntCounterVec,
    /// Entries refused for want of a valid signature of the stream's owner, by stream and reason.
    pub events_rejected: IntCounterVec,
    /// How old the newest event a group applied was when applied (milliseconds), by stream and group.
    pub consumer_lag_ms: IntGaugeVec,
    /// Outbox rows not yet published, by service.
    pub outbox_backlog: IntGaugeVec,
    /// 1 while a service's last relay pass published (or had nothing to), 0 while they fail
    /// (Redis out of reach, say): events wait in the outbox meanwhile.
    pub relay_up: IntGaugeVec,
    /// 1 while a consumer group's last read of its streams worked, 0 while they fail (its
    /// lag gauge holds its last value meanwhile).
    pub consumer_up: IntGaugeVec,
    /// Consumer groups found past their stream's end (moved there by someone writing to
    /// Redis) and set back to its start, by stream and group.
    pub groups_rewound: IntCounterVec,
    /// Times a relay found a stream had lost entries it published (Redis restarted empty or
    /// from an older snapshot, the stream deleted) and published them again, by stream.
    pub streams_republished: IntCounterVec,
    /// How late expiries and scheduled starts fired (seconds).
    pub scheduler_lag_seconds: Histogram,
    /// Answers held by the CheckAccess cache.
    pub access_cache_entries: IntGauge,
    /// Webhook delivery attempts by outcome: delivered, retry (failed, to be tried again), dead.
    pub webhook_attempts: IntCounterVec,
    /// From a delivery's queueing to the receiver taking it (seconds).
    pub webhook_delivery_seconds: Histogram,
    /// Notification mails by outcome: sent, retry, dead.
    pub mail_attempts: IntCounterVec,
}

fn build() -> Metrics {
    let registry = Registry::new();
    let counter = |name: &str, help: &str, labels: &[&str]| {
        let c = IntCounterVec::new(Opts::new(name, help), labels).expect("a valid counter");
        registry.register(Box::new(c.clone())).expect("registered once");
        c
    };
    let gauge = |name: &str, help: &str, labels: &[&str]| {
        let g = IntGaugeVec::new(Opts::new(name, help), labels).expect("a valid gauge");
        registry.register(Box::new(g.clone())).expect("registered once");
        g
    };
    let rpc_requests = counter("pim_rpc_requests_total", "RPCs handled", &["service", "method", "code"]);
    let rpc_seconds = HistogramVec::new(
        HistogramOpts::new("pim_rpc_duration_seconds", "RPC latency").buckets(vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        ]),
        &["service", "method"],
    )
    .expect("a valid histogram");
    registry
        .register(Box::new(rpc_seconds.clone()))
        .expect("registered once");
    let scheduler_lag_seconds = Histogram::with_opts(
        HistogramOpts::new("pim_scheduler_lag_seconds", "How late timers fired")
            .buckets(vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0]),
    )
    .expect("a valid histogram");
    registry
        .register(Box::new(scheduler_lag_seconds.clone()))
        .expect("registered once");
    let webhook_delivery_seconds = Histogram::with_opts(
        HistogramOpts::new(
            "pim_webhook_delivery_seconds",
            "From a webhook delivery's queueing to the receiver taking it",
        )
        .buckets(vec![0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0, 30.0, 300.0, 3600.0]),
    )
    .expect("a valid histogram");
    registry
        .register(Box::new(webhook_delivery_seconds.clone()))
        .expect("registered once");
    let access_cache_entries =
        IntGauge::new("pim_access_cache_entries", "Answers in the CheckAccess cache").expect("a valid gauge");
    registry
        .register(Box::new(access_cache_entries.clone()))
        .expect("registered once");
    Metrics {
        rpc_requests,
        rpc_seconds,
        events_published: counter("pim_events_published_total", "Events the relay published", &["stream"]),
        events_consumed: counter("pim_events_consumed_total", "Events applied", &["stream", "group"]),
        events_retried: counter(
            "pim_events_retried_total",
            "Event deliveries that failed and will be retried",
            &["stream", "group"],
        ),
        events_dead_lettered: counter(
            "pim_events_dead_lettered_total",
            "Events moved to the dead-letter stream",
            &["stream", "group"],
        ),
        events_rejected: counter(
            "pim_events_rejected_total",
            "Stream entries refused: not signed by the stream's owner (forged or altered)",
            &["stream", "reason"],
        ),
        consumer_lag_ms: gauge(
            "pim_consumer_lag_milliseconds",
            "Age of the newest event a group applied, when applied",
            &["stream", "group"],
        ),
        outbox_backlog: gauge("pim_outbox_backlog", "Outbox rows not yet published", &["service"]),
        relay_up: gauge(
            "pim_relay_up",
            "1 while the service's relay publishes its events, 0 while its passes fail",
            &["service"],
        ),
        consumer_up: gauge(
            "pim_consumer_up",
            "1 while a consumer group reads its streams, 0 while its reads fail",
            &["group"],
        ),
        groups_rewound: counter(
            "pim_consumer_groups_rewound_total",
            "Consumer groups found past their stream's end (moved by hand) and set back to its start",
            &["stream", "group"],
        ),
        streams_republished: counter(
            "pim_streams_republished_total",
            "Times a relay found its stream had lost entries it published and published them again",
            &["stream"],
        ),
        scheduler_lag_seconds,
        access_cache_entries,
        webhook_attempts: counter(
            "pim_webhook_attempts_total",
            "Webhook delivery attempts, by outcome (delivered, retry, dead)",
            &["outcome"],
        ),
        webhook_delivery_seconds,
        mail_attempts: counter(
            "pim_mail_attempts_total",
            "Notification mail attempts, by outcome (sent, retry, dead)",
            &["outcome"],
        ),
        registry,
    }
}

/// The process's metrics.
pub fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(build)
}

/// Everything, in the Prometheus text format.
pub fn render() -> String {
    let mut out = Vec::new();
    let _ = TextEncoder::new().encode(&metrics().registry.gather(), &mut out);
    String::from_utf8(out).unwrap_or_default()
}

/// Every `service/method` PIM serves (from the generated descriptors), plus health and
/// reflection.
fn known_methods() -> &'static std::collections::HashSet<String> {
    static KNOWN: OnceLock<std::collections::HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let mut known: std::collections::HashSet<String> = [
            "grpc.health.v1.Health/Check",
            "grpc.health.v1.Health/Watch",
            "grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(str::to_owned)
        .collect();
        if let Ok(set) = prost_types::FileDescriptorSet::decode(pim_proto::FILE_DESCRIPTOR_SET) {
            for file in set.file {
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("{}.{}/{}", file.package(), service.name(), method.name()));
                    }
                }
            }
        }
        known
    })
}

/// Splits `/pim.assignment.v1.AssignmentService/CreateRequest` into service and method;
/// anything PIM does not serve is ("unknown", "unknown").
pub fn rpc_labels(path: &str) -> (&str, &str) {
    let path = path.trim_start_matches('/');
    if !known_methods().contains(path) {
        return ("unknown", "unknown");
    }
    path.split_once('/').unwrap_or((path, ""))
}

/// A gRPC status code as a label, as tonic spells it (`Ok`, `PermissionDenied`), without
/// formatting on every call.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "Ok",
        Cancelled => "Cancelled",
        Unknown => "Unknown",
        InvalidArgument => "InvalidArgument",
        DeadlineExceeded => "DeadlineExceeded",
        NotFound => "NotFound",
        AlreadyExists => "AlreadyExists",
        PermissionDenied => "PermissionDenied",
        ResourceExhausted => "ResourceExhausted",
        FailedPrecondition => "FailedPrecondition",
        Aborted => "Aborted",
        OutOfRange => "OutOfRange",
        Unimplemented => "Unimplemented",
        Internal => "Internal",
        Unavailable => "Unavailable",
        DataLoss => "DataLoss",
        Unauthenticated => "Unauthenticated",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_the_codes_names() {
        for code in [
            tonic::Code::Ok,
            tonic::Code::PermissionDenied,
            tonic::Code::Unauthenticated,
        ] {
            assert_eq!(code_label(code), format!("{code:?}"));
        }
    }

    #[test]
    fn only_served_methods_get_labels_of_their_own() {
        assert_eq!(
            rpc_labels("/pim.assignment.v1.AssignmentService/CreateRequest"),
            ("pim.assignment.v1.AssignmentService", "CreateRequest")
        );
        assert_eq!(
            rpc_labels("/grpc.health.v1.Health/Check"),
            ("grpc.health.v1.Health", "Check")
        );
        assert_eq!(
            rpc_labels("/pim.assignment.v1.AssignmentService/Nope"),
            ("unknown", "unknown")
        );
        assert_eq!(rpc_labels("/wp-login.php"), ("unknown", "unknown"));
    }
}

/// The code of an answer as its headers give it: errors come back trailers-only, with
/// `grpc-status` in the headers; a missing one means OK (it follows in the trailers).
pub fn answered_code<B>(response: &axum::http::Response<B>) -> tonic::Code {
    response
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map(tonic::Code::from_i32)
        .unwrap_or(tonic::Code::Ok)
}

/// Counts a call to `path` answered with `code` after `elapsed`. Only methods PIM serves get
/// labels of their own, so nobody can grow the series by calling made-up paths.
pub fn record_rpc(path: &str, code: tonic::Code, elapsed: std::time::Duration) {
    let (service, method) = rpc_labels(path);
    let m = metrics();
    m.rpc_requests
        .with_label_values(&[service, method, code_label(code)])
        .inc();
    m.rpc_seconds
        .with_label_values(&[service, method])
        .observe(elapsed.as_secs_f64());
}

/// Serves `GET /metrics` on `addr` until `stop`; returns the bound address.
pub async fn serve_admin(
    addr: SocketAddr,
    mut stop: tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding {addr} (PIM_ADMIN_ADDR): {e}"))?;
    let bound = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(|| async {
            (
                [(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")],
                render(),
            )
        }),
    );
    let task = tokio::spawn(async move {
        let shutdown = async move {
            let _ = stop.wait_for(|s| *s).await;
        };
        if let Err(err) = crate::listen::serve_http(listener, app, shutdown).await {
            tracing::warn!(error = %err, "the admin endpoint stopped");
        }
    });
    Ok((bound, task))
}

/// The same metrics over OpenTelemetry (OTLP), read from the registry at each export.
pub mod otlp {
    use opentelemetry::KeyValue;
    use opentelemetry::metrics::{Meter, MeterProvider as _};
    use opentelemetry_sdk::metrics::SdkMeterProvider;
    use prometheus::proto::{MetricFamily, MetricType};

    use super::metrics;

    const COUNTERS: &[&str] = &[
        "pim_rpc_requests_total",
        "pim_events_published_total",
        "pim_events_consumed_total",
        "pim_events_retried_total",
        "pim_events_dead_lettered_total",
        "pim_events_rejected_total",
        "pim_consumer_groups_rewound_total",
        "pim_streams_republished_total",
    ];
    const GAUGES: &[&str] = &[
        "pim_consumer_lag_milliseconds",
        "pim_outbox_backlog",
        "pim_access_cache_entries",
    ];
    const HISTOGRAMS: &[&str] = &["pim_rpc_duration_seconds", "pim_scheduler_lag_seconds"];

    fn family(name: &str) -> Option<MetricFamily> {
        metrics().registry.gather().into_iter().find(|f| f.name() == name)
    }

    /// (attributes, value) of every series of `name`; histograms give their sum or count.
    fn samples(name: &str, part: Option<&str>) -> Vec<(Vec<KeyValue>, f64)> {
        let Some(family) = family(name) else {
            return Vec::new();
        };
        family
            .get_metric()
            .iter()
            .map(|m| {
                let labels = m
                    .get_label()
                    .iter()
                    .map(|l| KeyValue::new(l.name().to_owned(), l.value().to_owned()))
                    .collect();
                let value = match (family.get_field_type(), part) {
                    (MetricType::COUNTER, _) => m.get_counter().get_value(),
                    (MetricType::GAUGE, _) => m.get_gauge().get_value(),
                    (MetricType::HISTOGRAM, Some("sum")) => m.get_histogram().get_sample_sum(),
                    (MetricType::HISTOGRAM, _) => m.get_histogram().get_sample_count() as f64,
                    _ => 0.0,
                };
                (labels, value)
            })
            .collect()
    }

    fn register(meter: &Meter) {
        for name in COUNTERS {
            meter
                .f64_observable_counter(*name)
                .with_callback(move |o| {
                    for (labels, value) in samples(name, None) {
                        o.observe(value, &labels);
                    }
                })
                .build();
        }
        for name in GAUGES {
            meter
                .f64_observable_gauge(*name)
                .with_callback(move |o| {
                    for (labels, value) in samples(name, None) {
                        o.observe(value, &labels);
                    }
                })
                .build();
        }
        for name in HISTOGRAMS {
            for part in ["sum", "count"] {
                meter
                    .f64_observable_counter(format!("{name}_{part}"))
                    .with_callback(move |o| {
                        for (labels, value) in samples(name, Some(part)) {
                            o.observe(value, &labels);
                        }
                    })
                    .build();
            }
        }
    }

    /// Exports the metrics over OTLP/gRPC every `OTEL_METRIC_EXPORT_INTERVAL` (default 60 s).
    pub fn start(resource: opentelemetry_sdk::Resource) -> Option<SdkMeterProvider> {
        let exporter = match opentelemetry_otlp::MetricExporter::builder().with_tonic().build() {
            Ok(exporter) => exporter,
            Err(err) => {
                eprintln!("OpenTelemetry metrics export is off: {err}");
                return None;
            }
        };
        let provider = SdkMeterProvider::builder()
            .with_periodic_exporter(exporter)
            .with_resource(resource)
            .build();
        register(&provider.meter("pim"));
        Some(provider)
    }
}
