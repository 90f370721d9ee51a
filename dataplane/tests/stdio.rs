//! STDIO Targets through the gateway, against the real `reflow-fixture --stdio` binary: isolation
//! keys, clean environments, crash, slow start, hung children, limits, idle GC, stateful vs
//! stateless, graceful stop. Needs the fixture built (`cargo build -p reflow-e2e --bin
//! reflow-fixture`, done by `make test`) or `REFLOW_FIXTURE_BIN`.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::upstream::StdioConfig;
use reflow_dataplane::upstream::stdio::NamespaceMode;
use serde_json::{Value, json};
use support::*;

/// Every test is bounded: a hang fails instead of stalling the suite.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(90), f)
        .await
        .expect("test timed out");
}

fn fixture_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("REFLOW_FIXTURE_BIN") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|d| d.join("reflow-fixture"))
        .find(|p| p.is_file())
        .unwrap_or_else(|| {
            panic!("reflow-fixture not found near {}; run `cargo build -p reflow-e2e --bin reflow-fixture` or set REFLOW_FIXTURE_BIN", exe.display())
        })
}

/// A stdio Target running the fixture with `args`; `spec_extra` is appended to its spec.
fn stdio_target(name: &str, args: &[&str], spec_extra: &str) -> String {
    stdio_target_cmd(name, &fixture_bin().to_string_lossy(), args, spec_extra)
}

/// The real python3 binary and its prefixes (a YAML list body), as python3 itself reports them.
fn python3() -> (String, String) {
    let out = std::process::Command::new("python3")
        .args([
            "-c",
            "import os, sys; print(os.path.realpath(sys.executable)); print(sys.prefix); print(sys.base_prefix)",
        ])
        .output()
        .expect("python3 runs");
    let text = String::from_utf8(out.stdout).unwrap();
    let mut lines = text.lines();
    let exe = lines.next().expect("sys.executable").to_owned();
    let prefixes: Vec<String> = lines.map(|l| format!("{l:?}")).collect();
    (exe, prefixes.join(", "))
}

fn stdio_target_cmd(name: &str, command: &str, args: &[&str], spec_extra: &str) -> String {
    let args: Vec<String> = args.iter().map(|a| format!("{a:?}")).collect();
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  transport: stdio\n  command: {command:?}\n  args: [{}]\n  prefix: {name}\n  env: [{{name: FIXTURE_MODE, value: plain}}]\n{spec_extra}",
        args.join(", ")
    )
}

fn env_credential(name: &str, target: &str, user: &str, key: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{user: {user}}}\n  env:\n    - name: API_TOKEN\n      secretKeyRef: {{name: tokens, key: {key}}}\n"
    )
}

const TOKENS: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: tokens, namespace: t}\nstringData:\n  alice: alice-child-secret\n  bob: bob-child-secret\n";

/// A manifests folder with `targets`, alice's and bob's env credentials on each, allow-all.
fn manifests(targets: &[(&str, String)]) -> PathBuf {
    let dir = temp_dir();
    std::fs::write(dir.join("secret.yaml"), TOKENS).unwrap();
    for (name, doc) in targets {
        std::fs::write(dir.join(format!("target-{name}.yaml")), doc).unwrap();
        let creds = format!(
            "{}---\n{}",
            env_credential(&format!("{name}-alice"), name, "alice", "alice"),
            env_credential(&format!("{name}-bob"), name, "bob", "bob")
        );
        std::fs::write(dir.join(format!("cred-{name}.yaml")), creds).unwrap();
        std::fs::write(
            dir.join(format!("policy-{name}.yaml")),
            policy_yaml(&format!("all-{name}"), name, "Allow", &["*"], 0),
        )
        .unwrap();
    }
    dir
}

fn config(stdio: StdioConfig) -> GatewayConfig {
    GatewayConfig {
        stdio: StdioConfig {
            sweep_ms: 100,
            stop_grace_ms: 300,
            restart_backoff_ms: 100,
            // These tests tell children apart by the pid they report; in its own PID
            // namespace every child is PID 2 (namespaces: e2e/tests/sandbox.rs).
            namespaces: NamespaceMode::Off,
            ..stdio
        },
        ..GatewayConfig::default()
    }
}

