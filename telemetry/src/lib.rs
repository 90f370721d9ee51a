//! Reflow's logs and traces, shared by every binary: the tracing subscriber (pretty or JSON lines
//! on stderr), OpenTelemetry spans over OTLP/HTTP when configured, and W3C trace-context headers.
//!
//! Tracing is off unless `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`)
//! is set: then no exporter exists and the propagation helpers return at once.

mod json_log;
pub mod propagation;
mod setup;

pub use setup::{LogFormat, Telemetry, TelemetryError, init, init_with_filter};
