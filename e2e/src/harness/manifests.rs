//! Rendered Kubernetes manifests (from `helm template` or `kubectl kustomize`) as JSON values,
//! with the lookups the deploy tests need: by kind, by kind and name, pod templates.

use serde::Deserialize;
use serde_json::Value;

use super::error::{HarnessError, Result};

/// Kinds whose objects carry a pod template at `spec.template`.
pub const WORKLOAD_KINDS: [&str; 4] = ["Deployment", "StatefulSet", "DaemonSet", "Job"];

/// Every object of a multi-document YAML stream (empty documents skipped).
#[derive(Debug, Clone)]
pub struct Manifests {
    pub objects: Vec<Value>,
}

impl Manifests {
    pub fn parse(yaml: &str) -> Result<Self> {
        let mut objects = Vec::new();
        for doc in serde_yaml::Deserializer::from_str(yaml) {
            let value = Value::deserialize(doc)
                .map_err(|e| HarnessError::Other(format!("rendered YAML does not parse: {e}")))?;
            match value {
                Value::Null => {}
                Value::Object(_) => objects.push(value),
                other => {
                    return Err(HarnessError::Other(format!(
                        "a rendered document is not an object: {other}"
                    )));
                }
            }
        }
        Ok(Self { objects })
    }

    pub fn of_kind<'a, 'k>(
        &'a self,
        kind: &'k str,
    ) -> impl Iterator<Item = &'a Value> + use<'a, 'k> {
        self.objects.iter().filter(move |o| o["kind"] == kind)
    }

    pub fn count(&self, kind: &str) -> usize {
        self.of_kind(kind).count()
    }

    /// The object of `kind` named `name`; panics with the kinds present when missing, so a
    /// failing test says what it found.
    pub fn get(&self, kind: &str, name: &str) -> &Value {
        self.of_kind(kind)
            .find(|o| o["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("no {kind} {name}; rendered: {:?}", self.names()))
    }

    /// The object of `kind` whose name starts with `prefix` (kustomize adds hash suffixes).
    pub fn get_prefixed(&self, kind: &str, prefix: &str) -> &Value {
        self.of_kind(kind)
            .find(|o| {
                o["metadata"]["name"]
                    .as_str()
                    .is_some_and(|n| n.starts_with(prefix))
            })
            .unwrap_or_else(|| panic!("no {kind} {prefix}*; rendered: {:?}", self.names()))
    }

    /// `Kind/name` of every object.
    pub fn names(&self) -> Vec<String> {
        self.objects
            .iter()
            .map(|o| {
                format!(
                    "{}/{}",
                    o["kind"].as_str().unwrap_or("?"),
                    o["metadata"]["name"].as_str().unwrap_or("?")
                )
            })
            .collect()
    }

    /// The first container's args of Deployment `name`.
    pub fn container_args(&self, deployment: &str) -> Vec<String> {
        strings(&self.get("Deployment", deployment)["spec"]["template"]["spec"]["containers"][0]["args"])
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    /// A pod-template annotation of Deployment `name`; panics when absent.
    pub fn pod_annotation(&self, deployment: &str, key: &str) -> &str {
        self.get("Deployment", deployment)["spec"]["template"]["metadata"]["annotations"][key]
            .as_str()
            .unwrap_or_else(|| panic!("{deployment} has no {key} annotation"))
    }

    /// `(workload name, pod spec)` of every workload.
    pub fn pod_specs(&self) -> Vec<(String, &Value)> {
        self.objects
            .iter()
            .filter(|o| WORKLOAD_KINDS.iter().any(|k| o["kind"] == *k))
            .map(|o| {
                (
                    format!(
                        "{}/{}",
                        o["kind"].as_str().unwrap_or("?"),
                        o["metadata"]["name"].as_str().unwrap_or("?")
                    ),
                    &o["spec"]["template"]["spec"],
                )
            })
            .collect()
    }
}

/// The strings of a JSON array (empty when it is not one).
pub fn strings(v: &Value) -> Vec<&str> {
    v.as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}