async fn gateway(targets: &[(&str, String)], stdio: StdioConfig) -> Harness {
    let h = start_gateway(manifests(targets), config(stdio)).await;
    wait_ready(&h).await;
    h
}

/// One Target `fx`: the fixture in `--stdio` mode with `extra` spec lines, default limits.
async fn fixture_gateway(extra: &str) -> Harness {
    gateway(
        &[("fx", stdio_target("fx", &["--stdio"], extra))],
        StdioConfig::default(),
    )
    .await
}

async fn wait_ready(h: &Harness) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !h.gw.snapshots.is_ready() || h.gw.snapshots.load().targets().is_empty() {
        assert!(Instant::now() < deadline, "snapshot never became ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// tools/call of `tool` on the scoped endpoint of `target`.
async fn call(h: &Harness, target: &str, user: &str, sid: &str, tool: &str, args: Value) -> Value {
    let r = h
        .rpc(
            &format!("/mcp/t/{target}"),
            user,
            Some(sid),
            "tools/call",
            json!({"name": tool, "arguments": args}),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    r.body
}

/// The fixture's whoami report: pid and environment of the child that answered.
async fn whoami(h: &Harness, target: &str, user: &str, sid: &str) -> Value {
    let body = call(h, target, user, sid, "whoami", json!({})).await;
    let text = body["result"]["content"][0]["text"]
        .as_str()
        .unwrap_or_else(|| panic!("no whoami result: {body}"));
    serde_json::from_str(text).unwrap()
}

fn pid_of(report: &Value) -> u64 {
    report["pid"].as_u64().expect("pid")
}

/// The host pid of the child whose whoami `report` this is, found by its HOME in the host's
/// /proc: in its own PID namespace the child reports pid 2.
fn host_pid_of(report: &Value) -> u64 {
    let home = format!("HOME={}", report["env"]["HOME"].as_str().expect("HOME"));
    let found: Vec<u64> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u64>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/environ"))
                .is_ok_and(|env| env.split(|b| *b == 0).any(|v| v == home.as_bytes()))
        })
        .collect();
    assert_eq!(found.len(), 1, "one process with {home}: {found:?}");
    found[0]
}

fn alive(pid: u64) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn open(h: &Harness, target: &str, user: &str) -> String {
    h.open(&format!("/mcp/t/{target}"), user).await
}

fn error_reason(body: &Value) -> &str {
    body["error"]["data"]["reason"].as_str().unwrap_or("")
}

#[tokio::test]
async fn per_user_children_are_distinct_processes_with_their_own_env() {
    bounded(async {
        let h = fixture_gateway("  isolation: perUser\n").await;
        let a1 = open(&h, "fx", "alice").await;
        let a2 = open(&h, "fx", "alice").await;
        let b1 = open(&h, "fx", "bob").await;
        let alice = whoami(&h, "fx", "alice", &a1).await;
        let alice_again = whoami(&h, "fx", "alice", &a2).await;
        let bob = whoami(&h, "fx", "bob", &b1).await;

        assert_ne!(
            pid_of(&alice),
            pid_of(&bob),
            "alice and bob share a process"
        );
        // Stateless: alice's second session reuses her child.
        assert_eq!(pid_of(&alice), pid_of(&alice_again));
        assert_eq!(alice["env"]["API_TOKEN"], "alice-child-secret");
        assert_eq!(bob["env"]["API_TOKEN"], "bob-child-secret");
        assert_ne!(alice["env"]["HOME"], bob["env"]["HOME"]);
        assert_eq!(alice["env"]["FIXTURE_MODE"], "plain");

        // Exactly the allow-list, the Target's env and the caller's credentials: nothing of
        // the gateway's own environment (this test process's, e.g. CARGO_MANIFEST_DIR).
        assert!(std::env::var_os("CARGO_MANIFEST_DIR").is_some());
        let keys: BTreeSet<&str> = alice["env"]
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let expected: BTreeSet<&str> = [
            "API_TOKEN",
            "FIXTURE_MODE",
            "HOME",
            "LANG",
            "PATH",
            "TMPDIR",
        ]
        .into_iter()
        .collect();
        assert_eq!(keys, expected);

        // The child's credential never shows up in the gateway's answers' metadata or audit.
        let audit = format!("{:?}", h.audit.events());
        assert!(!audit.contains("alice-child-secret"));
        assert_eq!(h.gw.stdio().live(), 2);
    })
    .await;
}

#[tokio::test]
async fn a_shared_target_never_mixes_credentials() {
    bounded(async {
        let h = fixture_gateway("  isolation: shared\n").await;
        let mut pids = Vec::new();
        for user in ["alice", "bob", "carol", "dave"] {
            let sid = open(&h, "fx", user).await;
            let report = whoami(&h, "fx", user, &sid).await;
            let token = report["env"]["API_TOKEN"].clone();
            pids.push((user, pid_of(&report), token));
        }
        let pid = |u: &str| pids.iter().find(|p| p.0 == u).unwrap().1;
        // Different credentials → different children, even on a shared Target.
        assert_ne!(pid("alice"), pid("bob"));
        assert_ne!(pid("alice"), pid("carol"));
        assert_ne!(pid("bob"), pid("carol"));
        // No credentials at all is one credential set: carol and dave share.
        assert_eq!(pid("carol"), pid("dave"));
        assert_eq!(pids[0].2, "alice-child-secret");
        assert_eq!(pids[1].2, "bob-child-secret");
        assert!(pids[2].2.is_null() && pids[3].2.is_null());
    })
    .await;
}

#[tokio::test]
async fn stateful_targets_get_a_child_per_session_stopped_with_the_session() {
    bounded(async {
        let h = gateway(
            &[(
                "fx",
                stdio_target(
                    "fx",
                    &["--stdio"],
                    "  isolation: shared\n  stateful: true\n",
                ),
            )],
            StdioConfig::default(),
        )
        .await;
        let s1 = open(&h, "fx", "carol").await;
        let s2 = open(&h, "fx", "carol").await;
        let p1 = pid_of(&whoami(&h, "fx", "carol", &s1).await);
        let p2 = pid_of(&whoami(&h, "fx", "carol", &s2).await);
        assert_ne!(p1, p2, "a stateful target shared a child across sessions");
        // The same session keeps its child.
        assert_eq!(p1, pid_of(&whoami(&h, "fx", "carol", &s1).await));

        assert_eq!(h.delete_session("/mcp/t/fx", "carol", &s1).await, 200);
        wait_until("s1's child stops", || !alive(p1)).await;
        assert!(alive(p2), "another session's child was stopped");
        assert_eq!(p2, pid_of(&whoami(&h, "fx", "carol", &s2).await));
    })
    .await;
}

#[tokio::test]
async fn a_crash_fails_in_flight_calls_and_the_child_restarts_on_next_use() {
    bounded(async {
        let h = fixture_gateway("  isolation: perUser\n").await;
        let sid = open(&h, "fx", "alice").await;
        let before = pid_of(&whoami(&h, "fx", "alice", &sid).await);
        let slow = call(&h, "fx", "alice", &sid, "slow", json!({"ms": 20_000}));
        let crash = async {
            // Let the slow call reach the child first.
            tokio::time::sleep(Duration::from_millis(300)).await;
            call(&h, "fx", "alice", &sid, "crash", json!({})).await
        };
        let (slow, crash) = tokio::join!(slow, crash);
        for reply in [&slow, &crash] {
            assert_eq!(error_reason(reply), "stdio_exited", "{reply}");
            let msg = reply["error"]["message"].as_str().unwrap();
            assert!(msg.contains("exited") && msg.contains("3"), "{msg}");
        }
        assert!(!alive(before));
        // Next use restarts it (after a short backoff).
        let after = pid_of(&whoami(&h, "fx", "alice", &sid).await);
        assert_ne!(before, after);
        let metrics = h
            .http
            .get(format!("{}/metrics", h.base))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(
            metrics.contains("reflow_stdio_events_total{event=\"crashed\"} 1"),
            "{metrics}"
        );
    })
    .await;
}

#[tokio::test]
async fn a_slow_start_is_waited_for_and_a_hung_start_times_out() {
    bounded(async {
        let h = gateway(
            &[
                (
                    "slowstart",
                    stdio_target(
                        "slowstart",
                        &["--stdio", "--start-delay-ms", "1500"],
                        "  timeouts: {initMs: 20000}\n",
                    ),
                ),
                (
                    "hung",
                    stdio_target(
                        "hung",
                        &["--stdio", "--start-delay-ms", "60000"],
                        "  timeouts: {initMs: 500}\n",
                    ),
                ),
            ],
            StdioConfig::default(),
        )
        .await;
        let sid = open(&h, "slowstart", "carol").await;
        let r = call(
            &h,
            "slowstart",
            "carol",
            &sid,
            "echo",
            json!({"text": "hi"}),
        )
        .await;
        assert_eq!(r["result"]["content"][0]["text"], "[reflow-fixture] hi");

        let sid = open(&h, "hung", "carol").await;
        let started = Instant::now();
        let r = call(&h, "hung", "carol", &sid, "echo", json!({"text": "hi"})).await;
        assert_eq!(error_reason(&r), "stdio_initialize", "{r}");
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap()
                .contains("initialize")
        );
        assert!(started.elapsed() < Duration::from_secs(20));
        // The hung child was stopped, not left behind; the slow-start one stays.
        wait_until("hung child stopped", || h.gw.stdio().live() == 1).await;
    })
    .await;
}

