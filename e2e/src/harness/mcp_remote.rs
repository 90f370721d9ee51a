//! `mcp-remote` (pinned), the STDIO-to-remote bridge Claude Desktop starts for remote servers,
//! as a client peer: started with a config's args, spoken to as a STDIO MCP server.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::{Value, json};

use super::error::{HarnessError, Result};
use super::node::{node_bin, npm_package, package_dir};
use super::process::{ManagedChild, SpawnOptions};

/// The exact mcp-remote release the e2e tests run.
pub const MCP_REMOTE_SPEC: &str = "mcp-remote@0.15.1";
const LINE_TIMEOUT: Duration = Duration::from_secs(30);

/// The package's proxy script (`bin.mcp-remote`), installing it on first use.
pub fn mcp_remote_script() -> Result<PathBuf> {
    let prefix = npm_package(MCP_REMOTE_SPEC)?;
    let script = package_dir(&prefix, MCP_REMOTE_SPEC)
        .join("dist")
        .join("proxy.js");
    if script.is_file() {
        Ok(script)
    } else {
        Err(HarnessError::Other(format!(
            "mcp-remote entry {} is missing",
            script.display()
        )))
    }
}

/// A running `mcp-remote` with a pipe to its stdin; killed by PID on drop.
pub struct McpRemote {
    child: ManagedChild,
    next_id: u64,
    _config_dir: PathBuf,
}

impl McpRemote {
    /// Starts `node proxy.js <args>` with `env`; its OAuth cache goes to a fresh folder under
    /// `scratch` (never the user's home).
    pub fn spawn(
        args: &[String],
        env: &[(String, String)],
        scratch: &std::path::Path,
    ) -> Result<Self> {
        let config_dir = scratch.join("mcp-auth");
        std::fs::create_dir_all(&config_dir).map_err(|e| HarnessError::io(&config_dir, e))?;
        let mut cmd = Command::new(node_bin());
        cmd.arg(mcp_remote_script()?)
            .args(args)
            .env("MCP_REMOTE_CONFIG_DIR", &config_dir);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let opts = SpawnOptions {
            stdin: true,
            stdout_lines: true,
            full_stdout: false,
        };
        let child = ManagedChild::spawn("mcp-remote", &mut cmd, opts)?;
        Ok(Self {
            child,
            next_id: 1,
            _config_dir: config_dir,
        })
    }

    fn send(&mut self, msg: &Value) -> Result<()> {
        use std::io::Write;
        let line = format!("{msg}\n");
        let stdin = self
            .child
            .stdin()
            .ok_or_else(|| HarnessError::Other("mcp-remote has no stdin".into()))?;
        stdin
            .write_all(line.as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| HarnessError::Other(format!("writing to mcp-remote: {e}")))
    }

    /// Sends a request and returns its response (skipping notifications and anything else).
    pub fn request(&mut self, method: &str, params: Value) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        loop {
            let line = self.child.next_line(LINE_TIMEOUT).map_err(|e| {
                HarnessError::Other(format!("{e}\nmcp-remote output:\n{}", self.child.output()))
            })?;
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                return Ok(msg);
            }
        }
    }

    /// `initialize` then `notifications/initialized`; returns the initialize result.
    pub fn initialize(&mut self) -> Result<Value> {
        let reply = self.request(
            "initialize",
            json!({
                "protocolVersion": "2025-06-18",
                "capabilities": {},
                "clientInfo": {"name": "reflow-e2e-mcp-remote", "version": "0"},
            }),
        )?;
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        Ok(reply)
    }

    /// Its output so far (for diagnostics).
    pub fn output(&self) -> String {
        self.child.output()
    }
}
