//! `e2e/py/mcpserver_server.py` as an upstream peer: an MCP server on the official Python SDK's
//! `MCPServer` (FastMCP before mcp 2.x), over stateful or stateless Streamable HTTP, or STDIO.

use std::process::Command;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::paths;
use super::process::{CommandLine, ManagedChild, SpawnOptions};
use super::python::venv_python;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// How the Python server is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyServerMode {
    /// Streamable HTTP with sessions.
    Stateful,
    /// Streamable HTTP, `stateless_http=True`.
    Stateless,
}

/// A running Python server on a free loopback port; stopped by PID on drop.
#[derive(Debug)]
pub struct PyServer {
    child: ManagedChild,
    port: u16,
}

impl PyServer {
    fn script() -> String {
        paths::py_dir()
            .join("mcpserver_server.py")
            .to_string_lossy()
            .into_owned()
    }

    /// How to start it as a STDIO server (for stdio Targets).
    pub fn stdio_command() -> Result<CommandLine> {
        Ok(CommandLine {
            program: venv_python()?,
            args: vec![Self::script(), "--transport".into(), "stdio".into()],
        })
    }

    /// Starts it in `mode` and waits (bounded) until it accepts connections.
    pub fn spawn(mode: PyServerMode) -> Result<Self> {
        let transport = match mode {
            PyServerMode::Stateful => "streamable-http",
            PyServerMode::Stateless => "stateless-http",
        };
        let port = free_loopback_port()?;
        let mut cmd = Command::new(venv_python()?);
        cmd.arg(Self::script())
            .args(["--transport", transport, "--port"])
            .arg(port.to_string());
        let mut child = ManagedChild::spawn("py-server", &mut cmd, SpawnOptions::default())?;
        let addr = loopback(port);
        match poll_until(READY_TIMEOUT, || {
            if child.try_status().is_some() {
                Some(false)
            } else {
                accepts(addr).then_some(true)
            }
        }) {
            Some(true) => Ok(Self { child, port }),
            _ => Err(HarnessError::NotReady {
                what: format!("py-server {transport}"),
                detail: child.output(),
            }),
        }
    }

    /// The MCP endpoint, `http://127.0.0.1:PORT/mcp`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// Its output so far (for diagnostics).
    pub fn output(&self) -> String {
        self.child.output()
    }
}