#[tokio::test]
async fn a_hung_call_times_out_and_the_child_keeps_serving() {
    bounded(async {
        let h = fixture_gateway("  timeouts: {requestMs: 500}\n").await;
        let sid = open(&h, "fx", "carol").await;
        let pid = pid_of(&whoami(&h, "fx", "carol", &sid).await);
        let r = call(&h, "fx", "carol", &sid, "slow", json!({"ms": 10_000})).await;
        assert_eq!(error_reason(&r), "timeout", "{r}");
        let r = call(&h, "fx", "carol", &sid, "echo", json!({"text": "still"})).await;
        assert_eq!(r["result"]["content"][0]["text"], "[reflow-fixture] still");
        assert_eq!(pid, pid_of(&whoami(&h, "fx", "carol", &sid).await));
    })
    .await;
}

#[tokio::test]
async fn process_limits_give_a_clear_error() {
    bounded(async {
        let per_user = || stdio_target("fx", &["--stdio"], "  isolation: perUser\n");
        let h = gateway(
            &[("fx", per_user())],
            StdioConfig {
                max_processes_per_target: 1,
                ..StdioConfig::default()
            },
        )
        .await;
        let a = open(&h, "fx", "alice").await;
        whoami(&h, "fx", "alice", &a).await;
        let b = open(&h, "fx", "bob").await;
        let r = call(&h, "fx", "bob", &b, "whoami", json!({})).await;
        assert_eq!(error_reason(&r), "stdio_limit", "{r}");
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("process limit reached: per-target limit of 1"),
            "{msg}"
        );

        let g = gateway(
            &[
                ("one", stdio_target("one", &["--stdio"], "")),
                ("two", stdio_target("two", &["--stdio"], "")),
            ],
            StdioConfig {
                max_processes: 1,
                ..StdioConfig::default()
            },
        )
        .await;
        let s1 = open(&g, "one", "carol").await;
        whoami(&g, "one", "carol", &s1).await;
        let s2 = open(&g, "two", "carol").await;
        let r = call(&g, "two", "carol", &s2, "whoami", json!({})).await;
        let msg = r["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains("process limit reached: global limit of 1"),
            "{msg}"
        );
        assert_eq!(g.gw.stdio().live(), 1);
    })
    .await;
}

