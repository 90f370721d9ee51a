//! What the compiler says about each input object: conditions a person can act on. The
//! controller turns these into status patches; standalone mode logs them.

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum ObjectKind {
    Target,
    Policy,
    Credential,
    /// Cluster-scoped: reported with an empty namespace.
    TokenRevocation,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ConditionReport {
    #[serde(rename = "type")]
    pub type_: String,
    pub status: bool,
    pub reason: String,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectReport {
    pub kind: ObjectKind,
    pub namespace: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub conditions: Vec<ConditionReport>,
    /// An accepted Policy's rate limit, per dataplane (the controller states the fleet-wide
    /// effect in status).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<crate::snapshot::rate_limit::RateSpec>,
}

pub const ACCEPTED: &str = "Accepted";
pub const RESOLVED_REFS: &str = "ResolvedRefs";
pub const CONFLICTED: &str = "Conflicted";
/// On STDIO Targets only: whether their children run sandboxed (False means `sandbox.mode: off`).
pub const SANDBOXED: &str = "Sandboxed";
/// On Policies with a rate limit: what each dataplane admits and what that makes fleet-wide.
pub const RATE_LIMITED: &str = "RateLimited";

impl ObjectReport {
    pub fn new(kind: ObjectKind, namespace: &str, name: &str, generation: Option<i64>) -> Self {
        Self {
            kind,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            generation,
            conditions: Vec::new(),
            rate_limit: None,
        }
    }

    pub fn set(
        &mut self,
        type_: &'static str,
        status: bool,
        reason: &str,
        message: impl Into<String>,
    ) {
        let c = ConditionReport {
            type_: type_.to_owned(),
            status,
            reason: reason.to_owned(),
            message: message.into(),
        };
        match self.conditions.iter_mut().find(|c| c.type_ == type_) {
            Some(existing) => *existing = c,
            None => self.conditions.push(c),
        }
    }

    pub fn condition(&self, type_: &str) -> Option<&ConditionReport> {
        self.conditions.iter().find(|c| c.type_ == type_)
    }

    pub fn is_true(&self, type_: &str) -> bool {
        self.condition(type_).is_some_and(|c| c.status)
    }
}
