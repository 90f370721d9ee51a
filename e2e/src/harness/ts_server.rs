//! `e2e/js/ts-server.cjs` as an upstream peer: an MCP server on the official TypeScript SDK
//! (Express, stateful Streamable HTTP) whose tools ask the client on the standalone GET stream.

use std::process::Command;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::node::{node_bin, npm_package};
use super::paths;
use super::process::{ManagedChild, SpawnOptions};
use super::typescript::TS_SDK_SPEC;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SPAWN_ATTEMPTS: usize = 3;

/// A running `ts-server.cjs` on a free loopback port; stopped by PID on drop.
#[derive(Debug)]
pub struct TsServer {
    child: ManagedChild,
    port: u16,
}

impl TsServer {
    /// Installs the pinned SDK (cached), starts the server and waits (bounded) until it accepts.
    pub fn spawn() -> Result<Self> {
        Self::spawn_with(false)
    }

    /// The same server keeping each session's events in memory (`--event-store`): a client
    /// that reconnects its GET stream with `Last-Event-ID` gets what was sent meanwhile.
    pub fn spawn_with_event_store() -> Result<Self> {
        Self::spawn_with(true)
    }

    fn spawn_with(event_store: bool) -> Result<Self> {
        let sdk = npm_package(TS_SDK_SPEC)?;
        let script = paths::js_dir().join("ts-server.cjs");
        let preload = paths::js_dir().join("force-loopback.cjs");
        let mut last_failure = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = free_loopback_port()?;
            let mut cmd = Command::new(node_bin());
            cmd.arg("--require")
                .arg(&preload)
                .arg(&script)
                .arg("--sdk")
                .arg(&sdk)
                .arg("--port")
                .arg(port.to_string());
            if event_store {
                cmd.arg("--event-store");
            }
            let mut child = ManagedChild::spawn("ts-server", &mut cmd, SpawnOptions::default())?;
            let addr = loopback(port);
            let ready = poll_until(READY_TIMEOUT, || {
                if child.try_status().is_some() {
                    Some(false)
                } else {
                    accepts(addr).then_some(true)
                }
            });
            match ready {
                Some(true) => return Ok(Self { child, port }),
                // Exited early: most likely the port was taken between probe and bind.
                Some(false) => last_failure = format!("exited early:\n{}", child.output()),
                None => {
                    return Err(HarnessError::NotReady {
                        what: "ts-server".to_owned(),
                        detail: format!("nothing listening on {addr}\n{}", child.output()),
                    });
                }
            }
        }
        Err(HarnessError::NotReady {
            what: "ts-server".to_owned(),
            detail: last_failure,
        })
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
