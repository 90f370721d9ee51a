//! The sandbox of one STDIO child: user/PID/mount namespaces where the kernel allows them,
//! Landlock (filesystem, ptrace, signal and abstract-socket scoping), no_new_privs, a seccomp
//! deny list and rlimits. Built in the gateway before fork, applied in the child between fork
//! and exec (`child`, `ns_child`), so the child only makes raw syscalls.

mod child;
mod landlock_rules;
mod namespaces;
mod ns_child;
mod rlimits;
mod seccomp_filter;

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use reflow_crds::snapshot::StdioSandbox;
use serde::Deserialize;

pub use landlock_rules::{MIN_LANDLOCK_ABI, kernel_landlock_abi};
pub use namespaces::available as namespaces_available;
pub use reflow_crds::snapshot::NamespaceMode;

/// The gateway-wide switch (`gateway.stdio.sandbox`): `enforce` unless the operator says `off`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SandboxMode {
    #[default]
    Enforce,
    Off,
}

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(
        "the kernel offers Landlock ABI {found}, the sandbox needs {MIN_LANDLOCK_ABI} or later (signal and socket scoping); set sandbox mode off to run unconfined"
    )]
    LandlockAbi { found: i32 },
    #[error("cannot build the Landlock ruleset: {0}")]
    Landlock(String),
    #[error("cannot build the seccomp filter: {0}")]
    Seccomp(String),
    #[error(
        "cannot give the child its own namespaces ({0}); set sandbox.namespaces auto or off to run without them"
    )]
    Namespaces(String),
    #[error("sandbox path {path} would expose the gateway's {what} ({protected})")]
    Exposes {
        path: PathBuf,
        what: &'static str,
        protected: PathBuf,
    },
}

/// Files of the gateway no child may read, with what they are (for the error message).
#[derive(Debug, Clone, Default)]
pub struct Protected(Vec<(PathBuf, &'static str)>);

impl Protected {
    pub fn add(&mut self, path: &Path, what: &'static str) {
        let p = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        self.0.push((p, what));
    }

    /// Refuses an allowed path that is, or contains, a protected one.
    fn check(&self, allowed: &Path) -> Result<(), SandboxError> {
        match self.0.iter().find(|(p, _)| p.starts_with(allowed)) {
            Some((p, what)) => Err(SandboxError::Exposes {
                path: allowed.to_path_buf(),
                what,
                protected: p.clone(),
            }),
            None => Ok(()),
        }
    }
}

/// A child's sandbox as the pool hands it to the spawn: the Target's settings and the paths
/// no rule may expose.
#[derive(Debug, Clone)]
pub struct ChildSandbox {
    pub settings: StdioSandbox,
    pub protected: Protected,
    /// The effective namespace policy (the Target's, else the gateway's); `auto` has been
    /// resolved by the pool to `required` (available) or `off` (not).
    pub namespaces: NamespaceMode,
}

/// What one child may touch besides the system paths.
pub struct ChildPaths<'a> {
    /// The program, resolved to an absolute path (read and execute).
    pub program: &'a Path,
    /// Its private HOME (read-write); its private tmp lives inside.
    pub home: &'a Path,
}

/// A sandbox ready to be applied in one forked child. Dropping it closes the ruleset.
pub struct Prepared {
    ruleset: OwnedFd,
    limits: rlimits::Limits,
    filters: Arc<seccomp_filter::Filters>,
    ns: Option<Arc<namespaces::NsPlan>>,
}

impl std::fmt::Debug for Prepared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Prepared").finish_non_exhaustive()
    }
}

/// Builds everything the child needs before the fork: the Landlock ruleset (opened and filled
/// here), the rlimits and the compiled seccomp programs.
pub fn prepare(sandbox: &ChildSandbox, paths: &ChildPaths<'_>) -> Result<Prepared, SandboxError> {
    let settings = &sandbox.settings;
    let ruleset = landlock_rules::build(settings, paths, &sandbox.protected)?;
    let ns = match sandbox.namespaces {
        NamespaceMode::Off => None,
        NamespaceMode::Auto | NamespaceMode::Required => {
            namespaces::available().map_err(SandboxError::Namespaces)?;
            let tmp_mib = settings.limits.memory_mib.unwrap_or(DEFAULT_TMP_MIB);
            let mut needed: Vec<&Path> = vec![paths.program];
            needed.extend(settings.read_only_paths.iter().map(|p| Path::new(&**p)));
            let mut plan = namespaces::NsPlan::new(Some(paths.home), &needed, tmp_mib)?;
            plan.proc_access = landlock_rules::proc_self_access();
            plan.tmp_access = landlock_rules::all_access();
            Some(Arc::new(plan))
        }
    };
    Ok(Prepared {
        ruleset,
        limits: rlimits::Limits::from(&settings.limits),
        filters: seccomp_filter::filters()?,
        ns,
    })
}

