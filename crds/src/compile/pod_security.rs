//! What a `kubernetes` Target's `pod.template` may not ask for: the host and privilege fields the
//! Pod Security `restricted` profile forbids. The compiler, the controller and the CRD's CEL agree.

use serde_json::Value;

/// One forbidden field: where it is in the template and why it is refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub path: String,
    pub why: &'static str,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.path, self.why)
    }
}

const HOST_NAMESPACE: &str = "host namespaces are not allowed";
const HOST_PATH: &str = "hostPath volumes are not allowed";
const HOST_PORT: &str = "host ports are not allowed";
const NODE_NAME: &str = "pinning to a node is not allowed";
const PRIVILEGED: &str = "privileged containers are not allowed";
const ESCALATION: &str = "privilege escalation is not allowed";
const CAPABILITIES: &str = "added capabilities are not allowed";
const ROOT: &str = "running as root is not allowed";

fn truthy(v: Option<&Value>) -> bool {
    v.is_some_and(|v| !matches!(v, Value::Null | Value::Bool(false)))
}

/// `runAsUser: 0` or `runAsNonRoot: false` in a (pod or container) securityContext.
fn root(sc: &Value, at: &str, out: &mut Vec<Violation>) {
    if sc.get("runAsUser").and_then(Value::as_i64) == Some(0) {
        out.push(Violation {
            path: format!("{at}.runAsUser"),
            why: ROOT,
        });
    }
    if sc.get("runAsNonRoot") == Some(&Value::Bool(false)) {
        out.push(Violation {
            path: format!("{at}.runAsNonRoot"),
            why: ROOT,
        });
    }
}

fn container(c: &Value, at: &str, out: &mut Vec<Violation>) {
    for (i, port) in c
        .get("ports")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if port.get("hostPort").and_then(Value::as_i64).unwrap_or(0) != 0 {
            out.push(Violation {
                path: format!("{at}.ports[{i}].hostPort"),
                why: HOST_PORT,
            });
        }
    }
    let Some(sc) = c.get("securityContext") else {
        return;
    };
    let at = format!("{at}.securityContext");
    if truthy(sc.get("privileged")) {
        out.push(Violation {
            path: format!("{at}.privileged"),
            why: PRIVILEGED,
        });
    }
    if truthy(sc.get("allowPrivilegeEscalation")) {
        out.push(Violation {
            path: format!("{at}.allowPrivilegeEscalation"),
            why: ESCALATION,
        });
    }
    if sc
        .pointer("/capabilities/add")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        out.push(Violation {
            path: format!("{at}.capabilities.add"),
            why: CAPABILITIES,
        });
    }
    root(sc, &at, out);
}

/// Every forbidden field of a PodTemplateSpec (as JSON), in a stable order; empty when allowed.
pub fn violations(template: &Value) -> Vec<Violation> {
    let mut out = Vec::new();
    let Some(spec) = template.get("spec") else {
        return out;
    };
    for field in ["hostNetwork", "hostPID", "hostIPC"] {
        if truthy(spec.get(field)) {
            out.push(Violation {
                path: format!("spec.{field}"),
                why: HOST_NAMESPACE,
            });
        }
    }
    if spec
        .get("nodeName")
        .and_then(Value::as_str)
        .is_some_and(|n| !n.is_empty())
    {
        out.push(Violation {
            path: "spec.nodeName".into(),
            why: NODE_NAME,
        });
    }
    for (i, v) in spec
        .get("volumes")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
    {
        if v.get("hostPath").is_some() {
            out.push(Violation {
                path: format!("spec.volumes[{i}].hostPath"),
                why: HOST_PATH,
            });
        }
    }
    if let Some(sc) = spec.get("securityContext") {
        root(sc, "spec.securityContext", &mut out);
    }
    for list in ["containers", "initContainers", "ephemeralContainers"] {
        for (i, c) in spec
            .get(list)
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .enumerate()
        {
            container(c, &format!("spec.{list}[{i}]"), &mut out);
        }
    }
    out
}

/// The violations as one sentence for a condition message.
pub fn describe(violations: &[Violation]) -> String {
    let list: Vec<String> = violations.iter().map(ToString::to_string).collect();
    format!(
        "pod.template asks for what Pod Security `restricted` forbids: {}",
        list.join("; ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn paths(t: Value) -> Vec<String> {
        violations(&t).into_iter().map(|v| v.path).collect()
    }

    #[test]
    fn each_host_and_privilege_field_is_named() {
        let t = json!({"spec": {
            "hostNetwork": true, "hostPID": true, "hostIPC": true, "nodeName": "n1",
            "securityContext": {"runAsUser": 0},
            "volumes": [{"name": "ok", "emptyDir": {}}, {"name": "root", "hostPath": {"path": "/"}}],
            "containers": [{"name": "s", "image": "i",
                "ports": [{"containerPort": 80, "hostPort": 80}],
                "securityContext": {"privileged": true, "allowPrivilegeEscalation": true,
                    "capabilities": {"add": ["SYS_ADMIN"]}, "runAsNonRoot": false}}],
            "initContainers": [{"name": "i", "image": "i", "securityContext": {"runAsUser": 0}}]
        }});
        assert_eq!(
            paths(t),
            [
                "spec.hostNetwork",
                "spec.hostPID",
                "spec.hostIPC",
                "spec.nodeName",
                "spec.volumes[1].hostPath",
                "spec.securityContext.runAsUser",
                "spec.containers[0].ports[0].hostPort",
                "spec.containers[0].securityContext.privileged",
                "spec.containers[0].securityContext.allowPrivilegeEscalation",
                "spec.containers[0].securityContext.capabilities.add",
                "spec.containers[0].securityContext.runAsNonRoot",
                "spec.initContainers[0].securityContext.runAsUser",
            ]
        );
    }

    #[test]
    fn a_plain_template_and_explicit_safe_values_pass() {
        let t = json!({"spec": {
            "hostNetwork": false, "hostPID": false, "nodeName": "",
            "securityContext": {"runAsUser": 1000, "runAsNonRoot": true},
            "volumes": [{"name": "tmp", "emptyDir": {}}],
            "containers": [{"name": "s", "image": "i", "ports": [{"containerPort": 8080, "hostPort": 0}],
                "securityContext": {"privileged": false, "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"], "add": []}}}]
        }});
        assert_eq!(paths(t), Vec::<String>::new());
        assert!(violations(&json!({})).is_empty());
    }
}
