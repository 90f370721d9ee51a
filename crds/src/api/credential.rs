//! `Credential`: what to inject upstream for one subject of one Target: headers for HTTP
//! Targets, environment variables for STDIO children and pods, valued from same-namespace Secrets.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, ObjectStatus, SecretKeyRef};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp.reflow.io",
    version = "v1alpha1",
    kind = "Credential",
    namespaced,
    status = "ObjectStatus",
    shortname = "mcpc",
    category = "reflow",
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Resolved",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"ResolvedRefs\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("size(self.headers) + size(self.env) > 0").message("a Credential injects at least one header or env var"))]
#[serde(rename_all = "camelCase")]
pub struct CredentialSpec {
    pub target_ref: LocalRef,
    pub subject: CredentialSubject,
    /// HTTP headers sent to HTTP upstreams.
    #[serde(default)]
    #[schemars(length(max = 64))]
    #[x_kube(validation = Rule::new("self.all(h, !(h.name.lowerAscii() in ['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'mcp-session-id', 'mcp-protocol-version']))").message("hop-by-hop and MCP protocol headers cannot be injected"))]
    #[x_kube(validation = Rule::new("self.all(h, h.name.matches('^[A-Za-z0-9!#$%&*+.^_|~`-]+$'))").message("header names must be HTTP tokens"))]
    pub headers: Vec<InjectedValue>,
    /// Environment variables for STDIO children and pods.
    #[serde(default)]
    #[schemars(length(max = 128))]
    #[x_kube(validation = Rule::new("self.all(e, e.name.matches('^[A-Za-z_][A-Za-z0-9_]*$'))").message("env names must match [A-Za-z_][A-Za-z0-9_]*"))]
    pub env: Vec<InjectedValue>,
}

/// Exactly one of `user`, `group`, `role`, or `default: true` (applies to everyone).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[x_kube(validation = Rule::new("(has(self.user) ? 1 : 0) + (has(self.group) ? 1 : 0) + (has(self.role) ? 1 : 0) + (has(self.default) && self.default ? 1 : 0) == 1").message("a credential subject names exactly one of user, group, role, or default: true"))]
pub struct CredentialSubject {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub user: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub role: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<bool>,
}

/// One injected header or env var. The value is `prefix` + the Secret's value
/// (e.g. `prefix: "Bearer "` for an Authorization header).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct InjectedValue {
    #[schemars(
        regex(pattern = r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$"),
        length(min = 1, max = 256)
    )]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub prefix: Option<String>,
    pub secret_key_ref: SecretKeyRef,
}
