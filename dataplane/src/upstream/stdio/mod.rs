//! STDIO upstreams: child processes spawned without a shell from a clean environment, one per
//! isolation key (boundary + credential fingerprint [+ session when stateful]), pooled with limits.
//! `env` builds what a child sees, `process` owns one child's I/O, `pool` decides who shares it.

mod backoff;
mod env;
mod pool;
mod process;
mod redact;
mod routing;
pub mod sandbox;

pub use backoff::RestartBackoff;
pub use env::{ChildEnv, EnvError};
pub use pool::{Boundary, IsolationKey, Start, StdioPool, StdioStats};
pub use process::{ChildProcess, ChildSpec, Unrouted};
pub use redact::Redactor;
pub use sandbox::{ChildSandbox, NamespaceMode, Protected, SandboxError, SandboxMode};

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

/// Process-manager settings (`gateway.stdio` in the config file, camelCase keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct StdioConfig {
    /// Live children across all Targets; a spawn beyond it fails with a `limit` error.
    pub max_processes: usize,
    /// Live children of one Target.
    pub max_processes_per_target: usize,
    /// Under which folder each pool makes its own `reflow-stdio-<pid>-<random>` folder of
    /// per-child HOMEs (created 0700, removed when the child stops). Defaults to `$TMPDIR`.
    pub home_root: Option<PathBuf>,
    /// How often idle and over-age children are looked for.
    pub sweep_ms: u64,
    /// Time a child gets after stdin closes before SIGTERM, and after SIGTERM before SIGKILL.
    pub stop_grace_ms: u64,
    /// stderr lines per second logged per child; the rest are counted and summarised.
    pub stderr_lines_per_second: u32,
    /// First delay before a crashed child is restarted; doubles per consecutive crash.
    pub restart_backoff_ms: u64,
    /// Longest restart delay.
    pub max_restart_backoff_ms: u64,
    /// `enforce` (default): every child runs sandboxed, or is not spawned. `off` runs every
    /// child unconfined, with a warning per spawn.
    pub sandbox: SandboxMode,
    /// Namespaces for Targets that do not set `sandbox.namespaces`: `auto` (default: used
    /// where the kernel allows them unprivileged), `required` or `off`.
    pub namespaces: NamespaceMode,
    /// The gateway's own files (config folder, keys): no sandbox rule may expose them. Filled
    /// in by the config loader, not read from the file.
    #[serde(skip)]
    pub protected: Protected,
}

impl Default for StdioConfig {
    fn default() -> Self {
        Self {
            max_processes: 256,
            max_processes_per_target: 64,
            home_root: None,
            sweep_ms: 1_000,
            stop_grace_ms: 2_000,
            stderr_lines_per_second: 50,
            restart_backoff_ms: 200,
            max_restart_backoff_ms: 30_000,
            sandbox: SandboxMode::Enforce,
            namespaces: NamespaceMode::Auto,
            protected: Protected::default(),
        }
    }
}

impl StdioConfig {
    pub fn backoff(&self) -> RestartBackoff {
        RestartBackoff::new(
            Duration::from_millis(self.restart_backoff_ms),
            Duration::from_millis(self.max_restart_backoff_ms),
        )
    }

    pub(crate) fn grace(&self) -> Duration {
        Duration::from_millis(self.stop_grace_ms)
    }

    pub(crate) fn home_root(&self) -> PathBuf {
        let parent = self.home_root.clone().unwrap_or_else(std::env::temp_dir);
        let unique = uuid::Uuid::new_v4().simple().to_string();
        parent.join(format!(
            "reflow-stdio-{}-{}",
            std::process::id(),
            &unique[..8]
        ))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StdioError {
    #[error("cannot start the STDIO server: {0}")]
    Spawn(String),
    #[error("the STDIO server exited ({0})")]
    Exited(String),
    #[error("the STDIO server did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the STDIO server failed to initialize: {0}")]
    Initialize(String),
    #[error("process limit reached: {scope} limit of {max} STDIO servers")]
    Limit { scope: &'static str, max: usize },
    #[error("the STDIO server crashed and is restarting; retry in {0:?}")]
    Restarting(Duration),
    #[error("{0}")]
    Env(#[from] EnvError),
    #[error("cannot write to the STDIO server: {0}")]
    Write(String),
    #[error("the client cancelled the request")]
    Cancelled,
    #[error("refusing to start the STDIO server unsandboxed: {0}")]
    Sandbox(#[from] SandboxError),
}

impl StdioError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Spawn(_) => "stdio_spawn",
            Self::Exited(_) => "stdio_exited",
            Self::Timeout(_) => "timeout",
            Self::Initialize(_) => "stdio_initialize",
            Self::Limit { .. } => "stdio_limit",
            Self::Restarting(_) => "stdio_restarting",
            Self::Env(e) => e.label(),
            Self::Write(_) => "stdio_write",
            Self::Cancelled => "cancelled",
            Self::Sandbox(_) => "stdio_sandbox",
        }
    }
}
