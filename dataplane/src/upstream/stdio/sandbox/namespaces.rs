//! The namespace part of a child's sandbox: a user namespace mapping only the gateway's own
//! uid/gid, a PID namespace with a minimal init as PID 1, and a mount namespace with a private
//! `/proc` and `/tmp`. Built here before the fork; `ns_child` applies it without allocating.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::OnceLock;

use super::SandboxError;

/// What each step of the setup is called in errors (index = step code of the report).
pub(super) const STEPS: &[&str] = &[
    "none",
    "unshare user+mount namespaces",
    "deny setgroups",
    "write uid_map",
    "write gid_map",
    "unshare PID namespace",
    "start the namespace init",
    "make mounts private",
    "mount a private /proc",
    "mount a private /tmp",
    "bind HOME into the private /tmp",
    "allow the private /proc and /tmp in Landlock",
    "start the server under the init",
];

/// Everything the in-child steps need, as bytes and integers prepared before the fork.
pub(in crate::upstream::stdio) struct NsPlan {
    pub(super) uid_map: Vec<u8>,
    pub(super) gid_map: Vec<u8>,
    /// tmpfs options of the private /tmp (`size=…,mode=0700`), or `None` without a /tmp.
    pub(super) tmp_opts: Option<CString>,
    /// HOME when it lies under /tmp: the folders to recreate in the private /tmp, outermost
    /// first, the last being HOME itself, bound there from the original.
    pub(super) home_chain: Vec<CString>,
    /// Write end of the report pipe: a failed step writes its code and errno there.
    pub(super) report_w: OwnedFd,
    pub(super) report_r: OwnedFd,
    /// Landlock rights for the private /proc (read) and /tmp (all); 0 in the probe (no ruleset).
    pub(super) proc_access: u64,
    pub(super) tmp_access: u64,
}

impl NsPlan {
    /// A plan for one child whose HOME is `home` (created already), with a private /tmp of at
    /// most `tmp_mib` MiB, unless one of `needed` (its program, its read-only paths) lies
    /// under /tmp: the private /tmp would hide it, so the child keeps the host's (where
    /// Landlock still grants it only its HOME and those paths).
    pub(super) fn new(
        home: Option<&Path>,
        needed: &[&Path],
        tmp_mib: u32,
    ) -> Result<Self, SandboxError> {
        // SAFETY: plain getters.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        let tmp = Path::new("/tmp");
        let tmp_opts = (tmp.is_dir() && !needed.iter().any(|p| p.starts_with(tmp)))
            .then(|| CString::new(format!("size={tmp_mib}m,mode=0700")))
            .transpose()
            .map_err(|e| SandboxError::Namespaces(e.to_string()))?;
        let mut home_chain = Vec::new();
        if let Some(home) = home.filter(|h| tmp_opts.is_some() && h.starts_with(tmp)) {
            let mut at = tmp.to_path_buf();
            for part in home
                .strip_prefix(tmp)
                .into_iter()
                .flat_map(Path::components)
            {
                at.push(part);
                home_chain.push(c_path(&at)?);
            }
        }
        let (report_r, report_w) =
            pipe().map_err(|e| SandboxError::Namespaces(format!("report pipe: {e}")))?;
        Ok(Self {
            uid_map: format!("{uid} {uid} 1\n").into_bytes(),
            gid_map: format!("{gid} {gid} 1\n").into_bytes(),
            tmp_opts,
            home_chain,
            report_w,
            report_r,
            proc_access: 0,
            tmp_access: 0,
        })
    }

    /// After the spawn: the step that failed in the child, if one did. Every writer has
    /// closed the pipe by now (the server exec'd, the inits closed their descriptors), so the
    /// read does not block.
    pub(super) fn failure(self) -> Option<SandboxError> {
        let Self {
            report_r, report_w, ..
        } = self;
        drop(report_w);
        let mut buf = [0u8; 5];
        // SAFETY: read(2) into our stack buffer.
        let n = unsafe { libc::read(report_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n != 5 {
            return None;
        }
        let step = STEPS.get(usize::from(buf[0])).copied().unwrap_or("unknown");
        let errno = i32::from_le_bytes([buf[1], buf[2], buf[3], buf[4]]);
        Some(SandboxError::Namespaces(format!(
            "{step}: {}",
            std::io::Error::from_raw_os_error(errno)
        )))
    }
}

fn c_path(p: &Path) -> Result<CString, SandboxError> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| SandboxError::Namespaces(format!("{} has a NUL byte", p.display())))
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2(2) fills the two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: two fresh descriptors, owned only here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Whether this kernel (and the pod's seccomp profile, AppArmor, `max_user_namespaces`) lets
/// an unprivileged process build the namespaces: tried once, in a throwaway child, with the
/// very steps a real spawn takes. `Err` says which step failed and why.
pub fn available() -> Result<(), String> {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    PROBE.get_or_init(probe).clone()
}

fn probe() -> Result<(), String> {
    let plan = NsPlan::new(None, &[], 1).map_err(|e| e.to_string())?;
    // SAFETY: a fork-like clone; the child makes only raw syscalls (`ns_child`) and `_exit`s.
    let pid = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    if pid < 0 {
        return Err(format!("fork: {}", std::io::Error::last_os_error()));
    }
    if pid == 0 {
        let code = match super::ns_child::enter(&plan, -1) {
            Ok(()) => 0,
            Err(_) => 1,
        };
        // SAFETY: leaving the probe child (and, in the server role, its init) at once.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for the probe child just started; `status` is ours.
        let r = unsafe { libc::waitpid(pid as libc::pid_t, &raw mut status, 0) };
        if r >= 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            break;
        }
    }
    match plan.failure() {
        Some(e) => Err(e.to_string()),
        None if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 => Ok(()),
        None => Err(format!("the probe child ended with status {status}")),
    }
}
