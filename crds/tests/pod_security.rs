//! Issue #17: a `kubernetes` Target's pod template may not ask for the host. Each forbidden field
//! is refused twice: by the CRD's CEL at admission and by the compiler (standalone mode, and the
//! controller's snapshot), which names the field in the Target's `Accepted=False` condition.

use kube::core::cel::validate_cel;
use reflow_crds::api::Target;
use reflow_crds::compile::{ACCEPTED, ObjectKind};
use reflow_crds::loader::{Loaded, load_str};
use reflow_crds::{SealingKey, compile};

/// (template spec in YAML flow style, the field the refusal must name)
const FORBIDDEN: [(&str, &str); 10] = [
    (
        "{hostNetwork: true, containers: [{name: s, image: i}]}",
        "hostNetwork",
    ),
    (
        "{hostPID: true, containers: [{name: s, image: i}]}",
        "hostPID",
    ),
    (
        "{hostIPC: true, containers: [{name: s, image: i}]}",
        "hostIPC",
    ),
    (
        "{nodeName: node-1, containers: [{name: s, image: i}]}",
        "nodeName",
    ),
    (
        "{volumes: [{name: root, hostPath: {path: /}}], containers: [{name: s, image: i}]}",
        "hostPath",
    ),
    (
        "{containers: [{name: s, image: i, ports: [{containerPort: 80, hostPort: 80}]}]}",
        "hostPort",
    ),
    (
        "{containers: [{name: s, image: i, securityContext: {privileged: true}}]}",
        "privileged",
    ),
    (
        "{containers: [{name: s, image: i, securityContext: {allowPrivilegeEscalation: true}}]}",
        "allowPrivilegeEscalation",
    ),
    (
        "{containers: [{name: s, image: i, securityContext: {capabilities: {add: [NET_ADMIN]}}}]}",
        "capabilities.add",
    ),
    (
        "{securityContext: {runAsUser: 0}, containers: [{name: s, image: i}]}",
        "runAsUser",
    ),
];

fn target(spec: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: t, namespace: ns}}\n\
         spec: {{transport: kubernetes, pod: {{transport: streamableHttp, template: {{spec: {spec}}}}}}}\n"
    )
}

fn compiled_condition(yaml: &str) -> (bool, String, String) {
    let mut loaded = Loaded::default();
    load_str(std::path::Path::new("t.yaml"), yaml, &mut loaded).expect("loads");
    let c = compile(&loaded.inputs, &SealingKey::from_bytes(&[1; 32])).expect("compiles");
    assert_eq!(c.snapshot.target("ns", "t").is_some(), {
        let r = c.report(ObjectKind::Target, "ns", "t").expect("report");
        r.is_true(ACCEPTED)
    });
    let r = c.report(ObjectKind::Target, "ns", "t").expect("report");
    let a = r.condition(ACCEPTED).expect("Accepted");
    (a.status, a.reason.to_string(), a.message.to_string())
}

#[test]
fn each_host_field_is_refused_by_cel_and_by_the_compiler() {
    for (spec, field) in FORBIDDEN {
        let yaml = target(spec);
        let t: Target = serde_yaml::from_str(&yaml).expect("parses");
        let errors = validate_cel(&t)
            .err()
            .map(|e| e.into_vec())
            .unwrap_or_default();
        assert!(
            errors.iter().any(|e| e.message.contains(field)),
            "CEL lets {field} through: {errors:?}"
        );
        let (accepted, reason, message) = compiled_condition(&yaml);
        assert!(!accepted, "the compiler accepts {field}");
        assert_eq!(reason, "PodTemplateNotRestricted");
        assert!(message.contains(field), "{field} not named in {message:?}");
    }
}

#[test]
fn a_restricted_template_is_accepted_by_both() {
    let yaml = target(
        "{hostNetwork: false, securityContext: {runAsUser: 1000}, volumes: [{name: tmp, emptyDir: {}}], \
         containers: [{name: s, image: i, ports: [{containerPort: 8080}], \
         securityContext: {allowPrivilegeEscalation: false, capabilities: {drop: [ALL]}}}]}",
    );
    let t: Target = serde_yaml::from_str(&yaml).expect("parses");
    assert!(validate_cel(&t).is_ok(), "{:?}", validate_cel(&t));
    let (accepted, reason, message) = compiled_condition(&yaml);
    assert!(accepted, "{reason}: {message}");
}
