//! Prometheus metrics of the control plane: compilations by outcome, the published version,
//! connected and up-to-date dataplanes, status patches and reconciles. Rendered at `/metrics`.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub compiles: Family<OutcomeLabels, Counter>,
    pub snapshot_version: Gauge<u64, AtomicU64>,
    pub dataplanes_connected: Gauge,
    pub watch_streams: Counter,
    pub reports: Family<OutcomeLabels, Counter>,
    pub status_patches: Family<OutcomeLabels, Counter>,
    pub reconciles: Family<OutcomeLabels, Counter>,
    /// Users' oauth2 grants refreshed by the lease holder, by outcome.
    pub grant_refreshes: Family<OutcomeLabels, Counter>,
    /// RFC 7009 revocations at the AS on a disconnect, by outcome (revoked, failed).
    pub grant_revocations: Family<OutcomeLabels, Counter>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("reflow_controller");
        let compiles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "compiles",
            "Compilations of the watched objects, by outcome (published, unchanged, failed)",
            compiles.clone(),
        );
        let snapshot_version = Gauge::<u64, AtomicU64>::default();
        registry.register(
            "snapshot_version",
            "Version of the snapshot being served",
            snapshot_version.clone(),
        );
        let dataplanes_connected = Gauge::default();
        registry.register(
            "dataplanes_connected",
            "Dataplanes with an open watch stream on this replica",
            dataplanes_connected.clone(),
        );
        let watch_streams = Counter::default();
        registry.register(
            "watch_streams",
            "Watch streams opened",
            watch_streams.clone(),
        );
        let reports = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "dataplane_reports",
            "Applied reports from dataplanes, by outcome (applied, refused, unknown)",
            reports.clone(),
        );
        let status_patches = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "status_patches",
            "Status patches written as the lease holder, by outcome",
            status_patches.clone(),
        );
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "instance_reconciles",
            "MCPInstance reconciles, by outcome (ok or the error label)",
            reconciles.clone(),
        );
        let grant_refreshes = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "grant_refreshes",
            "Users' oauth2 grants refreshed as the lease holder, by outcome (refreshed or the error label)",
            grant_refreshes.clone(),
        );
        let grant_revocations = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "grant_revocations",
            "Users' oauth2 grants revoked at the authorization server on disconnect, by outcome (revoked, failed: deleted anyway)",
            grant_revocations.clone(),
        );
        Self {
            registry,
            compiles,
            snapshot_version,
            dataplanes_connected,
            watch_streams,
            reports,
            status_patches,
            reconciles,
            grant_refreshes,
            grant_revocations,
        }
    }

    pub fn inc(family: &Family<OutcomeLabels, Counter>, outcome: &'static str) {
        family.get_or_create(&OutcomeLabels { outcome }).inc();
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        // Encoding into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}
