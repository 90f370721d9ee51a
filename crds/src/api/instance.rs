//! `MCPInstance`: one running per-identity copy of a `kubernetes` Target, created on demand by
//! the controller (or by hand to pre-warm) and reconciled into Pod, Service, Secret, NetworkPolicy.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{Condition, LocalRef};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp.reflow.io",
    version = "v1alpha1",
    kind = "MCPInstance",
    plural = "mcpinstances",
    namespaced,
    status = "InstanceStatus",
    shortname = "mcpi",
    category = "reflow",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Last Used", type_ = "date", json_path = ".status.lastUsed"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct InstanceSpec {
    #[x_kube(validation = Rule::new("self == oldSelf").message("targetRef is immutable"))]
    pub target_ref: LocalRef,
    /// The isolation key this instance serves (see the Target's `isolation`); immutable.
    #[schemars(
        length(min = 1, max = 128),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("isolationKey is immutable"))]
    pub isolation_key: String,
    /// Fingerprint of the credentials the pod is started with; a change rolls the pod. When
    /// set, the reconciler refuses to start the pod with credentials that resolve differently.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential_fingerprint: Option<String>,
    /// Whose Credentials the pod gets (the first caller with this isolation key; every caller
    /// sharing the instance resolves to the same fingerprint). Absent: only `default` ones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<InstanceIdentity>,
}

/// The claims Credential resolution looks at: names only, never a token.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceIdentity {
    pub user: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub groups: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
}

impl InstanceIdentity {
    pub fn to_identity(&self) -> crate::Identity {
        crate::Identity::new(
            self.user.as_str(),
            self.groups.iter().map(String::as_str),
            self.roles.iter().map(String::as_str),
        )
    }

    pub fn from_identity(id: &crate::Identity) -> Self {
        Self {
            user: id.user.to_string(),
            groups: id.groups.iter().map(|g| g.to_string()).collect(),
            roles: id.roles.iter().map(|r| r.to_string()).collect(),
        }
    }
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
pub enum InstancePhase {
    #[default]
    Pending,
    Running,
    Failed,
    Terminating,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct InstanceStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    pub phase: InstancePhase,
    /// In-cluster URL of the instance's MCP endpoint once running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// RFC 3339 time a dataplane last reported use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_used: Option<String>,
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
