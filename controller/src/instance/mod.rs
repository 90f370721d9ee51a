//! The MCPInstance reconciler: looks the instance's Target up in the served snapshot, resolves the
//! Credentials of the instance's identity (refusing when they no longer match its fingerprint),
//! applies its children (server-side apply, owner references), rolls the Pod when the credential
//! fingerprint or the Pod's template changes, reports phase and endpoint, and deletes instances
//! past their idle TTL or lifetime.

pub mod api;
mod apply;
pub mod children;
pub mod cleanup;
pub mod report;
pub mod waiting;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::DeleteParams;
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use reflow_crds::api::{InstancePhase, InstanceStatus, MCPInstance};
use reflow_crds::compile::{ACCEPTED, ObjectKind, ObjectReport};
use reflow_crds::snapshot::{EffectiveLifetimes, Upstream};
use reflow_crds::{SealingKey, Snapshot};
use secrecy::ExposeSecret;
use sha2::Digest;
use tokio::sync::watch;
use tracing::{info, instrument};

use crate::metrics::Metrics;
use crate::publish::Published;
pub use children::{BuildError, InstanceConfig};

const MANAGER: &str = "reflow-controller";

#[derive(Debug, thiserror::Error)]
pub enum InstanceError {
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("building the instance: {0}")]
    Build(#[from] BuildError),
    #[error("the Credential value for env {0} cannot be opened with the controller's sealing key")]
    Credential(String),
}

impl InstanceError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Kube(_) => "kube",
            Self::Build(_) => "build",
            Self::Credential(_) => "credential",
        }
    }
}

pub struct Context {
    pub client: Client,
    /// Only the lease holder writes; other replicas check back later.
    pub leading: watch::Receiver<bool>,
    pub published: watch::Receiver<Option<Published>>,
    pub config: InstanceConfig,
    pub metrics: Arc<Metrics>,
}

/// Why an instance should go, if it should: idle past `idle_seconds` since its last reported
/// use (or its creation), or alive past `max_seconds`.
pub fn expired(
    inst: &MCPInstance,
    lifetimes: &EffectiveLifetimes,
    now: Timestamp,
) -> Option<&'static str> {
    let created = inst.metadata.creation_timestamp.as_ref().map(|t| t.0)?;
    if let Some(max) = lifetimes.max_seconds
        && created + Duration::from_secs(u64::from(max)) < now
    {
        return Some("MaxLifetime");
    }
    let last_used = inst
        .status
        .as_ref()
        .and_then(|s| s.last_used.as_deref())
        .and_then(|t| t.parse::<Timestamp>().ok())
        .unwrap_or(created);
    (last_used + Duration::from_secs(u64::from(lifetimes.idle_seconds)) < now)
        .then_some("IdleTimeout")
}

/// Writes a Failed status with `reason` (once: an unchanged status is not rewritten) and checks
/// back in a minute; a Failed instance touches no children.
async fn fail(
    client: &Client,
    inst: &MCPInstance,
    reason: &str,
    message: String,
    now: Timestamp,
) -> Result<Action, InstanceError> {
    let generation = inst.metadata.generation;
    let status = InstanceStatus {
        observed_generation: generation,
        phase: InstancePhase::Failed,
        conditions: vec![report::condition(false, reason, message, generation, now)],
        ..inst.status.clone().unwrap_or_default()
    };
    report::write(client, inst, status).await?;
    Ok(Action::requeue(Duration::from_secs(60)))
}

/// Why `namespace/name` is not in the snapshot, from the compiler's report on it.
fn not_served(reports: &[ObjectReport], namespace: &str, name: &str) -> (&'static str, String) {
    let rejected = reports
        .iter()
        .find(|r| r.kind == ObjectKind::Target && r.namespace == namespace && r.name == name)
        .and_then(|r| r.condition(ACCEPTED).filter(|c| !c.status));
    match rejected {
        Some(c) => (
            "TargetNotAccepted",
            format!(
                "Target {name:?} is not accepted: {}: {}",
                c.reason, c.message
            ),
        ),
        None => (
            "TargetNotFound",
            format!("no accepted Target {name:?} in this namespace"),
        ),
    }
}

