//! The effective sandbox of a STDIO Target (defaults filled in), as the dataplane applies it to
//! every child: whether it is enforced, the rlimits, and the extra read-only paths.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

/// Default RLIMIT_DATA of a child: 2 GiB of private writable memory.
pub const DEFAULT_MEMORY_MIB: u32 = 2048;
/// Default RLIMIT_NOFILE of a child.
pub const DEFAULT_OPEN_FILES: u32 = 4096;

/// Whether a STDIO child gets its own user, PID and mount namespaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum NamespaceMode {
    /// Where the kernel allows it unprivileged; without them (logged, counted) where not.
    #[default]
    Auto,
    /// Refuse to spawn without them.
    Required,
    Off,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StdioSandbox {
    /// False only when the Target says `sandbox.mode: off`.
    pub enforce: bool,
    pub limits: EffectiveLimits,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_paths: Vec<Arc<str>>,
    /// The Target's namespace policy; `None` defers to the gateway's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<NamespaceMode>,
}

impl Default for StdioSandbox {
    fn default() -> Self {
        Self {
            enforce: true,
            limits: EffectiveLimits::default(),
            read_only_paths: Vec::new(),
            namespaces: None,
        }
    }
}

/// Limits with defaults applied; `None` means unlimited (inherited from the gateway).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLimits {
    pub memory_mib: Option<u32>,
    pub cpu_seconds: Option<u32>,
    pub processes: Option<u32>,
    pub open_files: Option<u32>,
}

impl Default for EffectiveLimits {
    fn default() -> Self {
        Self {
            memory_mib: Some(DEFAULT_MEMORY_MIB),
            cpu_seconds: None,
            processes: None,
            open_files: Some(DEFAULT_OPEN_FILES),
        }
    }
}
