//! npm packages as test peers: `npm_package(spec)` installs a pinned spec once into `target/e2e/node/<spec>`.
//! Installs are cached and concurrency-safe (lock + temp dir + rename); install scripts are not run.

use std::collections::HashMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use super::cache;
use super::error::{HarnessError, Result};
use super::paths;
use super::process::run_bounded;

const NPM_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const NPM_LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// The node binary: `$REFLOW_E2E_NODE`, else `node`.
pub fn node_bin() -> OsString {
    std::env::var_os("REFLOW_E2E_NODE").unwrap_or_else(|| "node".into())
}

/// A directory name for `spec`: every character outside `[A-Za-z0-9._-]` becomes `_`.
pub fn sanitize(spec: &str) -> String {
    spec.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The package name of a spec: `@scope/name@1.2.3` → `@scope/name`.
pub fn package_name(spec: &str) -> &str {
    match spec.rfind('@') {
        Some(i) if i > 0 => &spec[..i],
        _ => spec,
    }
}

/// Where an installed package's files are, given the prefix `npm_package` returned.
pub fn package_dir(prefix: &Path, spec: &str) -> PathBuf {
    prefix.join("node_modules").join(package_name(spec))
}

/// Installs `spec` (pin it: `name@x.y.z`) into `<target>/e2e/node/<sanitized spec>` once; returns that prefix.
pub fn npm_package(spec: &str) -> Result<PathBuf> {
    static DONE: OnceLock<Mutex<HashMap<String, Result<PathBuf, String>>>> = OnceLock::new();
    let done = DONE.get_or_init(Mutex::default);
    let mut done = done.lock().unwrap_or_else(|p| p.into_inner());
    let entry = done
        .entry(spec.to_owned())
        .or_insert_with(|| install(spec).map_err(|e| e.to_string()));
    entry.clone().map_err(HarnessError::Other)
}

fn install(spec: &str) -> Result<PathBuf> {
    let dest = paths::cache_dir().join("node").join(sanitize(spec));
    cache::ensure(&dest, spec, NPM_LOCK_TIMEOUT, |tmp| {
        std::fs::create_dir_all(tmp).map_err(|e| HarnessError::io(tmp, e))?;
        run_bounded(
            &format!("npm install {spec}"),
            Command::new("npm")
                .arg("install")
                .arg("--prefix")
                .arg(tmp)
                .args([
                    "--no-audit",
                    "--no-fund",
                    "--ignore-scripts",
                    "--loglevel=error",
                    spec,
                ]),
            NPM_TIMEOUT,
        )?;
        let installed = package_dir(tmp, spec).join("package.json");
        if installed.is_file() {
            Ok(())
        } else {
            Err(HarnessError::Other(format!(
                "npm install {spec} left no {}",
                installed.display()
            )))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_dirs() {
        let spec = "@modelcontextprotocol/server-everything@2026.8.31";
        assert_eq!(
            package_name(spec),
            "@modelcontextprotocol/server-everything"
        );
        assert_eq!(package_name("left-pad"), "left-pad");
        assert_eq!(package_name("left-pad@1.0.0"), "left-pad");
        assert_eq!(
            sanitize(spec),
            "_modelcontextprotocol_server-everything_2026.8.31"
        );
    }
}
