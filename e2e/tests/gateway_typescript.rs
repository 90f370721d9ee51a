//! The official TypeScript SDK (`@modelcontextprotocol/sdk`) as a client through the Reflow
//! gateway (in-process, real JWT authenticator) to real `reflow-fixture` upstreams: listing,
//! calls, policy, and the server-to-client traffic a real client depends on (sampling,
//! elicitation, progress, logging) relayed back to it.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::py_ops::{self, err_result, first_text, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, TestGateway, TsClient};
use serde_json::{Value, json};

fn fixture(args: &[&str]) -> FixtureProcess {
    FixtureProcess::spawn_with(&fixture_bin!(), args).expect("fixture starts")
}

#[test]
fn typescript_sdk_lists_and_calls_and_a_denied_tool_reads_as_unknown() {
    let one = fixture(&["--name", "one"]);
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(
            PolicyDoc::allow("everyone-uses-one", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::deny("no-crash", "one")
                .everyone()
                .rule("tool", &["crash"]),
        )
        .start()
        .expect("gateway starts");
    let report = TsClient::streamable_http(gw.mcp_url())
        .token(gw.token("dana", &[], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_echo", json!({"text": "from node"})),
            py_ops::call_tool("one_crash", json!({})),
            py_ops::call_tool("one_no_such_tool", json!({})),
            py_ops::list_resources(),
            py_ops::read_resource("reflow://one/fixture://static/hello"),
        ])
        .run()
        .expect("typescript client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(tools.contains(&"one_echo".to_owned()), "{tools:?}");
    assert!(!tools.iter().any(|t| t == "one_crash"), "{tools:?}");
    assert_eq!(first_text(ok_result(&report, 1)), "[one] from node");
    let denied = err_result(&report, 2);
    let unknown = err_result(&report, 3);
    assert_eq!(denied["code"], -32602, "{report:#}");
    assert_eq!(denied["message"], "Unknown tool: one_crash");
    assert_eq!(unknown["code"], denied["code"]);
    assert_eq!(unknown["message"], "Unknown tool: one_no_such_tool");
    assert_eq!(
        ok_result(&report, 5)["contents"][0]["text"],
        "Hello from one",
        "{report:#}"
    );

    // Without a token the SDK's connect fails: nothing is served.
    let refused = TsClient::streamable_http(gw.mcp_url())
        .actions([py_ops::list_tools()])
        .run()
        .expect("typescript client runs");
    assert_eq!(refused["ok"], false, "{refused:#}");
}

fn conformance_gateway() -> (FixtureProcess, TestGateway) {
    let upstream = fixture(&["--conformance"]);
    let gw = TestGateway::builder()
        .target("cf", &upstream.mcp_url())
        .policy(PolicyDoc::allow("all", "cf").everyone().rule("all", &["*"]))
        .start()
        .expect("gateway starts");
    (upstream, gw)
}

#[test]
fn typescript_sdk_answers_sampling_and_elicitation_and_sees_progress_and_logs() {
    let (_upstream, gw) = conformance_gateway();
    let report = TsClient::streamable_http(gw.mcp_url())
        .token(gw.token("erin", &[], &[]))
        .sampling_reply("forty-two")
        .elicitation_reply(json!({"username": "erin", "email": "erin@example.com"}))
        .actions([
            py_ops::call_tool("cf_test_sampling", json!({"prompt": "the answer?"})),
            py_ops::call_tool("cf_test_elicitation", json!({"message": "who are you?"})),
            py_ops::call_tool_with_progress("cf_test_tool_with_progress", json!({})),
            py_ops::set_logging_level("info"),
            py_ops::call_tool("cf_test_tool_with_logging", json!({})),
        ])
        .run()
        .expect("typescript client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(
        first_text(ok_result(&report, 0)),
        "LLM response: forty-two",
        "{report:#}"
    );
    let elicited = first_text(ok_result(&report, 1));
    assert!(
        elicited.starts_with("User response: action=accept")
            && elicited.contains("erin@example.com"),
        "{elicited}"
    );
    // The client saw exactly the upstream's two requests, with the upstream's own parameters.
    let asked: Vec<&str> = report["server_requests"]
        .as_array()
        .map(|r| r.iter().filter_map(|q| q["method"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(asked, ["sampling/createMessage", "elicitation/create"]);
    assert_eq!(
        report["server_requests"][0]["params"]["messages"][0]["content"]["text"],
        "the answer?"
    );
    assert_eq!(
        report["server_requests"][1]["params"]["message"],
        "who are you?"
    );

    let progress: Vec<Value> = report["results"][2]["progress"]
        .as_array()
        .map(|p| p.iter().map(|e| e["progress"].clone()).collect())
        .unwrap_or_default();
    assert_eq!(progress, [json!(0), json!(50), json!(100)], "{report:#}");

    let logs: Vec<&str> = report["notifications"]
        .as_array()
        .map(|n| {
            n.iter()
                .filter(|m| m["method"] == "notifications/message")
                .filter_map(|m| m["params"]["data"].as_str())
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        logs,
        [
            "Tool execution started",
            "Tool processing data",
            "Tool execution completed"
        ],
        "{report:#}"
    );
}

#[test]
fn a_client_without_the_sampling_capability_gets_the_upstream_refused_not_a_hang() {
    let (_upstream, gw) = conformance_gateway();
    let report = TsClient::streamable_http(gw.mcp_url())
        .token(gw.token("fred", &[], &[]))
        .without_sampling()
        .actions([py_ops::call_tool(
            "cf_test_sampling",
            json!({"prompt": "anyone?"}),
        )])
        .run()
        .expect("typescript client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    // The fixture reports the refusal as a tool error; the client was never asked.
    let result = ok_result(&report, 0);
    assert_eq!(result["isError"], true, "{report:#}");
    assert!(
        first_text(result).starts_with("sampling failed:"),
        "{report:#}"
    );
    assert_eq!(report["server_requests"], json!([]));
}
