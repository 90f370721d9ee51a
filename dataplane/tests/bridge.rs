//! `reflow-dataplane bridge` end to end: the real binary bridging the real `reflow-fixture --stdio`
//! on loopback. Bearer token (401 without it), id remapping across concurrent clients, the
//! child's environment, crash and restart, SIGTERM stopping the child, the child's requests
//! relayed on a stream and answered, and the gateway talking to the bridge as a Streamable HTTP
//! Target.

mod support;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reflow_dataplane::mcp::GatewayConfig;
use serde_json::{Value, json};
use support::SseReader;

const BIN: &str = env!("CARGO_BIN_EXE_reflow-dataplane");
const TOKEN: &str = "bridge-token-0123456789";

async fn bounded<F: Future<Output = ()>>(f: F) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    tokio::time::timeout(Duration::from_secs(60), f)
        .await
        .expect("test timed out");
}

fn fixture_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLOW_FIXTURE_BIN") {
        return PathBuf::from(p);
    }
    Path::new(BIN)
        .parent()
        .map(|d| d.join("reflow-fixture"))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("reflow-fixture not found; run `cargo build -p reflow-e2e --bin reflow-fixture` or set REFLOW_FIXTURE_BIN")
        })
}

/// The bridge process; killed by PID (through its handle) if the test did not stop it.
struct BridgeProc {
    child: Child,
    url: String,
}

impl Drop for BridgeProc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

impl BridgeProc {
    /// Starts the bridge over the fixture, with the token in a file and a canary variable (and
    /// a REFLOW_ one) in its environment.
    fn start() -> Self {
        Self::start_with(&["--stdio", "--name", "bridged"])
    }

