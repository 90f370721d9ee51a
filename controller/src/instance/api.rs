//! What dataplanes ask of the controller for `kubernetes` Targets, over its authenticated API:
//! ensure an MCPInstance exists for an isolation key (and carries the current credential
//! fingerprint), and record use so idle instances can be collected. Dataplanes hold no
//! Kubernetes credentials; the controller does this on their behalf.

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use reflow_crds::Snapshot;
use reflow_crds::api::{InstancePhase, MCPInstance};
use reflow_crds::instance_wire::BridgeToken;
pub use reflow_crds::instance_wire::{EnsureRequest, EnsureResponse, UsedRequest};
use reflow_crds::snapshot::Upstream;
use serde_json::json;
use tracing::info;

use super::children;

#[derive(Debug, thiserror::Error)]
pub enum EnsureError {
    #[error("no accepted Target {0} in the served snapshot")]
    TargetNotFound(String),
    #[error("Target {0} does not use the kubernetes transport")]
    NotKubernetes(String),
    #[error(
        "isolationKey must be 1-40 lowercase letters, digits or '-', starting and ending alphanumeric"
    )]
    BadKey,
    #[error(
        "credential fingerprint mismatch for {0}: the controller's snapshot resolves this caller's Credentials differently from the dataplane's (the two snapshots differ; retry once the dataplane has the current one)"
    )]
    FingerprintMismatch(String),
    #[error("instance {name} failed: {message}")]
    Failed { name: String, message: String },
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl EnsureError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::TargetNotFound(_) => "target_not_found",
            Self::NotKubernetes(_) => "not_kubernetes",
            Self::BadKey => "bad_key",
            Self::FingerprintMismatch(_) => "fingerprint_mismatch",
            Self::Failed { .. } => "instance_failed",
            Self::Kube(_) => "kube",
        }
    }
}

fn valid_key(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-')
        && b[0] != b'-'
        && b[b.len() - 1] != b'-'
}

/// The reconciler refused the instance because its stored identity no longer resolves to its
/// fingerprint; this caller's identity does (checked above), so applying it repairs the instance.
fn stale_identity(inst: &MCPInstance) -> bool {
    inst.status.as_ref().is_some_and(|s| {
        s.phase == InstancePhase::Failed
            && s.conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.reason == "CredentialMismatch")
    })
}

/// Creates (server-side apply) the instance `<target>-<isolationKey>` unless it already exists
/// for the same credentials, and answers with its endpoint and bridge token once it runs them.
pub async fn ensure(
    client: &Client,
    snapshot: &Snapshot,
    req: &EnsureRequest,
) -> Result<EnsureResponse, EnsureError> {
    let key = format!("{}/{}", req.namespace, req.target);
    let target = snapshot
        .target(&req.namespace, &req.target)
        .ok_or_else(|| EnsureError::TargetNotFound(key.clone()))?;
    if !matches!(target.upstream, Upstream::Kubernetes { .. }) {
        return Err(EnsureError::NotKubernetes(key));
    }
    if !valid_key(&req.isolation_key) {
        return Err(EnsureError::BadKey);
    }
    // The dataplane resolved with its snapshot, we resolve with ours: only when both agree may
    // the pod be started with (or keep serving) what we resolve.
    let identity = req.identity.clone().unwrap_or_default();
    let fingerprint = target
        .credentials
        .resolve(&identity.to_identity())
        .fingerprint
        .to_hex();
    if req.credential_fingerprint.as_deref() != Some(fingerprint.as_str()) {
        return Err(EnsureError::FingerprintMismatch(key));
    }
    let name = format!("{}-{}", req.target, req.isolation_key);
    let api: Api<MCPInstance> = Api::namespaced(client.clone(), &req.namespace);
    let existing = api.get_opt(&name).await?;
    // Callers sharing an instance (same boundary, same fingerprint) leave it as it is: applying
    // their identity would bump its generation and make everyone wait for a reconcile.
    let inst = match existing {
        Some(i)
            if i.spec.credential_fingerprint.as_deref() == Some(fingerprint.as_str())
                && !stale_identity(&i) =>
        {
            i
        }
        found => {
            if found.is_some() {
                info!(instance = %name, "credentials changed; the instance rolls");
            }
            let doc = json!({
                "apiVersion": "mcp.reflow.io/v1alpha1",
                "kind": "MCPInstance",
                "metadata": {"name": name, "namespace": req.namespace},
                "spec": {
                    "targetRef": {"name": req.target},
                    "isolationKey": req.isolation_key,
                    "credentialFingerprint": fingerprint,
                    "identity": identity,
                },
            });
            api.patch(
                &name,
                &PatchParams::apply("reflow-controller").force(),
                &Patch::Apply(&doc),
            )
            .await?
        }
    };
    answer(client, &inst, name, &req.namespace).await
}

/// What ensure answers for `inst` as it stands: its endpoint and bridge token once it runs
/// current credentials, Pending before, the `Ready` reason when it failed.
async fn answer(
    client: &Client,
    inst: &MCPInstance,
    name: String,
    namespace: &str,
) -> Result<EnsureResponse, EnsureError> {
    let status = inst.status.clone().unwrap_or_default();
    // A status from before the last spec change describes a pod that may hold other credentials.
    let current = status.observed_generation.is_some()
        && status.observed_generation == inst.metadata.generation;
    let pending = EnsureResponse {
        name: name.clone(),
        phase: if current {
            status.phase
        } else {
            InstancePhase::Pending
        },
        endpoint: None,
        token: None,
    };
    match (current, status.phase, status.endpoint) {
        (true, InstancePhase::Failed, _) => Err(EnsureError::Failed {
            name,
            message: status
                .conditions
                .iter()
                .find(|c| c.type_ == "Ready")
                .map(|c| format!("{}: {}", c.reason, c.message))
                .unwrap_or_else(|| "no reason given".to_owned()),
        }),
        (true, InstancePhase::Running, Some(endpoint)) => {
            let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
            let token = secrets
                .get_opt(&children::child_name(inst))
                .await?
                .and_then(|s| s.data)
                .and_then(|d| d.get(children::BRIDGE_TOKEN_ENV).cloned())
                .and_then(|b| String::from_utf8(b.0).ok());
            Ok(match token {
                Some(t) => EnsureResponse {
                    endpoint: Some(endpoint),
                    token: Some(BridgeToken::new(t)),
                    ..pending
                },
                None => pending,
            })
        }
        _ => Ok(pending),
    }
}

/// Records use now (`status.lastUsed`), which resets the idle clock.
pub async fn used(client: &Client, req: &UsedRequest) -> Result<(), EnsureError> {
    let api: Api<MCPInstance> = Api::namespaced(client.clone(), &req.namespace);
    api.patch_status(
        &req.name,
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"lastUsed": Timestamp::now().to_string()}})),
    )
    .await?;
    Ok(())
}
