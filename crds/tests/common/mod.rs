//! Helpers shared by the integration tests: inline manifests → Inputs → Compiled, and accessors
//! for reports, decisions and opened credential values.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::Path;

use reflow_crds::compile::{ConditionReport, ObjectKind};
use reflow_crds::loader::{self, Loaded};
use reflow_crds::snapshot::{CompiledTarget, Decision, ItemKind};
use reflow_crds::{Compiled, Identity, Inputs, SealingKey};
use secrecy::ExposeSecret;

/// A fixed key, so digests (and golden files) are stable.
pub fn key() -> SealingKey {
    let mut raw = [0u8; 32];
    for (i, b) in raw.iter_mut().enumerate() {
        *b = i as u8 * 7 + 3;
    }
    SealingKey::from_bytes(&raw)
}

pub fn inputs(yaml: &str) -> Inputs {
    let mut l = Loaded::default();
    loader::load_str(Path::new("inline.yaml"), yaml, &mut l).expect("inline manifests load");
    assert!(l.skipped.is_empty(), "skipped documents: {:?}", l.skipped);
    l.inputs
}

pub fn compile_with(inputs: &Inputs, key: &SealingKey) -> Compiled {
    reflow_crds::compile(inputs, key).expect("compiles to a snapshot")
}

pub fn compile(yaml: &str) -> Compiled {
    compile_with(&inputs(yaml), &key())
}

pub fn samples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

pub fn id(user: &str, groups: &[&str], roles: &[&str]) -> Identity {
    Identity::new(user, groups.iter().copied(), roles.iter().copied())
}

pub fn target<'c>(c: &'c Compiled, ns: &str, name: &str) -> &'c CompiledTarget {
    c.snapshot
        .target(ns, name)
        .unwrap_or_else(|| panic!("target {ns}/{name} is not in the snapshot"))
}

pub fn decide(
    c: &Compiled,
    ns: &str,
    t: &str,
    who: &Identity,
    kind: ItemKind,
    name: &str,
) -> Decision {
    target(c, ns, t).policy.decide(who, kind, name)
}

pub fn tool_allowed(c: &Compiled, ns: &str, t: &str, who: &Identity, name: &str) -> bool {
    decide(c, ns, t, who, ItemKind::Tool, name).allowed
}

/// The condition `type_` of one object's report.
pub fn cond<'c>(
    c: &'c Compiled,
    kind: ObjectKind,
    ns: &str,
    name: &str,
    type_: &str,
) -> &'c ConditionReport {
    let r = c
        .report(kind, ns, name)
        .unwrap_or_else(|| panic!("no report for {kind:?} {ns}/{name}"));
    r.condition(type_)
        .unwrap_or_else(|| panic!("{kind:?} {ns}/{name} has no {type_} condition: {r:?}"))
}

/// What one caller gets injected on one Target, opened: `header:name` / `env:NAME` → value.
pub fn injected(
    c: &Compiled,
    key: &SealingKey,
    ns: &str,
    t: &str,
    who: &Identity,
) -> BTreeMap<String, String> {
    target(c, ns, t)
        .credentials
        .resolve(who)
        .entries
        .iter()
        .map(|e| {
            let v = key
                .open(&e.entry.aad, &e.entry.value)
                .expect("sealed value opens in its slot");
            (
                format!("{}:{}", e.entry.inject_as.as_str(), e.entry.name),
                v.expose_secret().to_owned(),
            )
        })
        .collect()
}

/// Which Credential each injected key came from.
pub fn sources(c: &Compiled, ns: &str, t: &str, who: &Identity) -> BTreeMap<String, String> {
    target(c, ns, t)
        .credentials
        .resolve(who)
        .entries
        .iter()
        .map(|e| {
            (
                format!("{}:{}", e.entry.inject_as.as_str(), e.entry.name),
                e.credential.to_string(),
            )
        })
        .collect()
}

// ---- manifest builders -------------------------------------------------------------------------

pub fn http_target(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{transport: streamableHttp, url: 'http://{name}.example/mcp'}}\n---\n"
    )
}

pub fn target_doc(ns: &str, name: &str, labels: &str, spec: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: {ns}, labels: {{{labels}}}}}\nspec: {spec}\n---\n"
    )
}

pub fn policy_doc(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

pub fn credential_doc(ns: &str, name: &str, spec: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {spec}\n---\n"
    )
}

/// A Secret with `stringData`; values are written as JSON strings (valid YAML double-quoted
/// scalars), so control characters survive.
pub fn secret_doc(ns: &str, name: &str, data: &[(&str, &str)]) -> String {
    let entries: Vec<String> = data
        .iter()
        .map(|(k, v)| format!("{k}: {}", serde_json::to_string(v).unwrap()))
        .collect();
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: {ns}}}\nstringData: {{{}}}\n---\n",
        entries.join(", ")
    )
}

/// Every plaintext value of every Secret in `inputs` (stringData and data).
pub fn secret_values(inputs: &Inputs) -> Vec<String> {
    let mut out = Vec::new();
    for s in &inputs.secrets {
        for v in s.string_data.iter().flat_map(|d| d.values()) {
            out.push(v.clone());
        }
        for v in s.data.iter().flat_map(|d| d.values()) {
            if let Ok(t) = String::from_utf8(v.0.clone()) {
                out.push(t);
            }
        }
    }
    out
}
