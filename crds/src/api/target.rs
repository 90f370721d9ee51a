//! `Target`: one upstream MCP server, reached over HTTP, spawned as a STDIO child, or run as
//! per-identity pods (`kubernetes`).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::Condition;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp.reflow.io",
    version = "v1alpha1",
    kind = "Target",
    namespaced,
    status = "TargetStatus",
    shortname = "mcpt",
    category = "reflow",
    printcolumn(name = "Transport", type_ = "string", json_path = ".spec.transport"),
    printcolumn(name = "Prefix", type_ = "string", json_path = ".status.prefix"),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Tools", type_ = "integer", json_path = ".status.tools"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(
    validation = Rule::new("!(self.transport in ['streamableHttp', 'sse', 'auto']) || has(self.url)").message("url is required for the streamableHttp, sse and auto transports").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.transport != 'stdio' || has(self.command)").message("command is required for the stdio transport").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.transport != 'kubernetes' || has(self.pod)").message("pod is required for the kubernetes transport").reason(Reason::FieldValueRequired),
    validation = Rule::new("!has(self.url) || self.transport in ['streamableHttp', 'sse', 'auto']").message("url is only valid for the streamableHttp, sse and auto transports"),
    validation = Rule::new("!has(self.command) || self.transport == 'stdio'").message("command is only valid for the stdio transport"),
    validation = Rule::new("!has(self.pod) || self.transport == 'kubernetes'").message("pod is only valid for the kubernetes transport"),
    validation = Rule::new("self.transport in ['stdio', 'kubernetes'] || self.isolation == 'shared'").message("per-identity isolation needs a process to isolate: use the stdio or kubernetes transport"),
    validation = Rule::new("!has(self.sandbox) || self.transport == 'stdio'").message("sandbox is only valid for the stdio transport"),
    validation = Rule::new("!has(self.userCredential) || !has(self.userCredential.inject.header) || self.transport in ['streamableHttp', 'sse', 'auto']").message("userCredential.inject.header is for HTTP transports; use inject.env for stdio and kubernetes"),
    validation = Rule::new("!has(self.userCredential) || !has(self.userCredential.inject.env) || self.transport in ['stdio', 'kubernetes']").message("userCredential.inject.env is for the stdio and kubernetes transports; use inject.header for HTTP")
)]
#[serde(rename_all = "camelCase")]
pub struct TargetSpec {
    pub transport: Transport,
    /// Upstream endpoint for HTTP transports (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(
        validation = Rule::new("self.startsWith('http://') || self.startsWith('https://')").message("url must be an http:// or https:// URL"),
        validation = Rule::new("!(self.startsWith('http://') || self.startsWith('https://')) || self.matches('^https?://[^\\\\s/?#]+([/?#]\\\\S*)?$')").message("url must name a host and contain no whitespace")
    )]
    #[schemars(length(max = 2048))]
    pub url: Option<String>,
    /// Program to run for the stdio transport; executed directly, never through a shell.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Plain (non-secret) environment for stdio children and pods. Secrets belong in Credentials.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<EnvVar>,
    /// Pod to run per isolation key for the kubernetes transport.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<PodSpecTemplate>,
    /// Tool-name prefix on the aggregated endpoint; defaults to the Target's name. Lower-case
    /// letters, digits and `-` (no `_`, which separates prefix and tool name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 32),
        regex(pattern = r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")
    )]
    pub prefix: Option<String>,
    #[serde(default)]
    pub isolation: Isolation,
    /// A stateful server gets its own process per session; a stateless one may serve every
    /// session with the same isolation key and credentials.
    #[serde(default)]
    pub stateful: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeouts: Option<Timeouts>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifetimes: Option<Lifetimes>,
    /// Tell the upstream who is calling (opt-in): a short-lived JWT signed by the gateway
    /// and/or plain headers. The client's own token is never forwarded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_forwarding: Option<IdentityForwarding>,
    /// Confinement of STDIO children (see `api::sandbox`); enforced when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sandbox: Option<super::sandbox::SandboxSpec>,
    /// Approved tool definitions (rug-pull guard): in `enforce` mode a tool whose definition
    /// differs from its pin, or that has no pin, is hidden and refused until approved.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_pinning: Option<ToolPinning>,
    /// What each user brings for this Target (their own upstream account or token), connected
    /// through the gateway's `/connect` pages; see `api::user_credential`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_credential: Option<super::user_credential::UserCredential>,
}

