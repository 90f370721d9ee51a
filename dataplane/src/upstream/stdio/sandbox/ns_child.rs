//! The namespace steps, run in the forked child before exec: raw syscalls on memory prepared
//! before the fork, no allocation, no locks. Three processes come out of it: the spawned one
//! (outside, the pid the gateway knows) waits for the init; the init (PID 1 of the new PID
//! namespace) mounts the private /proc and /tmp and waits for the server; the server returns
//! to the rest of the sandbox and execs. Both waiters forward termination signals, reap, and
//! exit with the status of the process they wait for (128 + signal when it was killed).

use std::ffi::CStr;
use std::io;
use std::os::fd::AsRawFd;

use super::child::add_path_rule;
use super::namespaces::NsPlan;

/// Signals a waiter passes on to the process it waits for.
const FORWARDED: &[libc::c_int] = &[
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
    libc::SIGQUIT,
    libc::SIGUSR1,
    libc::SIGUSR2,
];

/// Enters the namespaces. Returns only in the server process; the two waiters never return.
/// `ruleset` is the child's Landlock ruleset (negative in the probe: no rules to add).
pub(super) fn enter(plan: &NsPlan, ruleset: libc::c_int) -> io::Result<()> {
    let report = plan.report_w.as_raw_fd();
    // SAFETY: unshare(2) with flags; this process is single-threaded (just forked).
    check(report, 1, unsafe {
        libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS)
    })?;
    write_maps(plan, report)?;
    // SAFETY: as above; the next child is PID 1 of the new namespace.
    check(report, 5, unsafe { libc::unshare(libc::CLONE_NEWPID) })?;
    // Signals are blocked from here on in both waiters (taken with sigwaitinfo); the server
    // unblocks them. SIGCHLD must not be ignored, or children would be reaped behind our back.
    let all = full_sigset();
    // SAFETY: sigprocmask and signal with a set on our stack.
    unsafe {
        libc::sigprocmask(libc::SIG_BLOCK, &raw const all, std::ptr::null_mut());
        libc::signal(libc::SIGCHLD, libc::SIG_DFL);
    }
    let init = fork();
    if init < 0 {
        unblock_all();
        return Err(fail(report, 6));
    }
    if init > 0 {
        supervise(init);
    }
    // The init: dies with the waiter outside (then the kernel kills the whole namespace).
    // SAFETY: prctl with integers.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
    if init_mounts(plan, ruleset, report).is_err() {
        // SAFETY: leaving the init; the report says why.
        unsafe { libc::_exit(125) };
    }
    let server = fork();
    if server < 0 {
        fail(report, 12);
        // SAFETY: as above.
        unsafe { libc::_exit(125) };
    }
    if server > 0 {
        supervise(server);
    }
    unblock_all();
    // A root gateway maps root: without this, exec would hand the server every capability
    // inside its user namespace.
    // SAFETY: plain integer calls.
    if unsafe { libc::geteuid() } == 0 {
        let bits = libc::SECBIT_NOROOT | libc::SECBIT_NOROOT_LOCKED;
        check(report, 12, unsafe {
            libc::prctl(libc::PR_SET_SECUREBITS, bits as libc::c_ulong, 0, 0, 0)
        })?;
    }
    Ok(())
}

/// Maps the gateway's uid and gid (and nothing else) into the new user namespace. A
/// non-dumpable process's /proc files belong to root, which an unprivileged gateway cannot
/// write: dumpable is raised for the three writes and dropped again.
fn write_maps(plan: &NsPlan, report: libc::c_int) -> io::Result<()> {
    // SAFETY: prctl with integers.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 1, 0, 0, 0) };
    let r = write_file(c"/proc/self/setgroups", b"deny\n")
        .map_err(|e| fail_with(report, 2, e))
        .and_then(|()| {
            write_file(c"/proc/self/uid_map", &plan.uid_map).map_err(|e| fail_with(report, 3, e))
        })
        .and_then(|()| {
            write_file(c"/proc/self/gid_map", &plan.gid_map).map_err(|e| fail_with(report, 4, e))
        });
    // SAFETY: as above.
    unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) };
    r
}

/// In the init: private propagation, a /proc of this PID namespace, a private /tmp (with
/// HOME bound back at its own path when it lies under /tmp), and Landlock rights on both.
fn init_mounts(plan: &NsPlan, ruleset: libc::c_int, report: libc::c_int) -> io::Result<()> {
    let null = std::ptr::null::<libc::c_char>();
    // SAFETY (all mount calls): NUL-terminated static strings or CStrings owned by `plan`.
    check(report, 7, unsafe {
        libc::mount(
            null,
            c"/".as_ptr(),
            null,
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        )
    })?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    check(report, 8, unsafe {
        libc::mount(
            c"proc".as_ptr(),
            c"/proc".as_ptr(),
            c"proc".as_ptr(),
            flags,
            std::ptr::null(),
        )
    })?;
    if let Some(opts) = &plan.tmp_opts {
        // HOME is opened in this mount namespace (a bind source must belong to it) before the
        // tmpfs hides it.
        let home_fd = match plan.home_chain.last() {
            Some(home) => {
                let fd = unsafe { libc::open(home.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
                if fd < 0 {
                    return Err(fail(report, 10));
                }
                Some(fd)
            }
            None => None,
        };
        check(report, 9, unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                c"/tmp".as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                opts.as_ptr().cast(),
            )
        })?;
        if let Some(fd) = home_fd {
            bind_home(plan, fd, report)?;
        }
    }
    if ruleset >= 0 {
        add_path_rule(ruleset, c"/proc", plan.proc_access).map_err(|e| fail_with(report, 11, e))?;
        if plan.tmp_opts.is_some() {
            add_path_rule(ruleset, c"/tmp", plan.tmp_access)
                .map_err(|e| fail_with(report, 11, e))?;
        }
    }
    Ok(())
}

