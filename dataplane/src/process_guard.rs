//! What the gateway process drops at start: secret environment variables are taken once and
//! scrubbed from `/proc/<pid>/environ`, and the process is made non-dumpable (no ptrace, no core).

use std::collections::HashMap;
use std::ffi::CStr;
use std::sync::OnceLock;

use secrecy::SecretString;

static TAKEN: OnceLock<HashMap<&'static str, SecretString>> = OnceLock::new();

unsafe extern "C" {
    static mut environ: *mut *mut libc::c_char;
}

/// Takes `names` out of the environment (their values stay readable through [`secret_env`]),
/// overwrites the original bytes `/proc/<pid>/environ` shows, and sets PR_SET_DUMPABLE 0 so
/// processes of the same uid cannot ptrace the gateway or read its memory.
///
/// # Safety
/// Call first thing in `main`, while the process has a single thread: it edits the
/// environment, which other threads could be reading.
pub unsafe fn seal(names: &[&'static str]) {
    let mut taken = HashMap::new();
    for name in names {
        if let Ok(value) = std::env::var(name) {
            taken.insert(*name, SecretString::from(value));
            // SAFETY: single-threaded (the caller's contract).
            unsafe { scrub(name) };
            // SAFETY: as above.
            unsafe { std::env::remove_var(name) };
        }
    }
    let _ = TAKEN.set(taken);
    // SAFETY: plain integer arguments.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
}

/// A secret variable [`seal`] took, if it was set.
pub fn secret_env(name: &str) -> Option<SecretString> {
    TAKEN.get().and_then(|t| t.get(name)).cloned()
}

/// Zeroes the value bytes of `NAME=value` where the kernel placed them: `/proc/<pid>/environ`
/// reads that original block, which `remove_var` alone leaves intact.
unsafe fn scrub(name: &str) {
    // SAFETY: `environ` is a NULL-terminated array of NUL-terminated strings; we write only
    // inside the value of a matching entry, never past its terminating NUL.
    unsafe {
        let mut entry = environ;
        while !entry.is_null() && !(*entry).is_null() {
            let s = *entry;
            let bytes = CStr::from_ptr(s).to_bytes();
            if bytes.len() > name.len()
                && bytes.starts_with(name.as_bytes())
                && bytes[name.len()] == b'='
            {
                let value = s.add(name.len() + 1);
                std::ptr::write_bytes(value, 0, bytes.len() - name.len() - 1);
            }
            entry = entry.add(1);
        }
    }
}
