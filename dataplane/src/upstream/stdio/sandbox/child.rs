//! The part of the sandbox that runs in the forked child before exec. Only raw syscalls on
//! memory prepared before the fork: no allocation, no locks (async-signal-safe).

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;

use super::namespaces::NsPlan;
use super::rlimits::Limits;
use super::seccomp_filter::Filters;

/// Everything `apply` needs, copied or shared before the fork.
pub(super) struct Plan {
    ruleset: libc::c_int,
    /// Landlock rights on the child's own /proc/<pid>.
    proc_self: u64,
    limits: Limits,
    filters: Arc<Filters>,
    /// The namespaces to enter first, if this child gets them.
    ns: Option<Arc<NsPlan>>,
}

impl Plan {
    /// `ruleset` must stay open until the spawn returned (the parent keeps it in `Prepared`).
    pub(super) fn new(
        ruleset: &OwnedFd,
        limits: &Limits,
        filters: Arc<Filters>,
        ns: Option<Arc<NsPlan>>,
    ) -> Self {
        Self {
            ruleset: ruleset.as_raw_fd(),
            proc_self: super::landlock_rules::proc_self_access(),
            limits: *limits,
            filters,
            ns,
        }
    }

    /// The namespaces (first: mounting needs the capabilities the user namespace gives and
    /// seccomp would deny), then rlimits, no_new_privs, the Landlock domain, then seccomp
    /// (last: it denies nothing the earlier steps need, but a filter installed first would
    /// also apply to them).
    pub(super) fn apply(&self) -> std::io::Result<()> {
        if let Some(ns) = &self.ns {
            super::ns_child::enter(ns, self.ruleset)?;
        }
        for (resource, value) in self.limits.0 {
            if value == libc::RLIM_INFINITY {
                continue;
            }
            let lim = libc::rlimit {
                rlim_cur: value,
                rlim_max: value,
            };
            // SAFETY: setrlimit reads the struct on our stack.
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // SAFETY: plain integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        self.allow_own_proc()?;
        // SAFETY: landlock_restrict_self(2) takes the ruleset fd (inherited, O_CLOEXEC) and flags.
        if unsafe { libc::syscall(libc::SYS_landlock_restrict_self, self.ruleset, 0u32) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        for program in self.filters.programs() {
            seccompiler::apply_filter(program).map_err(|_| std::io::Error::last_os_error())?;
        }
        Ok(())
    }
}

/// `struct landlock_path_beneath_attr` of the kernel UAPI (packed).
#[repr(C, packed)]
struct PathBeneathAttr {
    allowed_access: u64,
    parent_fd: libc::c_int,
}

/// `LANDLOCK_RULE_PATH_BENEATH`.
const RULE_PATH_BENEATH: libc::c_int = 1;

impl Plan {
    /// Adds the child's own /proc/<pid> to its ruleset. Only the child can: `/proc/self` names
    /// it only here, after the fork. The ruleset object is this child's alone (one per spawn).
    fn allow_own_proc(&self) -> std::io::Result<()> {
        add_path_rule(self.ruleset, c"/proc/self", self.proc_self)
    }
}

/// Adds a rule granting `access` beneath `path` to `ruleset`, with raw syscalls only.
pub(super) fn add_path_rule(
    ruleset: libc::c_int,
    path: &std::ffi::CStr,
    access: u64,
) -> std::io::Result<()> {
    // SAFETY: open(2) of a NUL-terminated path.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let attr = PathBeneathAttr {
        allowed_access: access,
        parent_fd: fd,
    };
    // SAFETY: landlock_add_rule(2) reads `attr` on our stack; `fd` is ours and closed after.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_landlock_add_rule,
            ruleset,
            RULE_PATH_BENEATH,
            &raw const attr,
            0u32,
        )
    };
    let err = std::io::Error::last_os_error();
    // SAFETY: closing the descriptor opened above.
    unsafe { libc::close(fd) };
    if rc != 0 { Err(err) } else { Ok(()) }
}
