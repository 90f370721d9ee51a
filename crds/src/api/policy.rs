//! `Policy`: who may use which tools, resources and prompts of the Targets it selects in its own
//! namespace. Default deny; highest priority wins; at equal priority deny wins.

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::{LocalRef, ObjectStatus};

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp.reflow.io",
    version = "v1alpha1",
    kind = "Policy",
    namespaced,
    status = "ObjectStatus",
    shortname = "mcpp",
    category = "reflow",
    printcolumn(name = "Effect", type_ = "string", json_path = ".spec.effect"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(name = "Target", type_ = "string", json_path = ".spec.targetRef.name"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("has(self.targetRef) != has(self.targetSelector)").message("exactly one of targetRef and targetSelector must be set"))]
#[serde(rename_all = "camelCase")]
pub struct PolicySpec {
    /// The Target (same namespace) this policy applies to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<LocalRef>,
    /// Targets (same namespace) selected by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
    #[schemars(length(min = 1, max = 256))]
    pub subjects: Vec<Subject>,
    #[schemars(length(min = 1, max = 256))]
    pub rules: Vec<PolicyRule>,
    pub effect: Effect,
    /// Higher wins. At equal priority, deny wins.
    #[serde(default)]
    #[schemars(range(min = -1000, max = 1000))]
    pub priority: i32,
    /// Allow policies only: how often each caller may use what this policy allows, on each
    /// dataplane (a token bucket per replica, like Envoy's local rate limit).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
}

/// `requests` per `interval`, refilled continuously, with up to `burst` at once. Counted per
/// caller (user) and, with `per: tool`, per tool; on each dataplane replica separately.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct RateLimit {
    #[schemars(range(min = 1, max = 1_000_000))]
    pub requests: u32,
    /// `<n>s`, `<n>m` or `<n>h`, from 1s to 24h.
    #[schemars(length(min = 2, max = 16))]
    pub interval: String,
    /// Calls admitted at once after a quiet period; defaults to `requests`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub burst: Option<u32>,
    /// One bucket per caller and tool (`tool`, the default) or per caller and Target (`target`).
    #[serde(default)]
    pub per: RateLimitScope,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum RateLimitScope {
    #[default]
    Tool,
    Target,
}

/// Who a policy applies to: exactly one of `user`, `group`, `role`, or `everyone: true`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash, Default)]
#[x_kube(validation = Rule::new("(has(self.user) ? 1 : 0) + (has(self.group) ? 1 : 0) + (has(self.role) ? 1 : 0) + (has(self.everyone) && self.everyone ? 1 : 0) == 1").message("a subject names exactly one of user, group, role, or everyone: true"))]
pub struct Subject {
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
    pub everyone: Option<bool>,
}

/// Names of one kind, as anchored globs: `*` any run of characters, `?` one character,
/// `[a-z]` / `[!x]` classes, `\` escapes. `github_*` matches `github_x`, never `my_github_x`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
pub struct PolicyRule {
    #[serde(default)]
    pub kind: RuleKind,
    /// Tool and prompt names (unprefixed, as the upstream names them) or resource URIs.
    #[schemars(length(min = 1, max = 1024))]
    pub names: Vec<String>,
    /// A CEL condition over `user`, `groups`, `roles`, `claims`, `kind`, `name`, `tool`,
    /// `resource`, `prompt`, `args`, `target` and `now`: the rule applies only when it is true.
    /// An Allow whose condition fails to evaluate does not apply; a Deny does.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 4096))]
    pub when: Option<String>,
}

#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    Default,
    PartialOrd,
    Ord,
)]
#[serde(rename_all = "camelCase")]
pub enum RuleKind {
    #[default]
    All,
    Tool,
    Resource,
    Prompt,
}

#[derive(
    schemars::JsonSchema,
    Serialize,
    Deserialize,
    Clone,
    Copy,
    Debug,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
)]
pub enum Effect {
    // Deny sorts first: at equal priority it wins.
    Deny,
    Allow,
}
