//! `@modelcontextprotocol/server-everything` (pinned) as an upstream peer in streamableHttp or sse mode.
//! Runs under `node --require js/force-loopback.cjs` so it listens on 127.0.0.1 only; stopped by PID on drop.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::node::{node_bin, npm_package, package_dir};
use super::paths;
use super::process::{CommandLine, ManagedChild, SpawnOptions};

/// The exact server-everything release the e2e tests run (newest on npm when pinned).
pub const SERVER_EVERYTHING_SPEC: &str = "@modelcontextprotocol/server-everything@2026.8.31";
const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SPAWN_ATTEMPTS: usize = 3;

/// Which HTTP transport server-everything serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EverythingMode {
    /// Streamable HTTP at `/mcp`.
    StreamableHttp,
    /// Legacy HTTP+SSE at `/sse` (messages at `/message`).
    Sse,
}

impl EverythingMode {
    /// The CLI argument selecting the mode (`dist/index.js <mode>`).
    pub fn arg(self) -> &'static str {
        match self {
            EverythingMode::StreamableHttp => "streamableHttp",
            EverythingMode::Sse => "sse",
        }
    }

    fn path(self) -> &'static str {
        match self {
            EverythingMode::StreamableHttp => "/mcp",
            EverythingMode::Sse => "/sse",
        }
    }
}

/// A running server-everything on a free loopback port.
#[derive(Debug)]
pub struct ServerEverything {
    child: ManagedChild,
    port: u16,
    mode: EverythingMode,
}

impl ServerEverything {
    /// The package's entry script (installing the pinned package on first use).
    pub fn entry_script() -> Result<PathBuf> {
        let prefix = npm_package(SERVER_EVERYTHING_SPEC)?;
        let entry = package_dir(&prefix, SERVER_EVERYTHING_SPEC)
            .join("dist")
            .join("index.js");
        if entry.is_file() {
            Ok(entry)
        } else {
            Err(HarnessError::Other(format!(
                "server-everything entry {} is missing",
                entry.display()
            )))
        }
    }

    /// How to start it as a stdio server (for stdio Targets and stdio clients).
    pub fn stdio_command() -> Result<CommandLine> {
        let entry = Self::entry_script()?;
        Ok(CommandLine {
            program: PathBuf::from(node_bin()),
            args: vec![entry.to_string_lossy().into_owned(), "stdio".to_owned()],
        })
    }

    /// Starts it in `mode` and waits (bounded) until it accepts connections.
    pub fn spawn(mode: EverythingMode) -> Result<Self> {
        let entry = Self::entry_script()?;
        let preload = paths::js_dir().join("force-loopback.cjs");
        let what = format!("server-everything {}", mode.arg());
        let mut last_failure = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = free_loopback_port()?;
            let mut cmd = Command::new(node_bin());
            cmd.arg("--require")
                .arg(&preload)
                .arg(&entry)
                .arg(mode.arg())
                .env("PORT", port.to_string())
                .env("REFLOW_E2E_BIND_HOST", "127.0.0.1");
            let mut child = ManagedChild::spawn(&what, &mut cmd, SpawnOptions::default())?;
            let addr = loopback(port);
            let ready = poll_until(READY_TIMEOUT, || {
                if child.try_status().is_some() {
                    Some(false)
                } else {
                    accepts(addr).then_some(true)
                }
            });
            match ready {
                Some(true) => return Ok(Self { child, port, mode }),
                // Exited early: most likely the port was taken between probe and bind; try another.
                Some(false) => last_failure = format!("exited early:\n{}", child.output()),
                None => {
                    return Err(HarnessError::NotReady {
                        what,
                        detail: format!(
                            "nothing listening on {addr} after {READY_TIMEOUT:?}\n{}",
                            child.output()
                        ),
                    });
                }
            }
        }
        Err(HarnessError::NotReady {
            what,
            detail: last_failure,
        })
    }

    /// Stops it and starts it again on the same port (bounded wait until it accepts): every
    /// session it had is gone, as after a crash or a redeploy behind a stable address.
    pub fn restart(&mut self) -> Result<()> {
        self.child.kill();
        let entry = Self::entry_script()?;
        let preload = paths::js_dir().join("force-loopback.cjs");
        let what = format!("server-everything {}", self.mode.arg());
        let mut cmd = Command::new(node_bin());
        cmd.arg("--require")
            .arg(&preload)
            .arg(&entry)
            .arg(self.mode.arg())
            .env("PORT", self.port.to_string())
            .env("REFLOW_E2E_BIND_HOST", "127.0.0.1");
        let mut child = ManagedChild::spawn(&what, &mut cmd, SpawnOptions::default())?;
        let addr = loopback(self.port);
        let ready = poll_until(READY_TIMEOUT, || {
            if child.try_status().is_some() {
                Some(false)
            } else {
                accepts(addr).then_some(true)
            }
        });
        if ready != Some(true) {
            return Err(HarnessError::NotReady {
                what,
                detail: format!("not listening again on {addr}\n{}", child.output()),
            });
        }
        self.child = child;
        Ok(())
    }

    /// The MCP endpoint: `http://127.0.0.1:PORT/mcp` or `…/sse`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.port, self.mode.path())
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn mode(&self) -> EverythingMode {
        self.mode
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its output so far (for diagnostics).
    pub fn output(&self) -> String {
        self.child.output()
    }
}
