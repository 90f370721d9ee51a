//! STDIO Targets with the official Python `mcp` SDK as the client, through the in-process
//! gateway, to real STDIO servers the gateway spawns: `reflow-fixture --stdio` (per-user
//! children with their own credentials) and `@modelcontextprotocol/server-everything` in stdio
//! mode (a third-party server that also sends notifications and requests of its own).

use std::path::Path;

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::NAMESPACE;
use reflow_e2e::harness::py_ops::{self, first_text, names, ok_result};
use reflow_e2e::harness::{PolicyDoc, PyClient, ServerEverything, TestGateway};
use serde_json::{Value, json};

/// A stdio Target running `program args…` with isolation `isolation`.
fn stdio_target(name: &str, program: &str, args: &[String], isolation: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  transport: stdio\n  command: {}\n  args: {}\n  prefix: {name}\n  isolation: {isolation}\n  timeouts: {{requestMs: 20000, initMs: 30000}}\n",
        json!(program),
        json!(args)
    )
}

fn env_credential(name: &str, target: &str, user: &str, key: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{user: {user}}}\n  env:\n    - name: API_TOKEN\n      secretKeyRef: {{name: tokens, key: {key}}}\n"
    )
}

fn whoami_report(result: &Value) -> Value {
    serde_json::from_str(first_text(result)).expect("whoami returns JSON text")
}

#[test]
fn python_sdk_reaches_per_user_stdio_fixture_children() {
    let fixture = fixture_bin!().to_string_lossy().into_owned();
    let gw = TestGateway::builder()
        .manifest(stdio_target(
            "fx",
            &fixture,
            &["--stdio".to_owned(), "--name".to_owned(), "fx".to_owned()],
            "perUser",
        ))
        .secret(
            "tokens",
            &[("alice", "alice-stdio-token"), ("bob", "bob-stdio-token")],
        )
        .manifest(env_credential("alice", "fx", "alice", "alice"))
        .manifest(env_credential("bob", "fx", "bob", "bob"))
        .policy(PolicyDoc::allow("all", "fx").everyone().rule("all", &["*"]))
        .start()
        .expect("gateway starts");

    let mut reports = Vec::new();
    for user in ["alice", "bob"] {
        let report = PyClient::streamable_http(gw.mcp_url())
            .token(gw.token(user, &[], &[]))
            .actions([
                py_ops::list_tools(),
                py_ops::call_tool("fx_echo", json!({"text": "over stdio"})),
                py_ops::call_tool("fx_whoami", json!({})),
            ])
            .run()
            .expect("python client runs");
        let tools = names(ok_result(&report, 0), "tools");
        assert!(tools.contains(&"fx_echo".to_owned()), "{tools:?}");
        assert_eq!(first_text(ok_result(&report, 1)), "[fx] over stdio");
        reports.push(whoami_report(ok_result(&report, 2)));
    }
    let (alice, bob) = (&reports[0], &reports[1]);
    assert_eq!(alice["transport"], "stdio");
    assert_eq!(alice["env"]["API_TOKEN"], "alice-stdio-token");
    assert_eq!(bob["env"]["API_TOKEN"], "bob-stdio-token");
    // Each child has its own HOME (its pid would be 2 for both in their PID namespaces).
    assert_ne!(
        alice["env"]["HOME"], bob["env"]["HOME"],
        "alice and bob share a child"
    );
    // The gateway's own environment (this test process's) never reaches a child.
    let env = alice["env"].as_object().expect("env");
    let mut keys: Vec<&str> = env.keys().map(String::as_str).collect();
    keys.sort();
    assert_eq!(keys, ["API_TOKEN", "HOME", "LANG", "PATH", "TMPDIR"]);
}

#[test]
fn python_sdk_reaches_server_everything_over_stdio() {
    let cmd = ServerEverything::stdio_command().expect("server-everything installed");
    // The sandboxed child reads only system paths: the npm prefix holding the package (under
    // target/e2e) is granted to it, as a Target running a script from elsewhere must.
    let granted = cmd.sandbox_read_only_paths();
    assert!(
        granted
            .iter()
            .any(|p| Path::new(&cmd.args[0]).starts_with(p)),
        "the entry's npm prefix is granted: {granted:?}"
    );
    let gw = TestGateway::builder()
        .manifest(format!(
            "{}  sandbox: {{readOnlyPaths: {}}}\n",
            stdio_target(
                "everything",
                &cmd.program.to_string_lossy(),
                &cmd.args,
                "shared",
            ),
            json!(granted)
        ))
        .policy(
            PolicyDoc::allow("all", "everything")
                .everyone()
                .rule("all", &["*"]),
        )
        .start()
        .expect("gateway starts");
    let token = gw.token("alice", &[], &[]);
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&token)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("everything_echo", json!({"message": "hello over stdio"})),
            py_ops::list_prompts(),
        ])
        .run()
        .expect("python client runs");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(tools.contains(&"everything_echo".to_owned()), "{tools:?}");
    assert_eq!(first_text(ok_result(&report, 1)), "Echo: hello over stdio");
    assert!(!names(ok_result(&report, 2), "prompts").is_empty());

    // A second client (another session) is served by the same warm child.
    let report = PyClient::streamable_http(gw.target_url("everything"))
        .token(&token)
        .actions([py_ops::call_tool("echo", json!({"message": "again"}))])
        .run()
        .expect("python client runs");
    assert_eq!(first_text(ok_result(&report, 0)), "Echo: again");
    assert_eq!(gw.gateway().stdio().live(), 1);
}
