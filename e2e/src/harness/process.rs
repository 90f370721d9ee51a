//! Child processes bounded in time and stopped by their PID: output drained by threads, killed on Drop.
//! `ManagedChild` is the one way the harness runs anything (fixture, node, python, pip, npm).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::{HarnessError, Result};

/// Bytes of stderr (and captured stdout) kept for diagnostics.
pub const TAIL_LIMIT: usize = 64 * 1024;
/// Bytes of stdout kept when a caller needs all of it (JSON reports).
pub const FULL_OUTPUT_LIMIT: usize = 64 * 1024 * 1024;

/// The last `limit` bytes a reader thread has seen.
#[derive(Clone, Debug)]
pub struct Capture {
    buf: Arc<Mutex<Vec<u8>>>,
    limit: usize,
}

impl Capture {
    fn new(limit: usize) -> Self {
        Self {
            buf: Arc::default(),
            limit,
        }
    }

    fn push(&self, bytes: &[u8]) {
        let mut buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        buf.extend_from_slice(bytes);
        if buf.len() > self.limit {
            let excess = buf.len() - self.limit;
            buf.drain(..excess);
        }
    }

    pub fn text(&self) -> String {
        let buf = self.buf.lock().unwrap_or_else(|p| p.into_inner());
        String::from_utf8_lossy(&buf).into_owned()
    }
}

fn drain_into(reader: impl Read + Send + 'static, capture: Capture) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let mut reader = reader;
        let mut chunk = [0u8; 8192];
        while let Ok(n) = reader.read(&mut chunk) {
            if n == 0 {
                break;
            }
            capture.push(&chunk[..n]);
        }
    })
}

fn lines_into(
    reader: impl Read + Send + 'static,
    capture: Capture,
) -> (Receiver<String>, JoinHandle<()>) {
    let (tx, rx) = mpsc::channel();
    let handle = std::thread::spawn(move || {
        let mut reader = BufReader::new(reader);
        let mut line = Vec::new();
        loop {
            line.clear();
            match reader.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    capture.push(&line);
                    let text = String::from_utf8_lossy(&line)
                        .trim_end_matches(['\r', '\n'])
                        .to_owned();
                    let _ = tx.send(text);
                }
            }
        }
    });
    (rx, handle)
}

/// How a child's stdio is wired.
#[derive(Debug, Clone, Copy, Default)]
pub struct SpawnOptions {
    /// Keep a pipe to the child's stdin (closed otherwise).
    pub stdin: bool,
    /// Deliver stdout line by line through `next_line` (also captured).
    pub stdout_lines: bool,
    /// Keep all stdout (up to `FULL_OUTPUT_LIMIT`) instead of a tail.
    pub full_stdout: bool,
}

/// A running child that is killed (SIGKILL to its PID) and reaped when dropped.
#[derive(Debug)]
pub struct ManagedChild {
    what: String,
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Option<Receiver<String>>,
    stdout: Capture,
    stderr: Capture,
    readers: Vec<JoinHandle<()>>,
    status: Option<ExitStatus>,
}

