//! The official Python `mcp` SDK as a legacy HTTP+SSE client (`sse_client`) through the gateway's
//! `/sse` to `reflow-fixture --conformance`: prefixed lists, calls, policy, sampling and progress.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::py_ops::{self, err_result, first_text, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};
use serde_json::{Value, json};

/// Target `web` (Streamable HTTP fixture) allowed for everyone except `test_error_handling`.
fn gateway() -> (FixtureProcess, TestGateway) {
    let web = FixtureProcess::spawn_with(&fixture_bin!(), ["--conformance", "--name", "web"])
        .expect("fixture starts");
    let gw = TestGateway::builder()
        .target("web", &web.mcp_url())
        .policy(
            PolicyDoc::allow("web-all", "web")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::deny("no-errors", "web")
                .everyone()
                .rule("tool", &["test_error_handling"]),
        )
        .start()
        .expect("gateway starts");
    (web, gw)
}

fn sse_url(gw: &TestGateway) -> String {
    format!("{}/sse", gw.base_url())
}

#[test]
fn python_sse_client_lists_calls_and_is_refused_denied_tools_like_unknown_ones() {
    let (_web, gw) = gateway();
    let report = PyClient::sse(sse_url(&gw))
        .token(gw.token("frank", &[], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("web_test_simple_text", json!({})),
            py_ops::call_tool("web_test_error_handling", json!({})),
            py_ops::call_tool("web_no_such_tool", json!({})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["server_info"]["name"], "reflow", "{report:#}");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(
        tools.contains(&"web_test_simple_text".to_owned()),
        "{tools:?}"
    );
    assert!(tools.iter().all(|t| t.starts_with("web_")), "{tools:?}");
    assert!(
        !tools.contains(&"web_test_error_handling".to_owned()),
        "{tools:?}"
    );
    assert_eq!(
        first_text(ok_result(&report, 1)),
        "This is a simple text response for testing."
    );
    let denied = err_result(&report, 2);
    let unknown = err_result(&report, 3);
    assert_eq!(denied["message"], "Unknown tool: web_test_error_handling");
    assert_eq!(unknown["message"], "Unknown tool: web_no_such_tool");
    assert_eq!(denied["code"], unknown["code"]);
}

#[test]
fn python_sse_client_answers_sampling_and_gets_progress_on_its_stream() {
    let (_web, gw) = gateway();
    let report = PyClient::sse(sse_url(&gw))
        .token(gw.token("gina", &[], &[]))
        .answer_client_requests()
        .actions([
            py_ops::call_tool_with_progress("web_test_tool_with_progress", json!({})),
            py_ops::call_tool("web_test_sampling", json!({"prompt": "hello old"})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    let progress: Vec<Value> = report["results"][0]["progress"]
        .as_array()
        .unwrap_or_else(|| panic!("no progress in {report:#}"))
        .iter()
        .map(|p| p["progress"].clone())
        .collect();
    assert_eq!(progress, [json!(0.0), json!(50.0), json!(100.0)]);
    assert_eq!(
        first_text(ok_result(&report, 1)),
        "LLM response: sampled: hello old"
    );
    let asked: Vec<&str> = report["client_requests"]
        .as_array()
        .expect("client_requests")
        .iter()
        .filter_map(|r| r["method"].as_str())
        .collect();
    assert_eq!(asked, ["sampling/createMessage"]);
}

#[test]
fn python_sse_client_without_a_token_is_refused() {
    let (_web, gw) = gateway();
    let report = PyClient::sse(sse_url(&gw))
        .actions([py_ops::list_tools()])
        .run()
        .expect("python client runs");
    assert_eq!(report["ok"], false, "{report:#}");
    assert!(report["error"].to_string().contains("401"), "{report:#}");
}