/// `spec.toolPinning`: the mode and the approved digests (see `snapshot::pinning`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ToolPinning {
    #[serde(default)]
    pub mode: PinMode,
    /// Tool name (the upstream's own, without the prefix) → approved definition digest.
    /// Filled by hand, or by the controller from `status.toolDigests` when the Target carries
    /// the `mcp.reflow.io/approve-tools` annotation.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 512))]
    pub pins: Vec<ToolDigest>,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum PinMode {
    /// Unapproved definitions are hidden from lists and refused on call.
    #[default]
    Enforce,
    /// Unapproved definitions are served, with an audit event and the `ToolsDrifted` condition.
    Warn,
}

/// One tool definition's digest: lower-case hex SHA-256 over the canonical JSON of its name,
/// title, description, inputSchema, outputSchema and annotations.
#[derive(
    KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord,
)]
pub struct ToolDigest {
    #[schemars(length(min = 1, max = 128))]
    pub name: String,
    #[schemars(regex(pattern = r"^[0-9a-f]{64}$"), length(min = 64, max = 64))]
    pub digest: String,
}

/// How the caller's identity (user, email, name, groups, roles) reaches the upstream.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct IdentityForwarding {
    /// A JWT signed by the gateway, verifiable with its JWKS at `/.well-known/jwks.json`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jwt: Option<ForwardedJwt>,
    /// Plain `X-Reflow-User`, `-Email`, `-Name`, `-Groups`, `-Roles` headers, for simple servers
    /// that only the gateway can reach (anyone who can reach the server can forge them).
    #[serde(default)]
    pub headers: bool,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[serde(rename_all = "camelCase")]
pub struct ForwardedJwt {
    /// Header carrying the token (default `X-Reflow-Identity`); sent as the bare JWT.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 128))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~`-]+$') && !(self.lowerAscii() in ['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'mcp-session-id', 'mcp-protocol-version', 'cookie'])").message("the identity header must be an HTTP token and not a hop-by-hop or MCP protocol header"))]
    pub header: Option<String>,
    /// `aud` of the token (default `namespace/name` of the Target).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    pub audience: Option<String>,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum Transport {
    #[default]
    StreamableHttp,
    Sse,
    Auto,
    Stdio,
    Kubernetes,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum Isolation {
    #[default]
    Shared,
    PerRole,
    PerGroup,
    PerUser,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct EnvVar {
    #[schemars(regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$"), length(max = 256))]
    pub name: String,
    #[serde(default)]
    pub value: String,
}

/// Timeouts in milliseconds; defaults apply to unset fields.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 300000))]
    pub connect_ms: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 3600000))]
    pub request_ms: Option<u32>,
    /// Time allowed for a new upstream (process, pod or session) to answer `initialize`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 600000))]
    pub init_ms: Option<u32>,
}

/// Lifetimes of spawned processes and pods, in seconds.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct Lifetimes {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 604800))]
    pub idle_seconds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 2592000))]
    pub max_seconds: Option<u32>,
}

/// How a per-identity pod is built. `template` is a core/v1 PodTemplateSpec; its schema is left
/// open (`x-kubernetes-preserve-unknown-fields`) so the CRD stays small enough for client-side
/// `kubectl apply`; the controller validates it when it builds the Pod.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PodSpecTemplate {
    #[schemars(schema_with = "crate::api::target::pod_template_schema")]
    pub template: serde_json::Value,
    /// What the server container speaks: `stdio` gets the bridge sidecar in front of it.
    #[serde(default)]
    pub transport: PodTransport,
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    #[serde(default = "default_path")]
    pub path: String,
}

