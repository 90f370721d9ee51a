//! A real control plane for tests: etcd + kube-apiserver + kube-controller-manager from
//! `<repo>/../shared/kube/cluster.sh`, in its own folder under target/, stopped when dropped.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::{HarnessError, Result};
use super::k8s_tools::{K8sTools, k8s_tools};
use super::paths::{target_dir, workspace_root};
use super::process::run_bounded;

/// The script that starts a cluster, when this checkout has `shared/` beside it.
pub fn cluster_script() -> Option<PathBuf> {
    let script = workspace_root().join("../shared/kube/cluster.sh");
    script.is_file().then_some(script)
}

/// A running cluster; `cluster.sh stop` runs on drop (also when the test panics).
pub struct KubeCluster {
    dir: PathBuf,
    script: PathBuf,
    pub kubeconfig: PathBuf,
    pub tools: K8sTools,
}

/// What one kubectl/helm run gave.
#[derive(Debug)]
pub struct Ran {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

impl KubeCluster {
    /// Starts one in `target/kube-test/<name>`; `Ok(None)` (with the reason printed) when
    /// `shared/kube/cluster.sh` is not beside the checkout, as on a user's machine.
    pub fn start(name: &str) -> Result<Option<Self>> {
        let Some(script) = cluster_script() else {
            eprintln!(
                "skipped: no real API server here ({} is absent; CI provides it)",
                workspace_root().join("../shared/kube/cluster.sh").display()
            );
            return Ok(None);
        };
        let tools = k8s_tools()?;
        let dir = target_dir().join("kube-test").join(name);
        // A previous run's etcd data would bring its objects back; binaries and pki are reused.
        let _ = std::fs::remove_dir_all(dir.join("etcd-data"));
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg("start").arg(&dir);
        // cluster.sh binds the garbage collector's RBAC with `kubectl` from PATH.
        if let Some(bin) = tools.kubectl.parent() {
            let path = std::env::var_os("PATH").unwrap_or_default();
            let mut paths = vec![bin.to_path_buf()];
            paths.extend(std::env::split_paths(&path));
            cmd.env(
                "PATH",
                std::env::join_paths(paths).map_err(|e| HarnessError::Other(e.to_string()))?,
            );
        }
        let started = Instant::now();
        let cluster = Self {
            kubeconfig: dir.join("kubeconfig"),
            dir,
            script,
            tools,
        };
        run_bounded("cluster.sh start", &mut cmd, Duration::from_secs(300))?;
        eprintln!(
            "cluster up in {:.1}s ({})",
            started.elapsed().as_secs_f64(),
            cluster.kubeconfig.display()
        );
        Ok(Some(cluster))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// `kubectl` against this cluster.
    pub fn kubectl(&self) -> Command {
        let mut cmd = Command::new(&self.tools.kubectl);
        cmd.env("KUBECONFIG", &self.kubeconfig)
            .arg("--request-timeout=30s");
        cmd
    }

    /// `helm` (isolated homes) against this cluster.
    pub fn helm(&self) -> Command {
        let mut cmd = self.tools.helm();
        cmd.env("KUBECONFIG", &self.kubeconfig);
        cmd
    }

    /// Runs `kubectl args…` to completion.
    pub fn run(&self, args: &[&str]) -> Ran {
        run(self.kubectl().args(args))
    }

    /// Runs `kubectl args…` and fails the test unless it succeeds.
    #[track_caller]
    pub fn ok(&self, args: &[&str]) -> String {
        let r = self.run(args);
        assert!(r.ok, "kubectl {args:?} failed: {}{}", r.stdout, r.stderr);
        r.stdout
    }

    /// `kubectl apply -f -` of `doc` (YAML or JSON), through a file in the cluster folder.
    pub fn apply(&self, doc: &str) -> Ran {
        let file = self.dir.join("apply.yaml");
        if let Err(e) = std::fs::write(&file, doc) {
            return Ran {
                ok: false,
                stdout: String::new(),
                stderr: e.to_string(),
            };
        }
        self.run(&["apply", "-f", &file.to_string_lossy()])
    }

    /// `kubectl get … -o json`, or `None` when it is not there.
    pub fn get(&self, args: &[&str]) -> Option<Value> {
        let mut all = vec!["get"];
        all.extend_from_slice(args);
        all.extend_from_slice(&["-o", "json"]);
        let r = self.run(&all);
        r.ok.then(|| serde_json::from_str(&r.stdout).ok()).flatten()
    }

    /// Polls `check` every 200 ms until it gives a value or `within` passes.
    pub fn wait_for<T>(
        &self,
        what: &str,
        within: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(v) = check() {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out after {within:?}: {what}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// Runs a prepared command, capturing both streams (kubectl bounds itself by --request-timeout).
pub fn run(cmd: &mut Command) -> Ran {
    match cmd.output() {
        Ok(o) => Ran {
            ok: o.status.success(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        },
        Err(e) => Ran {
            ok: false,
            stdout: String::new(),
            stderr: e.to_string(),
        },
    }
}

impl Drop for KubeCluster {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(&self.script)
            .arg("stop")
            .arg(&self.dir)
            .output();
    }
}