/// One reconcile against the snapshot `snapshot` (tests; production passes the reports too).
pub async fn reconcile_with(
    inst: &MCPInstance,
    snapshot: &Snapshot,
    client: &Client,
    config: &InstanceConfig,
    now: Timestamp,
) -> Result<Action, InstanceError> {
    reconcile_against(inst, snapshot, &[], client, config, now).await
}

/// One reconcile against the served snapshot and the compiler's reports (which say why a Target
/// the instance names is not served).
#[instrument(skip_all, fields(instance = %inst.name_any(), namespace = inst.namespace().unwrap_or_default()))]
pub async fn reconcile_against(
    inst: &MCPInstance,
    snapshot: &Snapshot,
    reports: &[ObjectReport],
    client: &Client,
    config: &InstanceConfig,
    now: Timestamp,
) -> Result<Action, InstanceError> {
    let ns = inst.namespace().unwrap_or_default();
    let target_name = &inst.spec.target_ref.name;
    let Some(target) = snapshot.target(&ns, target_name) else {
        let (reason, message) = not_served(reports, &ns, target_name);
        return fail(client, inst, reason, message, now).await;
    };
    let Upstream::Kubernetes { pod: template, env } = &target.upstream else {
        let message = format!(
            "Target {target_name:?} uses transport {}, not kubernetes",
            target.upstream.transport_name()
        );
        return fail(client, inst, "NotKubernetes", message, now).await;
    };
    if let Some(reason) = expired(inst, &target.lifetimes, now) {
        info!(
            reason,
            "deleting the instance; its children follow by owner reference"
        );
        Api::<MCPInstance>::namespaced(client.clone(), &ns)
            .delete(&inst.name_any(), &DeleteParams::background())
            .await?;
        return Ok(Action::await_change());
    }

    // Resolved now, from the served snapshot: the values the pod gets are exactly those whose
    // fingerprint the instance was created for, or none at all.
    let identity = inst.spec.identity.clone().unwrap_or_default().to_identity();
    let resolved = target.credentials.resolve(&identity);
    let fingerprint = resolved.fingerprint.to_hex();
    if inst
        .spec
        .credential_fingerprint
        .as_ref()
        .is_some_and(|want| *want != fingerprint)
    {
        info!("credentials resolve to another fingerprint; leaving the children as they are");
        let message = "the served snapshot resolves this instance's Credentials to another \
                       fingerprint than it was created for; callers with the current snapshot \
                       get a new instance";
        return fail(client, inst, "CredentialMismatch", message.into(), now).await;
    }
    let values = env_values(env, &resolved, &config.key)?;
    let token = bridge_token(client, &ns, &children::child_name(inst)).await?;
    let built = match children::build(inst, template, &values, &fingerprint, &token, config) {
        Ok(b) => b,
        Err(BuildError::NoUid) => return Err(BuildError::NoUid.into()),
        Err(e) => return fail(client, inst, e.reason(), e.to_string(), now).await,
    };
    let phase = match apply::children(client, &ns, &built, &fingerprint).await? {
        apply::PodOutcome::Phase(p) => p,
        apply::PodOutcome::Rejected(message) => {
            let message = format!("the API server refused the Pod: {message}");
            return fail(client, inst, "PodRejected", message, now).await;
        }
        apply::PodOutcome::Stuck(reason, message) => {
            return fail(client, inst, &reason, message, now).await;
        }
    };
    let running = phase == InstancePhase::Running;
    let (reason, message) = if running {
        ("Running", "the pod is ready")
    } else {
        ("PodNotReady", "waiting for the pod to become ready")
    };
    let generation = inst.metadata.generation;
    let status = InstanceStatus {
        observed_generation: generation,
        phase,
        endpoint: Some(children::endpoint(inst, template)),
        last_used: inst.status.as_ref().and_then(|s| s.last_used.clone()),
        conditions: vec![report::condition(
            running,
            reason,
            message.into(),
            generation,
            now,
        )],
    };
    report::write(client, inst, status).await?;
    Ok(Action::requeue(if running {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    }))
}

