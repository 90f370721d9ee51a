//! Writes status back to Targets, Policies and Credentials, only on the lease holder: the
//! compiler's conditions plus `Programmed`, merge-patched on `/status` when something changed,
//! and a Warning Event when an object becomes unaccepted, unresolved or refused.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, Resource};
use reflow_crds::api::{Credential, ObjectStatus, Policy, Target, TokenRevocation};
use reflow_crds::compile::{ObjectKind, ObjectReport};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info_span, warn};

use crate::conditions::{self, differs};
use crate::fleet::{Fleet, Programmed};
use crate::metrics::Metrics;
use crate::publish::Published;
use crate::roster::Rosters;
use crate::source::cluster::Stores;

/// The field manager and event reporter name.
pub const MANAGER: &str = "reflow-controller";
/// Status is rewritten at least this often (catches objects edited by hand).
const RESYNC: Duration = Duration::from_secs(60);
/// Bursts of dataplane reports are folded into one pass.
const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("patching status of {kind:?} {namespace}/{name}: {source}")]
    Patch {
        kind: ObjectKind,
        namespace: String,
        name: String,
        source: kube::Error,
    },
}

impl StatusError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Patch { .. } => "patch",
        }
    }
}

/// What the writer knows about an object as the cluster has it now.
#[derive(Clone, Debug)]
pub struct Current {
    pub status: Option<ObjectStatus>,
    pub reference: ObjectReference,
}

/// Looks objects up (the reflector stores in production, a map in tests).
pub trait Lookup: Send + Sync {
    fn current(&self, kind: ObjectKind, namespace: &str, name: &str) -> Option<Current>;
}

fn current_of<K>(obj: &K, status: Option<serde_json::Value>) -> Current
where
    K: Resource<DynamicType = ()>,
{
    Current {
        // Target's status has more fields; the conditions block reads the same from any kind.
        status: status.and_then(|v| serde_json::from_value(v).ok()),
        reference: obj.object_ref(&()),
    }
}

