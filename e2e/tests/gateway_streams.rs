//! Streams with the official Python `mcp` SDK as the client, through the in-process gateway, to
//! `reflow-fixture --conformance` over Streamable HTTP, legacy HTTP+SSE and as a STDIO child:
//! progress, logging,
//! sampling and elicitation round trips, and the refusal a client without those capabilities gets.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::NAMESPACE;
use reflow_e2e::harness::py_ops::{self, first_text, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};
use serde_json::{Value, json};

/// Targets `web` (Streamable HTTP), `old` (legacy SSE, same fixture) and `kid` (a shared STDIO
/// child), all fully allowed.
fn gateway() -> (FixtureProcess, TestGateway) {
    let web = FixtureProcess::spawn_with(&fixture_bin!(), ["--conformance", "--name", "web"])
        .expect("fixture starts");
    let fixture = fixture_bin!().to_string_lossy().into_owned();
    let kid = format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: kid, namespace: {NAMESPACE}}}\nspec:\n  transport: stdio\n  command: {}\n  args: {}\n  prefix: kid\n  isolation: shared\n  timeouts: {{requestMs: 20000, initMs: 30000}}\n",
        json!(fixture),
        json!(["--stdio", "--conformance", "--name", "kid"])
    );
    let gw = TestGateway::builder()
        .target("web", &web.mcp_url())
        .target_with("old", "sse", &format!("{}/sse", web.base_url()))
        .manifest(kid)
        .policy(
            PolicyDoc::allow("web-all", "web")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::allow("kid-all", "kid")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::allow("old-all", "old")
                .everyone()
                .rule("all", &["*"]),
        )
        .start()
        .expect("gateway starts");
    (web, gw)
}

fn progress_values(report: &Value, i: usize) -> Vec<Value> {
    report["results"][i]["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress in {:#}", report["results"][i]))
        .iter()
        .map(|p| p["progress"].clone())
        .collect()
}

#[test]
fn python_sdk_gets_progress_logs_sampling_and_elicitation_from_http_and_stdio_upstreams() {
    let (_web, gw) = gateway();
    let mut actions = Vec::new();
    for prefix in ["web", "kid", "old"] {
        actions.extend([
            py_ops::call_tool_with_progress(
                &format!("{prefix}_test_tool_with_progress"),
                json!({}),
            ),
            py_ops::call_tool(
                &format!("{prefix}_test_sampling"),
                json!({"prompt": format!("hello {prefix}")}),
            ),
            py_ops::call_tool(
                &format!("{prefix}_test_elicitation"),
                json!({"message": "who are you?"}),
            ),
            py_ops::call_tool(&format!("{prefix}_test_tool_with_logging"), json!({})),
        ]);
    }
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("dana", &[], &[]))
        .answer_client_requests()
        .actions(actions)
        .run()
        .expect("python client runs");
    assert_eq!(report["ok"], true, "{report:#}");

    for (prefix, base) in [("web", 0), ("kid", 4), ("old", 8)] {
        assert_eq!(
            progress_values(&report, base),
            [json!(0.0), json!(50.0), json!(100.0)],
            "{prefix}: {report:#}"
        );
        assert_eq!(
            first_text(ok_result(&report, base + 1)),
            format!("LLM response: sampled: hello {prefix}"),
            "{prefix}"
        );
        let elicited = first_text(ok_result(&report, base + 2));
        assert!(
            elicited.contains("action=accept") && elicited.contains("py-user"),
            "{prefix}: {elicited}"
        );
        assert_eq!(
            first_text(ok_result(&report, base + 3)),
            "Tool with logging executed successfully"
        );
    }
    let asked: Vec<&str> = report["client_requests"]
        .as_array()
        .expect("client_requests")
        .iter()
        .filter_map(|r| r["method"].as_str())
        .collect();
    assert_eq!(
        asked,
        ["sampling/createMessage", "elicitation/create"].repeat(3)
    );
    let logs: Vec<&str> = report["logs"]
        .as_array()
        .expect("logs")
        .iter()
        .filter_map(|l| l["data"].as_str())
        .collect();
    let started = logs
        .iter()
        .filter(|l| **l == "Tool execution started")
        .count();
    assert_eq!(started, 3, "one per upstream: {logs:?}");
    assert_eq!(logs.len(), 9, "{logs:?}");
}

#[test]
fn a_client_without_sampling_gets_the_upstreams_refusal_not_a_hang() {
    let (_web, gw) = gateway();
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("erin", &[], &[]))
        .actions([
            py_ops::call_tool("web_test_sampling", json!({"prompt": "x"})),
            py_ops::call_tool("kid_test_sampling", json!({"prompt": "x"})),
            py_ops::call_tool("old_test_sampling", json!({"prompt": "x"})),
        ])
        .run()
        .expect("python client runs");
    for i in 0..3 {
        let result = ok_result(&report, i);
        assert_eq!(result["isError"], true, "{result:#}");
        let text = first_text(result);
        assert!(
            text.starts_with("sampling failed:") && text.contains("capability"),
            "{text}"
        );
    }
    assert!(
        report["client_requests"]
            .as_array()
            .is_some_and(Vec::is_empty)
    );
}
