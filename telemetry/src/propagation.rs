//! W3C trace context (`traceparent`/`tracestate`) into and out of HTTP headers and MCP `_meta`
//! (SEP-414: the same keys in a request's `params._meta`, which is all a STDIO server gets), and
//! a span's trace id. With tracing off every function returns at once, allocating nothing.

use std::sync::atomic::{AtomicBool, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// Set once by `init` when the exporter is installed.
static ON: AtomicBool = AtomicBool::new(false);

pub(crate) fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Whether spans are exported (an OTLP endpoint was configured at start).
pub fn enabled() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Writes the current span's context as `traceparent` (and `tracestate`) into the headers of an
/// outgoing request, so the server's spans join this trace as children of that span.
pub fn inject_current(headers: &mut HeaderMap) {
    if !enabled() {
        return;
    }
    inject(&Span::current().context(), headers);
}

/// Makes `span` (not yet entered) continue the trace named by the request's `traceparent`. A
/// missing or malformed header leaves `span` the root of a new trace.
pub fn continue_remote(span: &Span, headers: &HeaderMap) {
    if !enabled() {
        return;
    }
    let parent = extract(headers);
    if parent.span().span_context().is_valid() {
        // Fails only when the span has started already (a caller bug) or is disabled: then
        // it keeps its own trace, which is still correct on its own.
        let _ = span.set_parent(parent);
    }
}

/// The trace context a request's `params._meta` carries (SEP-414), as headers to continue from;
/// `None` when it carries none. Only read when tracing is on.
pub fn meta_context(meta: Option<&serde_json::Value>) -> Option<HeaderMap> {
    if !enabled() {
        return None;
    }
    let meta = meta?.as_object()?;
    let parent = meta.get("traceparent")?.as_str()?;
    let mut headers = HeaderMap::new();
    headers.insert("traceparent", HeaderValue::from_str(parent).ok()?);
    if let Some(state) = meta
        .get("tracestate")
        .and_then(serde_json::Value::as_str)
        .and_then(|s| HeaderValue::from_str(s).ok())
    {
        headers.insert("tracestate", state);
    }
    Some(headers)
}

/// Writes the current span's context as `traceparent` (and `tracestate`) into a request's
/// `_meta`, replacing what the caller put there: the server's spans are this span's children.
pub fn inject_current_meta(meta: &mut serde_json::Map<String, serde_json::Value>) {
    if !enabled() {
        return;
    }
    let mut headers = HeaderMap::new();
    inject(&Span::current().context(), &mut headers);
    for key in ["traceparent", "tracestate"] {
        match headers.get(key).and_then(|v| v.to_str().ok()) {
            Some(v) => {
                meta.insert(key.to_owned(), serde_json::Value::String(v.to_owned()));
            }
            None => {
                meta.remove(key);
            }
        }
    }
}

/// The 32-hex-digit trace id of `span`, when tracing is on.
pub fn trace_id(span: &Span) -> Option<String> {
    if !enabled() {
        return None;
    }
    let cx = span.context();
    let sc = cx.span().span_context().clone();
    sc.is_valid().then(|| sc.trace_id().to_string())
}

fn inject(cx: &Context, headers: &mut HeaderMap) {
    TraceContextPropagator::new().inject_context(cx, &mut HeaderInjector(headers));
}

fn extract(headers: &HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

struct HeaderExtractor<'a>(&'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

struct HeaderInjector<'a>(&'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::try_from(value),
        ) {
            self.0.insert(name, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use opentelemetry_sdk::trace::SdkTracerProvider;
    use tracing::info_span;
    use tracing_subscriber::EnvFilter;

    use super::*;
    use crate::setup::{LogFormat, build_dispatch};

    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CLIENT_SPAN: &str = "00f067aa0ba902b7";

    fn with_tracing<T>(f: impl FnOnce() -> T) -> T {
        enable();
        let provider = SdkTracerProvider::builder().build();
        let dispatch = build_dispatch(
            LogFormat::Pretty,
            Some(&provider),
            std::io::sink,
            EnvFilter::new("off"),
        );
        tracing::dispatcher::with_default(&dispatch, f)
    }

    fn headers(traceparent: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("traceparent", HeaderValue::from_str(traceparent).unwrap());
        h.insert("tracestate", HeaderValue::from_static("vendor=opaque"));
        h
    }

    /// (trace id, parent span id, flags) of a well-formed `traceparent`.
    fn parts(h: &HeaderMap) -> (String, String, String) {
        let v = h.get("traceparent").expect("traceparent injected");
        let fields: Vec<&str> = v.to_str().unwrap().split('-').collect();
        assert_eq!(fields.len(), 4, "{v:?}");
        assert_eq!(fields[0], "00");
        (fields[1].into(), fields[2].into(), fields[3].into())
    }

    #[test]
    fn an_incoming_trace_continues_into_outgoing_requests() {
        with_tracing(|| {
            let incoming = headers(&format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"));
            let span = info_span!("request");
            continue_remote(&span, &incoming);
            let _entered = span.enter();
            assert_eq!(trace_id(&span).as_deref(), Some(CLIENT_TRACE));

            let mut outgoing = HeaderMap::new();
            inject_current(&mut outgoing);
            let (trace, parent, flags) = parts(&outgoing);
            assert_eq!(trace, CLIENT_TRACE);
            // The upstream's parent is our span, not the client's.
            assert_ne!(parent, CLIENT_SPAN);
            let own = span.context().span().span_context().span_id().to_string();
            assert_eq!(parent, own);
            assert_eq!(flags, "01");
            assert_eq!(
                outgoing.get("tracestate").and_then(|v| v.to_str().ok()),
                Some("vendor=opaque")
            );
        });
    }

    #[test]
    fn a_malformed_traceparent_starts_a_new_trace() {
        for bad in [
            "garbage",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01", // short trace id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01", // all-zero trace id
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01", // all-zero span id
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01", // version not hex
        ] {
            with_tracing(|| {
                let span = info_span!("request");
                continue_remote(&span, &headers(bad));
                let _entered = span.enter();
                let trace = trace_id(&span).expect("a trace id of its own");
                assert_ne!(trace, CLIENT_TRACE, "{bad}");
                assert_eq!(trace.len(), 32);
                let mut outgoing = HeaderMap::new();
                inject_current(&mut outgoing);
                assert_eq!(parts(&outgoing).0, trace, "{bad}");
            });
        }
    }

    #[test]
    fn a_trace_in_meta_continues_and_ours_replaces_it_on_the_way_out() {
        with_tracing(|| {
            let meta = serde_json::json!({
                "traceparent": format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"),
                "tracestate": "vendor=opaque",
                "progressToken": 7,
            });
            let carried = meta_context(Some(&meta)).expect("a context in _meta");
            let span = info_span!("request");
            continue_remote(&span, &carried);
            let _entered = span.enter();
            assert_eq!(trace_id(&span).as_deref(), Some(CLIENT_TRACE));
            let mut out = meta.as_object().cloned().unwrap();
            inject_current_meta(&mut out);
            let parent = out["traceparent"].as_str().unwrap();
            let own = span.context().span().span_context().span_id().to_string();
            assert_eq!(parent, format!("00-{CLIENT_TRACE}-{own}-01"));
            assert_eq!(out["tracestate"], "vendor=opaque");
            assert_eq!(out["progressToken"], 7, "other keys stay");
            assert!(meta_context(Some(&serde_json::json!({"progressToken": 1}))).is_none());
            assert!(meta_context(Some(&serde_json::json!({"traceparent": 5}))).is_none());
        });
    }

    #[test]
    fn nothing_is_injected_outside_a_span() {
        with_tracing(|| {
            let mut outgoing = HeaderMap::new();
            inject_current(&mut outgoing);
            assert!(outgoing.is_empty());
        });
    }
}
