//! The official Python MCP SDK as a test peer: a cached venv with a pinned `mcp`, and script runners.
//! `PyClient` drives `e2e/py/client.py` (streamable-http | sse | stdio) and returns its JSON report.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::Value;

use super::cache;
use super::error::{HarnessError, Result};
use super::paths;
use super::process::{CommandLine, client_run_args, run_bounded, run_for_report};

/// The exact Python SDK release the e2e tests run (newest on PyPI when pinned).
pub const MCP_PIN: &str = "mcp==2.3.0";
/// How long one Python client run may take before it is killed.
pub const DEFAULT_CLIENT_TIMEOUT: Duration = Duration::from_secs(90);
const VENV_LOCK_TIMEOUT: Duration = Duration::from_secs(20 * 60);
const PIP_TIMEOUT: Duration = Duration::from_secs(15 * 60);

/// The interpreter used to create the venv: `$REFLOW_E2E_PYTHON`, else `python3`.
pub(crate) fn base_python() -> OsString {
    std::env::var_os("REFLOW_E2E_PYTHON").unwrap_or_else(|| "python3".into())
}

/// `<target>/e2e/venv` with `MCP_PIN` installed; built once (per machine), then reused.
pub fn python_venv() -> Result<PathBuf> {
    static VENV: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    VENV.get_or_init(|| build_venv().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Other)
}

fn build_venv() -> Result<PathBuf> {
    let dest = paths::cache_dir().join("venv");
    cache::ensure(&dest, MCP_PIN, VENV_LOCK_TIMEOUT, |tmp| {
        run_bounded(
            "python3 -m venv",
            Command::new(base_python()).arg("-m").arg("venv").arg(tmp),
            Duration::from_secs(180),
        )?;
        let python = tmp.join("bin").join("python");
        run_bounded(
            &format!("pip install {MCP_PIN}"),
            Command::new(&python).args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--no-input",
                "--quiet",
                MCP_PIN,
            ]),
            PIP_TIMEOUT,
        )?;
        run_bounded(
            "import mcp",
            Command::new(&python).args(["-c", "import mcp, httpx2"]),
            Duration::from_secs(60),
        )?;
        Ok(())
    })
}

/// The venv's interpreter (venvs are used through `bin/python` only, so the rename is safe).
pub fn venv_python() -> Result<PathBuf> {
    Ok(python_venv()?.join("bin").join("python"))
}

/// Runs `script` in the venv, kills it after `timeout`, and parses its last stdout line as JSON.
pub fn run_python_script(
    script: &Path,
    args: &[String],
    env: &[(&str, &str)],
    timeout: Duration,
) -> Result<Value> {
    let what = format!(
        "python {}",
        script.file_name().unwrap_or_default().to_string_lossy()
    );
    let mut cmd = Command::new(venv_python()?);
    cmd.arg("-u").arg(script).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.env("PYTHONDONTWRITEBYTECODE", "1");
    run_for_report(what, &mut cmd, timeout)
}

/// Runs `e2e/py/<script>` with `args` and `env`, bounded by `DEFAULT_CLIENT_TIMEOUT`.
pub fn run_python_client(script: &str, args: &[String], env: &[(&str, &str)]) -> Result<Value> {
    run_python_script(
        &paths::py_dir().join(script),
        args,
        env,
        DEFAULT_CLIENT_TIMEOUT,
    )
}

/// Which transport `client.py` uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PyTransport {
    StreamableHttp,
    Sse,
    Stdio,
}

impl PyTransport {
    pub fn as_arg(self) -> &'static str {
        match self {
            PyTransport::StreamableHttp => "streamable-http",
            PyTransport::Sse => "sse",
            PyTransport::Stdio => "stdio",
        }
    }
}

/// One run of `e2e/py/client.py`: a connection, then `actions` in order (see `py_ops`).
#[derive(Debug, Clone)]
pub struct PyClient {
    transport: PyTransport,
    url: Option<String>,
    command: Option<CommandLine>,
    token: Option<String>,
    headers: Vec<(String, String)>,
    env: Vec<(String, String)>,
    mode: String,
    actions: Vec<Value>,
    request_timeout: Duration,
    timeout: Duration,
    answers: bool,
}

impl PyClient {
    fn new(transport: PyTransport) -> Self {
        Self {
            transport,
            url: None,
            command: None,
            token: None,
            headers: Vec::new(),
            env: Vec::new(),
            mode: "legacy".to_owned(),
            actions: Vec::new(),
            request_timeout: Duration::from_secs(20),
            timeout: DEFAULT_CLIENT_TIMEOUT,
            answers: false,
        }
    }

    pub fn streamable_http(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::new(PyTransport::StreamableHttp)
        }
    }

    pub fn sse(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            ..Self::new(PyTransport::Sse)
        }
    }

    pub fn stdio(command: CommandLine) -> Self {
        Self {
            command: Some(command),
            ..Self::new(PyTransport::Stdio)
        }
    }

    /// Sends `Authorization: Bearer <token>` (HTTP transports).
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Extra environment for the stdio server the client starts.
    pub fn server_env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.env.push((name.into(), value.into()));
        self
    }

    /// `legacy` (initialize handshake, the default) or `auto` (probe `server/discover` first).
    pub fn mode(mut self, mode: impl Into<String>) -> Self {
        self.mode = mode.into();
        self
    }

    pub fn action(mut self, action: Value) -> Self {
        self.actions.push(action);
        self
    }

    pub fn actions(mut self, actions: impl IntoIterator<Item = Value>) -> Self {
        self.actions.extend(actions);
        self
    }

    /// Per-request timeout inside the client.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Declares the sampling and elicitation capabilities and answers such requests with
    /// canned replies; the report lists them under `client_requests`.
    pub fn answer_client_requests(mut self) -> Self {
        self.answers = true;
        self
    }

    /// Whole-run bound; the client process is killed after it.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The command-line arguments for `client.py`.
    pub fn args(&self) -> Vec<String> {
        let mut args = vec![
            "--transport".to_owned(),
            self.transport.as_arg().to_owned(),
            "--mode".to_owned(),
            self.mode.clone(),
        ];
        args.extend(client_run_args(
            self.request_timeout,
            self.timeout,
            &self.actions,
        ));
        if let Some(url) = &self.url {
            args.extend(["--url".to_owned(), url.clone()]);
        }
        if let Some(token) = &self.token {
            args.extend(["--token".to_owned(), token.clone()]);
        }
        for (k, v) in &self.headers {
            args.extend(["--header".to_owned(), format!("{k}={v}")]);
        }
        if let Some(cmd) = &self.command {
            args.extend([
                "--command".to_owned(),
                cmd.program.to_string_lossy().into_owned(),
            ]);
            for a in &cmd.args {
                args.push(format!("--arg={a}"));
            }
        }
        for (k, v) in &self.env {
            args.extend(["--env".to_owned(), format!("{k}={v}")]);
        }
        if self.answers {
            args.push("--answer-client-requests".to_owned());
        }
        args
    }

    /// Runs the client and returns its report (see `e2e/py/client.py` for the shape).
    pub fn run(&self) -> Result<Value> {
        run_python_script(
            &paths::py_dir().join("client.py"),
            &self.args(),
            &[],
            self.timeout,
        )
    }
}
