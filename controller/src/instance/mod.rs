//! The MCPInstance reconciler: looks the instance's Target up in the served snapshot, resolves the
//! Credentials of the instance's identity (refusing when they no longer match its fingerprint),
//! applies its children (server-side apply, owner references), rolls the Pod when the credential
//! fingerprint or the Pod's template changes, reports phase and endpoint, and deletes instances
//! past their idle TTL or lifetime.

pub mod api;
pub mod children;

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Api, Client, ResourceExt};
use reflow_crds::api::{Condition, InstancePhase, InstanceStatus, MCPInstance};
use reflow_crds::snapshot::{EffectiveLifetimes, Upstream};
use reflow_crds::{SealingKey, Snapshot};
use secrecy::ExposeSecret;
use serde_json::json;
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

fn condition(
    status: bool,
    reason: &str,
    message: String,
    generation: Option<i64>,
    now: &str,
) -> Condition {
    Condition {
        type_: "Ready".into(),
        status: if status { "True" } else { "False" }.into(),
        reason: reason.into(),
        message,
        observed_generation: generation,
        last_transition_time: Some(now.into()),
    }
}

async fn patch_status(
    api: &Api<MCPInstance>,
    inst: &MCPInstance,
    status: InstanceStatus,
) -> Result<(), kube::Error> {
    let name = inst.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .map(|_| ())
}

