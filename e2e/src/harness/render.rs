//! Rendering the Helm chart (`chart/`) and the kustomize overlays (`kustomize/overlays/*`) with
//! the real tools, plus what the deploy tests read from the result: Secret values, scratch folders.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::Value;

use super::error::{HarnessError, Result};
use super::k8s_tools::{K8sTools, ToolOutput, k8s_tools, run_tool};
use super::manifests::Manifests;
use super::paths;

/// Release name and namespace every render uses.
pub const RELEASE: &str = "reflow";
pub const NAMESPACE: &str = "reflow-system";

const RENDER_TIMEOUT: Duration = Duration::from_secs(120);

/// The installed tools, once per test process.
pub fn tools() -> Result<&'static K8sTools> {
    static TOOLS: OnceLock<std::result::Result<K8sTools, String>> = OnceLock::new();
    TOOLS
        .get_or_init(|| k8s_tools().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|e| HarnessError::Other(e.clone()))
}

pub fn chart_dir() -> PathBuf {
    paths::workspace_root().join("chart")
}

/// `helm template reflow chart/ -n reflow-system` with `--set` pairs and values files; the raw
/// outcome, so a test can also expect a failure.
pub fn helm_template_raw(sets: &[&str], files: &[&Path]) -> Result<ToolOutput> {
    let mut cmd = tools()?.helm();
    cmd.args(["template", RELEASE])
        .arg(chart_dir())
        .args(["--namespace", NAMESPACE]);
    for s in sets {
        cmd.args(["--set", s]);
    }
    for f in files {
        cmd.arg("--values").arg(f);
    }
    run_tool("helm template", &mut cmd, RENDER_TIMEOUT)
}

/// The rendered chart; an error carries helm's stderr.
pub fn helm_template(sets: &[&str], files: &[&Path]) -> Result<Manifests> {
    let out = helm_template_raw(sets, files)?;
    if !out.success {
        return Err(HarnessError::Failed {
            what: format!("helm template {sets:?} {files:?}"),
            status: "failed".into(),
            output: out.stderr,
        });
    }
    Manifests::parse(&out.stdout)
}

/// Chart values with everything optional switched on (Postgres, Ingress, HTTPRoute,
/// ServiceMonitor, HPA, an OIDC issuer instead of the built-in one, OpenTelemetry).
pub const EVERYTHING_VALUES: &str = r#"
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

/// The chart rendered with [`EVERYTHING_VALUES`].
pub fn helm_template_everything() -> Result<Manifests> {
    let scratch = Scratch::new("everything")?;
    let values = scratch.write("values.yaml", EVERYTHING_VALUES)?;
    helm_template(&[], &[&values])
}

/// `kubectl kustomize kustomize/overlays/<overlay>`.
pub fn kustomize(overlay: &str) -> Result<Manifests> {
    let dir = paths::workspace_root()
        .join("kustomize/overlays")
        .join(overlay);
    let mut cmd = tools()?.kubectl();
    cmd.arg("kustomize").arg(&dir);
    let out = run_tool("kubectl kustomize", &mut cmd, RENDER_TIMEOUT)?;
    if !out.success {
        return Err(HarnessError::Failed {
            what: format!("kubectl kustomize {overlay}"),
            status: "failed".into(),
            output: out.stderr,
        });
    }
    Manifests::parse(&out.stdout)
}

/// A Secret's value for `key`, from `stringData` or (base64) `data`.
pub fn secret_value(secret: &Value, key: &str) -> Result<String> {
    use base64::Engine;
    if let Some(s) = secret["stringData"][key].as_str() {
        return Ok(s.to_owned());
    }
    let name = secret["metadata"]["name"].as_str().unwrap_or("?");
    let b64 = secret["data"][key]
        .as_str()
        .ok_or_else(|| HarnessError::Other(format!("Secret {name} has no key {key}")))?;
    // kustomize folds long values over several lines.
    let b64: String = b64.split_whitespace().collect();
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| HarnessError::Other(format!("Secret {name} key {key}: {e}")))?;
    String::from_utf8(bytes)
        .map_err(|_| HarnessError::Other(format!("Secret {name} key {key} is not UTF-8")))
}

/// A scratch folder under the e2e cache, removed when dropped.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// Unique per call: tests of one process run in parallel and may use the same `name`.
    pub fn new(name: &str) -> Result<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = paths::cache_dir()
            .join("deploy-scratch")
            .join(format!("{}-{n}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| HarnessError::io(&dir, e))?;
        Ok(Self(dir))
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `content` to `rel` inside the folder and returns its path.
    pub fn write(&self, rel: &str, content: &str) -> Result<PathBuf> {
        let path = self.0.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HarnessError::io(parent, e))?;
        }
        std::fs::write(&path, content).map_err(|e| HarnessError::io(&path, e))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
