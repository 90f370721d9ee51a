//! `TokenRevocation`: gateway API tokens that must stop working everywhere, by token id (`jti`)
//! or by subject (every token of a user issued before a time). Compiled into the snapshot, so a
//! revocation reaches every dataplane with the next push and survives a controller outage in
//! each dataplane's sealed snapshot cache.
//!
//! Cluster-scoped on purpose: a revocation refuses tokens on every Target, so writing one is a
//! gateway-admin action (a ClusterRole), never something a namespace tenant can do to others.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::common::ObjectStatus;

#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "mcp.reflow.io",
    version = "v1alpha1",
    kind = "TokenRevocation",
    status = "ObjectStatus",
    shortname = "mcprev",
    category = "reflow",
    printcolumn(name = "Reason", type_ = "string", json_path = ".spec.reason"),
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
#[x_kube(validation = Rule::new("size(self.tokenIds) + size(self.subjects) > 0").message("a TokenRevocation names at least one token id or subject"))]
#[serde(rename_all = "camelCase")]
pub struct TokenRevocationSpec {
    /// Token ids (`jti` claims) refused from now on.
    #[serde(default)]
    #[schemars(length(max = 4096))]
    #[x_kube(validation = Rule::new("self.all(j, size(j) > 0 && size(j) <= 256)").message("token ids are 1 to 256 characters"))]
    pub token_ids: Vec<String>,
    /// Users whose tokens issued before a time are refused (e.g. after a laptop was lost).
    #[serde(default)]
    #[schemars(length(max = 1024))]
    pub subjects: Vec<RevokedSubject>,
    /// Why, for the people reading `kubectl get mcprev`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub reason: Option<String>,
}

/// Every token of `user` (the mapped identity, after claim prefixes) whose `iat` is before
/// `issuedBefore` is refused; a token without `iat` is refused too, since it cannot show it is
/// newer.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RevokedSubject {
    #[schemars(length(min = 1, max = 256))]
    pub user: String,
    pub issued_before: Time,
}