fn default_port() -> u16 {
    8080
}

fn default_path() -> String {
    "/mcp".to_owned()
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum PodTransport {
    #[default]
    Stdio,
    StreamableHttp,
}

/// The template stays open, but the fields Pod Security `restricted` forbids are declared, so
/// CEL can refuse them at admission (`compile::pod_security` checks the same ones again).
pub(crate) fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let rule = |rule: &str, message: &str| serde_json::json!({"rule": rule, "message": message});
    let not_true = |f: &str, why: &str| {
        rule(
            &format!("!has(self.{f}) || !self.{f}"),
            &format!("{f}: {why}"),
        )
    };
    let security_context = |container: bool| {
        let mut rules = vec![
            rule(
                "!has(self.runAsUser) || self.runAsUser != 0",
                "runAsUser: running as root is not allowed",
            ),
            rule(
                "!has(self.runAsNonRoot) || self.runAsNonRoot",
                "runAsNonRoot: running as root is not allowed",
            ),
        ];
        let mut props = serde_json::json!({
            "runAsUser": {"type": "integer", "format": "int64"},
            "runAsNonRoot": {"type": "boolean"}
        });
        if container {
            rules.push(not_true(
                "privileged",
                "privileged containers are not allowed",
            ));
            rules.push(not_true(
                "allowPrivilegeEscalation",
                "privilege escalation is not allowed",
            ));
            rules.push(rule(
                "!has(self.capabilities) || !has(self.capabilities.add) || size(self.capabilities.add) == 0",
                "capabilities.add: added capabilities are not allowed",
            ));
            props["privileged"] = serde_json::json!({"type": "boolean"});
            props["allowPrivilegeEscalation"] = serde_json::json!({"type": "boolean"});
            props["capabilities"] = serde_json::json!({
                "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"add": {"type": "array", "maxItems": 64, "items": {"type": "string"}}}
            });
        }
        serde_json::json!({
            "type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": props, "x-kubernetes-validations": rules
        })
    };
    let containers = serde_json::json!({
        "type": "array", "maxItems": 32,
        "items": {
            "type": "object", "x-kubernetes-preserve-unknown-fields": true,
            "properties": {
                "ports": {"type": "array", "maxItems": 64, "items": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"hostPort": {"type": "integer", "format": "int32"}},
                    "x-kubernetes-validations": [rule("!has(self.hostPort) || self.hostPort == 0", "hostPort: host ports are not allowed")]
                }},
                "securityContext": security_context(true)
            }
        }
    });
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {"spec": {
            "type": "object",
            "x-kubernetes-preserve-unknown-fields": true,
            "properties": {
                "hostNetwork": {"type": "boolean"},
                "hostPID": {"type": "boolean"},
                "hostIPC": {"type": "boolean"},
                "nodeName": {"type": "string"},
                "securityContext": security_context(false),
                "volumes": {"type": "array", "maxItems": 256, "items": {
                    "type": "object", "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"hostPath": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    "x-kubernetes-validations": [rule("!has(self.hostPath)", "hostPath: hostPath volumes are not allowed")]
                }},
                "containers": containers,
                "initContainers": containers,
                "ephemeralContainers": containers
            },
            "x-kubernetes-validations": [
                not_true("hostNetwork", "host namespaces are not allowed"),
                not_true("hostPID", "host namespaces are not allowed"),
                not_true("hostIPC", "host namespaces are not allowed"),
                rule("!has(self.nodeName) || self.nodeName == ''", "nodeName: pinning to a node is not allowed")
            ]
        }}
    })
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TargetStatus {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// The effective tool-name prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// Number of tools the upstream advertised, as last reported by a dataplane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<i32>,
    /// The digest of each tool definition the upstream advertised, as last reported by a
    /// dataplane: what `mcp.reflow.io/approve-tools` turns into `spec.toolPinning.pins`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 512))]
    pub tool_digests: Vec<ToolDigest>,
}
