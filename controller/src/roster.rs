//! Replica rosters: every controller replica publishes the dataplanes it serves (and what each
//! last applied) in a Lease of its own, so the lease holder counts `Programmed` over all of them.
//!
//! Dataplanes reach *some* replica through the Service, and their reports land there alone.
//! Rosters live in coordination.k8s.io Leases because the controller has no database and the
//! Lease is built for small, frequently renewed, expiring per-holder records: a replica that
//! dies stops renewing and its roster stops counting after the lease duration.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams};
use kube::{Api, Client};
use tracing::{Instrument, debug, info_span, warn};

use crate::fleet::{DataplaneView, Fleet};
use crate::lease::LeaseConfig;
use crate::status::MANAGER;

/// Label on roster Leases naming the election Lease they belong to.
pub const ROSTER_OF: &str = "mcp.reflow.io/roster-of";
/// Annotation holding the roster (JSON list of [`DataplaneView`]).
pub const ROSTER_ANNOTATION: &str = "mcp.reflow.io/dataplanes";
/// Largest roster annotation written (the API server allows 256 KiB of annotations).
const ROSTER_BUDGET: usize = 200 * 1024;
/// A burst of connects and reports is folded into one write.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum RosterError {
    #[error("writing roster lease {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("listing roster leases: {0}")]
    List(kube::Error),
    #[error("encoding roster: {0}")]
    Encode(serde_json::Error),
}

impl RosterError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Write { .. } => "write",
            Self::List(_) => "list",
            Self::Encode(_) => "encode",
        }
    }
}

/// The name of a replica's roster Lease.
pub fn roster_name(cfg: &LeaseConfig) -> String {
    format!("{}-roster-{}", cfg.name, cfg.identity)
}

/// The roster Lease this replica writes (server-side apply: created on first write).
pub fn roster_lease(
    cfg: &LeaseConfig,
    dataplanes: &[DataplaneView],
    now: Timestamp,
) -> Result<Lease, RosterError> {
    let mut roster = serde_json::to_string(dataplanes).map_err(RosterError::Encode)?;
    if roster.len() > ROSTER_BUDGET {
        // Annotations share 256 KiB per object: tool digests go first, then observations.
        let mut slim = dataplanes.to_vec();
        for d in &mut slim {
            for o in &mut d.observed {
                o.tools = None;
            }
        }
        roster = serde_json::to_string(&slim).map_err(RosterError::Encode)?;
        if roster.len() > ROSTER_BUDGET {
            for d in &mut slim {
                d.observed.clear();
            }
            roster = serde_json::to_string(&slim).map_err(RosterError::Encode)?;
        }
        warn!(
            bytes = roster.len(),
            "roster too large for a Lease annotation; observations trimmed"
        );
    }
    Ok(Lease {
        metadata: ObjectMeta {
            name: Some(roster_name(cfg)),
            namespace: Some(cfg.namespace.clone()),
            labels: Some(BTreeMap::from([(ROSTER_OF.to_owned(), cfg.name.clone())])),
            annotations: Some(BTreeMap::from([(ROSTER_ANNOTATION.to_owned(), roster)])),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(cfg.identity.clone()),
            lease_duration_seconds: Some(i32::try_from(cfg.duration.as_secs()).unwrap_or(i32::MAX)),
            renew_time: Some(MicroTime(now)),
            ..LeaseSpec::default()
        }),
    })
}

/// The dataplanes on other replicas' live rosters. Expired rosters (a replica that stopped
/// renewing), this replica's own and unreadable ones are left out.
pub fn peers(leases: &[Lease], own_identity: &str, now: Timestamp) -> Vec<DataplaneView> {
    let mut out = Vec::new();
    for lease in leases {
        let Some(spec) = &lease.spec else { continue };
        if spec.holder_identity.as_deref() == Some(own_identity) {
            continue;
        }
        let live = match (&spec.renew_time, spec.lease_duration_seconds) {
            (Some(renewed), Some(secs)) => {
                renewed.0 + Duration::from_secs(u64::try_from(secs).unwrap_or(0)) >= now
            }
            _ => false,
        };
        if !live {
            continue;
        }
        let roster = lease
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(ROSTER_ANNOTATION));
        match roster.map(|r| serde_json::from_str::<Vec<DataplaneView>>(r)) {
            Some(Ok(views)) => out.extend(views),
            Some(Err(e)) => warn!(lease = ?lease.metadata.name, error = %e, "unreadable roster"),
            None => {}
        }
    }
    out
}

/// Writes and reads rosters for one replica.
#[derive(Clone)]
pub struct Rosters {
    api: Api<Lease>,
    cfg: LeaseConfig,
}

