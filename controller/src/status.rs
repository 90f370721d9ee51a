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
use reflow_crds::api::{Credential, ObjectStatus, Policy, Target, TokenRevocation, ToolDigest};
use reflow_crds::compile::{ObjectKind, ObjectReport};
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::conditions::{self, differs};
use crate::fleet::{Fleet, Programmed};
use crate::metrics::Metrics;
use crate::publish::Published;
use crate::roster::Rosters;
use crate::source::cluster::Stores;
use crate::target_status::{self, APPROVE_TOOLS, Observed, TOOLS_DRIFTED, TargetFields};

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
    /// Targets only: the object itself (its status fields beyond conditions, annotations
    /// and pins).
    pub target: Option<Arc<Target>>,
}

impl Current {
    fn target_fields(&self) -> Option<TargetFields> {
        let status = self.target.as_ref()?.status.as_ref()?;
        Some(TargetFields {
            prefix: status.prefix.clone(),
            tools: status.tools,
            tool_digests: status.tool_digests.clone(),
        })
    }
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
        target: None,
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
            ObjectKind::Target => find(&self.targets, ns, name).map(|o| Current {
                target: Some(o.clone()),
                ..current_of(
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

    /// One pass over every report with no dataplane observations (see [`Self::sync_with`]).
    pub async fn sync(
        &self,
        published: &Published,
        fleet: &Programmed,
        lookup: &dyn Lookup,
    ) -> Result<usize, StatusError> {
        self.sync_with(published, fleet, &Observed::default(), lookup)
            .await
    }

    /// One pass over every report: patches what changed, returns how many were patched. Keeps
    /// going after a failed patch and returns the first error at the end. Targets also get
    /// `Ready`, `ToolsDrifted`, prefix and tools from `observed`, and their pending tool
    /// approvals turned into pins.
    pub async fn sync_with(
        &self,
        published: &Published,
        fleet: &Programmed,
        observed: &Observed,
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
            let (desired, fields) = desired_status(
                published,
                report,
                fleet,
                observed,
                cur.status.as_ref(),
                &now,
            );
            if let (Some(target), Some(f)) = (&cur.target, &fields)
                && let Err(e) = self.approve_tools(target, &f.tool_digests).await
            {
                warn!(error = %e, "tool approval not written");
                first_err.get_or_insert(e);
            }
            if !differs(cur.status.as_ref(), &desired) && fields == cur.target_fields() {
                continue;
            }
            match self.patch(report, &desired, fields.as_ref()).await {
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
        fields: Option<&TargetFields>,
    ) -> Result<(), StatusError> {
        let mut status = serde_json::to_value(desired).unwrap_or_default();
        if let (Some(f), Some(obj)) = (fields, status.as_object_mut()) {
            // Explicit nulls: a merge patch removes what is no longer known.
            obj.insert("prefix".into(), json!(f.prefix));
            obj.insert("tools".into(), json!(f.tools));
            let digests = (!f.tool_digests.is_empty()).then_some(&f.tool_digests);
            obj.insert("toolDigests".into(), json!(digests));
        }
        let body = Patch::Merge(json!({ "status": status }));
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
                "Conflicted" | TOOLS_DRIFTED => c.status == "True",
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

/// The status an object should have, and for a Target its fields beyond conditions.
pub fn desired_status(
    published: &Published,
    report: &ObjectReport,
    fleet: &Programmed,
    observed: &Observed,
    previous: Option<&ObjectStatus>,
    now: &str,
) -> (ObjectStatus, Option<TargetFields>) {
    let mut desired = conditions::object_status(
        report,
        fleet,
        published.source_error.as_deref(),
        previous,
        now,
    );
    if report.kind != ObjectKind::Target {
        return (desired, None);
    }
    let compiled = published
        .snapshot
        .target(&report.namespace, &report.name)
        .map(|t| &**t);
    let mut extra = vec![target_status::ready(report, observed)];
    extra.extend(compiled.and_then(|t| target_status::tools_drifted(report, t, observed)));
    for mut c in extra {
        let kept = previous
            .and_then(|p| p.conditions.iter().find(|p| p.type_ == c.type_))
            .filter(|p| p.status == c.status)
            .and_then(|p| p.last_transition_time.clone());
        c.last_transition_time = Some(kept.unwrap_or_else(|| now.to_owned()));
        desired.conditions.push(c);
    }
    (
        desired,
        Some(target_status::fields(report, compiled, observed)),
    )
}

impl StatusWriter {
    /// `mcp.reflow.io/approve-tools` on a Target: the named (or `*` all) observed digests
    /// become `spec.toolPinning.pins` and the annotation is removed, in one patch. With nothing
    /// observed yet the annotation stays until a dataplane has listed the Target.
    async fn approve_tools(
        &self,
        target: &Target,
        observed: &[ToolDigest],
    ) -> Result<(), StatusError> {
        let Some(wanted) = target
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(APPROVE_TOOLS))
        else {
            return Ok(());
        };
        if observed.is_empty() {
            debug!(target = ?target.metadata.name, "tool approval waits for a dataplane to list the Target");
            return Ok(());
        }
        let current = target.spec.tool_pinning.clone().unwrap_or_default();
        let (pins, missing) = target_status::approve(&current.pins, observed, wanted);
        let (ns, name) = (
            target.metadata.namespace.clone().unwrap_or_default(),
            target.metadata.name.clone().unwrap_or_default(),
        );
        let body = Patch::Merge(json!({
            "metadata": {"annotations": {APPROVE_TOOLS: null}},
            "spec": {"toolPinning": {"mode": current.mode, "pins": pins}},
        }));
        Api::<Target>::namespaced(self.client.clone(), &ns)
            .patch(&name, &PatchParams::default(), &body)
            .await
            .map_err(|source| StatusError::Patch {
                kind: ObjectKind::Target,
                namespace: ns.clone(),
                name: name.clone(),
                source,
            })?;
        info!(namespace = %ns, target = %name, pins = pins.len(), ?missing, "observed tool definitions approved as pins");
        if let Some(recorder) = &self.recorder {
            let note = if missing.is_empty() {
                format!("{} tool definition(s) pinned", pins.len())
            } else {
                format!(
                    "{} tool definition(s) pinned; not observed, so not pinned: {}",
                    pins.len(),
                    missing.join(", ")
                )
            };
            let ev = Event {
                type_: EventType::Normal,
                reason: "ToolsApproved".into(),
                note: Some(note.chars().take(1000).collect()),
                action: "ApproveTools".into(),
                secondary: None,
            };
            if let Err(e) = recorder.publish(&ev, &target.object_ref(&())).await {
                debug!(error = %e, "cannot publish an event");
            }
        }
        Ok(())
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
                let observed = fleet.observed_with(&peers);
                match writer.sync_with(&p, &programmed, &observed, lookup.as_ref()).await {
                    Ok(n) if n > 0 => debug!(patched = n, "status written"),
                    Ok(_) => {}
                    Err(e) => warn!(error = %e, label = e.label(), "status pass incomplete; retrying on the next change"),
                }
            }
        }
        .instrument(info_span!("status_writer")),
    )
}
