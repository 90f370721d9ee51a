//! The seccomp deny list every sandboxed child runs under: syscalls that read or steer other
//! processes, change the system, or widen the kernel surface fail with EPERM; compiled once.

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use super::SandboxError;

/// Denied outright (EPERM): other processes' memory, mounts and namespaces, kernel modules and
/// keys, BPF, io_uring (its operations bypass seccomp), perf and userfaultfd (exploit helpers),
/// the clock and the machine.
const DENIED: &[libc::c_long] = &[
    libc::SYS_ptrace,
    libc::SYS_process_vm_readv,
    libc::SYS_process_vm_writev,
    libc::SYS_process_madvise,
    libc::SYS_pidfd_getfd,
    libc::SYS_kcmp,
    libc::SYS_mount,
    libc::SYS_umount2,
    libc::SYS_pivot_root,
    libc::SYS_chroot,
    libc::SYS_move_mount,
    libc::SYS_open_tree,
    libc::SYS_fsopen,
    libc::SYS_fsmount,
    libc::SYS_fsconfig,
    libc::SYS_fspick,
    libc::SYS_mount_setattr,
    libc::SYS_unshare,
    libc::SYS_setns,
    libc::SYS_bpf,
    libc::SYS_keyctl,
    libc::SYS_add_key,
    libc::SYS_request_key,
    libc::SYS_kexec_load,
    libc::SYS_kexec_file_load,
    libc::SYS_init_module,
    libc::SYS_finit_module,
    libc::SYS_delete_module,
    libc::SYS_reboot,
    libc::SYS_swapon,
    libc::SYS_swapoff,
    libc::SYS_acct,
    libc::SYS_quotactl,
    libc::SYS_syslog,
    libc::SYS_settimeofday,
    libc::SYS_clock_settime,
    libc::SYS_clock_adjtime,
    libc::SYS_adjtimex,
    libc::SYS_sethostname,
    libc::SYS_setdomainname,
    libc::SYS_perf_event_open,
    libc::SYS_userfaultfd,
    libc::SYS_open_by_handle_at,
    libc::SYS_name_to_handle_at,
    libc::SYS_io_uring_setup,
    libc::SYS_io_uring_enter,
    libc::SYS_io_uring_register,
    libc::SYS_vhangup,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_iopl,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_ioperm,
    #[cfg(target_arch = "x86_64")]
    libc::SYS_uselib,
];

/// clone(2) flags that would create namespaces (a new user namespace gives every capability
/// inside it): such a clone fails with EPERM.
const NAMESPACE_FLAGS: &[libc::c_int] = &[
    libc::CLONE_NEWUSER,
    libc::CLONE_NEWNS,
    libc::CLONE_NEWPID,
    libc::CLONE_NEWNET,
    libc::CLONE_NEWIPC,
    libc::CLONE_NEWUTS,
    libc::CLONE_NEWCGROUP,
];

/// The compiled programs, installed in order. clone3 passes its flags in memory seccomp cannot
/// read, so it gets ENOSYS (libc then falls back to clone, whose flags the first filter checks).
pub(in crate::upstream::stdio) struct Filters {
    deny: BpfProgram,
    no_clone3: BpfProgram,
}

impl Filters {
    pub(super) fn programs(&self) -> [&BpfProgram; 2] {
        [&self.deny, &self.no_clone3]
    }
}

/// The filters, compiled on first use and shared by every child.
pub(super) fn filters() -> Result<Arc<Filters>, SandboxError> {
    static FILTERS: OnceLock<Result<Arc<Filters>, String>> = OnceLock::new();
    FILTERS
        .get_or_init(|| compile().map(Arc::new))
        .clone()
        .map_err(SandboxError::Seccomp)
}

fn compile() -> Result<Filters, String> {
    let arch = TargetArch::try_from(std::env::consts::ARCH).map_err(|e| e.to_string())?;
    let eperm = SeccompAction::Errno(libc::EPERM as u32);
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> =
        DENIED.iter().map(|nr| (*nr, Vec::new())).collect();
    let clone_rules = NAMESPACE_FLAGS
        .iter()
        .map(|flag| {
            let flag = u64::try_from(*flag).map_err(|e| e.to_string())?;
            let cond = SeccompCondition::new(
                0,
                SeccompCmpArgLen::Qword,
                SeccompCmpOp::MaskedEq(flag),
                flag,
            )
            .map_err(|e| e.to_string())?;
            SeccompRule::new(vec![cond]).map_err(|e| e.to_string())
        })
        .collect::<Result<Vec<_>, String>>()?;
    rules.insert(libc::SYS_clone, clone_rules);
    let deny = SeccompFilter::new(rules, SeccompAction::Allow, eperm, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| e.to_string())?;
    let clone3 = BTreeMap::from([(libc::SYS_clone3, Vec::new())]);
    let enosys = SeccompAction::Errno(libc::ENOSYS as u32);
    let no_clone3 = SeccompFilter::new(clone3, SeccompAction::Allow, enosys, arch)
        .and_then(BpfProgram::try_from)
        .map_err(|e| e.to_string())?;
    Ok(Filters { deny, no_clone3 })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deny_list_compiles_for_this_architecture() {
        let f = filters().expect("seccomp filters compile");
        assert!(f.programs().iter().all(|p| !p.is_empty()));
    }
}
