//! With no OTLP endpoint, `init` installs logs only and the propagation helpers do nothing.

use http::{HeaderMap, HeaderValue};
use reflow_telemetry::{LogFormat, init, propagation};

#[test]
fn without_an_endpoint_nothing_is_traced_or_propagated() {
    for var in [
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    ] {
        // SAFETY: the only test in this binary; no other thread reads the environment.
        unsafe { std::env::remove_var(var) };
    }
    let telemetry = init("reflow-test", LogFormat::Json).expect("init");
    assert!(!telemetry.tracing());
    assert!(!propagation::enabled());

    let mut incoming = HeaderMap::new();
    incoming.insert(
        "traceparent",
        HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
    );
    let span = tracing::info_span!("request");
    propagation::continue_remote(&span, &incoming);
    let _entered = span.enter();
    assert_eq!(propagation::trace_id(&span), None);
    let mut outgoing = HeaderMap::new();
    propagation::inject_current(&mut outgoing);
    assert!(outgoing.is_empty());

    // A second subscriber cannot be installed over the first.
    let again = init("reflow-test", LogFormat::Pretty)
        .err()
        .expect("refused");
    assert_eq!(again.label(), "subscriber");
    telemetry.shutdown();
}
