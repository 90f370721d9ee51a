//! `Target.spec.sandbox`: how the gateway confines each STDIO child (Landlock, seccomp, limits)
//! and the one explicit way to turn that off. Compiled into `snapshot::StdioSandbox`.

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// Sandbox of the Target's STDIO children; only valid for the stdio transport.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SandboxSpec {
    /// `enforce` (the default): a child is spawned only inside its sandbox, and not at all where
    /// the kernel cannot provide it. `off` runs children unconfined (the Target gets a
    /// `Sandboxed=False` condition). Quote it in YAML 1.1 tools: `mode: "off"`.
    #[serde(default)]
    pub mode: SandboxMode,
    /// Per-child resource limits; unset fields keep the defaults.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<ProcessLimits>,
    /// Extra absolute paths the child may read and execute (e.g. `/opt/node`), on top of the
    /// system paths. A path that would expose the gateway's own files is refused at spawn.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    // Bounded items keep the rule's estimated CEL cost inside the API server's budget.
    #[schemars(length(max = 32), inner(length(max = 4096)))]
    #[x_kube(validation = Rule::new("self.all(p, p.startsWith('/') && !p.contains('..'))").message("readOnlyPaths must be absolute paths without '..'"))]
    pub read_only_paths: Vec<String>,
    /// `auto` (unset: the gateway's `gateway.stdio.namespaces`, itself `auto` by default): each
    /// child also gets its own user, PID and mount namespaces (a private `/proc` and `/tmp`)
    /// where the kernel allows it unprivileged, and runs without them (logged, counted) where
    /// not. `required`: refuse to spawn without them. `off`: never.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceMode>,
}

/// Whether a STDIO child gets its own user, PID and mount namespaces.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceMode {
    #[default]
    Auto,
    Required,
    Off,
}

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default,
)]
#[serde(rename_all = "camelCase")]
pub enum SandboxMode {
    #[default]
    Enforce,
    Off,
}

/// Resource limits of one child (setrlimit, inherited by what it starts).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ProcessLimits {
    /// Private writable memory (RLIMIT_DATA) in MiB; default 2048.
    #[serde(rename = "memoryMiB", default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1048576))]
    pub memory_mib: Option<u32>,
    /// CPU time (RLIMIT_CPU) in seconds over the child's life; default unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 31536000))]
    pub cpu_seconds: Option<u32>,
    /// Processes and threads (RLIMIT_NPROC). Linux counts it per uid, not per child; default
    /// unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1048576))]
    pub processes: Option<u32>,
    /// Open files (RLIMIT_NOFILE); default 4096.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 1048576))]
    pub open_files: Option<u32>,
}
