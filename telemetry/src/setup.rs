//! The process-wide subscriber: the log layer (pretty or JSON on stderr, `RUST_LOG`) and, when an
//! OTLP endpoint is configured, the OpenTelemetry layer with its batch exporter and its flush.

use std::io::IsTerminal;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Dispatch;
use tracing::dispatcher::WeakDispatch;
use tracing_subscriber::filter::{EnvFilter, LevelFilter};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

use crate::json_log::JsonWithTraceIds;
use crate::propagation;

/// How long shutdown waits for the last spans to reach the collector.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(5);

/// The standard variables that turn the exporter on (the signal-specific one wins).
const ENDPOINT_VARS: [&str; 2] = [
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Pretty,
    /// One JSON object per line; with tracing on, each line inside a span carries `trace_id` and
    /// `span_id`.
    Json,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("OTLP exporter: {0}")]
    Exporter(String),
    #[error("a global tracing subscriber is already installed: {0}")]
    Subscriber(String),
}

impl TelemetryError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Exporter(_) => "exporter",
            Self::Subscriber(_) => "subscriber",
        }
    }
}

/// Holds the tracer provider; [`Telemetry::shutdown`] (or dropping it) flushes pending spans.
/// Keep it alive until the process is about to exit, outside the async runtime.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported.
    pub fn tracing(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports what is still queued (bounded by a timeout) and stops the exporter.
    pub fn shutdown(mut self) {
        self.flush();
    }

    fn flush(&mut self) {
        if let Some(provider) = self.provider.take()
            && let Err(e) = provider.shutdown_with_timeout(FLUSH_TIMEOUT)
        {
            // The subscriber is still installed: this line reaches the logs.
            tracing::warn!(error = %e, "spans not flushed on shutdown");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.flush();
    }
}

/// Installs the global subscriber: logs on stderr filtered by `RUST_LOG` (default `info`), and
/// OpenTelemetry spans over OTLP/HTTP (protobuf) when an endpoint variable is set.
/// `service` names the process unless `OTEL_SERVICE_NAME` does; `OTEL_TRACES_SAMPLER`,
/// `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT` and `OTEL_BSP_*` are read by the SDK.
pub fn init(service: &'static str, format: LogFormat) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    init_with_filter(service, format, filter)
}

/// [`init`] with the log filter chosen by the caller.
pub fn init_with_filter(
    service: &'static str,
    format: LogFormat,
    filter: EnvFilter,
) -> Result<Telemetry, TelemetryError> {
    let env = |name: &str| std::env::var(name).ok();
    let provider = if exporter_wanted(env) {
        Some(provider(service)?)
    } else {
        None
    };
    let dispatch = build_dispatch(format, provider.as_ref(), std::io::stderr, filter);
    dispatch
        .try_init()
        .map_err(|e| TelemetryError::Subscriber(e.to_string()))?;
    if provider.is_some() {
        propagation::enable();
    }
    Ok(Telemetry { provider })
}

/// An endpoint is set and tracing is not switched off by `OTEL_SDK_DISABLED=true` or
/// `OTEL_TRACES_EXPORTER=none`.
fn exporter_wanted(env: impl Fn(&str) -> Option<String>) -> bool {
    let set = |name: &str| env(name).is_some_and(|v| !v.trim().is_empty());
    let disabled = env("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true"));
    let no_exporter =
        env("OTEL_TRACES_EXPORTER").is_some_and(|v| v.trim().eq_ignore_ascii_case("none"));
    !disabled && !no_exporter && ENDPOINT_VARS.iter().any(|v| set(v))
}

fn provider(service: &'static str) -> Result<SdkTracerProvider, TelemetryError> {
    // The exporter's reqwest client is built with rustls and no built-in provider: install the
    // one every Reflow binary uses (a no-op when main did already).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").is_ok_and(|v| !v.trim().is_empty()) {
        // Read by the resource's own detector.
    } else {
        resource = resource.with_service_name(service);
    }
    // The batch processor exports from its own thread: a slow or absent collector never holds
    // up a request, and a full queue drops spans instead of growing.
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The layered subscriber as a `Dispatch`. Spans reach OpenTelemetry at INFO and above whatever
/// `RUST_LOG` says, so quiet logs still give whole traces.
pub(crate) fn build_dispatch<W>(
    format: LogFormat,
    provider: Option<&SdkTracerProvider>,
    writer: W,
    filter: EnvFilter,
) -> Dispatch
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    // The JSON formatter looks span contexts up through the dispatch, which it cannot reach
    // from inside an event (the current dispatcher is taken then): it gets a weak handle.
    let handle: Arc<OnceLock<WeakDispatch>> = Arc::new(OnceLock::new());
    let logs: Box<dyn Layer<Registry> + Send + Sync> = match (format, provider.is_some()) {
        (LogFormat::Pretty, _) => tracing_subscriber::fmt::layer()
            // Colour codes only for a person at a terminal, never in collected logs.
            .with_ansi(std::io::stderr().is_terminal())
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        (LogFormat::Json, false) => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
        (LogFormat::Json, true) => tracing_subscriber::fmt::layer()
            .json()
            .event_format(JsonWithTraceIds::new(handle.clone()))
            .with_writer(writer)
            .with_filter(filter)
            .boxed(),
    };
    let spans = provider.map(|p| {
        tracing_opentelemetry::layer()
            .with_tracer(p.tracer("reflow"))
            .with_filter(LevelFilter::INFO)
    });
    let dispatch = Dispatch::new(Registry::default().with(logs).with(spans));
    let _ = handle.set(dispatch.downgrade());
    dispatch
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars<'a>(set: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            set.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_exporter_needs_an_endpoint_and_can_be_switched_off() {
        assert!(!exporter_wanted(vars(&[])));
        assert!(!exporter_wanted(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            " "
        )])));
        assert!(exporter_wanted(vars(&[(
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            "http://127.0.0.1:4318"
        )])));
        assert!(exporter_wanted(vars(&[(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://127.0.0.1:4318/v1/traces"
        )])));
        assert!(!exporter_wanted(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "TRUE"),
        ])));
        assert!(!exporter_wanted(vars(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ])));
    }
}