fn find<K>(stores: &[kube::runtime::reflector::Store<K>], ns: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone,
{
    stores.iter().find_map(|s| {
        s.find(|o| {
            o.meta().namespace.as_deref() == Some(ns) && o.meta().name.as_deref() == Some(name)
        })
    })
}

impl Lookup for Stores {
    fn current(&self, kind: ObjectKind, ns: &str, name: &str) -> Option<Current> {
        match kind {
            ObjectKind::Target => find(&self.targets, ns, name).map(|o| {
                current_of(
                    &*o,
                    o.status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
                )
            }),
            ObjectKind::Policy => find(&self.policies, ns, name).map(|o| {
                current_of(
                    &*o,
                    o.status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
                )
            }),
            ObjectKind::Credential => find(&self.credentials, ns, name).map(|o| {
                current_of(
                    &*o,
                    o.status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
                )
            }),
            ObjectKind::TokenRevocation => self
                .revocations
                .iter()
                .find_map(|s| s.find(|o| o.meta().name.as_deref() == Some(name)))
                .map(|o| {
                    current_of(
                        &*o,
                        o.status.as_ref().and_then(|s| serde_json::to_value(s).ok()),
                    )
                }),
        }
    }
}

pub struct StatusWriter {
    pub client: Client,
    pub recorder: Option<Recorder>,
    pub metrics: Arc<Metrics>,
}

impl StatusWriter {
    pub fn new(client: Client, identity: &str, metrics: Arc<Metrics>) -> Self {
        let recorder = Recorder::new(
            client.clone(),
            Reporter {
                controller: MANAGER.into(),
                instance: Some(identity.into()),
            },
        );
        Self {
            client,
            recorder: Some(recorder),
            metrics,
        }
    }

    /// One pass over every report: patches what changed, returns how many were patched. Keeps
    /// going after a failed patch and returns the first error at the end.
    pub async fn sync(
        &self,
        published: &Published,
        fleet: &Programmed,
        lookup: &dyn Lookup,
    ) -> Result<usize, StatusError> {
        let now = Timestamp::now().to_string();
        let mut patched = 0;
        let mut first_err = None;
        for report in published.reports.iter() {
            // Objects the cluster no longer has (deleted since the compile) are skipped.
            let Some(cur) = lookup.current(report.kind, &report.namespace, &report.name) else {
                continue;
            };
            let desired = conditions::object_status(
                report,
                fleet,
                published.source_error.as_deref(),
                cur.status.as_ref(),
                &now,
            );
            if !differs(cur.status.as_ref(), &desired) {
                continue;
            }
            match self.patch(report, &desired).await {
                Ok(()) => {
                    patched += 1;
                    Metrics::inc(&self.metrics.status_patches, "ok");
                    self.warn_if_newly_failing(
                        report,
                        cur.status.as_ref(),
                        &desired,
                        &cur.reference,
                    )
                    .await;
                }
                Err(e) => {
                    Metrics::inc(&self.metrics.status_patches, "error");
                    warn!(error = %e, "status patch failed");
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(patched),
        }
    }

    async fn patch(
        &self,
        report: &ObjectReport,
        desired: &ObjectStatus,
    ) -> Result<(), StatusError> {
        let body = Patch::Merge(json!({ "status": desired }));
        let pp = PatchParams::default();
        let (ns, name) = (report.namespace.as_str(), report.name.as_str());
        let r = match report.kind {
            ObjectKind::Target => Api::<Target>::namespaced(self.client.clone(), ns)
                .patch_status(name, &pp, &body)
                .await
                .map(|_| ()),
            ObjectKind::Policy => Api::<Policy>::namespaced(self.client.clone(), ns)
                .patch_status(name, &pp, &body)
                .await
                .map(|_| ()),
            ObjectKind::Credential => Api::<Credential>::namespaced(self.client.clone(), ns)
                .patch_status(name, &pp, &body)
                .await
                .map(|_| ()),
            ObjectKind::TokenRevocation => Api::<TokenRevocation>::all(self.client.clone())
                .patch_status(name, &pp, &body)
                .await
                .map(|_| ()),
        };
        r.map_err(|source| StatusError::Patch {
            kind: report.kind,
            namespace: ns.to_owned(),
            name: name.to_owned(),
            source,
        })
    }

    /// A Warning Event for each condition that just went bad (not on every resync).
    async fn warn_if_newly_failing(
        &self,
        report: &ObjectReport,
        before: Option<&ObjectStatus>,
        after: &ObjectStatus,
        reference: &ObjectReference,
    ) {
        let Some(recorder) = &self.recorder else {
            return;
        };
        for c in &after.conditions {
            let bad = match c.type_.as_str() {
                "Conflicted" => c.status == "True",
                "Programmed" => c.reason == "Refused",
                _ => c.status == "False" && c.reason != "NotAccepted",
            };
            let was_bad_same = before
                .and_then(|b| b.conditions.iter().find(|p| p.type_ == c.type_))
                .is_some_and(|p| p.status == c.status && p.reason == c.reason);
            if !bad || was_bad_same {
                continue;
            }
            let ev = Event {
                type_: EventType::Warning,
                reason: c.reason.clone(),
                note: Some(c.message.chars().take(1000).collect()),
                action: format!("Compile{:?}", report.kind),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, reference).await {
                debug!(error = %e, "cannot publish an event");
            }
        }
    }
}

/// Runs status passes while `leading` is true: on every new compilation, on fleet changes
/// (debounced) and every [`RESYNC`] — or, with `rosters`, every roster refresh period, since
/// other replicas' dataplanes move `Programmed` too.
pub fn spawn(
    writer: StatusWriter,
    lookup: Arc<dyn Lookup>,
    mut published: watch::Receiver<Option<Published>>,
    fleet: Fleet,
    rosters: Option<Rosters>,
    mut leading: watch::Receiver<bool>,
) -> tokio::task::JoinHandle<()> {
    let mut fleet_changes = fleet.subscribe();
    let every = rosters.as_ref().map_or(RESYNC, Rosters::refresh_every);
    tokio::spawn(
        async move {
            loop {
                tokio::select! {
                    r = published.changed() => if r.is_err() { return },
                    r = fleet_changes.changed() => if r.is_err() { return },
                    r = leading.changed() => if r.is_err() { return },
                    _ = tokio::time::sleep(every) => {}
                }
                tokio::time::sleep(SETTLE).await;
                if !*leading.borrow_and_update() {
                    continue;
                }
                let Some(p) = published.borrow_and_update().clone() else {
                    continue;
                };
                fleet_changes.mark_unchanged();
                let peers = match &rosters {
                    Some(r) => match r.peers().await {
                        Ok(peers) => peers,
                        Err(e) => {
                            // Counting this replica's dataplanes alone would under-count: wait.
                            warn!(error = %e, label = e.label(), "cannot read replica rosters; status pass skipped");
                            continue;
                        }
                    },
                    None => Vec::new(),
                };
                let programmed = fleet.programmed_with(p.hash(), &peers);
                match writer.sync(&p, &programmed, lookup.as_ref()).await {
                    Ok(n) if n > 0 => debug!(patched = n, "status written"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, label = e.label(), "status pass incomplete; retrying on the next change"),
                }
            }
        }
        .instrument(info_span!("status_writer")),
    )
}
