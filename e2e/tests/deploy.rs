//! The Helm chart and the kustomize overlays, rendered by the real `helm` and `kubectl kustomize`
//! (installed by the harness from a registry package): kinds, least-privilege RBAC, a dataplane
//! without API access, restricted pods, checksums, generated secrets, the values schema, lint, the
//! CRD copies, and the gateway config the dataplane's own loader must accept. No cluster involved.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use reflow_dataplane::config::{AuditTarget, Config};
use reflow_dataplane::identity_token::IdentitySigner;
use reflow_e2e::harness::k8s_tools::{ToolOutput, run_tool};
use reflow_e2e::harness::manifests::{Manifests, strings};
use reflow_e2e::harness::{K8sTools, k8s_tools, paths};
use serde_json::Value;

const NS: &str = "reflow-system";
const RELEASE: &str = "reflow";
const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// Everything optional switched on.
const EVERYTHING: &str = r#"
postgres:
  enabled: true
  url: postgres://reflow:pw@db.example.com:5432/reflow?sslmode=require
  auditFailurePolicy: failClosed
ingress:
  enabled: true
  className: nginx
  hosts: [{host: mcp.example.com}]
  tls: [{secretName: mcp-tls, hosts: [mcp.example.com]}]
httpRoute:
  enabled: true
  parentRefs: [{name: public, namespace: gateway-system}]
  hostnames: [mcp.example.org]
serviceMonitor:
  enabled: true
dataplane:
  autoscaling: {enabled: true, minReplicas: 3, maxReplicas: 12}
auth:
  builtinIssuer: {enabled: false}
  issuers:
    - issuer: https://idp.example.com/realms/eng
      audiences: [reflow]
      discovery: true
      claims: {user: preferred_username, roles: realm_access.roles}
  settings: {leewaySeconds: 10}
otel:
  endpoint: http://otel-collector.observability:4317
"#;

fn tools() -> &'static K8sTools {
    static TOOLS: OnceLock<K8sTools> = OnceLock::new();
    TOOLS.get_or_init(|| k8s_tools().expect("helm and kubectl from the kubectl layer package"))
}

fn root() -> PathBuf {
    paths::workspace_root()
}

fn chart() -> PathBuf {
    root().join("chart")
}