#[tokio::test]
async fn idle_children_are_stopped_and_old_ones_retired() {
    bounded(async {
        let h = gateway(
            &[
                (
                    "idle",
                    stdio_target("idle", &["--stdio"], "  lifetimes: {idleSeconds: 1}\n"),
                ),
                (
                    "aged",
                    stdio_target(
                        "aged",
                        &["--stdio"],
                        "  lifetimes: {idleSeconds: 600, maxSeconds: 1}\n",
                    ),
                ),
            ],
            StdioConfig::default(),
        )
        .await;
        let sid = open(&h, "idle", "carol").await;
        let first = pid_of(&whoami(&h, "idle", "carol", &sid).await);
        wait_until("idle child stopped", || !alive(first)).await;
        let second = pid_of(&whoami(&h, "idle", "carol", &sid).await);
        assert_ne!(first, second);

        let sid = open(&h, "aged", "carol").await;
        let old = pid_of(&whoami(&h, "aged", "carol", &sid).await);
        wait_until("aged child retired", || !alive(old)).await;
        let new = pid_of(&whoami(&h, "aged", "carol", &sid).await);
        assert_ne!(old, new);
    })
    .await;
}

#[tokio::test]
async fn shutdown_stops_children_and_escalates_to_sigkill() {
    bounded(async {
        // Ignores SIGTERM and never reads stdin: only SIGKILL ends it.
        let stubborn = stdio_target_cmd(
            "stubborn",
            "/bin/sh",
            &["-c", "trap '' TERM; exec sleep 600"],
            "  timeouts: {initMs: 300}\n",
        );
        let h = gateway(
            &[
                ("fx", stdio_target("fx", &["--stdio"], "")),
                ("stubborn", stubborn),
            ],
            StdioConfig::default(),
        )
        .await;
        let sid = open(&h, "stubborn", "carol").await;
        let r = call(&h, "stubborn", "carol", &sid, "whoami", json!({})).await;
        assert_eq!(error_reason(&r), "stdio_initialize", "{r}");
        wait_until("stubborn child killed", || h.gw.stdio().live() == 0).await;

        let sid = open(&h, "fx", "carol").await;
        let pid = pid_of(&whoami(&h, "fx", "carol", &sid).await);
        h.gw.shutdown().await;
        assert!(!alive(pid), "shutdown left the child running");
        assert_eq!(h.gw.stdio().live(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_childs_progress_reaches_the_calling_session_with_its_own_token() {
    bounded(async {
        let h = fixture_gateway("").await;
        let sid = open(&h, "fx", "carol").await;
        let r = h
            .rpc(
                "/mcp/t/fx",
                "carol",
                Some(&sid),
                "tools/call",
                json!({"name": "slow", "arguments": {"ms": 40}, "_meta": {"progressToken": "p1"}}),
            )
            .await;
        assert_eq!(r.body["result"]["content"][0]["text"], "slept 40 ms");
        let progress: Vec<_> = r
            .events
            .iter()
            .filter(|e| e["method"] == "notifications/progress")
            .collect();
        assert!(!progress.is_empty(), "{:?}", r.events);
        for p in &progress {
            // The child saw a gateway-minted token; the client gets its own back.
            assert_eq!(p["params"]["progressToken"], "p1", "{p}");
            assert_eq!(
                p["params"]["_meta"][reflow_dataplane::mcp::TARGET_META],
                "t/fx"
            );
        }
        // Routed by token to the in-flight call: nothing was dropped.
        assert_eq!(
            h.gw.stdio()
                .stats()
                .unrouted
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    })
    .await;
}

/// The real `reflow-dataplane serve` process, killed by PID (through its handle) on drop.
struct GatewayProc(std::process::Child);

impl Drop for GatewayProc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[tokio::test]
async fn the_gateway_process_environment_never_reaches_a_child() {
    use std::io::BufRead;
    const BIN: &str = env!("CARGO_BIN_EXE_reflow-dataplane");
    const CANARY: &str = "gateway-canary-value-7f3a";
    let _ = rustls::crypto::ring::default_provider().install_default();
    bounded(async {
        let dir = temp_dir();
        let manifests = dir.join("manifests");
        std::fs::create_dir_all(&manifests).unwrap();
        std::fs::write(
            manifests.join("target.yaml"),
            stdio_target("fx", &["--stdio"], ""),
        )
        .unwrap();
        std::fs::write(
            manifests.join("policy.yaml"),
            policy_yaml("all", "fx", "Allow", &["*"], 0),
        )
        .unwrap();
        let secret = "stdio-cli-test-secret-0123456789abcdef";
        std::fs::write(
            dir.join("gateway.yaml"),
            format!("dev: {{issuer: reflow-dev, audience: reflow, hs256Secret: {secret}}}\ngateway: {{allowedHosts: [127.0.0.1]}}\naudit: {{sink: file, path: audit.jsonl}}\n"),
        )
        .unwrap();
        let sealing_key = reflow_crds::SealingKey::generate_base64();
        let token = std::process::Command::new(BIN)
            .args(["token", "--user", "alice", "--config"])
            .arg(dir.join("gateway.yaml"))
            .output()
            .unwrap();
        assert!(token.status.success());
        let token = String::from_utf8(token.stdout).unwrap().trim().to_owned();

        let mut child = std::process::Command::new(BIN)
            .args(["serve", "--listen", "127.0.0.1:0", "--manifests"])
            .arg(&manifests)
            .arg("--config")
            .arg(dir.join("gateway.yaml"))
            .env("REFLOW_SEALING_KEY", &sealing_key)
            .env("GATEWAY_CANARY", CANARY)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let mut gw = GatewayProc(child);
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = rx.recv_timeout(Duration::from_secs(20)).expect("listening line");
        let base = line.strip_prefix("listening on ").unwrap().to_owned();

        let http = reqwest::Client::new();
        let post = |sid: Option<String>, body: Value| {
            let mut req = http
                .post(format!("{base}/mcp"))
                .bearer_auth(&token)
                .header("accept", "application/json, text/event-stream")
                .json(&body);
            if let Some(s) = sid {
                req = req.header("mcp-session-id", s);
            }
            req.send()
        };
        let init = post(None, json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}})).await.unwrap();
        let sid = init.headers()["mcp-session-id"].to_str().unwrap().to_owned();
        // The snapshot may still be compiling: retry until the tool is routed.
        let deadline = Instant::now() + Duration::from_secs(20);
        let report = loop {
            let r: Value = post(Some(sid.clone()), json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call", "params": {"name": "fx_whoami", "arguments": {}}}))
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if let Some(text) = r["result"]["content"][0]["text"].as_str() {
                break serde_json::from_str::<Value>(text).unwrap();
            }
            assert!(Instant::now() < deadline, "whoami never answered: {r}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let env = report["env"].as_object().unwrap();
        assert!(!env.contains_key("REFLOW_SEALING_KEY") && !env.contains_key("GATEWAY_CANARY"));
        let values = serde_json::to_string(env).unwrap();
        assert!(!values.contains(CANARY) && !values.contains(&sealing_key));
        let pid = host_pid_of(&report);
        assert!(alive(pid));

        // SIGTERM: the gateway stops its children before it exits.
        let gpid = libc::pid_t::try_from(gw.0.id()).unwrap();
        // SAFETY: kill(2) with plain integers, on the gateway process this test started.
        unsafe {
            libc::kill(gpid, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(30);
        while matches!(gw.0.try_wait(), Ok(None)) {
            assert!(Instant::now() < end, "gateway did not stop");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!alive(pid), "the gateway exited leaving its child running");
    })
    .await;
}

#[tokio::test]
async fn per_group_children_are_shared_by_exactly_the_same_groups() {
    bounded(async {
        let h = fixture_gateway("  isolation: perGroup\n").await;
        // TokenIsUser: `user:group`. carol, dave and erin have no credentials.
        let mut pid = std::collections::HashMap::new();
        for who in ["carol:dev", "dave:dev", "erin:ops"] {
            let sid = open(&h, "fx", who).await;
            pid.insert(who, pid_of(&whoami(&h, "fx", who, &sid).await));
        }
        assert_eq!(pid["carol:dev"], pid["dave:dev"]);
        assert_ne!(pid["carol:dev"], pid["erin:ops"]);
        // Same group, different credentials: never shared.
        let sid = open(&h, "fx", "alice:dev").await;
        let alice = whoami(&h, "fx", "alice:dev", &sid).await;
        assert_ne!(pid_of(&alice), pid["carol:dev"]);
        assert_eq!(alice["env"]["API_TOKEN"], "alice-child-secret");
    })
    .await;
}

#[tokio::test]
async fn a_credential_change_moves_the_caller_to_a_new_child() {
    bounded(async {
        let h = fixture_gateway("  isolation: perUser\n").await;
        let sid = open(&h, "fx", "alice").await;
        let before = whoami(&h, "fx", "alice", &sid).await;
        assert_eq!(before["env"]["API_TOKEN"], "alice-child-secret");
        std::fs::write(
            h.dir.join("secret.yaml"),
            TOKENS.replace("alice-child-secret", "alice-rotated-secret"),
        )
        .unwrap();
        // Same session, same user: once the snapshot has the new value, a new child serves it.
        let deadline = Instant::now() + Duration::from_secs(30);
        let after = loop {
            let r = whoami(&h, "fx", "alice", &sid).await;
            if r["env"]["API_TOKEN"] == "alice-rotated-secret" {
                break r;
            }
            assert_eq!(r["env"]["API_TOKEN"], "alice-child-secret");
            assert_eq!(pid_of(&r), pid_of(&before));
            assert!(
                Instant::now() < deadline,
                "the rotated secret never applied"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        assert_ne!(pid_of(&after), pid_of(&before));
    })
    .await;
}

#[tokio::test]
async fn a_server_that_keeps_failing_is_restarted_with_growing_backoff() {
    bounded(async {
        // Exits at once: every start fails to initialize.
        let h = gateway(
            &[("dead", stdio_target_cmd("dead", "/bin/false", &[], ""))],
            StdioConfig::default(),
        )
        .await;
        let sid = open(&h, "dead", "carol").await;
        let mut reasons = Vec::new();
        for _ in 0..8 {
            let r = call(&h, "dead", "carol", &sid, "echo", json!({"text": "x"})).await;
            let reason = error_reason(&r).to_owned();
            reasons.push(reason.clone());
            if reason == "stdio_restarting" {
                let msg = r["error"]["message"].as_str().unwrap();
                assert!(msg.contains("restarting; retry in"), "{msg}");
                break;
            }
        }
        // Backoff 100, 200, 400, 800 ms are waited out; the next (1.6 s) fails fast.
        assert_eq!(
            reasons.last().map(String::as_str),
            Some("stdio_restarting"),
            "{reasons:?}"
        );
        assert!(
            reasons[..reasons.len() - 1]
                .iter()
                .all(|r| r == "stdio_exited" || r == "stdio_initialize"),
            "{reasons:?}"
        );
        assert!(reasons.len() >= 5, "{reasons:?}");
        let spawned =
            h.gw.stdio()
                .stats()
                .spawned
                .load(std::sync::atomic::Ordering::Relaxed);
        assert_eq!(spawned as usize, reasons.len() - 1);
    })
    .await;
}

/// A STDIO server (Python, stdlib only) that answers a call at once and then, outside any call,
/// logs, asks the client for a sampling and logs the answer it got.
const LATER_SERVER: &str = r#"
import json, sys, time
def send(m):
    sys.stdout.write(json.dumps(m) + "\n")
    sys.stdout.flush()
for line in sys.stdin:
    m = json.loads(line)
    method = m.get("method")
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"protocolVersion": m["params"]["protocolVersion"],
              "capabilities": {"tools": {}}, "serverInfo": {"name": "later", "version": "0"}}})
    elif method == "tools/call":
        send({"jsonrpc": "2.0", "id": m["id"], "result": {"content": [{"type": "text", "text": "later"}]}})
        time.sleep(0.2)
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "after the call"}})
        send({"jsonrpc": "2.0", "id": "kid-1", "method": "sampling/createMessage", "params": {"messages": [], "maxTokens": 5}})
    elif method is None and m.get("id") == "kid-1":
        said = ((m.get("result") or {}).get("content") or {}).get("text") or json.dumps(m.get("error"))
        send({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "answer: " + said}})
    elif method and "id" in m:
        send({"jsonrpc": "2.0", "id": m["id"], "result": {}})
"#;

/// The next message on an SSE response that `pick` accepts (others are skipped), bounded.
async fn next_matching(
    body: &mut (impl futures::Stream<Item = reqwest::Result<bytes::Bytes>> + Unpin),
    buf: &mut String,
    pick: impl Fn(&Value) -> bool,
) -> Value {
    use futures::StreamExt;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            if let Some(msg) = sse_messages(&block).pop()
                && pick(&msg)
            {
                return msg;
            }
        }
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .expect("a message in time")
            .expect("the stream stays open")
            .expect("readable");
        buf.push_str(&String::from_utf8_lossy(&chunk));
    }
}

#[tokio::test]
async fn a_stateful_childs_messages_outside_calls_reach_its_sessions_get_stream() {
    bounded(async {
        let dir = temp_dir();
        let script = dir.join("later.py");
        std::fs::write(&script, LATER_SERVER).unwrap();
        // The sandbox lets a child read only system paths: the script's folder and the
        // interpreter's tree (pyenv here) are granted as the Target's readOnlyPaths.
        let (python, prefixes) = python3();
        let target = stdio_target_cmd(
            "later",
            &python,
            &[&script.to_string_lossy()],
            &format!(
                "  isolation: shared\n  stateful: true\n  sandbox: {{readOnlyPaths: [{:?}, {prefixes}]}}\n",
                dir.display()
            ),
        );
        let h = gateway(&[("later", target)], StdioConfig::default()).await;
        let path = "/mcp/t/later";
        let init = h
            .rpc(
                path,
                "carol",
                None,
                "initialize",
                json!({"protocolVersion": "2025-11-25",
                "capabilities": {"sampling": {}}, "clientInfo": {"name": "t", "version": "1"}}),
            )
            .await;
        let sid = init.session.expect("session");
        let get = h
            .http
            .get(format!("{}{path}", h.base))
            .header("accept", "text/event-stream")
            .header("authorization", "Bearer carol")
            .header("mcp-session-id", &sid)
            .send()
            .await
            .unwrap();
        assert_eq!(get.status(), 200);
        let mut body = Box::pin(get.bytes_stream());
        let mut buf = String::new();
        let r = h
            .rpc(
                path,
                "carol",
                Some(&sid),
                "tools/call",
                json!({"name": "x", "arguments": {}}),
            )
            .await;
        assert_eq!(
            r.body["result"]["content"][0]["text"], "later",
            "{:?}",
            r.body
        );

        let log = next_matching(&mut body, &mut buf, |m| {
            m["method"] == "notifications/message"
        })
        .await;
        assert_eq!(log["params"]["data"], "after the call");
        assert_eq!(
            log["params"]["_meta"][reflow_dataplane::mcp::TARGET_META],
            "t/later"
        );
        let asked = next_matching(&mut body, &mut buf, |m| {
            m["method"] == "sampling/createMessage"
        })
        .await;
        assert_ne!(asked["id"], "kid-1", "the client sees a gateway id");
        let answer = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"role": "assistant",
            "content": {"type": "text", "text": "hi"}, "model": "m"}});
        let posted = h
            .post(path, "carol", Some(&sid), answer.to_string().into_bytes())
            .await;
        assert_eq!(posted.status, 202, "{:?}", posted.body);
        let told = next_matching(&mut body, &mut buf, |m| {
            m["params"]["data"]
                .as_str()
                .is_some_and(|d| d.starts_with("answer:"))
        })
        .await;
        assert_eq!(told["params"]["data"], "answer: hi");
        assert_eq!(
            h.gw.stdio()
                .stats()
                .unrouted
                .load(std::sync::atomic::Ordering::Relaxed),
            0
        );
    })
    .await;
}

