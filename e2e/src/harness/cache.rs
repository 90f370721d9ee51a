//! Build-once caches under `target/e2e`, safe across concurrent test processes.
//! A flock-style lock file serialises builders; each build goes into a temp dir that is renamed into place.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::error::{HarnessError, Result};

/// File inside a finished cache entry recording what it was built from.
pub const STAMP_FILE: &str = ".reflow-e2e-stamp";

/// True if `dest` is a finished build of `stamp`.
pub fn is_ready(dest: &Path, stamp: &str) -> bool {
    std::fs::read_to_string(dest.join(STAMP_FILE)).is_ok_and(|s| s == stamp)
}

/// An exclusive advisory lock on a file, released on drop (or by the OS if the process dies).
#[derive(Debug)]
pub struct FileLock {
    file: File,
}

impl FileLock {
    /// Retries `try_lock` until it succeeds or `timeout` passes.
    pub fn acquire(path: &Path, timeout: Duration) -> Result<Self> {
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(path)
            .map_err(|e| HarnessError::io(path, e))?;
        let deadline = Instant::now() + timeout;
        loop {
            match file.try_lock() {
                Ok(()) => return Ok(Self { file }),
                Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(TryLockError::WouldBlock) => {
                    return Err(HarnessError::Timeout {
                        what: format!("waiting for lock {}", path.display()),
                        after: timeout,
                        output: String::new(),
                    });
                }
                Err(TryLockError::Error(e)) => return Err(HarnessError::io(path, e)),
            }
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

fn unique_suffix() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!("{}-{nanos}", std::process::id())
}

/// Returns `dest` once it holds a finished build of `stamp`, building it with `build(tmp_dir)` if needed.
///
/// Builders are serialised by `<dest>.lock`; a build that fails or times out leaves nothing at `dest`.
/// A `dest` built from a different stamp (an older pin) is replaced.
pub fn ensure(
    dest: &Path,
    stamp: &str,
    lock_timeout: Duration,
    build: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    if is_ready(dest, stamp) {
        return Ok(dest.to_path_buf());
    }
    let parent = dest
        .parent()
        .ok_or_else(|| HarnessError::Other(format!("{} has no parent", dest.display())))?;
    std::fs::create_dir_all(parent).map_err(|e| HarnessError::io(parent, e))?;
    let name = dest
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "cache".to_owned());
    let _lock = FileLock::acquire(&parent.join(format!("{name}.lock")), lock_timeout)?;
    if is_ready(dest, stamp) {
        return Ok(dest.to_path_buf());
    }
    if dest.exists() {
        std::fs::remove_dir_all(dest).map_err(|e| HarnessError::io(dest, e))?;
    }
    let tmp = parent.join(format!(".{name}.tmp-{}", unique_suffix()));
    let built = build(&tmp).and_then(|()| {
        let mut f = File::create(tmp.join(STAMP_FILE)).map_err(|e| HarnessError::io(&tmp, e))?;
        f.write_all(stamp.as_bytes())
            .map_err(|e| HarnessError::io(&tmp, e))?;
        std::fs::rename(&tmp, dest).map_err(|e| HarnessError::io(dest, e))
    });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    built.map(|()| dest.to_path_buf())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_once_and_rebuilds_on_new_stamp() {
        let root = std::env::temp_dir().join(format!("reflow-e2e-cache-{}", unique_suffix()));
        let dest = root.join("thing");
        let mut builds = 0;
        for stamp in ["v1", "v1", "v2"] {
            ensure(&dest, stamp, Duration::from_secs(5), |tmp| {
                builds += 1;
                std::fs::create_dir_all(tmp).map_err(|e| HarnessError::io(tmp, e))
            })
            .expect("ensure");
            assert!(is_ready(&dest, stamp));
        }
        assert_eq!(builds, 2);
        let failed = ensure(&root.join("bad"), "v1", Duration::from_secs(5), |_| {
            Err(HarnessError::Other("boom".into()))
        });
        assert!(failed.is_err());
        assert!(!root.join("bad").exists());
        let _ = std::fs::remove_dir_all(root);
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let path = std::env::temp_dir().join(format!("reflow-e2e-lock-{}", unique_suffix()));
        let first = FileLock::acquire(&path, Duration::from_secs(1)).expect("first");
        assert!(FileLock::acquire(&path, Duration::from_millis(300)).is_err());
        drop(first);
        assert!(FileLock::acquire(&path, Duration::from_secs(1)).is_ok());
        let _ = std::fs::remove_file(path);
    }
}