/// A scratch folder under the e2e cache, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let dir = paths::cache_dir()
            .join("deploy-scratch")
            .join(format!("{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch dir");
        Self(dir)
    }

    /// Writes `content` to `rel` inside the folder and returns its path.
    fn write(&self, rel: &str, content: &str) -> PathBuf {
        let path = self.0.join(rel);
        std::fs::create_dir_all(path.parent().expect("has a parent")).expect("scratch subdir");
        std::fs::write(&path, content).expect("scratch write");
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `helm template` with `--set` pairs and values files; the raw outcome (to test failures).
fn helm_template_raw(sets: &[&str], files: &[&Path]) -> ToolOutput {
    let mut cmd = tools().helm();
    cmd.args(["template", RELEASE])
        .arg(chart())
        .args(["--namespace", NS]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    for f in files {
        cmd.arg("--values").arg(f);
    }
    run_tool("helm template", &mut cmd, RENDER_TIMEOUT).expect("helm runs")
}

fn helm_template(sets: &[&str], files: &[&Path]) -> Manifests {
    let out = helm_template_raw(sets, files);
    assert!(
        out.success,
        "helm template {sets:?} failed:\n{}",
        out.stderr
    );
    Manifests::parse(&out.stdout).expect("helm output parses")
}

fn everything() -> Manifests {
    let scratch = Scratch::new("everything");
    helm_template(&[], &[&scratch.write("values.yaml", EVERYTHING)])
}

fn kustomize(overlay: &str) -> Manifests {
    let dir = root().join("kustomize/overlays").join(overlay);
    let mut cmd = tools().kubectl();
    cmd.arg("kustomize").arg(&dir);
    let out = run_tool("kubectl kustomize", &mut cmd, RENDER_TIMEOUT).expect("kubectl runs");
    assert!(
        out.success,
        "kubectl kustomize {overlay} failed:\n{}",
        out.stderr
    );
    Manifests::parse(&out.stdout).expect("kustomize output parses")
}

fn deployment_args(m: &Manifests, name: &str) -> Vec<String> {
    strings(&m.get("Deployment", name)["spec"]["template"]["spec"]["containers"][0]["args"])
        .into_iter()
        .map(str::to_owned)
        .collect()
}

fn annotation<'a>(m: &'a Manifests, deployment: &str, key: &str) -> &'a str {
    m.get("Deployment", deployment)["spec"]["template"]["metadata"]["annotations"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{deployment} has no {key} annotation"))
}

fn secret_value(secret: &Value, key: &str) -> String {
    use base64::Engine;
    if let Some(s) = secret["stringData"][key].as_str() {
        return s.to_owned();
    }
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("secret has no {key}"));
    // kustomize folds long values over several lines.
    let b64: String = b64.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .expect("secret data is base64");
    String::from_utf8(bytes).expect("secret value is UTF-8")
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
    let args = deployment_args(&m, "reflow-controller");
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
    let dp_args = deployment_args(&m, "reflow-dataplane");
    assert!(
        dp_args
            .iter()
            .any(|a| a == "--controller=http://reflow-controller.reflow-system.svc:9090"),
        "{dp_args:?}"
    );
    assert_eq!(dp_args[0], "serve");
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
    let scratch = Scratch::new("lint");
    let everything = scratch.write("values.yaml", EVERYTHING);
    for files in [vec![], vec![everything.as_path()]] {
        let mut cmd = tools().helm();
        cmd.args(["lint", "--strict"]).arg(chart());
        for f in &files {
            cmd.arg("--values").arg(f);
        }
        let out = run_tool("helm lint", &mut cmd, RENDER_TIMEOUT).expect("helm lint runs");
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
        ("mcp.reflow.io", "targets", read.to_vec()),
        ("mcp.reflow.io", "policies", read.to_vec()),
        ("mcp.reflow.io", "credentials", read.to_vec()),
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
        (
            "",
            "secrets",
            vec!["get", "list", "watch", "create", "patch"],
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
            vec!["create", "get", "update"],
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
    let args = deployment_args(&m, "reflow-controller");
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

// ---------------------------------------------------------------- secrets and checksums

const KEY_A: &str = "secrets.sealingKey=AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
const KEY_B: &str = "secrets.sealingKey=HyAhIiMkJSYnKCkqKywtLi8wMTIzNDU2Nzg5Ojs8PT4=";
const TOKEN: &str = "secrets.controllerToken=0123456789abcdef0123456789abcdef";
const ISSUER: &str = "secrets.tokenIssuerSecret=issuer-secret-of-at-least-32-bytes-long";

/// A fixed identity signing key (a PEM does not fit `--set`).
const IDENTITY_KEY_VALUES: &str = "secrets:
  identitySigningKey: |
    -----BEGIN PRIVATE KEY-----
    MC4CAQAwBQYDK2VwBCIEIFY34lKlNROLQKboFKXYe4pKfySg03CmRUZ2zljNoKJX
    -----END PRIVATE KEY-----
";

#[test]
fn checksums_change_exactly_when_what_they_cover_changes() {
    // Every generated value given, so renders are comparable.
    let scratch = Scratch::new("checksums");
    let fixed = scratch.write("fixed.yaml", IDENTITY_KEY_VALUES);
    let fixed = [fixed.as_path()];
    let a1 = helm_template(&[KEY_A, TOKEN, ISSUER], &fixed);
    let a2 = helm_template(&[KEY_A, TOKEN, ISSUER], &fixed);
    let b = helm_template(&[KEY_B, TOKEN, ISSUER], &fixed);
    let hosts = helm_template(
        &[
            KEY_A,
            TOKEN,
            ISSUER,
            "dataplane.gateway.allowedHosts={mcp.example.net}",
        ],
        &fixed,
    );
    for d in ["reflow-controller", "reflow-dataplane"] {
        assert_eq!(
            annotation(&a1, d, "checksum/secrets"),
            annotation(&a2, d, "checksum/secrets"),
            "{d}"
        );
        assert_ne!(
            annotation(&a1, d, "checksum/secrets"),
            annotation(&b, d, "checksum/secrets"),
            "{d}"
        );
    }
    // Both Deployments see the same secret values (computed once per render).
    assert_eq!(
        annotation(&a1, "reflow-controller", "checksum/secrets"),
        annotation(&a1, "reflow-dataplane", "checksum/secrets")
    );
    assert_eq!(
        annotation(&a1, "reflow-dataplane", "checksum/config"),
        annotation(&b, "reflow-dataplane", "checksum/config")
    );
    assert_ne!(
        annotation(&a1, "reflow-dataplane", "checksum/config"),
        annotation(&hosts, "reflow-dataplane", "checksum/config")
    );
    assert_eq!(
        annotation(&a1, "reflow-dataplane", "checksum/secrets"),
        annotation(&hosts, "reflow-dataplane", "checksum/secrets")
    );
    // The given values are the ones in the Secret.
    let s = a1.get("Secret", "reflow-secrets");
    assert_eq!(
        secret_value(s, "sealing-key"),
        KEY_A.split_once('=').unwrap().1
    );
    assert_eq!(
        secret_value(s, "controller-token"),
        TOKEN.split_once('=').unwrap().1
    );
    // A database URL change rolls the dataplanes too.
    let pg = |url: &str| {
        let m = helm_template(
            &["postgres.enabled=true", &format!("postgres.url={url}")],
            &[],
        );
        annotation(&m, "reflow-dataplane", "checksum/database").to_owned()
    };
    assert_ne!(pg("postgres://a@db/x"), pg("postgres://b@db/x"));
}

#[test]
fn secrets_left_empty_are_generated_and_usable() {
    let m = helm_template(&[], &[]);
    let s = m.get("Secret", "reflow-secrets");
    assert_eq!(
        s["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    let key = secret_value(s, "sealing-key");
    reflow_crds::SealingKey::from_base64(&key).expect("generated sealing key is 32 base64 bytes");
    assert!(secret_value(s, "controller-token").len() >= 32);
    assert!(secret_value(s, "token-issuer").len() >= 32);
    assert!(secret_value(s, "identity-signing-key").starts_with("-----BEGIN PRIVATE KEY-----"));
    // Random per install (upgrades keep them through `lookup`, which needs a cluster).
    let other = helm_template(&[], &[]);
    assert_ne!(
        key,
        secret_value(other.get("Secret", "reflow-secrets"), "sealing-key")
    );

    // A Secret of one's own: the chart creates none and mounts that one.
    let own = helm_template(&["secrets.existingSecret=my-reflow-secrets"], &[]);
    assert!(
        own.of_kind("Secret")
            .all(|s| s["metadata"]["name"] != "reflow-secrets")
    );
    for d in ["reflow-controller", "reflow-dataplane"] {
        let vols = own.get("Deployment", d)["spec"]["template"]["spec"]["volumes"].to_string();
        assert!(vols.contains("my-reflow-secrets"), "{d}: {vols}");
    }
}

// ---------------------------------------------------------------- the gateway config

/// Loads a rendered gateway.yaml with the dataplane's own loader, its `/etc/reflow/…` paths
/// moved into a scratch folder holding the files the pod would have mounted.
fn load_gateway_config(yaml: &str, files: &[(&str, &str)], name: &str) -> Config {
    let scratch = Scratch::new(&format!("config-{name}"));
    let text = yaml.replace("/etc/reflow/", &format!("{}/", scratch.0.display()));
    for (path, content) in files {
        scratch.write(path, content);
    }
    let path = scratch.write("config/gateway.yaml", &text);
    let config = Config::load(&path)
        .unwrap_or_else(|e| panic!("{name}: the dataplane refuses its config: {e}\n{text}"));
    // Read lazily by the dataplane, so checked while the files exist.
    let key = config.sealing_key(None);
    assert!(matches!(key, Ok(Some(_))), "{name}: sealing key {key:?}");
    // Every replica signs forwarded identities with the one key from the Secret.
    let signer = IdentitySigner::from_config(
        &config.gateway.identity_tokens,
        config.gateway.public_url.as_deref(),
    )
    .unwrap_or_else(|e| panic!("{name}: identity signing key: {e}"));
    assert!(!signer.ephemeral, "{name}: no shared identity signing key");
    config
}

fn secret_files(m: &Manifests) -> Vec<(String, String)> {
    let s = m.get("Secret", "reflow-secrets");
    SHARED_KEYS
        .iter()
        .map(|k| (format!("secrets/{k}"), secret_value(s, k)))
        .collect()
}

/// Keys of the shared Secret.
const SHARED_KEYS: [&str; 4] = [
    "sealing-key",
    "controller-token",
    "token-issuer",
    "identity-signing-key",
];

#[test]
fn rendered_gateway_configs_are_accepted_by_the_dataplane() {
    let m = helm_template(&[], &[]);
    let files = secret_files(&m);
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let yaml = secret_value(m.get("Secret", "reflow-dataplane-config"), "gateway.yaml");
    let config = load_gateway_config(&yaml, &refs, "default");
    let dev = config.require_dev().expect("built-in issuer");
    assert_eq!(dev.issuer, "reflow");
    assert!(
        config
            .gateway
            .allowed_hosts
            .contains(&"reflow-dataplane.reflow-system.svc".to_owned())
    );
    assert!(config.database.is_none());

    let m = everything();
    let yaml = secret_value(m.get("Secret", "reflow-dataplane-config"), "gateway.yaml");
    let mut files = secret_files(&m);
    files.push((
        "database/url".into(),
        secret_value(m.get("Secret", "reflow-database"), "url"),
    ));
    files.retain(|(path, _)| path != "secrets/token-issuer");
    let refs: Vec<(&str, &str)> = files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let config = load_gateway_config(&yaml, &refs, "everything");
    assert!(config.dev.is_none(), "built-in issuer is off");
    let auth = config.require_auth().expect("OIDC issuer");
    assert_eq!(auth.issuers.len(), 1);
    assert_eq!(auth.leeway_seconds, 10);
    assert!(config.database.is_some());
    match &config.audit.target {
        AuditTarget::Postgres(pg) => assert_eq!(pg.spill_dir.file_name().unwrap(), "spill"),
        other => panic!("audit goes to {other:?}"),
    }

    // The kustomize overlays' configs, with the files their Secrets provide.
    let dev = kustomize("dev");
    let dev_files = secret_files_prefixed(&dev);
    let refs: Vec<(&str, &str)> = dev_files
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let yaml = secret_value(
        dev.get_prefixed("Secret", "reflow-dataplane-config-"),
        "gateway.yaml",
    );
    load_gateway_config(&yaml, &refs, "kustomize-dev")
        .require_dev()
        .expect("dev issuer");
    let prod = kustomize("production");
    let yaml = secret_value(
        prod.get_prefixed("Secret", "reflow-dataplane-config-"),
        "gateway.yaml",
    );
    let pem =
        std::fs::read_to_string(root().join("kustomize/overlays/dev/identity-signing-key.pem"))
            .expect("dev identity key");
    let config = load_gateway_config(
        &yaml,
        &[
            ("secrets/sealing-key", KEY_A.split_once('=').unwrap().1),
            ("secrets/identity-signing-key", &pem),
        ],
        "kustomize-prod",
    );
    assert!(config.dev.is_none());
    assert!(
        config.warnings(false).is_empty(),
        "production config warns: {:?}",
        config.warnings(false)
    );
}

fn secret_files_prefixed(m: &Manifests) -> Vec<(String, String)> {
    let s = m.get_prefixed("Secret", "reflow-secrets-");
    SHARED_KEYS
        .iter()
        .map(|k| (format!("secrets/{k}"), secret_value(s, k)))
        .collect()
}

// ---------------------------------------------------------------- schema and CRDs

#[test]
fn values_schema_rejects_bad_values() {
    for (set, complaint) in [
        ("controller.replicas=two", "/controller/replicas"),
        ("logFormat=yaml", "/logFormat"),
        ("noSuchKey=1", "noSuchKey"),
        ("secrets.sealingKey=too-short", "/secrets/sealingKey"),
        (
            "dataplane.image.pullPolicy=Sometimes",
            "/dataplane/image/pullPolicy",
        ),
        (
            "postgres.auditFailurePolicy=ignore",
            "/postgres/auditFailurePolicy",
        ),
    ] {
        let out = helm_template_raw(&[set], &[]);
        assert!(!out.success, "{set} was accepted");
        assert!(out.stderr.contains(complaint), "{set}: {}", out.stderr);
    }
    // Rules a schema cannot say are checked by the templates.
    let out = helm_template_raw(&["auth.builtinIssuer.enabled=false"], &[]);
    assert!(
        !out.success && out.stderr.contains("auth.issuers"),
        "{}",
        out.stderr
    );
    let out = helm_template_raw(&["postgres.enabled=true"], &[]);
    assert!(
        !out.success && out.stderr.contains("postgres.url"),
        "{}",
        out.stderr
    );
}

fn yaml_files(dir: &Path) -> BTreeMap<String, String> {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .map(|p| {
            (
                p.file_name().unwrap().to_string_lossy().into_owned(),
                std::fs::read_to_string(&p).unwrap(),
            )
        })
        .collect()
}

#[test]
fn chart_and_kustomize_crds_are_the_generated_ones() {
    let generated = yaml_files(&root().join("crds/yaml"));
    assert!(generated.len() >= 5);
    for copy in ["chart/crds", "kustomize/base/crds"] {
        let files = yaml_files(&root().join(copy));
        assert_eq!(
            files.keys().collect::<Vec<_>>(),
            generated.keys().collect::<Vec<_>>(),
            "{copy}: run `make crds`"
        );
        for (name, text) in &generated {
            assert!(
                files[name] == *text,
                "{copy}/{name} differs from crds/yaml/{name}: run `make crds`"
            );
        }
    }
    // And kustomize really ships them.
    assert_eq!(
        kustomize("dev").count("CustomResourceDefinition"),
        generated.len()
    );
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
