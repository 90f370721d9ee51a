//! Running `reflow-fixture` from tests: HTTP mode (`FixtureProcess`) and stdio mode (`StdioFixture`).
//! Both wait for the child with a bound and kill it by PID when dropped.

use std::ffi::OsStr;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

use serde_json::Value;

use super::error::{HarnessError, Result};
use super::process::{CommandLine, ManagedChild, SpawnOptions};

const BINARY: &str = "reflow-fixture";
const LISTEN_TIMEOUT: Duration = Duration::from_secs(15);

/// The fixture binary Cargo built for this crate's integration tests (use from tests in this crate).
#[macro_export]
macro_rules! fixture_bin {
    () => {
        ::std::path::PathBuf::from(env!("CARGO_BIN_EXE_reflow-fixture"))
    };
}

/// Finds the fixture binary: `$REFLOW_FIXTURE_BIN`, else next to the running test executable.
pub fn fixture_bin() -> Result<PathBuf> {
    if let Some(path) = std::env::var_os("REFLOW_FIXTURE_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()
        .map_err(|e| HarnessError::Other(format!("cannot locate the test binary: {e}")))?;
    // Test binaries live in target/<profile>/deps; binaries in target/<profile>.
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join(BINARY))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            HarnessError::Other(format!(
                "{BINARY} not found near {}; build it (cargo build -p reflow-e2e) or set REFLOW_FIXTURE_BIN",
                exe.display()
            ))
        })
}

/// The fixture in HTTP mode, listening on a loopback port it picked itself.
#[derive(Debug)]
pub struct FixtureProcess {
    child: ManagedChild,
    addr: SocketAddr,
}

impl FixtureProcess {
    /// Starts the resolved fixture binary (see `fixture_bin()`) with `args`.
    pub fn spawn<I, S>(args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with(&fixture_bin()?, args)
    }

    /// Starts `bin` with `args` and waits for its `listening on http://ADDR` line.
    pub fn spawn_with<I, S>(bin: &Path, args: I) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        Self::spawn_with_env(bin, args, &[])
    }

    /// [`FixtureProcess::spawn_with`] with extra environment variables (e.g. OTLP settings).
    pub fn spawn_with_env<I, S>(bin: &Path, args: I, env: &[(&str, &str)]) -> Result<Self>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let opts = SpawnOptions {
            stdout_lines: true,
            ..SpawnOptions::default()
        };
        let child = ManagedChild::spawn(BINARY, &mut cmd, opts)?;
        let line = child.next_line(LISTEN_TIMEOUT)?;
        let addr = line
            .strip_prefix("listening on http://")
            .and_then(|a| a.trim().parse::<SocketAddr>().ok())
            .ok_or_else(|| HarnessError::NotReady {
                what: BINARY.to_owned(),
                detail: format!("unexpected first line {line:?}\n{}", child.output()),
            })?;
        Ok(Self { child, addr })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR`
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The Streamable HTTP endpoint, `http://ADDR/mcp`.
    pub fn mcp_url(&self) -> String {
        format!("http://{}/mcp", self.addr)
    }

    /// The legacy SSE endpoint, `http://ADDR/sse`.
    pub fn sse_url(&self) -> String {
        format!("http://{}/sse", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    /// Its stdout/stderr so far.
    pub fn output(&self) -> String {
        self.child.output()
    }

    pub fn child_mut(&mut self) -> &mut ManagedChild {
        &mut self.child
    }
}

/// The fixture in stdio mode, driven line by line through its stdin/stdout.
#[derive(Debug)]
pub struct StdioFixture {
    child: ManagedChild,
}

impl StdioFixture {
    /// The command line that starts the resolved fixture in stdio mode with `args`.
    pub fn command(args: &[&str]) -> Result<CommandLine> {
        let mut all = vec!["--stdio".to_owned()];
        all.extend(args.iter().map(|a| (*a).to_owned()));
        Ok(CommandLine {
            program: fixture_bin()?,
            args: all,
        })
    }

    /// Starts `bin --stdio args…` with extra environment `env`.
    pub fn spawn_with(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Result<Self> {
        let mut cmd = Command::new(bin);
        cmd.arg("--stdio").args(args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let opts = SpawnOptions {
            stdin: true,
            stdout_lines: true,
            ..SpawnOptions::default()
        };
        Ok(Self {
            child: ManagedChild::spawn("reflow-fixture --stdio", &mut cmd, opts)?,
        })
    }

    /// Writes one raw line (a newline is appended).
    pub fn send_line(&mut self, line: &str) -> Result<()> {
        use std::io::Write;
        let stdin = self
            .child
            .stdin()
            .ok_or_else(|| HarnessError::Other("stdin already closed".to_owned()))?;
        stdin
            .write_all(format!("{line}\n").as_bytes())
            .and_then(|()| stdin.flush())
            .map_err(|e| HarnessError::Other(format!("writing to the fixture's stdin: {e}")))
    }

    pub fn send(&mut self, msg: &Value) -> Result<()> {
        self.send_line(&msg.to_string())
    }

    /// The next JSON message on stdout, waiting at most `timeout`.
    pub fn recv(&self, timeout: Duration) -> Result<Value> {
        let line = self.child.next_line(timeout)?;
        serde_json::from_str(&line).map_err(|e| HarnessError::NoReport {
            what: "reflow-fixture --stdio".to_owned(),
            detail: format!("stdout line {line:?} is not JSON: {e}"),
        })
    }

    /// Sends EOF.
    pub fn close_stdin(&mut self) {
        self.child.close_stdin();
    }

    /// Waits up to `timeout` for exit.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        self.child.wait_timeout(timeout)
    }

    pub fn pid(&self) -> u32 {
        self.child.pid()
    }

    pub fn output(&self) -> String {
        self.child.output()
    }
}
