//! A compiled Target's own settings as the snapshot carries them: isolation, the pod of the
//! kubernetes transport, identity forwarding. The snapshot's wire names are fixed here, apart
//! from the CRD types (`compile` converts), so a CRD field rename never changes this format.

use serde::{Deserialize, Serialize};

/// Which callers share an upstream process or pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Isolation {
    #[default]
    Shared,
    PerRole,
    PerGroup,
    PerUser,
}

/// How a per-identity pod is built: `template` is a core/v1 PodTemplateSpec, kept as JSON (the
/// controller validates it when it builds the Pod).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodTemplate {
    pub template: serde_json::Value,
    pub transport: PodTransport,
    pub port: u16,
    pub path: String,
}

/// What a pod's server container speaks: `stdio` gets the bridge sidecar in front of it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PodTransport {
    #[default]
    Stdio,
    StreamableHttp,
}

/// How the caller's identity reaches the upstream (only present when something is forwarded).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdentityForwarding {
    /// A JWT signed by the gateway.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<ForwardedJwt>,
    /// Plain `X-Reflow-User`, `-Email`, `-Name`, `-Groups`, `-Roles` headers.
    #[serde(default)]
    pub headers: bool,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedJwt {
    /// Header carrying the token (absent: `X-Reflow-Identity`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<String>,
    /// `aud` of the token (absent: `namespace/name` of the Target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
}
