//! The chart's values and secrets, rendered by the real `helm` (and the overlays by `kubectl
//! kustomize`): checksum annotations, generated secrets, the values schema, the CRD copies, and
//! every rendered gateway config loaded by the dataplane's own config loader. No cluster involved.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use reflow_dataplane::config::{AuditTarget, Config};
use reflow_dataplane::identity_token::IdentitySigner;
use reflow_e2e::harness::k8s_tools::ToolOutput;
use reflow_e2e::harness::manifests::Manifests;
use reflow_e2e::harness::paths;
use reflow_e2e::harness::render::{self, Scratch};
use serde_json::Value;

fn root() -> PathBuf {
    paths::workspace_root()
}

fn helm_template(sets: &[&str], files: &[&Path]) -> Manifests {
    render::helm_template(sets, files).unwrap_or_else(|e| panic!("{e}"))
}

fn helm_template_raw(sets: &[&str], files: &[&Path]) -> ToolOutput {
    render::helm_template_raw(sets, files).expect("helm runs")
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
    let scratch = Scratch::new("checksums").expect("scratch");
    let fixed = scratch
        .write("fixed.yaml", IDENTITY_KEY_VALUES)
        .expect("values");
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
            a1.pod_annotation(d, "checksum/secrets"),
            a2.pod_annotation(d, "checksum/secrets"),
            "{d}"
        );
        assert_ne!(
            a1.pod_annotation(d, "checksum/secrets"),
            b.pod_annotation(d, "checksum/secrets"),
            "{d}"
        );
    }
    // Both Deployments see the same secret values (computed once per render).
    assert_eq!(
        a1.pod_annotation("reflow-controller", "checksum/secrets"),
        a1.pod_annotation("reflow-dataplane", "checksum/secrets")
    );
    assert_eq!(
        a1.pod_annotation("reflow-dataplane", "checksum/config"),
        b.pod_annotation("reflow-dataplane", "checksum/config")
    );
    assert_ne!(
        a1.pod_annotation("reflow-dataplane", "checksum/config"),
        hosts.pod_annotation("reflow-dataplane", "checksum/config")
    );
    assert_eq!(
        a1.pod_annotation("reflow-dataplane", "checksum/secrets"),
        hosts.pod_annotation("reflow-dataplane", "checksum/secrets")
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
        m.pod_annotation("reflow-dataplane", "checksum/database")
            .to_owned()
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
    let scratch = Scratch::new(&format!("config-{name}")).expect("scratch");
    let text = yaml.replace("/etc/reflow/", &format!("{}/", scratch.path().display()));
    for (path, content) in files {
        scratch.write(path, content).expect("file");
    }
    let path = scratch.write("config/gateway.yaml", &text).expect("config");
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
