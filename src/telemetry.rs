//! Logging and tracing, in one place.
//!
//! - Logs: `LOG_LEVEL` and `LOG_STYLE` (STANDARD, SIMPLE or JSON), overridable with `RUST_LOG`.
//! - Traces: an OpenTelemetry OTLP/gRPC exporter, on when `OTEL_EXPORTER_OTLP_ENDPOINT` (or
//!   `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set and `OTEL_SDK_DISABLED` is not `true`. The SDK reads the
//!   standard variables itself: `OTEL_SERVICE_NAME` and `OTEL_RESOURCE_ATTRIBUTES` (the resource),
//!   `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`, `OTEL_BSP_*` (batching). `OTEL_PROPAGATORS` picks the
//!   propagators (`tracecontext`, the default, `baggage`, `b3`, `b3multi`). Spans at INFO and above of Regent are
//!   exported, whatever the log level.
//! - CoS's own telemetry variables, for deployments written for either line ([`TraceSettings`]): the fork's
//!   `OTEL_JAVAAGENT_ENABLED=false` turns tracing off; the Namely line's `COS_TELEMETRY_COLLECTOR_ENDPOINT` (and,
//!   older, `TRACE_HOST` / `TRACE_PORT`, unless `COS_JAEGER_ENABLED=false`) is the OTLP endpoint when no `OTEL_*`
//!   endpoint is set, `COS_TRACE_PROPAGATORS` the propagators when `OTEL_PROPAGATORS` is not, and
//!   `COS_TELEMETRY_NAMESPACE` and `TEAM_NAME` become the resource's `service.namespace` and `team.name`.
//!   `COS_SERVICE_NAME` is the service name unless `OTEL_SERVICE_NAME` says otherwise.
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

/// Installs the global subscriber (once; later calls are ignored), with the OTLP exporter when configured; spans
/// carry `service_name` unless the environment names the service. Call it inside the Tokio runtime (the
/// exporter's gRPC client needs it), and keep the guard until exit.
pub fn init(log: &LogConfig, service_name: &str) -> Guard {
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
    let settings = TraceSettings::from_env(&env, service_name);
    let (traces, provider) = match settings.as_ref().and_then(otlp_provider) {
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
    if let Some(settings) = settings.filter(|_| provider.is_some()) {
        opentelemetry::global::set_text_map_propagator(propagator(&settings.propagators));
    }
    Guard { provider }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// What the environment asks of tracing; `None` when traces are off.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TraceSettings {
    /// The OTLP endpoint from CoS's variables; `None` when an `OTEL_*` endpoint is set (the SDK reads it).
    endpoint: Option<String>,
    /// `service.name`, when the SDK's variables do not set it.
    service_name: Option<String>,
    /// Extra resource attributes.
    attributes: Vec<(&'static str, String)>,
    /// Comma-separated propagator names.
    propagators: String,
}

impl TraceSettings {
    fn from_env(env: &dyn Fn(&str) -> Option<String>, service_name: &str) -> Option<Self> {
        let is = |name: &str, value: &str| env(name).is_some_and(|v| v.trim().eq_ignore_ascii_case(value));
        if is("OTEL_SDK_DISABLED", "true")
            || is("OTEL_TRACES_EXPORTER", "none")
            || is("OTEL_JAVAAGENT_ENABLED", "false")
        {
            return None;
        }
        let endpoint =
            if env("OTEL_EXPORTER_OTLP_ENDPOINT").or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")).is_some() {
                None
            } else if let Some(endpoint) = env("COS_TELEMETRY_COLLECTOR_ENDPOINT") {
                Some(with_scheme(endpoint.trim()))
            } else if let (Some(host), false) = (env("TRACE_HOST"), is("COS_JAEGER_ENABLED", "false")) {
                // The original line's Jaeger agent: Regent speaks OTLP to it (Jaeger takes OTLP on 4317).
                let port = env("TRACE_PORT").unwrap_or_else(|| "4317".into());
                Some(format!("http://{}:{}", host.trim(), port.trim()))
            } else {
                return None;
            };
        let named_by_sdk = env("OTEL_SERVICE_NAME").is_some()
            || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attributes| attributes.contains("service.name="));
        let attributes = [("service.namespace", "COS_TELEMETRY_NAMESPACE"), ("team.name", "TEAM_NAME")]
            .into_iter()
            .filter_map(|(key, var)| Some((key, env(var)?.trim().to_string())))
            .collect();
        Some(Self {
            endpoint,
            service_name: (!named_by_sdk).then(|| service_name.to_string()),
            attributes,
            propagators: env("OTEL_PROPAGATORS")
                .or_else(|| env("COS_TRACE_PROPAGATORS"))
                .unwrap_or_else(|| "tracecontext".into()),
        })
    }
}