    /// The bridge over the fixture started with `fixture_args`.
    fn start_with(fixture_args: &[&str]) -> Self {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("bridge-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let token_file = dir.join("token");
        std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
        let mut child = Command::new(BIN)
            .args(["bridge", "--listen", "127.0.0.1:0", "--token-file"])
            .arg(&token_file)
            .args(["--request-timeout", "5s", "--"])
            .arg(fixture_bin())
            .args(fixture_args)
            .env("BRIDGE_PASSED", "visible")
            .env("REFLOW_SEALING_KEY", "must-not-reach-the-child")
            .env("REFLOW_BRIDGE_TOKEN", "also-not")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("bridge printed no listening line");
        let addr = line.strip_prefix("listening on ").expect("listening line");
        Self {
            child,
            url: format!("{addr}/mcp"),
        }
    }

    fn stop(&mut self) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: kill(2) with plain integers on our own child.
        unsafe {
            libc::kill(pid, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(20);
        while matches!(self.child.try_wait(), Ok(None)) {
            assert!(Instant::now() < end, "bridge did not stop on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn post(url: &str, token: Option<&str>, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn call(id: Value, tool: &str, args: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": {"name": tool, "arguments": args}})
}

fn text(reply: &Value) -> &str {
    reply["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no text in {reply}"))
}

fn alive(pid: u64) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

#[tokio::test]
async fn bridge_requires_its_token() {
    bounded(async {
        let b = BridgeProc::start();
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let resp = reqwest::Client::new()
            .post(&b.url)
            .json(&init)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401);
        assert_eq!(resp.headers()["www-authenticate"], "Bearer");
        assert_eq!(post(&b.url, Some("wrong"), init.clone()).await.0, 401);
        assert_eq!(
            post(&b.url, Some(&format!("{TOKEN}x")), init.clone()).await.0,
            401
        );
        let (status, reply) = post(&b.url, Some(TOKEN), init).await;
        assert_eq!(status, 200);
        assert_eq!(reply["result"]["serverInfo"]["name"], "bridged");
        assert_eq!(reply["id"], 1);
    })
    .await;
}

#[tokio::test]
async fn bridge_remaps_ids_restarts_after_a_crash_and_stops_its_child() {
    bounded(async {
        let mut b = BridgeProc::start();
        // Two clients, same request id, concurrent: each gets its own answer.
        let slow = post(
            &b.url,
            Some(TOKEN),
            call(json!(7), "slow", json!({"ms": 600})),
        );
        let echo = post(
            &b.url,
            Some(TOKEN),
            call(json!(7), "echo", json!({"text": "b"})),
        );
        let ((s1, r1), (s2, r2)) = tokio::join!(slow, echo);
        assert_eq!((s1, s2), (200, 200));
        assert_eq!((text(&r1), r1["id"].clone()), ("slept 600 ms", json!(7)));
        assert_eq!((text(&r2), r2["id"].clone()), ("[bridged] b", json!(7)));

        // The child sees the bridge's environment minus every REFLOW_ variable.
        let (_, who) = post(&b.url, Some(TOKEN), call(json!("w"), "whoami", json!({}))).await;
        let report: Value = serde_json::from_str(text(&who)).unwrap();
        assert_eq!(report["env"]["BRIDGE_PASSED"], "visible");
        let env = report["env"].as_object().unwrap();
        assert!(env.keys().all(|k| !k.starts_with("REFLOW_")), "{env:?}");
        let first = report["pid"].as_u64().unwrap();

        // A crash fails the call with a clear error; the next call gets a new child.
        let (_, crashed) = post(&b.url, Some(TOKEN), call(json!(2), "crash", json!({}))).await;
        assert_eq!(
            crashed["error"]["data"]["reason"], "stdio_exited",
            "{crashed}"
        );
        let (_, who) = post(&b.url, Some(TOKEN), call(json!(3), "whoami", json!({}))).await;
        let second = serde_json::from_str::<Value>(text(&who)).unwrap()["pid"]
            .as_u64()
            .unwrap();
        assert_ne!(first, second);
        assert!(!alive(first));

        // SIGTERM: the bridge stops its child before it exits.
        b.stop();
        assert!(!alive(second), "the bridge left its child running");
    })
    .await;
}

#[tokio::test]
async fn the_gateway_reaches_a_stdio_server_through_the_bridge() {
    bounded(async {
        let b = BridgeProc::start();
        let dir = support::temp_dir();
        let target = format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: bridged, namespace: t}}\nspec:\n  transport: streamableHttp\n  url: {}\n",
            b.url
        );
        std::fs::write(dir.join("target.yaml"), target).unwrap();
        std::fs::write(
            dir.join("secret.yaml"),
            format!("apiVersion: v1\nkind: Secret\nmetadata: {{name: bridge, namespace: t}}\nstringData:\n  token: {TOKEN}\n"),
        )
        .unwrap();
        std::fs::write(
            dir.join("cred.yaml"),
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {name: bridge, namespace: t}\nspec:\n  targetRef: {name: bridged}\n  subject: {default: true}\n  headers:\n    - {name: Authorization, prefix: \"Bearer \", secretKeyRef: {name: bridge, key: token}}\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("policy.yaml"),
            support::policy_yaml("all", "bridged", "Allow", &["*"], 0),
        )
        .unwrap();
        let h = support::start_gateway(dir, GatewayConfig::default()).await;
        let end = Instant::now() + Duration::from_secs(20);
        while h.gw.snapshots.load().targets().is_empty() {
            assert!(Instant::now() < end, "no snapshot");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let sid = h.open("/mcp", "carol").await;
        let names = h.tool_names("/mcp", "carol", &sid).await;
        assert!(names.contains(&"bridged_echo".to_owned()), "{names:?}");
        let r = h
            .rpc(
                "/mcp",
                "carol",
                Some(&sid),
                "tools/call",
                json!({"name": "bridged_echo", "arguments": {"text": "via bridge"}}),
            )
            .await;
        assert_eq!(text(&r.body), "[bridged] via bridge");
    })
    .await;
}

/// What an MCPInstance Pod does: an init container runs `install-bridge DIR`, then the server's
/// container runs the installed copy as `bridge --path P --token-env REFLOW_… -- CMD`.
#[tokio::test]
async fn installed_bridge_serves_the_pod_path_with_the_token_from_env() {
    bounded(async {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("install-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let out = Command::new(BIN)
            .arg("install-bridge")
            .arg(&dir)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let installed = dir.join("reflow-dataplane");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&installed).unwrap().permissions().mode();
            assert_eq!(mode & 0o755, 0o755, "installed bridge is executable");
        }

        // A token env var outside REFLOW_* would reach the child: refused before anything runs.
        let refused = Command::new(&installed)
            .args(["bridge", "--token-env", "POD_TOKEN", "--", "true"])
            .env("POD_TOKEN", TOKEN)
            .output()
            .unwrap();
        assert!(!refused.status.success());
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(err.contains("must start with REFLOW_"), "{err}");

        let mut child = Command::new(&installed)
            .args([
                "bridge",
                "--listen",
                "127.0.0.1:0",
                "--path",
                "/pod-mcp",
                "--token-env",
                "REFLOW_INSTANCE_TOKEN",
                "--",
            ])
            .arg(fixture_bin())
            .args(["--stdio", "--name", "pod"])
            .env("REFLOW_INSTANCE_TOKEN", TOKEN)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let line = tokio::task::spawn_blocking(move || lines.next())
            .await
            .unwrap()
            .expect("a listening line")
            .unwrap();
        let addr = line.strip_prefix("listening on ").expect("listening line");
        let mut proc = BridgeProc {
            child,
            url: format!("{addr}/pod-mcp"),
        };
        let init = json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
            "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}});
        let (status, _) = post(&proc.url, None, init.clone()).await;
        assert_eq!(status, 401);
        let (status, body) = post(&proc.url, Some(TOKEN), init).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["result"]["serverInfo"]["name"], "pod");
        let (status, _) = post(&format!("{addr}/mcp"), Some(TOKEN), json!({})).await;
        assert_eq!(status, 404, "only the configured path is served");
        proc.stop();
    })
    .await;
}