/// Size cap of a private /tmp when the Target sets no memory limit.
const DEFAULT_TMP_MIB: u32 = 512;

impl Prepared {
    /// Registers the sandbox as the command's pre-exec step. The closure makes only raw
    /// syscalls on data built here: it is async-signal-safe.
    pub fn install(&self, cmd: &mut tokio::process::Command) {
        let plan = child::Plan::new(
            &self.ruleset,
            &self.limits,
            self.filters.clone(),
            self.ns.clone(),
        );
        // SAFETY: `Plan::apply` only calls setrlimit, prctl, landlock_restrict_self and seccomp
        // with memory the closure owns; it neither allocates nor takes locks.
        unsafe {
            cmd.pre_exec(move || plan.apply());
        }
    }
}

impl Prepared {
    /// After the spawn (and after the command holding the pre-exec step was dropped): the
    /// namespace step that failed in the child, if any. The child then is already gone or
    /// going (its init exited), so the spawn counts as failed.
    pub fn finish(self) -> Result<(), SandboxError> {
        let Some(ns) = self.ns else { return Ok(()) };
        match Arc::try_unwrap(ns) {
            Ok(plan) => plan.failure().map_or(Ok(()), Err),
            Err(_) => Ok(()),
        }
    }
}

/// Whether this kernel can sandbox children at all (for startup logs and tests).
pub fn probe() -> Result<i32, SandboxError> {
    let abi = kernel_landlock_abi();
    if abi < MIN_LANDLOCK_ABI {
        return Err(SandboxError::LandlockAbi { found: abi });
    }
    seccomp_filter::filters()?;
    Ok(abi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::StdioConfig;

    #[test]
    fn the_gateway_switch_reads_off_and_defaults_to_enforce() {
        let off: StdioConfig = serde_yaml::from_str("sandbox: off").expect("parses");
        assert_eq!(off.sandbox, SandboxMode::Off);
        let default: StdioConfig = serde_yaml::from_str("maxProcesses: 3").expect("parses");
        assert_eq!(default.sandbox, SandboxMode::Enforce);
        assert!(serde_yaml::from_str::<StdioConfig>("sandbox: maybe").is_err());
        let ns: StdioConfig = serde_yaml::from_str("namespaces: required").expect("parses");
        assert_eq!(ns.namespaces, NamespaceMode::Required);
        assert_eq!(default.namespaces, NamespaceMode::Auto);
        assert!(serde_yaml::from_str::<StdioConfig>("namespaces: maybe").is_err());
    }

    #[test]
    fn the_namespace_probe_succeeds_or_names_the_step_that_failed() {
        match namespaces_available() {
            Ok(()) => {}
            Err(why) => {
                assert!(
                    namespaces::STEPS.iter().any(|s| why.starts_with(s)) || why.contains("fork"),
                    "{why}"
                );
                eprintln!("namespaces unavailable here: {why}");
            }
        }
        // Cached: the second answer is the first.
        assert_eq!(namespaces_available(), namespaces_available());
    }

    #[test]
    fn a_path_containing_a_protected_file_is_refused_and_a_sibling_is_not() {
        let mut p = Protected::default();
        p.add(Path::new("/etc/reflow/sealing-key"), "sealing key file");
        assert!(matches!(
            p.check(Path::new("/etc")),
            Err(SandboxError::Exposes {
                what: "sealing key file",
                ..
            })
        ));
        assert!(p.check(Path::new("/etc/reflow/sealing-key")).is_err());
        assert!(p.check(Path::new("/etc/ssl")).is_ok());
    }

    #[test]
    fn this_kernel_can_sandbox_or_says_why_not() {
        // Asserts on what the kernel offers: ABI 6+ must probe fine; below, the error names it.
        let abi = kernel_landlock_abi();
        match probe() {
            Ok(found) => assert!(found >= MIN_LANDLOCK_ABI && found == abi),
            Err(SandboxError::LandlockAbi { found }) => {
                assert!(abi < MIN_LANDLOCK_ABI && found == abi);
                eprintln!("kernel Landlock ABI {abi}: STDIO children would be refused");
            }
            Err(e) => panic!("unexpected probe failure: {e}"),
        }
    }
}