#[tokio::test]
async fn a_sandbox_path_that_would_expose_the_gateways_files_refuses_the_spawn() {
    bounded(async {
        let secrets = temp_dir();
        std::fs::write(secrets.join("sealing-key"), "k").unwrap();
        let mut stdio = StdioConfig::default();
        stdio
            .protected
            .add(&secrets.join("sealing-key"), "sealing key file");
        let extra = format!("  sandbox: {{readOnlyPaths: [{:?}]}}\n", secrets.display());
        let h = gateway(&[("fx", stdio_target("fx", &["--stdio"], &extra))], stdio).await;
        let sid = h.open("/mcp/t/fx", "alice").await;
        let r = h
            .rpc(
                "/mcp/t/fx",
                "alice",
                Some(&sid),
                "tools/call",
                json!({"name": "echo", "arguments": {"text": "hi"}}),
            )
            .await;
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(
            msg.contains("refusing to start the STDIO server unsandboxed")
                && msg.contains("would expose the gateway's sealing key file"),
            "{:?}",
            r.body
        );
        assert_eq!(r.body["error"]["data"]["reason"], "stdio_sandbox");
        assert_eq!(h.gw.stdio().live(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_missing_program_is_reported_as_missing_not_as_a_sandbox_failure() {
    bounded(async {
        let target = stdio_target_cmd("gone", "/nonexistent/reflow-server", &[], "");
        let h = gateway(&[("gone", target)], StdioConfig::default()).await;
        let sid = h.open("/mcp/t/gone", "alice").await;
        let r = h
            .rpc(
                "/mcp/t/gone",
                "alice",
                Some(&sid),
                "tools/call",
                json!({"name": "echo", "arguments": {}}),
            )
            .await;
        assert_eq!(
            r.body["error"]["data"]["reason"], "stdio_spawn",
            "{:?}",
            r.body
        );
        let msg = r.body["error"]["message"].as_str().unwrap_or_default();
        assert!(msg.contains("No such file"), "{msg}");
    })
    .await;
}
