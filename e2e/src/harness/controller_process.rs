//! The controller-mode pair as processes: a real `reflow-controller` against a [`KubeCluster`]
//! and a real `reflow-dataplane` following it (no manifests, no Kubernetes rights), each
//! listening where its first stdout line says.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use super::controller_bin::controller_bin;
use super::dataplane_process::dataplane_bin;
use super::error::{HarnessError, Result};
use super::kube_cluster::KubeCluster;
use super::process::{ManagedChild, SpawnOptions};

/// The namespace the controller's lease lives in.
pub const SYSTEM_NAMESPACE: &str = "reflow-system";

/// The URL a child's first line announces after `prefix` (`listening on `).
pub fn first_line_url(c: &ManagedChild, prefix: &str) -> Result<String> {
    let line = c
        .next_line(Duration::from_secs(90))
        .map_err(|e| HarnessError::Other(format!("no listening line: {e}\n{}", c.output())))?;
    line.trim()
        .strip_prefix(prefix)
        .map(str::to_owned)
        .ok_or_else(|| HarnessError::Other(format!("unexpected first line {line:?}")))
}

/// A controller replica `name` (its lease identity) on a free port, with the dataplanes' bearer
/// `token`, the base64 sealing `key` and extra environment (`REFLOW_REFRESH_BEFORE`, …).
pub fn spawn_controller(
    k: &KubeCluster,
    name: &str,
    key: &str,
    token: &str,
    env: &[(&str, &str)],
) -> Result<(ManagedChild, String)> {
    let mut cmd = Command::new(controller_bin()?);
    cmd.env("KUBECONFIG", &k.kubeconfig)
        .env("REFLOW_CONTROLLER_TOKEN", token)
        .env("REFLOW_SEALING_KEY", key)
        .env("POD_NAME", name)
        .env("POD_NAMESPACE", SYSTEM_NAMESPACE)
        .env("RUST_LOG", "info")
        .env(
            "REFLOW_BRIDGE_IMAGE",
            "registry.invalid/reflow-dataplane:test",
        )
        .args(["--listen", "127.0.0.1:0"]);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let opts = SpawnOptions {
        stdout_lines: true,
        ..SpawnOptions::default()
    };
    let c = ManagedChild::spawn(name, &mut cmd, opts)?;
    let url = first_line_url(&c, "listening on ")?;
    Ok((c, url))
}

/// The dataplane binary following `controller` (debug logs): `key` and `token` are written to
/// files in `dir`, `config` (YAML, which should name `sealingKeyFile: sealing-key`) beside them;
/// it listens on `listen` (`127.0.0.1:0` for any port).
pub fn spawn_following_dataplane(
    dir: &Path,
    controller: &str,
    (key, token): (&str, &str),
    config: &str,
    listen: &str,
) -> Result<(ManagedChild, String)> {
    let write = |name: &str, text: &str| {
        std::fs::write(dir.join(name), text)
            .map_err(|e| HarnessError::Other(format!("writing {name}: {e}")))
    };
    write("sealing-key", key)?;
    write("controller-token", token)?;
    write("config.yaml", config)?;
    let mut cmd = Command::new(dataplane_bin()?);
    cmd.arg("--controller")
        .arg(controller)
        .arg("--controller-token-file")
        .arg(dir.join("controller-token"))
        .arg("--config")
        .arg(dir.join("config.yaml"))
        .args(["--listen", listen, "--dataplane-name", "dp-0"])
        .env("RUST_LOG", "debug");
    let opts = SpawnOptions {
        stdout_lines: true,
        ..SpawnOptions::default()
    };
    let c = ManagedChild::spawn("reflow-dataplane", &mut cmd, opts)?;
    let url = first_line_url(&c, "listening on ")?;
    Ok((c, url))
}
