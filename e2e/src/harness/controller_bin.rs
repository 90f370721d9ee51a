//! Workspace binaries for tests that run them as processes: `$<ENV>` when set, else the one in
//! the target folder, brought up to date once per test process with cargo.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::paths::{target_dir, workspace_root};
use super::process::run_bounded;

/// `$env` if set, else `target/debug/<binary>` after `cargo build -p <package> --bin <binary>`
/// (once per process; a no-op when current: `cargo test -p reflow-e2e` alone would not rebuild
/// another package's binary).
pub fn workspace_bin(package: &str, binary: &str, env: &str) -> Result<PathBuf> {
    if let Some(path) = std::env::var_os(env) {
        return Ok(PathBuf::from(path));
    }
    static BUILT: OnceLock<Mutex<HashMap<String, std::result::Result<(), String>>>> =
        OnceLock::new();
    let mut built = BUILT
        .get_or_init(Mutex::default)
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let outcome = built.entry(binary.to_owned()).or_insert_with(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build
            .current_dir(workspace_root())
            .args(["build", "-q", "-p", package, "--bin", binary]);
        run_bounded(
            &format!("cargo build {package}"),
            &mut build,
            Duration::from_secs(900),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    let path = target_dir().join("debug").join(binary);
    match outcome {
        Ok(()) if path.is_file() => Ok(path),
        Ok(()) => Err(HarnessError::Other(format!(
            "{} not found after building it",
            path.display()
        ))),
        Err(e) => Err(HarnessError::Other(format!(
            "{e}\n(set {env} to use a prebuilt {binary})"
        ))),
    }
}

/// The `reflow-controller` binary (`$REFLOW_CONTROLLER_BIN` or built).
pub fn controller_bin() -> Result<PathBuf> {
    workspace_bin(
        "reflow-controller",
        "reflow-controller",
        "REFLOW_CONTROLLER_BIN",
    )
}