impl Rosters {
    pub fn new(client: Client, cfg: LeaseConfig) -> Self {
        Self {
            api: Api::namespaced(client, &cfg.namespace),
            cfg,
        }
    }

    pub async fn publish(&self, fleet: &Fleet) -> Result<(), RosterError> {
        let lease = roster_lease(&self.cfg, &fleet.view(), Timestamp::now())?;
        let name = roster_name(&self.cfg);
        self.api
            .patch(
                &name,
                &PatchParams::apply(MANAGER).force(),
                &Patch::Apply(&lease),
            )
            .await
            .map(|_| ())
            .map_err(|source| RosterError::Write { name, source })
    }

    /// Deletes this replica's roster (on shutdown): rosters are per replica name, so without
    /// this every rollout would leave its old replicas' rosters behind.
    pub async fn withdraw(&self) -> Result<(), kube::Error> {
        match self
            .api
            .delete(&roster_name(&self.cfg), &DeleteParams::default())
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Every other live replica's dataplanes.
    pub async fn peers(&self) -> Result<Vec<DataplaneView>, RosterError> {
        let lp = ListParams::default().labels(&format!("{ROSTER_OF}={}", self.cfg.name));
        let list = self.api.list(&lp).await.map_err(RosterError::List)?;
        Ok(peers(&list.items, &self.cfg.identity, Timestamp::now()))
    }

    /// How often the lease holder re-reads rosters (other replicas' reports move `Programmed`).
    pub fn refresh_every(&self) -> Duration {
        self.cfg.renew_every
    }

    /// Publishes this replica's roster on every fleet change (settled) and every renewal
    /// period, so it stays live while the replica does.
    pub fn spawn_publisher(self, fleet: Fleet) -> tokio::task::JoinHandle<()> {
        let mut changes = fleet.subscribe();
        tokio::spawn(
            async move {
                loop {
                    if let Err(e) = self.publish(&fleet).await {
                        warn!(error = %e, label = e.label(), "roster not published");
                    } else {
                        debug!("roster published");
                    }
                    tokio::select! {
                        r = changes.changed() => if r.is_err() { return },
                        _ = tokio::time::sleep(self.cfg.renew_every) => {}
                    }
                    tokio::time::sleep(SETTLE).await;
                    changes.mark_unchanged();
                }
            }
            .instrument(info_span!("roster_publisher")),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::wire::{AppliedReport, Outcome};

    fn cfg(id: &str) -> LeaseConfig {
        LeaseConfig {
            namespace: "reflow".into(),
            name: "reflow-controller".into(),
            identity: id.into(),
            duration: Duration::from_secs(15),
            renew_every: Duration::from_secs(5),
        }
    }

    fn view(name: &str, hash: &str) -> DataplaneView {
        DataplaneView {
            name: name.into(),
            connected: true,
            observed: Vec::new(),
            last: Some(AppliedReport {
                dataplane: name.into(),
                version: 3,
                hash: hash.into(),
                outcome: Outcome::Applied,
                message: None,
            }),
        }
    }

    #[test]
    fn peers_read_live_rosters_of_other_replicas_only() {
        let now = Timestamp::now();
        let a = roster_lease(&cfg("a"), &[view("dp-1", "h")], now).unwrap();
        let b = roster_lease(&cfg("b"), &[view("dp-2", "h"), view("dp-3", "h0")], now).unwrap();
        let stale = roster_lease(
            &cfg("c"),
            &[view("dp-gone", "h")],
            now - Duration::from_secs(16),
        )
        .unwrap();
        let mut broken = roster_lease(&cfg("d"), &[], now).unwrap();
        broken
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(ROSTER_ANNOTATION.into(), "{not json".into());
        let got = peers(&[a, b, stale, broken], "a", now);
        let names: Vec<_> = got.iter().map(|v| v.name.as_str()).collect();
        assert_eq!(names, ["dp-2", "dp-3"]);
        assert_eq!(got[1].last.as_ref().unwrap().hash, "h0");
    }

    #[test]
    fn roster_lease_is_labelled_named_per_replica_and_expires() {
        let lease = roster_lease(&cfg("pod-7"), &[view("dp-1", "h")], Timestamp::now()).unwrap();
        assert_eq!(
            lease.metadata.name.as_deref(),
            Some("reflow-controller-roster-pod-7")
        );
        assert_eq!(
            lease.metadata.labels.unwrap()[ROSTER_OF],
            "reflow-controller"
        );
        let spec = lease.spec.unwrap();
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.holder_identity.as_deref(), Some("pod-7"));
    }
}
