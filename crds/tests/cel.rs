//! Client-side evaluation of the CRDs' CEL rules (kube's `validate_cel`, the same
//! `x-kubernetes-validations` the apiserver runs): valid samples pass, each rule's bad case fails
//! with that rule's message.

use std::path::Path;

use kube::CustomResourceExt;
use kube::core::cel::{ValidationErrors, Validator, validate_cel, validate_cel_update};
use reflow_crds::api::{Credential, MCPInstance, Policy, Target};
use reflow_crds::loader;
use serde::de::DeserializeOwned;

fn samples_dir() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/samples")
}

fn obj<T: DeserializeOwned>(yaml: &str) -> T {
    serde_yaml::from_str(yaml).unwrap_or_else(|e| panic!("test object does not parse: {e}\n{yaml}"))
}

fn messages(r: Result<(), ValidationErrors>) -> Vec<String> {
    match r {
        Ok(()) => Vec::new(),
        Err(e) => e.into_vec().into_iter().map(|e| e.message).collect(),
    }
}

/// The object is rejected, by exactly the rule with `message`.
#[track_caller]
fn rejected_with(r: Result<(), ValidationErrors>, message: &str) {
    let got = messages(r);
    assert_eq!(
        got,
        vec![message.to_owned()],
        "expected exactly one failure"
    );
}

#[track_caller]
fn accepted(r: Result<(), ValidationErrors>) {
    let got = messages(r);
    assert!(got.is_empty(), "expected no CEL failures, got {got:?}");
}

fn target(spec: &str) -> Target {
    obj(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: t, namespace: ns}}\nspec: {spec}\n"
    ))
}

fn policy(spec: &str) -> Policy {
    obj(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: p, namespace: ns}}\nspec: {spec}\n"
    ))
}

fn credential(spec: &str) -> Credential {
    obj(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: c, namespace: ns}}\nspec: {spec}\n"
    ))
}

#[test]
fn every_sample_passes_cel() {
    let loaded = loader::load_dir(&samples_dir()).expect("config/samples loads");
    let i = &loaded.inputs;
    assert!(
        !i.targets.is_empty() && !i.policies.is_empty() && !i.credentials.is_empty(),
        "samples contain every kind"
    );
    for t in &i.targets {
        let r = validate_cel(t);
        assert!(r.is_ok(), "Target {:?}: {:?}", t.metadata.name, messages(r));
    }
    for p in &i.policies {
        let r = validate_cel(p);
        assert!(r.is_ok(), "Policy {:?}: {:?}", p.metadata.name, messages(r));
    }
    for c in &i.credentials {
        let r = validate_cel(c);
        assert!(
            r.is_ok(),
            "Credential {:?}: {:?}",
            c.metadata.name,
            messages(r)
        );
    }
}

/// The apiserver sees the manifest as written (fields with defaults omitted, defaults then
/// applied from the schema), not our re-serialized struct: the rules must hold for that too.
#[test]
fn raw_sample_manifests_pass_cel_against_the_crd_schema() {
    let schemas: Vec<(&str, serde_json::Value)> = [
        ("Target", Target::crd()),
        ("Policy", Policy::crd()),
        ("Credential", Credential::crd()),
    ]
    .into_iter()
    .map(|(k, crd)| {
        let s = crd.spec.versions[0]
            .schema
            .clone()
            .unwrap()
            .open_api_v3_schema
            .unwrap();
        (k, serde_json::to_value(s).unwrap())
    })
    .collect();
    let validator = Validator::new();
    let mut checked = 0;
    // The examples an admin edits before applying (config/examples) too.
    let examples = samples_dir().join("../examples");
    let mut files: Vec<_> = [samples_dir(), examples]
        .iter()
        .flat_map(|d| std::fs::read_dir(d).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for doc in serde_yaml::Deserializer::from_str(&text) {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).unwrap();
            let Some(kind) = v.get("kind").and_then(|k| k.as_str()) else {
                continue;
            };
            let Some((_, schema)) = schemas.iter().find(|(k, _)| *k == kind) else {
                continue;
            };
            let r = validator.validate(schema, &v, None);
            assert!(
                r.is_ok(),
                "{}: {kind} {}: {:?}",
                f.display(),
                v["metadata"]["name"],
                messages(r)
            );
            checked += 1;
        }
    }
    assert!(checked >= 8, "checked only {checked} sample objects");
}

