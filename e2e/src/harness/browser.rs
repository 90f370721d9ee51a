//! A real headless browser for tests: Debian's `chromium` driven by npm `playwright-core`
//! (installed once under `target/e2e/node`, no browser download) through `e2e/js/browser.cjs`,
//! one JSON command per line. Cookies, redirects, JavaScript and CSP behave as for a user.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::{HarnessError, Result};
use super::node::{node_bin, npm_package, package_dir};
use super::paths;
use super::process::{ManagedChild, SpawnOptions};

/// The exact playwright-core release driving chromium (newest on npm when pinned).
pub const PLAYWRIGHT_CORE_SPEC: &str = "playwright-core@1.65.2";
/// Debian's chromium; override with `$REFLOW_E2E_CHROMIUM`.
pub const DEFAULT_CHROMIUM: &str = "/usr/bin/chromium";
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound for one command (page timeouts inside the driver are shorter).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// The chromium binary the harness drives, or `None` (with the reason) when it is missing,
/// so a test can skip with a printed reason on a machine without it.
pub fn chromium_path() -> std::result::Result<PathBuf, String> {
    let path = std::env::var_os("REFLOW_E2E_CHROMIUM")
        .map_or_else(|| PathBuf::from(DEFAULT_CHROMIUM), PathBuf::from);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "{} is missing (apt-get install chromium chromium-driver)",
            path.display()
        ))
    }
}

/// A running headless chromium with one page; killed (by PID) on drop.
#[derive(Debug)]
pub struct Browser {
    child: ManagedChild,
}

/// What `goto` saw: the HTTP status of the final response, the URL after redirects, headers.
#[derive(Debug, Clone)]
pub struct Navigation {
    pub status: Option<u16>,
    pub url: String,
    pub headers: Value,
}

impl Navigation {
    /// A response header (names are lower-case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(Value::as_str)
    }
}

impl Browser {
    /// Installs playwright-core (cached) and starts chromium headless.
    pub fn launch() -> Result<Self> {
        let chromium = chromium_path().map_err(HarnessError::Other)?;
        let prefix = npm_package(PLAYWRIGHT_CORE_SPEC)?;
        let pw = package_dir(&prefix, PLAYWRIGHT_CORE_SPEC);
        let mut cmd = Command::new(node_bin());
        cmd.arg(paths::js_dir().join("browser.cjs"))
            .arg("--playwright")
            .arg(&pw)
            .arg("--chromium")
            .arg(&chromium);
        let child = ManagedChild::spawn(
            "node browser.cjs (chromium)",
            &mut cmd,
            SpawnOptions {
                stdin: true,
                stdout_lines: true,
                full_stdout: false,
            },
        )?;
        let browser = Self { child };
        browser.answer(START_TIMEOUT, "start")?;
        Ok(browser)
    }

    fn answer(&self, timeout: Duration, what: &str) -> Result<Value> {
        let line = self.child.next_line(timeout)?;
        let reply: Value = serde_json::from_str(&line).map_err(|e| HarnessError::NoReport {
            what: format!("browser {what}"),
            detail: format!("{e}: {line}\n{}", self.child.output()),
        })?;
        if reply.get("ok").and_then(Value::as_bool) == Some(true) {
            Ok(reply.get("value").cloned().unwrap_or(Value::Null))
        } else {
            Err(HarnessError::Other(format!(
                "browser {what}: {}",
                reply.get("error").and_then(Value::as_str).unwrap_or("?")
            )))
        }
    }

    /// Sends one raw command (see `browser.cjs`) and returns its `value`.
    pub fn command(&mut self, cmd: Value) -> Result<Value> {
        let what = cmd
            .get("cmd")
            .and_then(Value::as_str)
            .unwrap_or("?")
            .to_owned();
        let stdin = self
            .child
            .stdin()
            .ok_or_else(|| HarnessError::Other("browser stdin is closed".to_owned()))?;
        let mut line = cmd.to_string();
        line.push('\n');
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| HarnessError::Other(format!("browser {what}: {e}")))?;
        self.answer(COMMAND_TIMEOUT, &what)
    }

    /// Navigates and waits for `load`.
    pub fn goto(&mut self, url: &str) -> Result<Navigation> {
        let v = self.command(json!({"cmd": "goto", "url": url}))?;
        Ok(Navigation {
            status: v
                .get("status")
                .and_then(Value::as_u64)
                .and_then(|s| u16::try_from(s).ok()),
            url: v
                .get("url")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned(),
            headers: v.get("headers").cloned().unwrap_or(Value::Null),
        })
    }

    pub fn fill(&mut self, selector: &str, value: &str) -> Result<()> {
        self.command(json!({"cmd": "fill", "selector": selector, "value": value}))
            .map(drop)
    }

    pub fn click(&mut self, selector: &str) -> Result<()> {
        self.command(json!({"cmd": "click", "selector": selector}))
            .map(drop)
    }

    /// Waits until `selector` is attached and visible.
    pub fn wait_for_selector(&mut self, selector: &str, timeout: Duration) -> Result<()> {
        self.command(
            json!({"cmd": "wait_for", "selector": selector, "timeout_ms": millis(timeout)}),
        )
        .map(drop)
    }

    /// Waits until some element shows `text` (substring).
    pub fn wait_for_text(&mut self, text: &str, timeout: Duration) -> Result<()> {
        self.command(json!({"cmd": "wait_for", "text": text, "timeout_ms": millis(timeout)}))
            .map(drop)
    }

    /// The visible text of `selector` (the whole body when `None`).
    pub fn text(&mut self, selector: Option<&str>) -> Result<String> {
        let mut cmd = json!({"cmd": "text"});
        if let Some(sel) = selector {
            cmd["selector"] = json!(sel);
        }
        Ok(self.command(cmd)?.as_str().unwrap_or_default().to_owned())
    }

    /// The page's current HTML.
    pub fn html(&mut self) -> Result<String> {
        Ok(self
            .command(json!({"cmd": "html"}))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    pub fn url(&mut self) -> Result<String> {
        Ok(self
            .command(json!({"cmd": "url"}))?
            .as_str()
            .unwrap_or_default()
            .to_owned())
    }

    /// The context's cookies as playwright reports them (`name`, `value`, `httpOnly`, `secure`, `sameSite`, ...).
    pub fn cookies(&mut self) -> Result<Vec<Value>> {
        match self.command(json!({"cmd": "cookies"}))? {
            Value::Array(list) => Ok(list),
            other => Err(HarnessError::Other(format!("browser cookies: {other}"))),
        }
    }

    /// A full-page PNG at `path` (parent directories are created).
    pub fn screenshot(&mut self, path: &Path) -> Result<PathBuf> {
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| HarnessError::io(parent, e))?;
        }
        self.command(json!({"cmd": "screenshot", "path": path.to_string_lossy()}))?;
        Ok(path.to_path_buf())
    }

    /// Evaluates a JavaScript expression in the page (awaited) and returns its JSON value.
    pub fn eval(&mut self, expr: &str) -> Result<Value> {
        self.command(json!({"cmd": "eval", "expr": expr}))
    }

    /// Drops cookies and storage: the next page is a different, logged-out user.
    pub fn new_context(&mut self) -> Result<()> {
        self.command(json!({"cmd": "new_context"})).map(drop)
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if let Some(stdin) = self.child.stdin() {
            let _ = stdin.write_all(b"{\"cmd\":\"close\"}\n");
        }
        self.child.close_stdin();
        if self.child.wait_timeout(Duration::from_secs(5)).is_none() {
            self.child.kill();
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
