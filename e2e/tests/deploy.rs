//! The Helm chart and the kustomize overlays, rendered by the real `helm` and `kubectl kustomize`
//! (installed by the harness from a registry package): kinds and wiring, least-privilege RBAC, a
//! dataplane without API access, restricted pods, lint. Values, secrets and the gateway config
//! are in deploy_config.rs. No cluster involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

use reflow_e2e::harness::manifests::{Manifests, strings};
use reflow_e2e::harness::render::{self, EVERYTHING_VALUES, NAMESPACE as NS, Scratch, tools};
use serde_json::Value;

const RENDER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(120);

fn helm_template(sets: &[&str], files: &[&Path]) -> Manifests {
    render::helm_template(sets, files).unwrap_or_else(|e| panic!("{e}"))
}

fn everything() -> Manifests {
    render::helm_template_everything().unwrap_or_else(|e| panic!("{e}"))
}

fn kustomize(overlay: &str) -> Manifests {
    render::kustomize(overlay).unwrap_or_else(|e| panic!("{e}"))
}

fn secret_value(secret: &Value, key: &str) -> String {
    render::secret_value(secret, key).unwrap_or_else(|e| panic!("{e}"))
}

// ---------------------------------------------------------------- kinds and wiring

#[test]
fn default_render_has_every_component_wired_together() {
    let m = helm_template(&[], &[]);
    for (kind, n) in [
        ("Deployment", 2),
        ("Service", 2),
        ("ServiceAccount", 2),
        ("Secret", 2),
        ("NetworkPolicy", 2),
        ("PodDisruptionBudget", 2),
        ("ClusterRole", 2),
        ("ClusterRoleBinding", 2),
        ("Role", 1),
        ("RoleBinding", 1),
    ] {
        assert_eq!(m.count(kind), n, "{kind}: {:?}", m.names());
    }
    for kind in [
        "Ingress",
        "HTTPRoute",
        "ServiceMonitor",
        "HorizontalPodAutoscaler",
    ] {
        assert_eq!(m.count(kind), 0, "{kind} must be opt-in");
    }
    // CRDs come from chart/crds (installed by helm before the templates), not templates.
    assert_eq!(m.count("CustomResourceDefinition"), 0);

    let controller = m.get("Deployment", "reflow-controller");
    assert_eq!(controller["spec"]["replicas"], 2);
    let args = m.container_args("reflow-controller");
    for want in [
        "--dataplane-namespace=reflow-system",
        "--bridge-image=ghcr.io/reflow-mcp/reflow-dataplane:0.1.0",
        "--lease-name=reflow-controller",
        "--token-file=/etc/reflow/secrets/controller-token",
        "--sealing-key-file=/etc/reflow/secrets/sealing-key",
    ] {
        assert!(
            args.iter().any(|a| a == want),
            "controller args {args:?} lack {want}"
        );
    }
    let dp_args = m.container_args("reflow-dataplane");
    assert!(
        dp_args
            .iter()
            .any(|a| a == "--controller=http://reflow-controller.reflow-system.svc:9090"),
        "{dp_args:?}"
    );
    // Serving is the default command: `serve` with POD_NAME in the env fails to parse.
    assert!(!dp_args.iter().any(|a| a == "serve"), "{dp_args:?}");
    // The controller's MCPInstance NetworkPolicies admit exactly this label.
    let dp = m.get("Deployment", "reflow-dataplane");
    assert_eq!(
        dp["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/name"],
        "reflow-dataplane"
    );
    // Lease holder identity and namespace come from the downward API.
    let env = &controller["spec"]["template"]["spec"]["containers"][0]["env"];
    for var in ["POD_NAME", "POD_NAMESPACE"] {
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e["name"] == var && e["valueFrom"]["fieldRef"].is_object()),
            "{var} missing from {env}"
        );
    }
    // The controller Service exposes the port the dataplanes dial.
    assert_eq!(
        m.get("Service", "reflow-controller")["spec"]["ports"][0]["port"],
        9090
    );
}