/// One reconcile against the snapshot `snapshot` (the served one in production).
#[instrument(skip_all, fields(instance = %inst.name_any(), namespace = inst.namespace().unwrap_or_default()))]
pub async fn reconcile_with(
    inst: &MCPInstance,
    snapshot: &Snapshot,
    client: &Client,
    config: &InstanceConfig,
    now: Timestamp,
) -> Result<Action, InstanceError> {
    let ns = inst.namespace().unwrap_or_default();
    let instances: Api<MCPInstance> = Api::namespaced(client.clone(), &ns);
    let generation = inst.metadata.generation;
    let now_s = now.to_string();
    let previous = inst.status.clone().unwrap_or_default();
    let target_name = &inst.spec.target_ref.name;
    let Some(target) = snapshot.target(&ns, target_name) else {
        let status = InstanceStatus {
            observed_generation: generation,
            phase: InstancePhase::Failed,
            conditions: vec![condition(
                false,
                "TargetNotFound",
                format!("no accepted Target {target_name:?} in this namespace"),
                generation,
                &now_s,
            )],
            ..previous
        };
        patch_status(&instances, inst, status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    let Upstream::Kubernetes { pod: template, env } = &target.upstream else {
        let status = InstanceStatus {
            observed_generation: generation,
            phase: InstancePhase::Failed,
            conditions: vec![condition(
                false,
                "NotKubernetes",
                format!(
                    "Target {target_name:?} uses transport {}, not kubernetes",
                    target.upstream.transport_name()
                ),
                generation,
                &now_s,
            )],
            ..previous
        };
        patch_status(&instances, inst, status).await?;
        return Ok(Action::requeue(Duration::from_secs(60)));
    };
    if let Some(reason) = expired(inst, &target.lifetimes, now) {
        info!(
            reason,
            "deleting the instance; its children follow by owner reference"
        );
        instances
            .delete(&inst.name_any(), &DeleteParams::background())
            .await?;
        return Ok(Action::await_change());
    }

    // Resolved now, from the served snapshot: the values the pod gets are exactly those whose
    // fingerprint the instance was created for, or none at all.
    let identity = inst.spec.identity.clone().unwrap_or_default().to_identity();
    let resolved = target.credentials.resolve(&identity);
    let fingerprint = resolved.fingerprint.to_hex();
    if let Some(want) = &inst.spec.credential_fingerprint
        && *want != fingerprint
    {
        info!("credentials resolve to another fingerprint; leaving the children as they are");
        let status = InstanceStatus {
            observed_generation: generation,
            phase: InstancePhase::Failed,
            conditions: vec![condition(
                false,
                "CredentialMismatch",
                "the served snapshot resolves this instance's Credentials to another fingerprint \
                 than it was created for; callers with the current snapshot get a new instance"
                    .into(),
                generation,
                &now_s,
            )],
            ..previous
        };
        if inst.status.as_ref() != Some(&status) {
            patch_status(&instances, inst, status).await?;
        }
        return Ok(Action::requeue(Duration::from_secs(60)));
    }
    // Target env first, then Credentials (they win on a shared name), as for STDIO children.
    let mut values: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for entry in resolved.env() {
        let secret = config
            .key
            .open(&entry.aad, &entry.value)
            .map_err(|_| InstanceError::Credential(entry.name.to_string()))?;
        values.retain(|(k, _)| **k != *entry.name);
        values.push((entry.name.to_string(), secret.expose_secret().to_owned()));
    }

    let name = children::child_name(inst);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    // The bridge token stays for the instance's life: reuse the one already issued.
    let token = secrets
        .get_opt(&name)
        .await?
        .and_then(|s| s.data)
        .and_then(|d| d.get(children::BRIDGE_TOKEN_ENV).cloned())
        .and_then(|b| String::from_utf8(b.0).ok())
        .unwrap_or_else(SealingKey::generate_base64);
    let built = children::build(inst, template, &values, &fingerprint, &token, config)?;

    let ssa = PatchParams::apply(MANAGER).force();
    secrets
        .patch(&name, &ssa, &Patch::Apply(&built.secret))
        .await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), &ns);
    let existing = pods.get_opt(&name).await?;
    let annotation = |pod: &Pod, key: &str| pod.annotations().get(key).cloned();
    let wanted_template = annotation(&built.pod, children::TEMPLATE_ANNOTATION);
    let phase = match &existing {
        Some(p)
            if annotation(p, children::FINGERPRINT_ANNOTATION).as_ref() != Some(&fingerprint) =>
        {
            // Pods are immutable where it matters: a credential change replaces the Pod.
            info!("credential fingerprint changed; rolling the pod");
            pods.delete(&name, &DeleteParams::default()).await?;
            InstancePhase::Pending
        }
        Some(p) if annotation(p, children::TEMPLATE_ANNOTATION) != wanted_template => {
            // A changed pod.template (image, resources, env) or bridge image: the running Pod
            // is replaced, as a Deployment would roll it; callers reconnect to the new one.
            info!("pod template changed; rolling the pod");
            pods.delete(&name, &DeleteParams::default()).await?;
            InstancePhase::Pending
        }
        Some(p) => {
            let ready = p
                .status
                .as_ref()
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            if ready {
                InstancePhase::Running
            } else {
                InstancePhase::Pending
            }
        }
        None => {
            pods.patch(&name, &ssa, &Patch::Apply(&built.pod)).await?;
            InstancePhase::Pending
        }
    };
    Api::<Service>::namespaced(client.clone(), &ns)
        .patch(&name, &ssa, &Patch::Apply(&built.service))
        .await?;
    Api::<NetworkPolicy>::namespaced(client.clone(), &ns)
        .patch(&name, &ssa, &Patch::Apply(&built.network_policy))
        .await?;

    let running = phase == InstancePhase::Running;
    let kept_time = previous
        .conditions
        .iter()
        .find(|c| c.type_ == "Ready" && (c.status == "True") == running)
        .and_then(|c| c.last_transition_time.clone());
    let mut ready = condition(
        running,
        if running { "Running" } else { "PodNotReady" },
        if running {
            "the pod is ready".into()
        } else {
            "waiting for the pod to become ready".into()
        },
        generation,
        &now_s,
    );
    if kept_time.is_some() {
        ready.last_transition_time = kept_time;
    }
    let status = InstanceStatus {
        observed_generation: generation,
        phase,
        endpoint: Some(children::endpoint(inst, template)),
        last_used: previous.last_used.clone(),
        conditions: vec![ready],
    };
    if inst.status.as_ref() != Some(&status) {
        patch_status(&instances, inst, status).await?;
    }
    Ok(Action::requeue(if running {
        Duration::from_secs(60)
    } else {
        Duration::from_secs(5)
    }))
}

/// The kube-runtime entry point: thin, reads the served snapshot.
pub async fn reconcile(inst: Arc<MCPInstance>, ctx: Arc<Context>) -> Result<Action, InstanceError> {
    if !*ctx.leading.borrow() {
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let Some(snapshot) = ctx.published.borrow().as_ref().map(|p| p.snapshot.clone()) else {
        return Ok(Action::requeue(Duration::from_secs(2)));
    };
    let r = reconcile_with(&inst, &snapshot, &ctx.client, &ctx.config, Timestamp::now()).await;
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
