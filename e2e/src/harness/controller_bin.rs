//! The `reflow-controller` binary for tests that run it as a process: `$REFLOW_CONTROLLER_BIN`,
//! else the one in the target folder, brought up to date once per test process with cargo.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::paths::{target_dir, workspace_root};
use super::process::run_bounded;

const BINARY: &str = "reflow-controller";

/// Like `dataplane_bin`: `cargo test -p reflow-e2e` alone would not rebuild another package's
/// binary, so it is built here (a no-op when current).
pub fn controller_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REFLOW_CONTROLLER_BIN") {
        return Ok(PathBuf::from(path));
    }
    static BUILT: OnceLock<std::result::Result<(), String>> = OnceLock::new();
    let built = BUILT.get_or_init(|| {
        let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
        let mut build = Command::new(cargo);
        build.current_dir(workspace_root()).args([
            "build",
            "-q",
            "-p",
            "reflow-controller",
            "--bin",
            BINARY,
        ]);
        run_bounded(
            "cargo build reflow-controller",
            &mut build,
            Duration::from_secs(900),
        )
        .map(|_| ())
        .map_err(|e| e.to_string())
    });
    let path = target_dir().join("debug").join(BINARY);
    match built {
        Ok(()) if path.is_file() => Ok(path),
        Ok(()) => Err(HarnessError::Other(format!(
            "{} not found after building it",
            path.display()
        ))),
        Err(e) => Err(HarnessError::Other(format!(
            "{e}\n(set REFLOW_CONTROLLER_BIN to use a prebuilt reflow-controller)"
        ))),
    }
}