/// `host:port` as the Namely line wrote the collector's address, or a URL.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") { endpoint.to_string() } else { format!("http://{endpoint}") }
}

/// The OTLP tracer provider for `settings`.
fn otlp_provider(settings: &TraceSettings) -> Option<SdkTracerProvider> {
    use opentelemetry_otlp::WithExportConfig as _;
    let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) = &settings.endpoint {
        builder = builder.with_endpoint(endpoint.clone());
    }
    let exporter = match builder.build() {
        Ok(exporter) => exporter,
        Err(e) => {
            eprintln!("regent: cannot build the OTLP trace exporter, tracing stays off: {e}");
            return None;
        }
    };
    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(name) = &settings.service_name {
        resource = resource.with_service_name(name.clone());
    }
    for (key, value) in &settings.attributes {
        resource = resource.with_attribute(opentelemetry::KeyValue::new(*key, value.clone()));
    }
    Some(SdkTracerProvider::builder().with_resource(resource.build()).with_batch_exporter(exporter).build())
}

/// The propagators named in `names` (comma-separated: `tracecontext`, `baggage`, `b3`, `b3multi`, `none`).
fn propagator(names: &str) -> TextMapCompositePropagator {
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in names.split(',').map(|n| n.trim().to_ascii_lowercase()) {
        match name.as_str() {
            "tracecontext" => propagators.push(Box::new(TraceContextPropagator::new())),
            "baggage" => propagators.push(Box::new(BaggagePropagator::new())),
            "b3" => propagators.push(Box::new(b3::B3Propagator::single())),
            "b3multi" => propagators.push(Box::new(b3::B3Propagator::multi())),
            "none" | "" => {}
            other => eprintln!("regent: propagator {other:?} is not supported (tracecontext, baggage, b3, b3multi)"),
        }
    }
    TextMapCompositePropagator::new(propagators)
}

/// Zipkin's B3 propagation (the Namely line's default, `b3multi`): the `b3` header (`{trace}-{span}-{sampled}`),
/// or the `x-b3-traceid` / `x-b3-spanid` / `x-b3-sampled` headers. Extraction takes either form.
mod b3 {
    use opentelemetry::Context;
    use opentelemetry::propagation::text_map_propagator::FieldIter;
    use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
    use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

    const SINGLE: &str = "b3";
    const TRACE_ID: &str = "x-b3-traceid";
    const SPAN_ID: &str = "x-b3-spanid";
    const SAMPLED: &str = "x-b3-sampled";
    const FLAGS: &str = "x-b3-flags";

    #[derive(Debug)]
    pub struct B3Propagator {
        single: bool,
        fields: Vec<String>,
    }

    impl B3Propagator {
        pub fn single() -> Self {
            Self { single: true, fields: vec![SINGLE.into()] }
        }

        pub fn multi() -> Self {
            Self { single: false, fields: [TRACE_ID, SPAN_ID, SAMPLED].map(String::from).to_vec() }
        }
    }

    /// A 64- or 128-bit trace id in hex (a 64-bit one is the low half).
    fn trace_id(hex: &str) -> Option<TraceId> {
        let hex = hex.trim();
        if !(hex.len() == 16 || hex.len() == 32) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        TraceId::from_hex(&format!("{hex:0>32}")).ok().filter(|id| *id != TraceId::INVALID)
    }

    fn span_id(hex: &str) -> Option<SpanId> {
        let hex = hex.trim();
        if hex.len() != 16 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        SpanId::from_hex(hex).ok().filter(|id| *id != SpanId::INVALID)
    }

    fn flags(sampled: Option<&str>, debug: bool) -> TraceFlags {
        match sampled.map(str::trim) {
            _ if debug => TraceFlags::SAMPLED,
            Some("1" | "d" | "true") => TraceFlags::SAMPLED,
            _ => TraceFlags::default(),
        }
    }

    fn remote(trace: TraceId, span: SpanId, flags: TraceFlags) -> SpanContext {
        SpanContext::new(trace, span, flags, true, TraceState::default())
    }

    fn extract_single(extractor: &dyn Extractor) -> Option<SpanContext> {
        let mut parts = extractor.get(SINGLE)?.split('-');
        let (trace, span) = (trace_id(parts.next()?)?, span_id(parts.next()?)?);
        Some(remote(trace, span, flags(parts.next(), false)))
    }

    fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
        let (trace, span) = (trace_id(extractor.get(TRACE_ID)?)?, span_id(extractor.get(SPAN_ID)?)?);
        let debug = extractor.get(FLAGS).is_some_and(|f| f.trim() == "1");
        Some(remote(trace, span, flags(extractor.get(SAMPLED), debug)))
    }

    impl TextMapPropagator for B3Propagator {
        fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
            let span = cx.span();
            let context = span.span_context();
            if !context.is_valid() {
                return;
            }
            let sampled = if context.is_sampled() { "1" } else { "0" };
            if self.single {
                injector.set(SINGLE, format!("{}-{}-{sampled}", context.trace_id(), context.span_id()));
            } else {
                injector.set(TRACE_ID, context.trace_id().to_string());
                injector.set(SPAN_ID, context.span_id().to_string());
                injector.set(SAMPLED, sampled.to_string());
            }
        }

        fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
            match extract_single(extractor).or_else(|| extract_multi(extractor)) {
                Some(context) => cx.with_remote_span_context(context),
                None => cx.clone(),
            }
        }

        fn fields(&self) -> FieldIter<'_> {
            FieldIter::new(&self.fields)
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceState};

    fn settings(pairs: &[(&str, &str)]) -> Option<TraceSettings> {
        let env = |name: &str| pairs.iter().find(|(k, _)| *k == name).map(|(_, v)| v.to_string());
        TraceSettings::from_env(&env, "chiefofstate")
    }

    #[test]
    fn traces_are_off_without_an_endpoint_or_when_turned_off() {
        assert_eq!(settings(&[]), None);
        for off in
            [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none"), ("OTEL_JAVAAGENT_ENABLED", "FALSE")]
        {
            assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otlp:4317"), off]), None, "{off:?}");
        }
        assert_eq!(settings(&[("TRACE_HOST", "jaeger"), ("COS_JAEGER_ENABLED", "false")]), None);
    }

    #[test]
    fn the_sdk_variables_win_over_cos_ones() {
        let s = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://otlp:4317"),
            ("COS_TELEMETRY_COLLECTOR_ENDPOINT", "namely:4317"),
            ("OTEL_SERVICE_NAME", "bank"),
            ("OTEL_PROPAGATORS", "tracecontext,baggage"),
            ("COS_TRACE_PROPAGATORS", "b3multi"),
        ])
        .unwrap();
        assert_eq!((s.endpoint, s.service_name, s.propagators.as_str()), (None, None, "tracecontext,baggage"));
    }

    #[test]
    fn namely_and_original_variables_configure_the_export() {
        let s = settings(&[
            ("COS_TELEMETRY_COLLECTOR_ENDPOINT", "collector:4317"),
            ("COS_TELEMETRY_NAMESPACE", "payments"),
            ("TEAM_NAME", "core"),
            ("COS_TRACE_PROPAGATORS", "b3multi"),
        ])
        .unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://collector:4317"));
        assert_eq!(s.service_name.as_deref(), Some("chiefofstate"));
        assert_eq!(s.attributes, [("service.namespace", "payments".into()), ("team.name", "core".into())]);
        assert_eq!(s.propagators, "b3multi");
        let s = settings(&[("TRACE_HOST", "jaeger"), ("TRACE_PORT", "4317")]).unwrap();
        assert_eq!(s.endpoint.as_deref(), Some("http://jaeger:4317"));
        assert_eq!(s.propagators, "tracecontext");
    }

    #[test]
    fn b3_round_trips_in_both_forms_and_reads_64_bit_ids() {
        let context = SpanContext::new(
            opentelemetry::trace::TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            opentelemetry::trace::SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::default(),
        );
        let cx = opentelemetry::Context::new().with_remote_span_context(context.clone());
        for (names, headers) in [
            ("b3", vec![("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")]),
            (
                "b3multi",
                vec![
                    ("x-b3-traceid", "4bf92f3577b34da6a3ce929d0e0e4736"),
                    ("x-b3-spanid", "00f067aa0ba902b7"),
                    ("x-b3-sampled", "1"),
                ],
            ),
        ] {
            let propagator = propagator(names);
            let mut carrier = TraceContext::new();
            propagator.inject_context(&cx, &mut carrier);
            let expected: TraceContext = headers.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
            assert_eq!(carrier, expected, "{names}");
            let extracted = propagator.extract(&carrier);
            assert_eq!(extracted.span().span_context(), &context, "{names}");
        }
        let short: TraceContext = [("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", "00f067aa0ba902b7")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let extracted = propagator("b3multi").extract(&short);
        let span = extracted.span();
        assert_eq!(span.span_context().trace_id().to_string(), "0000000000000000a3ce929d0e0e4736");
        assert!(!span.span_context().is_sampled());
        let garbage: TraceContext = [("b3".to_string(), "nonsense".to_string())].into_iter().collect();
        assert!(!propagator("b3").extract(&garbage).span().span_context().is_valid());
    }
}
