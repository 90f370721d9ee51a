//! The `reflow-dataplane` binary serving thread-per-core (`gateway.http.threadPerCore`, with
//! `directUpstream`): one serving thread per CPU, and everything a client sees stays the same:
//! authentication, policy (a denied tool reads like an unknown one), sessions bound to their
//! owner, and one audit line per decision.

use std::time::Duration;

use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::load::{McpSession, load_client};
use reflow_e2e::harness::{DataplaneProcess, FixtureProcess, PolicyDoc, fixture_bin};
use secrecy::SecretString;
use serde_json::{Value, json};

const DEV_SECRET: &str = "reflow-per-core-dev-secret-0123456789abcdef";
const SESSIONS: usize = 12;

fn token(user: &str) -> String {
    reflow_dataplane::auth::mint_dev_token(
        &SecretString::from(DEV_SECRET),
        "reflow-dev",
        "reflow",
        user,
        &[],
        &[],
        Duration::from_secs(600),
    )
    .expect("minting a dev token")
}

/// Names of the gateway process's threads.
fn thread_names(pid: u32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.filter_map(Result::ok)
                .filter_map(|t| std::fs::read_to_string(t.path().join("comm")).ok())
                .map(|n| n.trim().to_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_per_core_gateway_serves_decides_and_audits_like_the_default_one() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempdir();
    let fixture = FixtureProcess::spawn_with(&fixture_bin().expect("fixture"), ["--name", "one"])
        .expect("fixture starts");
    let manifests = dir.join("manifests");
    std::fs::create_dir_all(&manifests).expect("manifests folder");
    let docs = [
        target_yaml("one", "streamableHttp", &fixture.mcp_url()),
        PolicyDoc::allow("one-echo", "one")
            .everyone()
            .rule("tool", &["echo"])
            .to_yaml(),
    ];
    std::fs::write(manifests.join("all.yaml"), docs.join("---\n")).expect("manifests");
    let audit = dir.join("audit.jsonl");
    let config = dir.join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "dev: {{hs256Secret: {DEV_SECRET}}}\naudit: {{sink: file, path: {}}}\ngateway:\n  http: {{threadPerCore: true, directUpstream: true}}\n",
            audit.display()
        ),
    )
    .expect("config");
    let mut gw = DataplaneProcess::spawn(&manifests, &config, &[]).expect("gateway starts");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let names = thread_names(gw.pid());
    for i in 0..cores {
        assert!(
            names.contains(&format!("reflow-core-{i}")),
            "serving thread {i} of {cores}: {names:?}"
        );
    }

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let url = gw.mcp_url();
        // One client (and so one connection) per session: the kernel spreads them over the
        // cores' listeners, and every one must behave the same.
        let mut sessions = Vec::new();
        for i in 0..SESSIONS {
            let client = load_client().expect("client");
            let s = McpSession::open(&client, &url, Some(&token(&format!("user{i}"))))
                .await
                .expect("initialize");
            sessions.push(s);
        }
        for (i, s) in sessions.iter().enumerate() {
            let text = format!("hi {i}");
            s.tool_call("one_echo", json!({"text": text}), &format!("[one] {text}"))
                .once()
                .await
                .expect("an allowed call");
            let denied = s
                .request(
                    "tools/call",
                    json!({"name": "one_add", "arguments": {"a": 1, "b": 2}}),
                )
                .await
                .expect("a JSON-RPC answer");
            assert_eq!(
                denied.pointer("/error/message").and_then(Value::as_str),
                Some("Unknown tool: one_add"),
                "a denied tool reads like an unknown one: {denied}"
            );
        }
        // No token: refused before anything else.
        let anonymous = load_client()
            .expect("client")
            .post(&url)
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}"#)
            .send()
            .await
            .expect("an answer");
        assert_eq!(anonymous.status(), 401);
    });
    gw.terminate(Duration::from_secs(10));
    let lines: Vec<Value> = std::fs::read_to_string(&audit)
        .expect("audit file")
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    let decided = |decision: &str| {
        lines
            .iter()
            .filter(|l| l["method"] == "tools/call" && l["decision"] == decision)
            .count()
    };
    assert_eq!(decided("allow"), SESSIONS, "{lines:#?}");
    assert_eq!(decided("deny"), SESSIONS, "{lines:#?}");
    drop(fixture);
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "reflow-per-core-{}-{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