/// An event within the bridge's request timeout, or `None` when the stream ended.
async fn next(events: &mut SseReader) -> Option<Value> {
    events.next_within(Duration::from_secs(10)).await
}

#[tokio::test]
async fn the_childs_sampling_request_reaches_a_streaming_client_and_its_answer_the_child() {
    bounded(async {
        let b = BridgeProc::start_with(&["--stdio", "--conformance", "--name", "bridged"]);
        let http = reqwest::Client::new();
        let ask = call(json!(7), "test_sampling", json!({"prompt": "2+2?"}));
        let resp = http
            .post(&b.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&ask)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/event-stream")
        );
        let mut events = SseReader::new(resp);
        let asked = next(&mut events).await.expect("the child's request");
        assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
        assert_eq!(asked["params"]["messages"][0]["content"]["text"], "2+2?");
        let id = asked["id"].as_str().expect("a minted string id").to_owned();

        // An answer to an id nobody asked with is accepted and goes nowhere.
        let stray = json!({"jsonrpc": "2.0", "id": "bridge-999999", "result": {}});
        assert_eq!(post(&b.url, Some(TOKEN), stray).await.0, 202);
        // Answering needs the token like everything else.
        let answer = json!({"jsonrpc": "2.0", "id": id, "result": {
            "role": "assistant", "model": "test", "content": {"type": "text", "text": "four"}}});
        assert_eq!(post(&b.url, None, answer.clone()).await.0, 401);
        assert_eq!(post(&b.url, Some(TOKEN), answer).await.0, 202);

        let reply = next(&mut events).await.expect("the reply");
        assert_eq!(reply["id"], 7);
        assert_eq!(text(&reply), "LLM response: four");
        assert!(
            next(&mut events).await.is_none(),
            "the stream ends with the reply"
        );

        // A client that takes JSON only cannot be asked: the child hears a refusal.
        let resp = http
            .post(&b.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json")
            .json(&call(
                json!(8),
                "test_sampling",
                json!({"prompt": "again?"}),
            ))
            .send()
            .await
            .unwrap();
        let reply: Value = resp.json().await.unwrap();
        assert_eq!(reply["result"]["isError"], true, "{reply}");
        assert!(text(&reply).starts_with("sampling failed"), "{reply}");
    })
    .await;
}

#[tokio::test]
async fn a_client_closing_the_stream_cancels_the_call_in_the_child() {
    bounded(async {
        let b = BridgeProc::start_with(&["--stdio", "--conformance", "--name", "bridged"]);
        let http = reqwest::Client::new();
        let resp = http
            .post(&b.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&call(
                json!(1),
                "test_sampling",
                json!({"prompt": "never answered"}),
            ))
            .send()
            .await
            .unwrap();
        let mut events = SseReader::new(resp);
        let asked = next(&mut events).await.expect("the child's request");
        assert_eq!(asked["method"], "sampling/createMessage");
        drop(events);
        tokio::time::sleep(Duration::from_millis(300)).await;
        // Had the call stayed in flight, the child would have two calls from two clients and
        // could not tell whose its next request is (it would be refused). Cancelled, the next
        // call is the only one, and its question reaches its client.
        let resp = http
            .post(&b.url)
            .bearer_auth(TOKEN)
            .header("accept", "application/json, text/event-stream")
            .json(&call(json!(2), "test_sampling", json!({"prompt": "next"})))
            .send()
            .await
            .unwrap();
        let mut events = SseReader::new(resp);
        let asked = next(&mut events).await.expect("an event");
        assert_eq!(asked["method"], "sampling/createMessage", "{asked}");
        assert_eq!(asked["params"]["messages"][0]["content"]["text"], "next");
        drop(events);
        let (status, reply) = post(
            &b.url,
            Some(TOKEN),
            call(json!(3), "echo", json!({"text": "still here"})),
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(text(&reply), "[bridged] still here");
    })
    .await;
}
