//! The official TypeScript MCP SDK as a test peer: `@modelcontextprotocol/sdk` installed once
//! from npm, and `TsClient`, which drives `e2e/js/client.cjs` and returns its JSON report.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use super::error::Result;
use super::node::{node_bin, npm_package};
use super::paths;
use super::process::{client_run_args, run_for_report};

/// The exact TypeScript SDK release the e2e tests run (newest on npm when pinned).
pub const TS_SDK_SPEC: &str = "@modelcontextprotocol/sdk@1.32.2";
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(90);

/// One run of `client.cjs` over Streamable HTTP: a connection, then `actions` in order (the same
/// shapes as the Python client's; build them with `py_ops`).
#[derive(Debug, Clone)]
pub struct TsClient {
    url: String,
    token: Option<String>,
    headers: Vec<(String, String)>,
    actions: Vec<Value>,
    sampling_reply: Option<String>,
    elicitation_reply: Option<Value>,
    declare_sampling: bool,
    declare_elicitation: bool,
    request_timeout: Duration,
    timeout: Duration,
}

impl TsClient {
    pub fn streamable_http(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            token: None,
            headers: Vec::new(),
            actions: Vec::new(),
            sampling_reply: None,
            elicitation_reply: None,
            declare_sampling: true,
            declare_elicitation: true,
            request_timeout: Duration::from_secs(20),
            timeout: DEFAULT_TIMEOUT,
        }
    }

    /// Sends `Authorization: Bearer <token>`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sends `name: value` on every request.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub fn actions(mut self, actions: impl IntoIterator<Item = Value>) -> Self {
        self.actions.extend(actions);
        self
    }

    /// The text the client's sampling handler answers with.
    pub fn sampling_reply(mut self, text: impl Into<String>) -> Self {
        self.sampling_reply = Some(text.into());
        self
    }

    /// The content the client's elicitation handler accepts with.
    pub fn elicitation_reply(mut self, content: Value) -> Self {
        self.elicitation_reply = Some(content);
        self
    }

    /// Leaves the sampling capability undeclared (and unanswered).
    pub fn without_sampling(mut self) -> Self {
        self.declare_sampling = false;
        self
    }

    /// Per-request timeout inside the client.
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    fn args(&self, sdk: &std::path::Path) -> Vec<String> {
        let mut args = vec![
            paths::js_dir()
                .join("client.cjs")
                .to_string_lossy()
                .into_owned(),
            "--sdk".to_owned(),
            sdk.to_string_lossy().into_owned(),
            "--url".to_owned(),
            self.url.clone(),
        ];
        args.extend(client_run_args(
            self.request_timeout,
            self.timeout,
            &self.actions,
        ));
        if let Some(token) = &self.token {
            args.extend(["--token".to_owned(), token.clone()]);
        }
        for (name, value) in &self.headers {
            args.extend(["--header".to_owned(), format!("{name}={value}")]);
        }
        if let Some(text) = &self.sampling_reply {
            args.extend(["--sampling-reply".to_owned(), text.clone()]);
        }
        if let Some(content) = &self.elicitation_reply {
            args.extend(["--elicitation-reply".to_owned(), content.to_string()]);
        }
        if !self.declare_sampling {
            args.push("--no-sampling".to_owned());
        }
        if !self.declare_elicitation {
            args.push("--no-elicitation".to_owned());
        }
        args
    }

    /// Installs the SDK (cached), runs the client and returns its report (see `client.cjs`).
    pub fn run(&self) -> Result<Value> {
        let sdk: PathBuf = npm_package(TS_SDK_SPEC)?;
        let mut cmd = Command::new(node_bin());
        cmd.args(self.args(&sdk));
        run_for_report("node client.cjs".to_owned(), &mut cmd, self.timeout)
    }
}