#[test]
fn everything_on_renders_ingress_route_monitor_hpa_and_postgres() {
    let m = everything();
    for kind in ["Ingress", "HTTPRoute", "HorizontalPodAutoscaler"] {
        assert_eq!(m.count(kind), 1, "{kind}: {:?}", m.names());
    }
    assert_eq!(m.count("ServiceMonitor"), 2);
    let hpa = m.get("HorizontalPodAutoscaler", "reflow-dataplane");
    assert_eq!(hpa["spec"]["scaleTargetRef"]["name"], "reflow-dataplane");
    assert_eq!(hpa["spec"]["minReplicas"], 3);
    // With an HPA the Deployment leaves replicas to it.
    assert!(
        m.get("Deployment", "reflow-dataplane")["spec"]
            .get("replicas")
            .is_none()
    );

    // Only the MCP endpoint and the protected-resource metadata are public.
    let ingress = m.get("Ingress", "reflow-dataplane");
    let paths: BTreeSet<&str> = ingress["spec"]["rules"][0]["http"]["paths"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["path"].as_str())
        .collect();
    assert_eq!(
        paths,
        BTreeSet::from(["/mcp", "/.well-known/oauth-protected-resource"])
    );
    let route = m.get("HTTPRoute", "reflow-dataplane");
    assert_eq!(route["spec"]["parentRefs"][0]["name"], "public");
    assert_eq!(
        route["spec"]["rules"][0]["backendRefs"][0]["name"],
        "reflow-dataplane"
    );

    let db = m.get("Secret", "reflow-database");
    assert!(secret_value(db, "url").starts_with("postgres://reflow:pw@db.example.com"));
    let dp = m.get("Deployment", "reflow-dataplane");
    let mounts: Vec<&str> = dp["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|v| v["mountPath"].as_str())
        .collect();
    assert!(mounts.contains(&"/etc/reflow/database"), "{mounts:?}");
    assert!(mounts.contains(&"/var/lib/reflow/spill"), "{mounts:?}");
    // Built-in issuer off: its key is not mounted into the dataplane.
    let items = &dp["spec"]["template"]["spec"]["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["name"] == "secrets")
        .unwrap()["secret"]["items"];
    assert!(!items.to_string().contains("token-issuer"), "{items}");
    let env = dp["spec"]["template"]["spec"]["containers"][0]["env"].to_string();
    assert!(
        env.contains("OTEL_EXPORTER_OTLP_ENDPOINT") && env.contains("otel-collector"),
        "{env}"
    );
    // Ingress and route hosts are served (DNS-rebinding protection keeps working).
    let config = secret_value(m.get("Secret", "reflow-dataplane-config"), "gateway.yaml");
    assert!(
        config.contains("mcp.example.com") && config.contains("mcp.example.org"),
        "{config}"
    );
}

#[test]
fn helm_lint_passes_with_default_and_everything_values() {
    let scratch = Scratch::new("lint").expect("scratch");
    let everything = scratch
        .write("values.yaml", EVERYTHING_VALUES)
        .expect("values");
    for files in [vec![], vec![everything.as_path()]] {
        let mut cmd = tools().expect("helm").helm();
        cmd.args(["lint", "--strict"]).arg(render::chart_dir());
        for f in &files {
            cmd.arg("--values").arg(f);
        }
        let out = reflow_e2e::harness::k8s_tools::run_tool("helm lint", &mut cmd, RENDER_TIMEOUT)
            .expect("helm lint runs");
        assert!(
            out.success,
            "helm lint {files:?}:\n{}{}",
            out.stdout, out.stderr
        );
        assert!(out.stdout.contains("0 chart(s) failed"), "{}", out.stdout);
    }
}

// ---------------------------------------------------------------- RBAC

/// `(apiGroup, resource)` → verbs, over every rule of the controller's (Cluster)Roles.
fn controller_grants(m: &Manifests) -> BTreeMap<(String, String), BTreeSet<String>> {
    let mut grants: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for role in m.of_kind("ClusterRole").chain(m.of_kind("Role")) {
        for rule in role["rules"].as_array().into_iter().flatten() {
            for text in strings(&rule["apiGroups"])
                .into_iter()
                .chain(strings(&rule["resources"]))
                .chain(strings(&rule["verbs"]))
            {
                assert!(
                    !text.contains('*'),
                    "wildcard in {}: {rule}",
                    role["metadata"]["name"]
                );
            }
            for g in strings(&rule["apiGroups"]) {
                for r in strings(&rule["resources"]) {
                    grants
                        .entry((g.to_owned(), r.to_owned()))
                        .or_default()
                        .extend(strings(&rule["verbs"]).into_iter().map(str::to_owned));
                }
            }
        }
    }
    grants
}

/// Exactly what the controller's code calls; anything more fails the test.
fn expected_grants() -> BTreeMap<(String, String), BTreeSet<String>> {
    let read = ["get", "list", "watch"];
    let rows: Vec<(&str, &str, Vec<&str>)> = vec![
        // patch: `mcp.reflow.io/approve-tools` becomes `spec.toolPinning.pins` (issue #22).
        (
            "mcp.reflow.io",
            "targets",
            vec!["get", "list", "watch", "patch"],
        ),
        ("mcp.reflow.io", "policies", read.to_vec()),
        // create/patch/delete: users' own grants become user-managed Credentials (issue #21).
        (
            "mcp.reflow.io",
            "credentials",
            vec!["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("mcp.reflow.io", "tokenrevocations", read.to_vec()),
        ("mcp.reflow.io", "targets/status", vec!["patch"]),
        ("mcp.reflow.io", "policies/status", vec!["patch"]),
        ("mcp.reflow.io", "credentials/status", vec!["patch"]),
        ("mcp.reflow.io", "tokenrevocations/status", vec!["patch"]),
        ("mcp.reflow.io", "mcpinstances/status", vec!["patch"]),
        (
            "mcp.reflow.io",
            "mcpinstances",
            vec!["get", "list", "watch", "create", "patch", "delete"],
        ),
        // delete: a user's disconnect removes their grant's Secret (issue #21).
        (
            "",
            "secrets",
            vec!["get", "list", "watch", "create", "patch", "delete"],
        ),
        (
            "",
            "pods",
            vec!["get", "list", "watch", "create", "patch", "delete"],
        ),
        ("", "services", vec!["create", "patch"]),
        (
            "networking.k8s.io",
            "networkpolicies",
            vec!["create", "patch"],
        ),
        ("events.k8s.io", "events", vec!["create", "patch"]),
        (
            "coordination.k8s.io",
            "leases",
            vec!["create", "get", "update", "list", "patch", "delete"],
        ),
    ];
    rows.into_iter()
        .map(|(g, r, v)| {
            (
                (g.to_owned(), r.to_owned()),
                v.into_iter().map(str::to_owned).collect(),
            )
        })
        .collect()
}

fn subjects_of<'a>(
    m: &'a Manifests,
    kind: &'a str,
) -> impl Iterator<Item = (&'a Value, &'a Value)> + 'a {
    m.of_kind(kind).flat_map(|b| {
        b["subjects"]
            .as_array()
            .into_iter()
            .flatten()
            .map(move |s| (b, s))
    })
}

fn assert_dataplane_has_no_api_access(m: &Manifests, what: &str) {
    for kind in ["RoleBinding", "ClusterRoleBinding"] {
        for (binding, subject) in subjects_of(m, kind) {
            let name = subject["name"].as_str().unwrap_or("");
            assert!(
                !name.contains("dataplane"),
                "{what}: {kind} {} binds the dataplane ServiceAccount",
                binding["metadata"]["name"]
            );
        }
    }
    let sa = m
        .of_kind("ServiceAccount")
        .find(|s| {
            s["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("dataplane"))
        })
        .unwrap_or_else(|| panic!("{what}: no dataplane ServiceAccount"));
    assert_eq!(sa["automountServiceAccountToken"], false, "{what}");
    let dp = m
        .of_kind("Deployment")
        .find(|d| {
            d["metadata"]["name"]
                .as_str()
                .is_some_and(|n| n.contains("dataplane"))
        })
        .unwrap();
    assert_eq!(
        dp["spec"]["template"]["spec"]["automountServiceAccountToken"], false,
        "{what}"
    );
    assert_eq!(
        dp["spec"]["template"]["spec"]["serviceAccountName"],
        sa["metadata"]["name"]
    );
}

#[test]
fn controller_rbac_is_exactly_what_the_code_uses() {
    for (what, m) in [
        ("helm default", helm_template(&[], &[])),
        ("helm everything", everything()),
    ] {
        assert_eq!(controller_grants(&m), expected_grants(), "{what}");
        // get/update of the Lease are limited to its name (create cannot be).
        let lease_role = m.get("Role", "reflow-controller-lease");
        for rule in lease_role["rules"].as_array().unwrap() {
            let verbs = strings(&rule["verbs"]);
            if verbs.contains(&"get") || verbs.contains(&"update") {
                assert_eq!(
                    strings(&rule["resourceNames"]),
                    ["reflow-controller"],
                    "{rule}"
                );
            }
        }
        for kind in ["RoleBinding", "ClusterRoleBinding"] {
            for (_, subject) in subjects_of(&m, kind) {
                assert_eq!(subject["name"], "reflow-controller");
                assert_eq!(subject["namespace"], NS);
            }
        }
        assert_dataplane_has_no_api_access(&m, what);
    }
    for overlay in ["dev", "production"] {
        let m = kustomize(overlay);
        assert_eq!(
            controller_grants(&m),
            expected_grants(),
            "kustomize {overlay}"
        );
        assert_dataplane_has_no_api_access(&m, overlay);
    }
}

#[test]
fn watch_namespaces_bind_the_controller_only_there() {
    let m = helm_template(&["controller.watchNamespaces={team-a,team-b}"], &[]);
    let bound: BTreeSet<&str> = m
        .of_kind("RoleBinding")
        .filter(|b| b["roleRef"]["name"] == "reflow-controller")
        .filter_map(|b| b["metadata"]["namespace"].as_str())
        .collect();
    assert_eq!(bound, BTreeSet::from(["team-a", "team-b"]));
    // The namespaced rules are no longer granted cluster-wide; only revocations are.
    let cluster_bound: Vec<&Value> = m
        .of_kind("ClusterRoleBinding")
        .map(|b| &b["roleRef"]["name"])
        .collect();
    assert_eq!(
        cluster_bound,
        [&Value::from("reflow-controller-revocations")]
    );
    let args = m.container_args("reflow-controller");
    assert!(
        args.iter().any(|a| a == "--namespaces=team-a,team-b"),
        "{args:?}"
    );
}

// ---------------------------------------------------------------- pod security

fn assert_restricted(m: &Manifests, what: &str) {
    let pods = m.pod_specs();
    assert!(pods.len() >= 2, "{what}: {:?}", m.names());
    for (name, pod) in pods {
        let psc = &pod["securityContext"];
        assert_eq!(psc["runAsNonRoot"], true, "{what} {name}");
        assert_eq!(
            psc["seccompProfile"]["type"], "RuntimeDefault",
            "{what} {name}"
        );
        assert_ne!(pod["hostNetwork"], true, "{what} {name}");
        assert_ne!(pod["hostPID"], true, "{what} {name}");
        for c in pod["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .chain(pod["initContainers"].as_array().into_iter().flatten())
        {
            let sc = &c["securityContext"];
            let who = format!("{what} {name}/{}", c["name"]);
            assert_eq!(sc["runAsNonRoot"], true, "{who}");
            assert_eq!(sc["readOnlyRootFilesystem"], true, "{who}");
            assert_eq!(sc["allowPrivilegeEscalation"], false, "{who}");
            assert_ne!(sc["privileged"], true, "{who}");
            assert_eq!(strings(&sc["capabilities"]["drop"]), ["ALL"], "{who}");
            assert!(sc["capabilities"].get("add").is_none(), "{who}");
            assert_ne!(sc["runAsUser"], 0, "{who}");
        }
    }
}

#[test]
fn every_pod_runs_under_the_restricted_profile() {
    assert_restricted(&helm_template(&[], &[]), "helm default");
    assert_restricted(&everything(), "helm everything");
    assert_restricted(&kustomize("dev"), "kustomize dev");
    assert_restricted(&kustomize("production"), "kustomize production");
}

// ---------------------------------------------------------------- kustomize

#[test]
fn kustomize_overlays_render_what_each_environment_needs() {
    let dev = kustomize("dev");
    for kind in [
        "Namespace",
        "Deployment",
        "Service",
        "NetworkPolicy",
        "ClusterRole",
    ] {
        assert!(dev.count(kind) >= 1, "dev lacks {kind}: {:?}", dev.names());
    }
    assert!(
        dev.of_kind("Deployment")
            .all(|d| d["spec"]["replicas"] == 1)
    );
    assert_eq!(
        dev.count("PodDisruptionBudget"),
        0,
        "one replica: a PDB would block drains"
    );
    // The JSON patches replace args by index: they must hit the right ones.
    for d in ["reflow-controller", "reflow-dataplane"] {
        let args = dev.container_args(d);
        assert!(
            args.iter().any(|a| a == "--log-format=pretty"),
            "{d}: {args:?}"
        );
        assert!(
            !args
                .iter()
                .any(|a| a == "--log-format=json" || a == "serve"),
            "{d}: {args:?}"
        );
    }
    assert!(
        dev.container_args("reflow-controller")
            .contains(&"--bridge-image=ghcr.io/reflow-mcp/reflow-dataplane:dev".to_owned())
    );
    // Generated Secrets are hash-suffixed and the Deployments follow the new names.
    let secrets = dev.get_prefixed("Secret", "reflow-secrets-")["metadata"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    for d in ["reflow-controller", "reflow-dataplane"] {
        let vols = dev.get("Deployment", d)["spec"]["template"]["spec"]["volumes"].to_string();
        assert!(vols.contains(&format!("\"{secrets}\"")), "{d}: {vols}");
    }
    reflow_crds::SealingKey::from_base64(&secret_value(
        dev.get_prefixed("Secret", "reflow-secrets-"),
        "sealing-key",
    ))
    .expect("dev sealing key");
    assert!(
        dev.objects
            .iter()
            .all(|o| { o["metadata"]["namespace"].is_null() || o["metadata"]["namespace"] == NS })
    );

    let prod = kustomize("production");
    assert_eq!(prod.count("HorizontalPodAutoscaler"), 1);
    assert_eq!(prod.count("Ingress"), 1);
    assert_eq!(prod.count("PodDisruptionBudget"), 2);
    assert_eq!(
        prod.get("Deployment", "reflow-dataplane")["spec"]["replicas"],
        3
    );
    // Production secrets are created outside git: the overlay generates none of them.
    assert!(prod.of_kind("Secret").all(|s| {
        !s["metadata"]["name"]
            .as_str()
            .unwrap()
            .starts_with("reflow-secrets")
    }));
    let items = prod.get("Deployment", "reflow-dataplane")["spec"]["template"]["spec"]["volumes"]
        .to_string();
    assert!(!items.contains("token-issuer"), "{items}");
    assert!(prod.get("Deployment", "reflow-dataplane")["spec"]["template"]["spec"]["topologySpreadConstraints"].is_array());
}
