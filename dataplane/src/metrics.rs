//! Prometheus metrics of the request path: requests and latency by method/target/outcome,
//! policy decisions, live sessions, upstream latency and errors. Rendered at `/metrics`.

use std::borrow::Cow;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

// Label sets are built on every request: values are shared (`Arc<str>` target keys) or static,
// so looking a series up allocates nothing.

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    /// One of MCP's own methods, or [`OTHER_METHOD`].
    pub method: Cow<'static, str>,
    pub target: Arc<str>,
    pub outcome: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabels {
    pub target: Arc<str>,
    pub kind: &'static str,
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct UpstreamLabels {
    pub target: Arc<str>,
    pub outcome: &'static str,
}

/// MCP methods the gateway knows, so their label needs no allocation.
const KNOWN_METHODS: [&str; 19] = [
    "initialize",
    "server/discover",
    "subscriptions/listen",
    "ping",
    "logging/setLevel",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "resources/subscribe",
    "resources/unsubscribe",
    "completion/complete",
    "notifications/initialized",
    "notifications/cancelled",
    "notifications/progress",
    "notifications/roots/list_changed",
];

/// The label every method outside [`KNOWN_METHODS`] folds into: a label value per unknown
/// method would let any caller grow `/metrics` (and the process) without bound.
pub const OTHER_METHOD: &str = "other";

/// The `method` label for `method`.
pub fn method_label(method: &str) -> Cow<'static, str> {
    match KNOWN_METHODS.iter().find(|m| **m == method) {
        Some(m) => Cow::Borrowed(m),
        None => Cow::Borrowed(OTHER_METHOD),
    }
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency() -> Histogram {
    // 100 µs … ~3.3 s.
    Histogram::new(exponential_buckets(0.0001, 2.0, 16))
}

pub struct Metrics {
    registry: Registry,
    pub requests: Family<RequestLabels, Counter>,
    pub request_seconds: HistogramFamily<RequestLabels>,
    pub decisions: Family<DecisionLabels, Counter>,
    pub sessions: Gauge<i64, AtomicI64>,
    pub upstream_seconds: HistogramFamily<UpstreamLabels>,
    pub upstream_errors: Family<UpstreamLabels, Counter>,
    /// Audit events the sink had to drop (queue full); synced from the sink at render time.
    pub audit_dropped: Counter,
    /// Audit events whose request waited for room in a full JSON-lines queue.
    pub audit_stalls: Counter,
    /// STDIO process pool, synced from the pool at render time.
    pub stdio_live: Gauge<i64, AtomicI64>,
    pub stdio_events: Family<StdioLabels, Counter>,
    /// 1 while audit events reach their store, 0 while they are buffered (database away).
    pub audit_writable: Gauge<i64, AtomicI64>,
    /// Connections and requests closed by a timer of the server loop (see `listener`).
    pub http_timeouts: Family<TimeoutLabels, Counter>,
    /// Controller mode: 1 while the watch stream is up (synced at render time).
    pub controller_link_up: Gauge<i64, AtomicI64>,
    /// Controller mode: seconds since the controller last confirmed the served snapshot.
    pub snapshot_age: Gauge<i64, AtomicI64>,
    /// Tools hidden, refused or passed with a warning because their definition is not the
    /// pinned one.
    pub tool_pins: Family<PinLabels, Counter>,
    /// Calls refused by a Policy's rate limit (labels: Target and Policy, both admin-defined).
    pub rate_limited: Family<RateLimitedLabels, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PinLabels {
    pub target: Arc<str>,
    /// hidden | refused | warned
    pub action: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RateLimitedLabels {
    pub target: Arc<str>,
    pub policy: Arc<str>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TimeoutLabels {
    /// header_read | idle | body_rate | write | evicted_idle
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StdioLabels {
    /// spawned | crashed | limit_refused | unrouted_message | stopped_idle | stopped_max_age
    pub event: &'static str,
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reflow");
        let requests = Family::<RequestLabels, Counter>::default();
        let request_seconds =
            HistogramFamily::<RequestLabels>::new_with_constructor(latency as fn() -> Histogram);
        let decisions = Family::<DecisionLabels, Counter>::default();
        let sessions = Gauge::<i64, AtomicI64>::default();
        let upstream_seconds =
            HistogramFamily::<UpstreamLabels>::new_with_constructor(latency as fn() -> Histogram);
        let upstream_errors = Family::<UpstreamLabels, Counter>::default();
        let audit_dropped = Counter::default();
        let audit_stalls = Counter::default();
        let audit_writable = Gauge::<i64, AtomicI64>::default();
        audit_writable.set(1);
        registry.register("mcp_requests", "MCP requests handled", requests.clone());
        registry.register(
            "mcp_request_seconds",
            "MCP request latency",
            request_seconds.clone(),
        );
        registry.register("policy_decisions", "Policy decisions", decisions.clone());
        registry.register("sessions", "Live MCP sessions", sessions.clone());
        registry.register(
            "upstream_seconds",
            "Upstream exchange latency",
            upstream_seconds.clone(),
        );
        registry.register(
            "upstream_errors",
            "Upstream failures",
            upstream_errors.clone(),
        );
        registry.register(
            "audit_dropped",
            "Audit events lost: the queue was full and could not be spilled (Postgres: only when the spill disk fails)",
            audit_dropped.clone(),
        );
        registry.register(
            "audit_stalls",
            "Audit events whose request waited for room in a full queue (backpressure, never a drop)",
            audit_stalls.clone(),
        );
        let stdio_live = Gauge::<i64, AtomicI64>::default();
        let stdio_events = Family::<StdioLabels, Counter>::default();
        registry.register(
            "stdio_processes",
            "Live STDIO server processes",
            stdio_live.clone(),
        );
        registry.register(
            "stdio_events",
            "STDIO process events (spawns, crashes, limit refusals, dropped unroutable messages, stops)",
            stdio_events.clone(),
        );
        registry.register(
            "audit_writable",
            "1 while audit events are written to their store, 0 while they are buffered or spilled",
            audit_writable.clone(),
        );
        let http_timeouts = Family::<TimeoutLabels, Counter>::default();
        registry.register(
            "http_timeouts",
            "Connections or requests closed because a peer stalled, by timer",
            http_timeouts.clone(),
        );
        let (controller_link_up, snapshot_age, tool_pins, rate_limited) =
            register_control(&mut registry);
        Self {
            registry,
            controller_link_up,
            snapshot_age,
            tool_pins,
            rate_limited,
            http_timeouts,
            stdio_live,
            stdio_events,
            requests,
            request_seconds,
            decisions,
            sessions,
            upstream_seconds,
            upstream_errors,
            audit_dropped,
            audit_stalls,
            audit_writable,
        }
    }

    /// Counts one timer of the server loop firing.
    pub fn http_timeout(&self, kind: &'static str) {
        self.http_timeouts
            .get_or_create(&TimeoutLabels { kind })
            .inc();
    }

    /// Raises `audit_dropped` to the sink's own count (monotonic, safe to call concurrently).
    pub fn sync_audit_dropped(&self, dropped: u64) {
        self.audit_dropped
            .inner()
            .fetch_max(dropped, std::sync::atomic::Ordering::Relaxed);
    }

    /// Raises `audit_stalls` to the sink's own count (monotonic).
    pub fn sync_audit_stalls(&self, stalls: u64) {
        self.audit_stalls
            .inner()
            .fetch_max(stalls, std::sync::atomic::Ordering::Relaxed);
    }

    /// Copies the STDIO pool's counters (monotonic) and live count.
    pub fn sync_stdio(&self, stats: &crate::upstream::stdio::StdioStats) {
        use std::sync::atomic::Ordering::Relaxed;
        let live = stats.live.load(Relaxed);
        self.stdio_live.set(i64::try_from(live).unwrap_or(i64::MAX));
        for (event, n) in [
            ("spawned", &stats.spawned),
            ("crashed", &stats.crashed),
            ("limit_refused", &stats.limit_refusals),
            ("unrouted_message", &stats.unrouted),
            ("stopped_idle", &stats.stopped_idle),
            ("stopped_max_age", &stats.stopped_max_age),
            ("spawned_without_namespaces", &stats.unnamespaced),
        ] {
            self.stdio_events
                .get_or_create(&StdioLabels { event })
                .inner()
                .fetch_max(n.load(Relaxed), Relaxed);
        }
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

/// Controller link up, snapshot age, pinned-tool actions, rate-limit refusals.
type ControlMetrics = (
    Gauge<i64, AtomicI64>,
    Gauge<i64, AtomicI64>,
    Family<PinLabels, Counter>,
    Family<RateLimitedLabels, Counter>,
);

/// The metrics of what the control plane decided: the controller link, pinned tools and rate
/// limits (split from `Metrics::new` to keep it short).
fn register_control(registry: &mut Registry) -> ControlMetrics {
    let controller_link_up = Gauge::<i64, AtomicI64>::default();
    let snapshot_age = Gauge::<i64, AtomicI64>::default();
    let tool_pins = Family::<PinLabels, Counter>::default();
    registry.register(
        "controller_link_up",
        "Controller mode: 1 while the snapshot watch stream is up, 0 while cut off",
        controller_link_up.clone(),
    );
    registry.register(
        "snapshot_age_seconds",
        "Controller mode: seconds since the controller last confirmed the served snapshot",
        snapshot_age.clone(),
    );
    registry.register(
        "tool_pin_actions",
        "Tools hidden, refused or passed with a warning because their definition is not the pinned one",
        tool_pins.clone(),
    );
    let rate_limited = Family::<RateLimitedLabels, Counter>::default();
    registry.register(
        "rate_limited",
        "Calls refused by a Policy's rate limit on this dataplane",
        rate_limited.clone(),
    );
    (controller_link_up, snapshot_age, tool_pins, rate_limited)
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_recorded_series() {
        let m = Metrics::new();
        m.requests
            .get_or_create(&RequestLabels {
                method: method_label("tools/call"),
                target: "ns/t".into(),
                outcome: "ok",
            })
            .inc();
        m.sync_audit_dropped(3);
        m.sync_audit_dropped(2);
        let text = m.render();
        assert!(text.contains("reflow_audit_dropped_total 3"), "{text}");
        assert_eq!(method_label("x/".repeat(1000).as_str()), OTHER_METHOD);
        assert_eq!(method_label("tools/call"), "tools/call");
        assert!(
            text.contains(
                "reflow_mcp_requests_total{method=\"tools/call\",target=\"ns/t\",outcome=\"ok\"} 1"
            ),
            "{text}"
        );
    }
}
