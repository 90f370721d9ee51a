//! What dataplanes ask of the controller for `kubernetes` Targets, over its authenticated API:
//! ensure an MCPInstance exists for an isolation key (and carries the current credential
//! fingerprint), and record use so idle instances can be collected. Dataplanes hold no
//! Kubernetes credentials; the controller does this on their behalf.

use k8s_openapi::jiff::Timestamp;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use reflow_crds::Snapshot;
use reflow_crds::api::{InstancePhase, MCPInstance};
use reflow_crds::snapshot::Upstream;
use serde::{Deserialize, Serialize};
use serde_json::json;

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
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl EnsureError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::TargetNotFound(_) => "target_not_found",
            Self::NotKubernetes(_) => "not_kubernetes",
            Self::BadKey => "bad_key",
            Self::Kube(_) => "kube",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureRequest {
    pub namespace: String,
    pub target: String,
    pub isolation_key: String,
    /// Fingerprint of the caller's resolved credentials (never the values).
    #[serde(default)]
    pub credential_fingerprint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EnsureResponse {
    pub name: String,
    pub phase: InstancePhase,
    #[serde(default)]
    pub endpoint: Option<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsedRequest {
    pub namespace: String,
    pub name: String,
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

/// Creates or updates (server-side apply) the instance `<target>-<isolationKey>`.
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
    let name = format!("{}-{}", req.target, req.isolation_key);
    let api: Api<MCPInstance> = Api::namespaced(client.clone(), &req.namespace);
    let mut spec = json!({"targetRef": {"name": req.target}, "isolationKey": req.isolation_key});
    if let Some(fp) = &req.credential_fingerprint {
        spec["credentialFingerprint"] = json!(fp);
    }
    let doc = json!({
        "apiVersion": "mcp.reflow.io/v1alpha1",
        "kind": "MCPInstance",
        "metadata": {"name": name, "namespace": req.namespace},
        "spec": spec,
    });
    let applied = api
        .patch(
            &name,
            &PatchParams::apply("reflow-controller").force(),
            &Patch::Apply(&doc),
        )
        .await?;
    let status = applied.status.unwrap_or_default();
    Ok(EnsureResponse {
        name,
        phase: status.phase,
        endpoint: (status.phase == InstancePhase::Running)
            .then_some(status.endpoint)
            .flatten(),
    })
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