#[test]
fn valid_targets_of_every_transport_pass() {
    accepted(validate_cel(&target(
        "{transport: streamableHttp, url: 'https://x.example/mcp'}",
    )));
    accepted(validate_cel(&target(
        "{transport: sse, url: 'http://x/sse'}",
    )));
    accepted(validate_cel(&target("{transport: auto, url: 'http://x'}")));
    accepted(validate_cel(&target(
        "{transport: stdio, command: srv, isolation: perUser}",
    )));
    accepted(validate_cel(&target(
        "{transport: kubernetes, isolation: perGroup, pod: {template: {spec: {containers: [{name: s, image: i}]}}}}",
    )));
}

#[test]
fn http_transport_without_url_is_rejected() {
    for t in ["streamableHttp", "sse", "auto"] {
        rejected_with(
            validate_cel(&target(&format!("{{transport: {t}}}"))),
            "url is required for the streamableHttp, sse and auto transports",
        );
    }
}

#[test]
fn stdio_without_command_is_rejected() {
    rejected_with(
        validate_cel(&target("{transport: stdio}")),
        "command is required for the stdio transport",
    );
}

#[test]
fn kubernetes_without_pod_is_rejected() {
    rejected_with(
        validate_cel(&target("{transport: kubernetes}")),
        "pod is required for the kubernetes transport",
    );
}

#[test]
fn url_with_stdio_is_rejected() {
    rejected_with(
        validate_cel(&target("{transport: stdio, command: srv, url: 'http://x'}")),
        "url is only valid for the streamableHttp, sse and auto transports",
    );
}

#[test]
fn command_or_pod_with_the_wrong_transport_is_rejected() {
    rejected_with(
        validate_cel(&target(
            "{transport: streamableHttp, url: 'http://x', command: srv}",
        )),
        "command is only valid for the stdio transport",
    );
    rejected_with(
        validate_cel(&target(
            "{transport: stdio, command: srv, pod: {template: {}}}",
        )),
        "pod is only valid for the kubernetes transport",
    );
}

#[test]
fn non_http_url_is_rejected() {
    for url in [
        "ftp://x/mcp",
        "x.example/mcp",
        "file:///etc/passwd",
        "HTTP//x",
    ] {
        rejected_with(
            validate_cel(&target(&format!(
                "{{transport: streamableHttp, url: '{url}'}}"
            ))),
            "url must be an http:// or https:// URL",
        );
    }
}

#[test]
fn per_identity_isolation_on_an_http_target_is_rejected() {
    for iso in ["perUser", "perGroup", "perRole"] {
        rejected_with(
            validate_cel(&target(&format!(
                "{{transport: streamableHttp, url: 'http://x', isolation: {iso}}}"
            ))),
            "per-identity isolation needs a process to isolate: use the stdio or kubernetes transport",
        );
    }
}

const RULES: &str = "rules: [{kind: tool, names: ['*']}], effect: Allow";

#[test]
fn policy_with_target_ref_or_selector_passes() {
    accepted(validate_cel(&policy(&format!(
        "{{targetRef: {{name: t}}, subjects: [{{user: a}}], {RULES}}}"
    ))));
    accepted(validate_cel(&policy(&format!(
        "{{targetSelector: {{matchLabels: {{a: b}}}}, subjects: [{{everyone: true}}], {RULES}}}"
    ))));
}

#[test]
fn policy_with_both_target_ref_and_selector_is_rejected() {
    rejected_with(
        validate_cel(&policy(&format!(
            "{{targetRef: {{name: t}}, targetSelector: {{matchLabels: {{a: b}}}}, subjects: [{{user: a}}], {RULES}}}"
        ))),
        "exactly one of targetRef and targetSelector must be set",
    );
}

#[test]
fn policy_with_neither_target_ref_nor_selector_is_rejected() {
    rejected_with(
        validate_cel(&policy(&format!("{{subjects: [{{user: a}}], {RULES}}}"))),
        "exactly one of targetRef and targetSelector must be set",
    );
}

#[test]
fn policy_subject_must_name_exactly_one_field() {
    const MSG: &str = "a subject names exactly one of user, group, role, or everyone: true";
    for subject in [
        "{user: a, group: b}",
        "{role: r, everyone: true}",
        "{}",
        "{everyone: false}",
    ] {
        rejected_with(
            validate_cel(&policy(&format!(
                "{{targetRef: {{name: t}}, subjects: [{subject}], {RULES}}}"
            ))),
            MSG,
        );
    }
    for subject in ["{user: a}", "{group: g}", "{role: r}", "{everyone: true}"] {
        accepted(validate_cel(&policy(&format!(
            "{{targetRef: {{name: t}}, subjects: [{subject}], {RULES}}}"
        ))));
    }
}

