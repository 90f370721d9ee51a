//! Where things live: the workspace, its target dir, the e2e cache (`target/e2e`), and e2e's script folders.
//! All derived from this crate's manifest dir so tests work from any working directory.

use std::path::{Path, PathBuf};

/// The `e2e/` crate folder.
pub fn crate_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// The workspace root (parent of `e2e/`).
pub fn workspace_root() -> PathBuf {
    crate_dir()
        .parent()
        .map_or_else(|| crate_dir().to_path_buf(), Path::to_path_buf)
}

/// `$CARGO_TARGET_DIR` if set, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// Cache of installed peers: `<target>/e2e`.
pub fn cache_dir() -> PathBuf {
    target_dir().join("e2e")
}

/// Reusable Python client scripts (`e2e/py`).
pub fn py_dir() -> PathBuf {
    crate_dir().join("py")
}

/// Node helper scripts (`e2e/js`).
pub fn js_dir() -> PathBuf {
    crate_dir().join("js")
}