/// Target env first, then the resolved Credentials opened (they win on a shared name), as for
/// STDIO children.
fn env_values(
    env: &[(std::sync::Arc<str>, std::sync::Arc<str>)],
    resolved: &reflow_crds::snapshot::ResolvedCredentials,
    key: &SealingKey,
) -> Result<Vec<(String, String)>, InstanceError> {
    let mut values: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for entry in resolved.env() {
        let secret = key
            .open(&entry.aad, &entry.value)
            .map_err(|_| InstanceError::Credential(entry.name.to_string()))?;
        values.retain(|(k, _)| **k != *entry.name);
        values.push((entry.name.to_string(), secret.expose_secret().to_owned()));
    }
    Ok(values)
}

/// The bridge token stays for the instance's life: reuse the one already issued.
async fn bridge_token(client: &Client, ns: &str, name: &str) -> Result<String, kube::Error> {
    Ok(Api::<Secret>::namespaced(client.clone(), ns)
        .get_opt(name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(children::BRIDGE_TOKEN_ENV).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .unwrap_or_else(SealingKey::generate_base64))
}

/// A digest of what instance Pods are built from (every `kubernetes` Target's upstream and
/// lifetimes): when it changes, every instance is reconciled at once, so a changed
/// `pod.template` rolls running Pods promptly instead of at their next periodic check.
pub fn pod_inputs_digest(snapshot: &Snapshot) -> String {
    let inputs: Vec<_> = snapshot
        .targets()
        .iter()
        .filter(|t| matches!(t.upstream, Upstream::Kubernetes { .. }))
        .map(|t| (&t.namespace, &t.name, &t.upstream, &t.lifetimes))
        .collect();
    let bytes = serde_json::to_vec(&inputs).unwrap_or_default();
    sha2::Sha256::digest(&bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The kube-runtime entry point: thin, reads the served snapshot.
pub async fn reconcile(inst: Arc<MCPInstance>, ctx: Arc<Context>) -> Result<Action, InstanceError> {
    if !*ctx.leading.borrow() {
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let Some(published) = ctx.published.borrow().clone() else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let r = reconcile_against(
        &inst,
        &published.snapshot,
        &published.reports,
        &ctx.client,
        &ctx.config,
        Timestamp::now(),
    )
    .await;
    Metrics::inc(
        &ctx.metrics.reconciles,
        match &r {
            Ok(_) => "ok",
            Err(e) => e.label(),
        },
    );
    r
}

pub fn error_policy(_inst: Arc<MCPInstance>, err: &InstanceError, _ctx: Arc<Context>) -> Action {
    tracing::warn!(error = %err, label = err.label(), "instance reconcile failed");
    Action::requeue(Duration::from_secs(15))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::loader::{Loaded, load_str};

    fn snapshot(image: &str, policy_priority: i32) -> Snapshot {
        let yaml = format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: k, namespace: ns}}\n\
             spec: {{transport: kubernetes, pod: {{template: {{spec: {{containers: [{{name: s, image: {image}, command: [s]}}]}}}}}}}}\n\
             ---\napiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: p, namespace: ns}}\n\
             spec: {{targetRef: {{name: k}}, effect: Allow, priority: {policy_priority}, subjects: [{{everyone: true}}], rules: [{{kind: all, names: ['*']}}]}}\n"
        );
        let mut loaded = Loaded::default();
        load_str(std::path::Path::new("t.yaml"), &yaml, &mut loaded).expect("load");
        reflow_crds::compile(&loaded.inputs, &SealingKey::from_bytes(&[1; 32]))
            .expect("compile")
            .snapshot
    }

    #[test]
    fn the_pod_inputs_digest_moves_with_a_template_and_not_with_a_policy() {
        let base = pod_inputs_digest(&snapshot("img:1", 1));
        assert_eq!(base, pod_inputs_digest(&snapshot("img:1", 1)));
        assert_eq!(base, pod_inputs_digest(&snapshot("img:1", 7)));
        assert_ne!(base, pod_inputs_digest(&snapshot("img:2", 1)));
    }
}