fn bind_home(plan: &NsPlan, fd: libc::c_int, report: libc::c_int) -> io::Result<()> {
    let Some(home) = plan.home_chain.last() else {
        return Ok(());
    };
    for dir in &plan.home_chain {
        // SAFETY: mkdir(2) of a CString owned by `plan`.
        if unsafe { libc::mkdir(dir.as_ptr(), 0o700) } != 0 {
            return Err(fail(report, 10));
        }
    }
    let mut buf = [0u8; 40];
    let src = fd_path(fd, &mut buf);
    // SAFETY: both paths are NUL-terminated; `src` names our open HOME descriptor.
    check(report, 10, unsafe {
        libc::mount(
            src.as_ptr(),
            home.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    })?;
    // SAFETY: chdir(2) of a CString owned by `plan`; the server starts in its HOME.
    check(report, 10, unsafe { libc::chdir(home.as_ptr()) })
}

/// `/proc/self/fd/<fd>` written into `buf` without allocating.
fn fd_path(fd: libc::c_int, buf: &mut [u8; 40]) -> &CStr {
    const PREFIX: &[u8] = b"/proc/self/fd/";
    buf[..PREFIX.len()].copy_from_slice(PREFIX);
    let mut digits = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        buf[PREFIX.len() + i] = digits[len - 1 - i];
    }
    buf[PREFIX.len() + len] = 0;
    CStr::from_bytes_until_nul(&buf[..]).unwrap_or(c"/")
}

/// Waits for `child`, forwarding termination signals to it and reaping every child (the init
/// inherits the namespace's orphans); exits with `child`'s status. Never returns.
fn supervise(child: libc::pid_t) -> ! {
    close_all();
    let all = full_sigset();
    loop {
        // SAFETY: sigwaitinfo(2) with a set on our stack; the info is not needed.
        let sig = unsafe { libc::sigwaitinfo(&raw const all, std::ptr::null_mut()) };
        if sig == libc::SIGCHLD {
            loop {
                let mut status = 0;
                // SAFETY: waitpid(2) writes the status on our stack.
                let r = unsafe { libc::waitpid(-1, &raw mut status, libc::WNOHANG) };
                if r <= 0 {
                    break;
                }
                if r == child {
                    let code = if libc::WIFSIGNALED(status) {
                        128 + libc::WTERMSIG(status)
                    } else {
                        libc::WEXITSTATUS(status)
                    };
                    // SAFETY: leaving; when the init leaves, the kernel kills what is left
                    // in its namespace.
                    unsafe { libc::_exit(code) };
                }
            }
        } else if FORWARDED.contains(&sig) {
            // SAFETY: kill(2) with integers, to our own child.
            unsafe { libc::kill(child, sig) };
        }
    }
}

/// Closes every descriptor: a waiter keeps no pipe of the server's (or of the spawn's error
/// channel) open.
fn close_all() {
    // SAFETY: close_range(2) with integer bounds; on kernels without it, close one by one.
    if unsafe { libc::syscall(libc::SYS_close_range, 0u32, u32::MAX, 0u32) } != 0 {
        for fd in 0..4096 {
            // SAFETY: closing descriptors this process no longer needs.
            unsafe { libc::close(fd) };
        }
    }
}

/// A fork without libc's atfork handlers (the parent is multi-threaded: only raw syscalls).
fn fork() -> libc::pid_t {
    // SAFETY: clone(2) with SIGCHLD and no stack behaves as fork(2).
    let r = unsafe { libc::syscall(libc::SYS_clone, libc::SIGCHLD as libc::c_ulong, 0, 0, 0, 0) };
    libc::pid_t::try_from(r).unwrap_or(-1)
}

fn full_sigset() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigfillset initialises it.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigfillset(&raw mut set) };
    set
}

fn unblock_all() {
    // SAFETY: as in `full_sigset`; sigprocmask with a set on our stack.
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigemptyset(&raw mut empty);
        libc::sigprocmask(libc::SIG_SETMASK, &raw const empty, std::ptr::null_mut());
    }
}

fn write_file(path: &CStr, bytes: &[u8]) -> io::Result<()> {
    // SAFETY: open/write/close on a NUL-terminated path and a borrowed buffer.
    unsafe {
        let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let n = libc::write(fd, bytes.as_ptr().cast(), bytes.len());
        let err = io::Error::last_os_error();
        libc::close(fd);
        if usize::try_from(n).ok() != Some(bytes.len()) {
            return Err(err);
        }
    }
    Ok(())
}

/// A syscall's result: on failure, the step and errno go to the report pipe.
fn check(report: libc::c_int, step: u8, rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(fail(report, step))
    }
}

/// Writes `step` and the current errno to the report pipe; returns that errno.
fn fail(report: libc::c_int, step: u8) -> io::Error {
    fail_with(report, step, io::Error::last_os_error())
}

fn fail_with(report: libc::c_int, step: u8, err: io::Error) -> io::Error {
    let errno = err.raw_os_error().unwrap_or(0).to_le_bytes();
    let msg = [step, errno[0], errno[1], errno[2], errno[3]];
    // SAFETY: write(2) of our stack buffer; a full pipe or closed end only loses the detail.
    unsafe { libc::write(report, msg.as_ptr().cast(), msg.len()) };
    err
}
