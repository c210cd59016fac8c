//! Logging and tracing, in one place.
//!
//! - Logs: `LOG_LEVEL` and `LOG_STYLE` (STANDARD, SIMPLE or JSON), overridable with `RUST_LOG`.
//! - Traces: an OpenTelemetry OTLP/gRPC exporter, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`. The SDK reads the
//!   standard variables itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource),
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` (batching). `OTEL_PROPAGATORS` picks the
//!   propagators (`tracecontext`, the default, and `baggage`). Spans at INFO and above of Regent are exported,
//!   whatever the log level.
//!
//! The W3C trace context travels with a command: [`extract`] reads it from incoming gRPC metadata, [`inject`]
//! writes the current span's into a map that rides in the command (and across nodes in `PeerRequest`), and
//! [`continue_from`] makes a span its child on the other side.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogConfig, LogStyle};

/// Keeps the trace exporter running; dropping it flushes the spans still buffered.
#[must_use = "dropping the guard stops the trace exporter"]
#[derive(Default)]
pub struct Guard {
    provider: Option<SdkTracerProvider>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(provider) = self.provider.take() {
            let _ = provider.shutdown();
        }
    }
}

/// Installs the global subscriber (once; later calls are ignored), with the OTLP exporter when configured. Call
/// it inside the Tokio runtime (the exporter's gRPC client needs it), and keep the guard until exit.
pub fn init(log: &LogConfig) -> Guard {
    let level = match log.level.to_ascii_uppercase().as_str() {
        "DEBUG" => "debug",
        "INFO" => "info",
        "WARN" | "WARNING" => "warn",
        "ERROR" => "error",
        "TRACE" => "trace",
        _ => log.level.as_str(),
    };
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!("{level},h2=warn,hyper=warn,tower=warn,ractor_cluster=warn,ractor=warn"))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match log.style {
        LogStyle::Json => fmt.json().with_filter(filter).boxed(),
        LogStyle::Simple => fmt.compact().without_time().with_target(false).with_filter(filter).boxed(),
        LogStyle::Standard => fmt.with_filter(filter).boxed(),
    };
    let (traces, provider) = match otlp_provider() {
        Some(provider) => {
            let layer = tracing_opentelemetry::layer()
                .with_tracer(provider.tracer("regent"))
                .with_filter(EnvFilter::new("warn,regent=info"));
            (Some(layer), Some(provider))
        }
        None => (None, None),
    };
    if tracing_subscriber::registry().with(logs).with(traces).try_init().is_err() {
        return Guard::default();
    }
    if provider.is_some() {
        opentelemetry::global::set_text_map_propagator(propagator_from_env());
    }
    Guard { provider }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// The OTLP tracer provider, when the environment asks for one.
fn otlp_provider() -> Option<SdkTracerProvider> {
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.eq_ignore_ascii_case("none"))
    {
        return None;
    }
    env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))?;
    let exporter = match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("regent: cannot build the OTLP trace exporter, tracing stays off: {e}");
            return None;
        }
    };
    Some(SdkTracerProvider::builder().with_batch_exporter(exporter).build())
}

/// `OTEL_PROPAGATORS` (comma-separated; `tracecontext` and `baggage` are known, the default is `tracecontext`).
fn propagator_from_env() -> TextMapCompositePropagator {
    let names = env("OTEL_PROPAGATORS").unwrap_or_else(|| "tracecontext".into());
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in names.split(',').map(str::trim) {
        match name {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "none" | "" => {}
            other => eprintln!("regent: OTEL_PROPAGATORS: {other:?} is not supported (tracecontext, baggage)"),
        }
    }
    TextMapCompositePropagator::new(propagators)
}

/// A trace context in transit (W3C `traceparent`, `tracestate`, `baggage`).
pub type TraceContext = HashMap<String, String>;

struct MetadataExtractor<'a>(&'a tonic::metadata::MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

struct MetadataInjector<'a>(&'a mut tonic::metadata::MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) =
            (tonic::metadata::MetadataKey::from_bytes(key.as_bytes()), tonic::metadata::MetadataValue::try_from(value))
        {
            self.0.insert(key, value);
        }
    }
}

/// Makes `span` a child of the trace context in incoming gRPC `metadata` (no-op without one).
pub fn extract(span: &tracing::Span, metadata: &tonic::metadata::MetadataMap) {
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(&MetadataExtractor(metadata)));
    let _ = span.set_parent(parent);
}

/// The trace context of `span`, to carry with a request.
pub fn inject(span: &tracing::Span) -> TraceContext {
    let mut carrier = TraceContext::new();
    let context = span.context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut carrier));
    carrier
}

/// Writes the current span's trace context into outgoing gRPC `metadata` (calls to the write handler).
pub fn inject_metadata(metadata: &mut tonic::metadata::MetadataMap) {
    let context = tracing::Span::current().context();
    opentelemetry::global::get_text_map_propagator(|p| p.inject_context(&context, &mut MetadataInjector(metadata)));
}

/// Makes `span` a child of a carried trace context (no-op when it is empty).
pub fn continue_from(span: &tracing::Span, carried: &TraceContext) {
    if carried.is_empty() {
        return;
    }
    let parent = opentelemetry::global::get_text_map_propagator(|p| p.extract(carried));
    let _ = span.set_parent(parent);
}