impl ManagedChild {
    pub fn spawn(what: &str, cmd: &mut Command, opts: SpawnOptions) -> Result<Self> {
        cmd.stdin(if opts.stdin {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|source| HarnessError::Spawn {
            what: what.to_owned(),
            source,
        })?;
        let limit = if opts.full_stdout {
            FULL_OUTPUT_LIMIT
        } else {
            TAIL_LIMIT
        };
        let stdout = Capture::new(limit);
        let stderr = Capture::new(TAIL_LIMIT);
        let mut readers = Vec::new();
        let mut lines = None;
        if let Some(out) = child.stdout.take() {
            if opts.stdout_lines {
                let (rx, handle) = lines_into(out, stdout.clone());
                lines = Some(rx);
                readers.push(handle);
            } else {
                readers.push(drain_into(out, stdout.clone()));
            }
        }
        if let Some(err) = child.stderr.take() {
            readers.push(drain_into(err, stderr.clone()));
        }
        Ok(Self {
            what: what.to_owned(),
            stdin: child.stdin.take(),
            child,
            lines,
            stdout,
            stderr,
            readers,
            status: None,
        })
    }

    pub fn what(&self) -> &str {
        &self.what
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn stdin(&mut self) -> Option<&mut ChildStdin> {
        self.stdin.as_mut()
    }

    /// Closes the child's stdin (EOF for a stdio server).
    pub fn close_stdin(&mut self) {
        self.stdin = None;
    }

    /// The next stdout line (only with `stdout_lines`), waiting at most `timeout`.
    pub fn next_line(&self, timeout: Duration) -> Result<String> {
        let Some(lines) = &self.lines else {
            return Err(HarnessError::Other(format!(
                "{} was not spawned with stdout lines",
                self.what
            )));
        };
        match lines.recv_timeout(timeout) {
            Ok(line) => Ok(line),
            Err(RecvTimeoutError::Timeout) => Err(HarnessError::Timeout {
                what: format!("reading a line from {}", self.what),
                after: timeout,
                output: self.output(),
            }),
            Err(RecvTimeoutError::Disconnected) => Err(HarnessError::Failed {
                what: self.what.clone(),
                status: "stdout closed".to_owned(),
                output: self.output(),
            }),
        }
    }

    pub fn stdout_text(&self) -> String {
        self.stdout.text()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.text()
    }

    /// Both output tails, labelled, for error messages.
    pub fn output(&self) -> String {
        format!(
            "--- stdout ---\n{}\n--- stderr ---\n{}",
            self.stdout.text(),
            self.stderr.text()
        )
    }

    /// The exit status if the child has exited.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_status() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits up to `grace` for the output threads to see EOF (a grandchild may hold a pipe open).
    pub fn finish_output(&mut self, grace: Duration) {
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && self.readers.iter().any(|r| !r.is_finished()) {
            std::thread::sleep(Duration::from_millis(10));
        }
        self.readers.retain(|r| !r.is_finished());
    }

    /// Sends SIGKILL to the child's PID (if it still runs) and reaps it.
    pub fn kill(&mut self) {
        self.stdin = None;
        if self.try_status().is_none() {
            let _ = self.child.kill();
            self.status = self.child.wait().ok();
        }
    }
}

impl Drop for ManagedChild {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to completion within `timeout` (killed otherwise) and returns its combined output.
pub fn run_bounded(what: &str, cmd: &mut Command, timeout: Duration) -> Result<String> {
    let mut child = ManagedChild::spawn(what, cmd, SpawnOptions::default())?;
    let Some(status) = child.wait_timeout(timeout) else {
        child.kill();
        child.finish_output(Duration::from_secs(2));
        return Err(HarnessError::Timeout {
            what: what.to_owned(),
            after: timeout,
            output: child.output(),
        });
    };
    child.finish_output(Duration::from_secs(5));
    if status.success() {
        Ok(child.output())
    } else {
        Err(HarnessError::Failed {
            what: what.to_owned(),
            status: status.to_string(),
            output: child.output(),
        })
    }
}

/// A program and its arguments, e.g. how to start a stdio server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
}

impl CommandLine {
    pub fn to_command(&self) -> Command {
        let mut cmd = Command::new(&self.program);
        cmd.args(&self.args);
        cmd
    }

    /// The folders a sandboxed STDIO child running this command must be granted (a Target's
    /// `sandbox.readOnlyPaths`) beyond the system paths: the npm prefix a script or a Node
    /// binary lives in, a Python venv and the base install it points at, or a script's folder.
    pub fn sandbox_read_only_paths(&self) -> Vec<std::path::PathBuf> {
        use std::path::{Path, PathBuf};
        let mut out: Vec<PathBuf> = Vec::new();
        let files = std::iter::once(self.program.clone())
            .chain(self.args.iter().map(PathBuf::from))
            .filter(|p| p.is_absolute() && p.exists());
        for file in files {
            let npm_prefix = file
                .ancestors()
                .find(|a| a.file_name().is_some_and(|n| n == "node_modules"))
                .and_then(Path::parent);
            let venv = file.ancestors().find(|a| a.join("pyvenv.cfg").is_file());
            if let Some(prefix) = npm_prefix {
                out.push(prefix.to_owned());
            } else if let Some(venv) = venv {
                out.push(venv.to_owned());
                let cfg = std::fs::read_to_string(venv.join("pyvenv.cfg")).unwrap_or_default();
                let home = cfg.lines().find_map(|l| {
                    let (key, value) = l.split_once('=')?;
                    (key.trim() == "home").then(|| PathBuf::from(value.trim()))
                });
                if let Some(base) = home.as_deref().and_then(Path::parent) {
                    out.push(base.to_owned());
                }
            } else if file != self.program
                && let Some(dir) = file.parent()
            {
                out.push(dir.to_owned());
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Runs a client program that prints a JSON report as its last stdout line: loopback only (proxy
/// variables removed), killed after `timeout`, the report parsed (errors carry its output).
pub fn run_for_report(what: String, cmd: &mut Command, timeout: Duration) -> Result<Value> {
    for var in [
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "http_proxy",
        "https_proxy",
        "all_proxy",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("NO_PROXY", "127.0.0.1,localhost,::1")
        .env("no_proxy", "127.0.0.1,localhost,::1");
    let opts = SpawnOptions {
        full_stdout: true,
        ..SpawnOptions::default()
    };
    let mut child = ManagedChild::spawn(&what, cmd, opts)?;
    let Some(status) = child.wait_timeout(timeout) else {
        child.kill();
        child.finish_output(Duration::from_secs(2));
        return Err(HarnessError::Timeout {
            what,
            after: timeout,
            output: child.output(),
        });
    };
    child.finish_output(Duration::from_secs(2));
    let stdout = child.stdout_text();
    let last = stdout.lines().rev().find(|l| !l.trim().is_empty());
    match last.map(serde_json::from_str::<Value>) {
        Some(Ok(report)) => Ok(report),
        Some(Err(e)) => Err(HarnessError::NoReport {
            what,
            detail: format!("{e} (exit {status})\n{}", child.output()),
        }),
        None => Err(HarnessError::NoReport {
            what,
            detail: format!("empty stdout (exit {status})\n{}", child.output()),
        }),
    }
}

/// `--timeout`, `--deadline` and `--actions` for the SDK client scripts: the per-request
/// timeout, a whole-run deadline 5 s inside `timeout` (so the script reports before it is killed),
/// and the actions as JSON.
pub fn client_run_args(
    request_timeout: Duration,
    timeout: Duration,
    actions: &[Value],
) -> [String; 6] {
    [
        "--timeout".to_owned(),
        format!("{:.3}", request_timeout.as_secs_f64()),
        "--deadline".to_owned(),
        format!(
            "{:.3}",
            timeout
                .saturating_sub(Duration::from_secs(5))
                .as_secs_f64()
                .max(1.0)
        ),
        "--actions".to_owned(),
        Value::Array(actions.to_vec()).to_string(),
    ]
}
