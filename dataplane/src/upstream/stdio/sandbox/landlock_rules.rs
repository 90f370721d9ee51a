//! The Landlock ruleset of one child: read/execute on system paths, read-write on its own HOME
//! only, nothing else of the filesystem; signals and abstract UNIX sockets scoped to its domain.

use std::os::fd::OwnedFd;
use std::path::Path;

use landlock::{
    ABI, Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, Scope,
};
use reflow_crds::snapshot::StdioSandbox;

use super::{ChildPaths, Protected, SandboxError};

/// Landlock ABI 6 (Linux 6.12) brings signal and abstract-socket scoping; below it a child
/// could still signal the gateway or reach its abstract sockets, so the sandbox refuses.
pub const MIN_LANDLOCK_ABI: i32 = 6;
/// Every right is requested as of this ABI (fixed, so a ruleset means the same on any kernel).
const ABI_USED: ABI = ABI::V6;

/// The rights the child gets on its own `/proc/<pid>` (read, no write).
pub(super) fn proc_self_access() -> u64 {
    AccessFs::from_read(ABI_USED).bits()
}

/// Every right (the child's private /tmp).
pub(super) fn all_access() -> u64 {
    AccessFs::from_all(ABI_USED).bits()
}

/// Trees a program needs to load and run: read and execute, never write.
const SYSTEM_TREES: &[&str] = &[
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
];
/// Of `/etc`, only what the loader, TLS, DNS and user lookups read: not the whole folder,
/// where operators keep keys (`/etc/reflow/…`).
const SYSTEM_FILES: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/ld.so.conf",
    "/etc/ld.so.conf.d",
    "/etc/alternatives",
    "/etc/ssl",
    "/etc/ca-certificates",
    "/etc/pki",
    "/etc/resolv.conf",
    "/etc/hosts",
    "/etc/nsswitch.conf",
    "/etc/host.conf",
    "/etc/gai.conf",
    "/etc/services",
    "/etc/protocols",
    "/etc/passwd",
    "/etc/group",
    "/etc/localtime",
    "/etc/mime.types",
    "/usr/share/zoneinfo",
    // CPU counts and cgroup limits, which runtimes (node, the JVM, Go) size themselves by.
    "/sys/devices/system/cpu",
    "/sys/fs/cgroup",
    "/dev/urandom",
    "/dev/random",
    // Of /proc, the machine-wide files runtimes read; never /proc itself, which would expose
    // every other process's /proc/<pid> (Landlock's ptrace scoping does not stop reads of
    // another process's `environ` on every kernel). The child's own /proc/<pid> is added in
    // the child (`child::Plan`), where `/proc/self` resolves to it.
    "/proc/cpuinfo",
    "/proc/meminfo",
    "/proc/stat",
    "/proc/loadavg",
    "/proc/uptime",
    "/proc/version",
    "/proc/filesystems",
    "/proc/sys",
];
/// Device files every program may write.
const WRITABLE_DEVICES: &[&str] = &["/dev/null", "/dev/zero", "/dev/full"];

/// The kernel's Landlock ABI (0 or negative: none).
pub fn kernel_landlock_abi() -> i32 {
    // SAFETY: with LANDLOCK_CREATE_RULESET_VERSION the syscall takes no memory and returns the ABI.
    let v = unsafe {
        libc::syscall(
            libc::SYS_landlock_create_ruleset,
            std::ptr::null::<libc::c_void>(),
            0usize,
            1u32,
        )
    };
    i32::try_from(v).unwrap_or(-1)
}

/// Creates and fills the ruleset (in the gateway, before the fork).
pub(super) fn build(
    settings: &StdioSandbox,
    paths: &ChildPaths<'_>,
    protected: &Protected,
) -> Result<OwnedFd, SandboxError> {
    let abi = kernel_landlock_abi();
    if abi < MIN_LANDLOCK_ABI {
        return Err(SandboxError::LandlockAbi { found: abi });
    }
    let ll = |e: landlock::RulesetError| SandboxError::Landlock(e.to_string());
    let read = AccessFs::from_read(ABI_USED);
    let all = AccessFs::from_all(ABI_USED);
    let mut rules: Vec<(PathFd, landlock::BitFlags<AccessFs>)> = Vec::new();
    let mut allow = |path: &Path, access, required: bool| -> Result<(), SandboxError> {
        protected.check(path)?;
        // A file gets only the rights that apply to files (a directory right on it is refused).
        let is_dir = std::fs::metadata(path).is_ok_and(|m| m.is_dir());
        let access = if is_dir {
            access
        } else {
            access & AccessFs::from_file(ABI_USED)
        };
        match PathFd::new(path) {
            Ok(fd) => {
                rules.push((fd, access));
                Ok(())
            }
            Err(_) if !required => Ok(()),
            Err(e) => Err(SandboxError::Landlock(format!("{}: {e}", path.display()))),
        }
    };
    for p in SYSTEM_TREES.iter().chain(SYSTEM_FILES) {
        allow(Path::new(p), read, false)?;
    }
    for p in WRITABLE_DEVICES {
        allow(Path::new(p), read | AccessFs::WriteFile, false)?;
    }
    for p in &settings.read_only_paths {
        allow(Path::new(&**p), read, false)?;
    }
    // A missing program gets no rule: the exec then fails with the usual "No such file".
    allow(paths.program, read, false)?;
    allow(paths.home, all, true)?;

    let mut created = Ruleset::default()
        .set_compatibility(CompatLevel::HardRequirement)
        .handle_access(all)
        .map_err(ll)?
        .scope(Scope::from_all(ABI_USED))
        .map_err(ll)?
        .create()
        .map_err(ll)?;
    for (fd, access) in rules {
        created = created.add_rule(PathBeneath::new(fd, access)).map_err(ll)?;
    }
    Option::<OwnedFd>::from(created)
        .ok_or_else(|| SandboxError::Landlock("the kernel returned no ruleset".into()))
}
