//! The official Python `mcp` SDK through the Reflow gateway to `@modelcontextprotocol/server-everything`
//! (a third-party reference server) in its streamableHttp and legacy sse modes.

use reflow_e2e::harness::py_ops::{self, first_text, names, ok_result};
use reflow_e2e::harness::{EverythingMode, PolicyDoc, PyClient, ServerEverything, TestGateway};
use serde_json::json;

fn gateway_for(server: &ServerEverything, transport: &str) -> TestGateway {
    TestGateway::builder()
        .target_with("everything", transport, &server.url())
        .policy(
            PolicyDoc::allow("everyone", "everything")
                .everyone()
                .rule("all", &["*"]),
        )
        .start()
        .expect("gateway starts")
}

/// Lists tools and calls echo through the aggregated endpoint, then echo on the target endpoint.
fn check_through_gateway(gw: &TestGateway, server: &ServerEverything) {
    let token = gw.token("alice", &[], &[]);
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&token)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool(
                "everything_echo",
                json!({"message": "hello through reflow"}),
            ),
        ])
        .run()
        .expect("python client runs");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(
        tools.iter().any(|t| t == "everything_echo"),
        "{tools:?}\nserver output:\n{}",
        server.output()
    );
    assert!(
        tools.iter().all(|t| t.starts_with("everything_")),
        "{tools:?}"
    );
    assert_eq!(
        first_text(ok_result(&report, 1)),
        "Echo: hello through reflow"
    );

    let report = PyClient::streamable_http(gw.target_url("everything"))
        .token(&token)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("echo", json!({"message": "direct"})),
        ])
        .run()
        .expect("python client runs");
    let unprefixed: Vec<String> = tools
        .iter()
        .map(|t| t.trim_start_matches("everything_").to_owned())
        .collect();
    let mut direct = names(ok_result(&report, 0), "tools");
    direct.sort();
    let mut expected = unprefixed;
    expected.sort();
    assert_eq!(direct, expected);
    assert_eq!(first_text(ok_result(&report, 1)), "Echo: direct");

    let call = gw
        .audit_events()
        .into_iter()
        .find(|e| e.name.as_deref() == Some("everything_echo"))
        .expect("audit event for the call");
    assert_eq!(
        (call.decision, call.outcome.as_str()),
        (Some("allow"), "ok"),
        "{call:?}"
    );
}

/// server-everything opens every SSE reply with a resumability priming event (`id: …` and an
/// empty `data:` line, 2025-11-25); the gateway's upstream reader must skip it.
#[test]
fn python_sdk_through_gateway_to_server_everything_streamable_http() {
    let server =
        ServerEverything::spawn(EverythingMode::StreamableHttp).expect("server-everything");
    let gw = gateway_for(&server, "streamableHttp");
    check_through_gateway(&gw, &server);
}

#[test]
fn python_sdk_through_gateway_to_server_everything_sse() {
    let server = ServerEverything::spawn(EverythingMode::Sse).expect("server-everything");
    let gw = gateway_for(&server, "sse");
    check_through_gateway(&gw, &server);
}
