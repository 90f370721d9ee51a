//! The `reflow-dataplane` binary as a child process (loopback, killed by PID on drop), for tests
//! that need real replicas: several processes on one manifests folder and one database.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::controller_bin::workspace_bin;
use super::error::{HarnessError, Result};
use super::process::{ManagedChild, SpawnOptions};

const BINARY: &str = "reflow-dataplane";
const LISTEN_TIMEOUT: Duration = Duration::from_secs(90);

/// `$REFLOW_DATAPLANE_BIN`, else the binary in the target folder, brought up to date once per
/// test process (see `workspace_bin`).
pub fn dataplane_bin() -> Result<PathBuf> {
    workspace_bin("reflow-dataplane", BINARY, "REFLOW_DATAPLANE_BIN")
}

/// One running gateway process.
#[derive(Debug)]
pub struct DataplaneProcess {
    child: ManagedChild,
    addr: std::net::SocketAddr,
}

impl DataplaneProcess {
    /// `reflow-dataplane --manifests DIR --config FILE --listen 127.0.0.1:0` with extra `env`;
    /// waits for its `listening on http://ADDR` line.
    pub fn spawn(manifests: &Path, config: &Path, env: &[(&str, &str)]) -> Result<Self> {
        Self::spawn_as(manifests, config, env, None)
    }

    /// As `spawn`, but as `(uid, gid)` with no supplementary groups when given (the caller
    /// must be root): the gateway as an unprivileged user.
    pub fn spawn_as(
        manifests: &Path,
        config: &Path,
        env: &[(&str, &str)],
        user: Option<(u32, u32)>,
    ) -> Result<Self> {
        Self::spawn_inner(manifests, config, env, user, "127.0.0.1:0")
    }

    /// As `spawn`, listening on `listen` (e.g. a port picked ahead with `free_loopback_port`,
    /// for a `publicUrl` or an OAuth redirect URI registered before the gateway starts).
    pub fn spawn_listening(
        manifests: &Path,
        config: &Path,
        env: &[(&str, &str)],
        listen: &str,
    ) -> Result<Self> {
        Self::spawn_inner(manifests, config, env, None, listen)
    }

    fn spawn_inner(
        manifests: &Path,
        config: &Path,
        env: &[(&str, &str)],
        user: Option<(u32, u32)>,
        listen: &str,
    ) -> Result<Self> {
        let mut cmd = Command::new(dataplane_bin()?);
        if let Some((uid, gid)) = user {
            use std::os::unix::process::CommandExt;
            cmd.uid(uid).gid(gid);
        }
        cmd.arg("--manifests")
            .arg(manifests)
            .arg("--config")
            .arg(config)
            .args(["--listen", listen])
            .env("RUST_LOG", "warn");
        for (k, v) in env {
            cmd.env(k, v);
        }
        let opts = SpawnOptions {
            stdout_lines: true,
            ..SpawnOptions::default()
        };
        let child = ManagedChild::spawn(BINARY, &mut cmd, opts)?;
        let line = child.next_line(LISTEN_TIMEOUT)?;
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.trim().parse().ok())
            .ok_or_else(|| HarnessError::NotReady {
                what: BINARY.to_owned(),
                detail: format!("unexpected first line {line:?}\n{}", child.output()),
            })?;
        Ok(Self { child, addr })
    }

    /// The address it listens on.
    pub fn addr(&self) -> std::net::SocketAddr {
        self.addr
    }

    /// SIGKILL, no grace (a replica that dies): its STDIO children are left to notice.
    pub fn kill(&mut self) {
        self.child.kill();
    }

    /// The aggregated endpoint, `http://ADDR/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    pub fn output(&self) -> String {
        self.child.output()
    }

    /// The gateway's process id (the sandbox tests aim at it).
    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Sends SIGTERM (a graceful stop) and waits up to `timeout` for the exit; `None` when the
    /// process is still running then (dropping it kills it).
    pub fn terminate(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let pid = self.child.pid().to_string();
        let sent = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .is_ok_and(|s| s.success());
        if !sent {
            return None;
        }
        self.child.wait_timeout(timeout)
    }
}