const SECRET: &str = "secretKeyRef: {name: s, key: k}";

#[test]
fn credential_without_headers_or_env_is_rejected() {
    rejected_with(
        validate_cel(&credential("{targetRef: {name: t}, subject: {user: a}}")),
        "a Credential injects at least one header or env var",
    );
    accepted(validate_cel(&credential(&format!(
        "{{targetRef: {{name: t}}, subject: {{user: a}}, env: [{{name: TOKEN, {SECRET}}}]}}"
    ))));
}

#[test]
fn credential_subject_must_name_exactly_one_field() {
    const MSG: &str =
        "a credential subject names exactly one of user, group, role, or default: true";
    for subject in [
        "{default: true, user: a}",
        "{group: g, role: r}",
        "{}",
        "{default: false}",
    ] {
        rejected_with(
            validate_cel(&credential(&format!(
                "{{targetRef: {{name: t}}, subject: {subject}, headers: [{{name: x-token, {SECRET}}}]}}"
            ))),
            MSG,
        );
    }
    accepted(validate_cel(&credential(&format!(
        "{{targetRef: {{name: t}}, subject: {{default: true}}, headers: [{{name: x-token, {SECRET}}}]}}"
    ))));
}

#[test]
fn forbidden_injected_headers_are_rejected() {
    const MSG: &str = "hop-by-hop and MCP protocol headers cannot be injected";
    for h in [
        "host",
        "Host",
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "Mcp-Session-Id",
        "MCP-Protocol-Version",
    ] {
        rejected_with(
            validate_cel(&credential(&format!(
                "{{targetRef: {{name: t}}, subject: {{user: a}}, headers: [{{name: authorization, {SECRET}}}, {{name: {h}, {SECRET}}}]}}"
            ))),
            MSG,
        );
    }
    accepted(validate_cel(&credential(&format!(
        "{{targetRef: {{name: t}}, subject: {{user: a}}, headers: [{{name: Authorization, {SECRET}}}, {{name: X-Host, {SECRET}}}]}}"
    ))));
}

fn instance(target: &str, key: &str) -> MCPInstance {
    obj(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: MCPInstance\nmetadata: {{name: i, namespace: ns}}\nspec: {{targetRef: {{name: {target}}}, isolationKey: {key}}}\n"
    ))
}

#[test]
fn mcp_instance_isolation_key_and_target_are_immutable() {
    let old = instance("github", "user-alice");
    accepted(validate_cel(&old));
    accepted(validate_cel_update(&instance("github", "user-alice"), &old));
    rejected_with(
        validate_cel_update(&instance("github", "user-bob"), &old),
        "isolationKey is immutable",
    );
    rejected_with(
        validate_cel_update(&instance("gitlab", "user-alice"), &old),
        "targetRef is immutable",
    );
    // A credential fingerprint change is allowed: it rolls the pod.
    let mut rolled = instance("github", "user-alice");
    rolled.spec.credential_fingerprint = Some("abc".into());
    accepted(validate_cel_update(&rolled, &old));
}

fn revocation(spec: &str) -> reflow_crds::api::TokenRevocation {
    obj(&format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {{name: r}}\nspec: {spec}\n"
    ))
}

#[test]
fn token_revocation_must_name_something() {
    rejected_with(
        validate_cel(&revocation("{reason: nothing}")),
        "a TokenRevocation names at least one token id or subject",
    );
    rejected_with(
        validate_cel(&revocation("{tokenIds: ['']}")),
        "token ids are 1 to 256 characters",
    );
    accepted(validate_cel(&revocation("{tokenIds: [abc]}")));
    accepted(validate_cel(&revocation(
        "{subjects: [{user: alice, issuedBefore: '2026-11-22T00:00:00Z'}]}",
    )));
}

#[test]
fn url_with_whitespace_or_without_host_is_rejected() {
    for url in ["http://exa mple/mcp", "https:///mcp", "http://x/a b"] {
        rejected_with(
            validate_cel(&target(&format!(
                "{{transport: streamableHttp, url: '{url}'}}"
            ))),
            "url must name a host and contain no whitespace",
        );
    }
    accepted(validate_cel(&target(
        "{transport: streamableHttp, url: 'http://x.example:8080/mcp?a=1#f'}",
    )));
}
