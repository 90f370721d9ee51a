//! `mcp-remote` (pinned), the STDIO-to-remote bridge Claude Desktop starts for remote servers,
//! as a client peer: started with a config's args, spoken to as a STDIO MCP server.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

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

    /// Plays the client on mcp-remote's STDIO side (Claude Desktop's part): `initialize` with
    /// sampling, form and URL elicitation and roots, then `actions` (the shapes of `py_ops`),
    /// answering what the server asks meanwhile. The report has the Python client's shape:
    /// `results`, `client_requests`, `notifications` (methods), `logs`, `ok`, `error`.
    pub fn run_actions(&mut self, actions: &[Value]) -> Value {
        let mut run = RemoteRun::default();
        let outcome = self.drive(&mut run, actions);
        json!({
            "ok": outcome.is_ok(),
            "error": outcome.err().map(|e| e.to_string()),
            "results": run.results,
            "client_requests": run.client_requests,
            "notifications": run.notifications,
            "logs": run.logs,
        })
    }

    fn drive(&mut self, run: &mut RemoteRun, actions: &[Value]) -> Result<()> {
        let capabilities = json!({
            "sampling": {},
            "elicitation": {"form": {}, "url": {}},
            "roots": {"listChanged": true},
        });
        let init = self.exchange(
            run,
            "initialize",
            json!({
                "protocolVersion": "2025-11-25",
                "capabilities": capabilities,
                "clientInfo": {"name": "reflow-e2e-mcp-remote", "version": "0"},
            }),
            Exchange::default(),
        )?;
        if init.get("result").is_none() {
            return Err(HarnessError::Other(format!("initialize failed: {init}")));
        }
        self.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))?;
        for action in actions {
            let record = self.action(run, action)?;
            run.results.push(record);
        }
        Ok(())
    }

    /// One action's record: `{op, ok, result | error, progress?}`.
    fn action(&mut self, run: &mut RemoteRun, action: &Value) -> Result<Value> {
        let op = action["op"].as_str().unwrap_or_default();
        let call = |name: &Value, args: &Value| json!({"name": name, "arguments": args});
        let (method, params, how) = match op {
            "set_logging_level" => (
                "logging/setLevel",
                json!({"level": action["level"]}),
                Exchange::default(),
            ),
            "list_tools" => ("tools/list", json!({}), Exchange::default()),
            "ping" => ("ping", json!({}), Exchange::default()),
            "read_resource" => (
                "resources/read",
                json!({"uri": action["uri"]}),
                Exchange::default(),
            ),
            "subscribe" => (
                "resources/subscribe",
                json!({"uri": action["uri"]}),
                Exchange::default(),
            ),
            "get_prompt" => (
                "prompts/get",
                call(&action["name"], &action["arguments"]),
                Exchange::default(),
            ),
            "call_tool" => {
                let how = Exchange {
                    progress: action["progress"] == true,
                    ..Exchange::default()
                };
                (
                    "tools/call",
                    call(&action["name"], &action["arguments"]),
                    how,
                )
            }
            "call_tool_cancelled" => {
                let after = Duration::from_secs_f64(action["after"].as_f64().unwrap_or(1.0));
                let how = Exchange {
                    cancel_after: Some(after),
                    ..Exchange::default()
                };
                (
                    "tools/call",
                    call(&action["name"], &action["arguments"]),
                    how,
                )
            }
            "sleep" => {
                let wait = Duration::from_secs_f64(action["seconds"].as_f64().unwrap_or(0.0));
                self.pump(run, Instant::now() + wait, None)?;
                return Ok(json!({"op": op, "ok": true, "result": {}}));
            }
            "wait_notification" => {
                let method = action["method"].as_str().unwrap_or_default();
                let wait = Duration::from_secs_f64(action["timeout"].as_f64().unwrap_or(10.0));
                let heard = self.pump(run, Instant::now() + wait, Some(method))?;
                return Ok(if heard {
                    json!({"op": op, "ok": true, "result": {"method": method}})
                } else {
                    json!({"op": op, "ok": false, "error": {"type": "TimeoutError"}})
                });
            }
            other => {
                return Err(HarnessError::Other(format!(
                    "mcp-remote: unknown op {other}"
                )));
            }
        };
        let progress = how.progress;
        let reply = self.exchange(run, method, params, how)?;
        let mut record = match (reply.get("result"), reply.get("error")) {
            (Some(result), _) => json!({"op": op, "ok": true, "result": result}),
            (None, Some(error)) => json!({"op": op, "ok": false, "error": error}),
            _ => json!({"op": op, "ok": false, "error": reply}),
        };
        if progress {
            record["progress"] = Value::Array(std::mem::take(&mut run.progress));
        }
        Ok(record)
    }

    /// Sends a request; handles what arrives until its response (or, with `cancel_after`, gives
    /// up then with `notifications/cancelled` and answers `{"result": {"cancelled": true}}`).
    fn exchange(
        &mut self,
        run: &mut RemoteRun,
        method: &str,
        mut params: Value,
        how: Exchange,
    ) -> Result<Value> {
        let id = self.next_id;
        self.next_id += 1;
        if how.progress {
            params["_meta"] = json!({"progressToken": format!("remote-{id}")});
        }
        self.send(&json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params}))?;
        let started = Instant::now();
        loop {
            let wait = match how.cancel_after {
                Some(after) if started.elapsed() >= after => {
                    self.send(
                        &json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
                        "params": {"requestId": id, "reason": "reflow-e2e gave up"}}),
                    )?;
                    return Ok(json!({"result": {"cancelled": true}}));
                }
                Some(after) => after - started.elapsed(),
                None => LINE_TIMEOUT,
            };
            let line = match self.child.next_line(wait) {
                Ok(line) => line,
                Err(HarnessError::Timeout { .. }) if how.cancel_after.is_some() => continue,
                Err(e) => return Err(e),
            };
            let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                continue;
            };
            if msg.get("id") == Some(&json!(id)) && msg.get("method").is_none() {
                return Ok(msg);
            }
            self.handle(run, msg)?;
        }
    }

    /// Handles what arrives until `deadline`, or until notification `until` (true if it came).
    fn pump(
        &mut self,
        run: &mut RemoteRun,
        deadline: Instant,
        until: Option<&str>,
    ) -> Result<bool> {
        loop {
            if let Some(m) = until
                && let Some(at) = run.pending.iter().position(|p| p == m)
            {
                run.pending.remove(at);
                return Ok(true);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            match self.child.next_line(left) {
                Ok(line) => {
                    if let Ok(msg) = serde_json::from_str::<Value>(&line) {
                        self.handle(run, msg)?;
                    }
                }
                Err(HarnessError::Timeout { .. }) => return Ok(false),
                Err(e) => return Err(e),
            }
        }
    }

    /// A message that is not the awaited response: the server's request (answered as a client
    /// would) or a notification (recorded).
    fn handle(&mut self, run: &mut RemoteRun, msg: Value) -> Result<()> {
        let Some(method) = msg["method"].as_str().map(str::to_owned) else {
            return Ok(());
        };
        let params = msg.get("params").cloned().unwrap_or(Value::Null);
        let Some(id) = msg.get("id").cloned() else {
            match method.as_str() {
                "notifications/message" => run.logs.push(params),
                "notifications/progress" => run.progress.push(params),
                _ => {}
            }
            run.notifications.push(method.clone());
            run.pending.push(method);
            return Ok(());
        };
        let result = match method.as_str() {
            "sampling/createMessage" => json!({"role": "assistant",
                "content": {"type": "text", "text": "mcp-remote sampled"},
                "model": "reflow-e2e", "stopReason": "endTurn"}),
            "elicitation/create" if params["mode"] == "url" => json!({"action": "accept"}),
            "elicitation/create" => json!({"action": "accept", "content": {"name": "remote-user"}}),
            "roots/list" => json!({"roots": [{"uri": "file:///reflow-e2e", "name": "e2e"}]}),
            "ping" => json!({}),
            _ => {
                return self.send(&json!({"jsonrpc": "2.0", "id": id,
                    "error": {"code": -32601, "message": "not supported"}}));
            }
        };
        run.client_requests
            .push(json!({"method": method, "params": params}));
        self.send(&json!({"jsonrpc": "2.0", "id": id, "result": result}))
    }
}

/// What one `run_actions` has seen so far.
#[derive(Default)]
struct RemoteRun {
    results: Vec<Value>,
    client_requests: Vec<Value>,
    notifications: Vec<String>,
    /// Notification methods not yet taken by a `wait_notification`.
    pending: Vec<String>,
    logs: Vec<Value>,
    /// Progress of the call in flight.
    progress: Vec<Value>,
}

/// How one request is made.
#[derive(Default)]
struct Exchange {
    progress: bool,
    cancel_after: Option<Duration>,
}
