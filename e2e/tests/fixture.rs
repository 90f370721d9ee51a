//! Proves reflow-fixture and the harness against real peers: the Python `mcp` SDK (Streamable HTTP, SSE, stdio),
//! raw HTTP for the bad paths, a test-driven stdio session, and server-everything (streamableHttp, sse, stdio).

use std::time::Duration;

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::net::listens_on_loopback_only;
use reflow_e2e::harness::process::run_bounded;
use reflow_e2e::harness::py_ops::{self, err_result, first_text, names, ok_result};
use reflow_e2e::harness::sse::{SseReader, parse_body};
use reflow_e2e::harness::{
    CommandLine, EverythingMode, FixtureProcess, HarnessError, PyClient, ServerEverything,
    StdioFixture, http_client,
};
use serde_json::{Value, json};

const STEP: Duration = Duration::from_secs(10);

/// The 2026-07-28 (stateless) revision's bad paths, MRTR and listen streams.
#[path = "fixture/stateless_2026.rs"]
mod stateless_2026;

fn fixture(args: &[&str]) -> FixtureProcess {
    FixtureProcess::spawn_with(&fixture_bin!(), args).expect("fixture starts")
}

/// The JSON document a `whoami` call returned.
fn whoami_report(result: &Value) -> Value {
    serde_json::from_str(first_text(result)).expect("whoami returns JSON text")
}

// ---------------------------------------------------------------------------------------------
// Python SDK against the fixture
// ---------------------------------------------------------------------------------------------

#[test]
fn python_sdk_over_streamable_http_sees_every_feature() {
    let fx = fixture(&["--name", "alpha", "--page-size", "3", "--extra-tools", "7"]);
    let report = PyClient::streamable_http(fx.mcp_url())
        .token("client-token")
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("echo", json!({"text": "hello"})),
            py_ops::call_tool("add", json!({"a": 2, "b": 40})),
            py_ops::call_tool("whoami", json!({})),
            py_ops::call_tool_with_progress("slow", json!({"ms": 200})),
            py_ops::call_tool("fail", json!({})),
            py_ops::call_tool("no_such_tool", json!({})),
            py_ops::list_resources(),
            py_ops::read_resource("fixture://static/hello"),
            py_ops::list_resource_templates(),
            py_ops::read_resource("fixture://items/42"),
            py_ops::list_prompts(),
            py_ops::get_prompt("greet", json!({"name": "carol"})),
            py_ops::complete_prompt_arg("greet", "name", "a"),
            py_ops::complete_prompt_arg("greet", "name", ""),
            py_ops::complete_resource_arg("fixture://items/{id}", "id", "4"),
            py_ops::set_logging_level("debug"),
            py_ops::call_tool("whoami", json!({})),
            py_ops::ping(),
            py_ops::call_tool("tool_0006", json!({})),
        ])
        .run()
        .expect("python client runs");

    assert_eq!(report["protocol_version"], "2025-11-25");
    assert_eq!(report["server_info"]["name"], "alpha");

    // 6 built-in + 7 generated tools over pages of 3.
    let tools = ok_result(&report, 0);
    assert_eq!(tools["pages"], 5);
    let mut expected = vec!["echo", "add", "whoami", "slow", "fail", "crash"]
        .into_iter()
        .map(str::to_owned)
        .collect::<Vec<_>>();
    expected.extend((0..7).map(|i| format!("tool_{i:04}")));
    assert_eq!(names(tools, "tools"), expected);
    for tool in tools["tools"].as_array().expect("tools") {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }

    assert_eq!(first_text(ok_result(&report, 1)), "[alpha] hello");
    let add = ok_result(&report, 2);
    assert_eq!(first_text(add), "42");
    assert_eq!(add["structuredContent"]["sum"], 42);

    let who = whoami_report(ok_result(&report, 3));
    assert_eq!(who["transport"], "streamable-http");
    assert_eq!(who["headers"]["authorization"], "Bearer client-token");
    assert_eq!(who["headers"]["mcp-session-id"], who["sessionId"]);
    assert_eq!(who["headers"]["mcp-protocol-version"], "2025-11-25");

    let slow = &report["results"][4];
    assert_eq!(first_text(ok_result(&report, 4)), "slept 200 ms");
    let progress: Vec<f64> = slow["progress"]
        .as_array()
        .expect("progress recorded")
        .iter()
        .filter_map(|p| p["progress"].as_f64())
        .collect();
    assert_eq!(progress, vec![1.0, 2.0, 3.0, 4.0]);

    let fail = ok_result(&report, 5);
    assert_eq!(fail["isError"], true);
    assert_eq!(first_text(fail), "[alpha] fail: this tool always fails");
    let unknown = err_result(&report, 6);
    assert_eq!(unknown["code"], -32602);

    assert_eq!(
        names(ok_result(&report, 7), "resources"),
        vec!["hello".to_owned()]
    );
    assert_eq!(
        ok_result(&report, 8)["contents"][0]["text"],
        "Hello from alpha"
    );
    assert_eq!(
        ok_result(&report, 9)["resourceTemplates"][0]["uriTemplate"],
        "fixture://items/{id}"
    );
    let item: Value = serde_json::from_str(
        ok_result(&report, 10)["contents"][0]["text"]
            .as_str()
            .expect("item text"),
    )
    .expect("item JSON");
    assert_eq!(item, json!({"id": "42", "server": "alpha"}));

    assert_eq!(
        names(ok_result(&report, 11), "prompts"),
        vec!["greet".to_owned()]
    );
    assert_eq!(
        ok_result(&report, 12)["messages"][0]["content"]["text"],
        "Please greet carol warmly."
    );
    assert_eq!(
        ok_result(&report, 13)["completion"]["values"],
        json!(["alice"])
    );
    assert_eq!(
        ok_result(&report, 14)["completion"]["values"],
        json!(["alice", "bob", "carol"])
    );
    assert_eq!(
        ok_result(&report, 15)["completion"]["values"],
        json!(["42"])
    );
    ok_result(&report, 16);
    assert_eq!(whoami_report(ok_result(&report, 17))["logLevel"], "debug");
    ok_result(&report, 18);
    assert_eq!(first_text(ok_result(&report, 19)), "[alpha] tool_0006");
}

#[test]
fn python_sdk_over_legacy_sse() {
    let fx = fixture(&["--name", "beta", "--page-size", "2"]);
    let report = PyClient::sse(fx.sse_url())
        .token("sse-token")
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("echo", json!({"text": "over sse"})),
            py_ops::call_tool("add", json!({"a": 1.5, "b": 2})),
            py_ops::call_tool("whoami", json!({})),
            py_ops::call_tool_with_progress("slow", json!({"ms": 100})),
            py_ops::read_resource("fixture://items/abc"),
            py_ops::get_prompt("greet", json!({"name": "bob"})),
            py_ops::complete_prompt_arg("greet", "name", "c"),
        ])
        .run()
        .expect("python client runs");

    assert_eq!(report["server_info"]["name"], "beta");
    let tools = ok_result(&report, 0);
    assert_eq!(tools["pages"], 3);
    assert_eq!(tools["tools"].as_array().map(Vec::len), Some(6));
    assert_eq!(first_text(ok_result(&report, 1)), "[beta] over sse");
    assert_eq!(ok_result(&report, 2)["structuredContent"]["sum"], 3.5);
    let who = whoami_report(ok_result(&report, 3));
    assert_eq!(who["transport"], "sse");
    assert_eq!(who["headers"]["authorization"], "Bearer sse-token");
    assert!(who["headers"].get("mcp-session-id").is_none());
    assert_eq!(
        report["results"][4]["progress"].as_array().map(Vec::len),
        Some(4)
    );
    assert!(
        ok_result(&report, 5)["contents"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("\"abc\""))
    );
    assert_eq!(
        ok_result(&report, 6)["messages"][0]["content"]["text"],
        "Please greet bob warmly."
    );
    assert_eq!(
        ok_result(&report, 7)["completion"]["values"],
        json!(["carol"])
    );
}

#[test]
fn python_sdk_over_stdio_gets_injected_env() {
    let command = CommandLine {
        program: fixture_bin!(),
        args: vec!["--stdio".into(), "--name".into(), "gamma".into()],
    };
    let report = PyClient::stdio(command)
        .server_env("REFLOW_TEST_SECRET", "s3cr3t")
        .actions([
            py_ops::call_tool("echo", json!({"text": "hi"})),
            py_ops::call_tool("whoami", json!({})),
            py_ops::list_tools(),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(first_text(ok_result(&report, 0)), "[gamma] hi");
    let who = whoami_report(ok_result(&report, 1));
    assert_eq!(who["transport"], "stdio");
    assert_eq!(who["env"]["REFLOW_TEST_SECRET"], "s3cr3t");
    assert!(who["pid"].as_u64().is_some_and(|p| p > 0));
    assert!(who.get("headers").is_none());
    assert_eq!(names(ok_result(&report, 2), "tools").len(), 6);
}

// ---------------------------------------------------------------------------------------------
// Raw HTTP: the fixture's session rules and bad paths
// ---------------------------------------------------------------------------------------------

fn rpc(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

fn init_params(version: &str) -> Value {
    json!({
        "protocolVersion": version,
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    })
}

/// Initialises a session and returns its id.
async fn open_session(client: &reqwest::Client, url: &str, version: &str) -> (String, Value) {
    let resp = client
        .post(url)
        .header("accept", "application/json, text/event-stream")
        .json(&rpc(1, "initialize", init_params(version)))
        .send()
        .await
        .expect("initialize");
    assert_eq!(resp.status(), 200);
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session header")
        .to_owned();
    let body: Value = resp.json().await.expect("JSON body");
    (sid, body)
}

#[tokio::test]
async fn streamable_http_session_rules_and_bad_paths() {
    let fx = fixture(&["--name", "raw"]);
    let url = fx.mcp_url();
    let client = http_client().expect("client");

    // Negotiation: a supported version is echoed, an unknown one gets the latest.
    let (_, body) = open_session(&client, &url, "2025-03-26").await;
    assert_eq!(body["result"]["protocolVersion"], "2025-03-26");
    assert_eq!(body["result"]["serverInfo"]["name"], "raw");
    let (sid, body) = open_session(&client, &url, "1999-01-01").await;
    assert_eq!(body["result"]["protocolVersion"], "2025-11-25");

    let post = |body: Value| client.post(&url).json(&body);

    // No session header → 400; unknown session → 404.
    let resp = post(rpc(2, "ping", json!({}))).send().await.expect("send");
    assert_eq!(resp.status(), 400);
    let resp = post(rpc(2, "ping", json!({})))
        .header("mcp-session-id", "no-such-session")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);

    // Notifications and client responses → 202 with an empty body.
    let resp = post(json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);
    assert!(resp.bytes().await.expect("body").is_empty());
    let resp = post(json!({"jsonrpc": "2.0", "id": "srv-1", "result": {}}))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 202);

    // Malformed JSON → -32700 with id null.
    let resp = client
        .post(&url)
        .header("mcp-session-id", &sid)
        .header("content-type", "application/json")
        .body("{\"jsonrpc\": \"2.0\", \"id\": 3,")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON error");
    assert_eq!(body["error"]["code"], -32700);
    assert_eq!(body["id"], Value::Null);

    // Unknown method → -32601 on a 200.
    let resp = post(rpc(4, "tools/frobnicate", json!({})))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32601);
    assert_eq!(body["id"], 4);

    // whoami reports every header, including authorization and custom ones.
    let resp = post(rpc(5, "tools/call", json!({"name": "whoami"})))
        .header("mcp-session-id", &sid)
        .header("authorization", "Bearer raw-token")
        .header("x-reflow-test", "yes")
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("JSON");
    let who = whoami_report(&body["result"]);
    assert_eq!(who["headers"]["authorization"], "Bearer raw-token");
    assert_eq!(who["headers"]["x-reflow-test"], "yes");
    assert_eq!(who["sessionId"], sid.as_str());

    // crash → 500.
    let resp = post(rpc(6, "tools/call", json!({"name": "crash"})))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 500);

    // slow + Accept SSE → progress events, then the response, on one SSE reply.
    let resp = post(rpc(
        7,
        "tools/call",
        json!({"name": "slow", "arguments": {"ms": 80}, "_meta": {"progressToken": "tok-7"}}),
    ))
    .header("mcp-session-id", &sid)
    .header("accept", "application/json, text/event-stream")
    .send()
    .await
    .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("text/event-stream"))
    );
    let events = parse_body(&resp.text().await.expect("body"));
    assert_eq!(events.len(), 5, "{events:?}");
    for (i, event) in events[..4].iter().enumerate() {
        let note = event.json().expect("json");
        assert_eq!(note["method"], "notifications/progress");
        assert_eq!(note["params"]["progressToken"], "tok-7");
        assert_eq!(note["params"]["progress"], i as u64 + 1);
    }
    let last = events[4].json().expect("json");
    assert_eq!(last["id"], 7);
    assert_eq!(last["result"]["content"][0]["text"], "slept 80 ms");

    // The same call without SSE in Accept → plain JSON.
    let resp = post(rpc(
        8,
        "tools/call",
        json!({"name": "slow", "arguments": {"ms": 0}}),
    ))
    .header("mcp-session-id", &sid)
    .header("accept", "application/json")
    .send()
    .await
    .expect("send");
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .is_ok_and(|c| c.starts_with("application/json"))
    );

    // A batch answers as an array, in order.
    let resp = post(json!([
        rpc(9, "ping", json!({})),
        rpc(10, "nope", json!({}))
    ]))
    .header("mcp-session-id", &sid)
    .send()
    .await
    .expect("send");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body[0]["id"], 9);
    assert_eq!(body[0]["result"], json!({}));
    assert_eq!(body[1]["error"]["code"], -32601);

    // Unsupported MCP-Protocol-Version → 400.
    let resp = post(rpc(11, "ping", json!({})))
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "1999-01-01")
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 400);

    // Bodies over 4 MiB → 413.
    let big = vec![b' '; 4 * 1024 * 1024 + 1];
    let resp = client
        .post(&url)
        .header("mcp-session-id", &sid)
        .body(big)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 413);

    // GET opens an SSE stream; DELETE ends the session (and its stream).
    let stream = client
        .get(&url)
        .header("mcp-session-id", &sid)
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET");
    assert_eq!(stream.status(), 200);
    let mut reader = SseReader::new(stream);
    let resp = client
        .delete(&url)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        reader.next_event(STEP).await.expect("stream ends"),
        None,
        "GET stream closes when the session is deleted"
    );
    let resp = post(rpc(12, "ping", json!({})))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 404);
    let resp = client
        .delete(&url)
        .header("mcp-session-id", &sid)
        .send()
        .await
        .expect("DELETE");
    assert_eq!(resp.status(), 404);
}

#[tokio::test]
async fn stateless_mode_needs_no_session() {
    let fx = fixture(&["--stateless"]);
    let url = fx.mcp_url();
    let client = http_client().expect("client");
    let resp = client
        .post(&url)
        .json(&rpc(1, "initialize", init_params("2025-06-18")))
        .send()
        .await
        .expect("send");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("mcp-session-id").is_none());
    let resp = client
        .post(&url)
        .json(&rpc(2, "tools/list", json!({})))
        .send()
        .await
        .expect("send");
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["result"]["tools"].as_array().map(Vec::len), Some(6));
    assert_eq!(client.get(&url).send().await.expect("GET").status(), 405);
    assert_eq!(
        client.delete(&url).send().await.expect("DELETE").status(),
        405
    );
}

#[tokio::test]
async fn legacy_sse_endpoint_and_messages() {
    let fx = fixture(&["--name", "legacy"]);
    let client = http_client().expect("client");
    let stream = client
        .get(fx.sse_url())
        .header("accept", "text/event-stream")
        .send()
        .await
        .expect("GET /sse");
    assert_eq!(stream.status(), 200);
    let mut reader = SseReader::new(stream);
    let endpoint = reader
        .next_event(STEP)
        .await
        .expect("event")
        .expect("endpoint event");
    assert_eq!(endpoint.event, "endpoint");
    assert!(
        endpoint.data.starts_with("/messages?sessionId="),
        "{endpoint:?}"
    );
    let messages_url = format!("{}{}", fx.base_url(), endpoint.data);

    let resp = client
        .post(&messages_url)
        .json(&rpc(1, "initialize", init_params("2024-11-05")))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
    let reply = reader
        .next_event(STEP)
        .await
        .expect("event")
        .expect("reply");
    assert_eq!(reply.event, "message");
    let reply = reply.json().expect("json");
    assert_eq!(reply["id"], 1);
    assert_eq!(reply["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(reply["result"]["serverInfo"]["name"], "legacy");

    let resp = client
        .post(&messages_url)
        .json(&rpc(
            2,
            "tools/call",
            json!({"name": "echo", "arguments": {"text": "x"}}),
        ))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 202);
    let reply = reader
        .next_event(STEP)
        .await
        .expect("event")
        .expect("reply")
        .json()
        .expect("json");
    assert_eq!(reply["result"]["content"][0]["text"], "[legacy] x");

    let resp = client
        .post(&messages_url)
        .body("not json")
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
    let body: Value = resp.json().await.expect("JSON");
    assert_eq!(body["error"]["code"], -32700);

    let unknown = format!("{}/messages?sessionId=nope", fx.base_url());
    let resp = client
        .post(&unknown)
        .json(&rpc(3, "ping", json!({})))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 404);
    let missing = format!("{}/messages", fx.base_url());
    let resp = client
        .post(&missing)
        .json(&rpc(3, "ping", json!({})))
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), 400);
}

// ---------------------------------------------------------------------------------------------
// stdio driven by the test
// ---------------------------------------------------------------------------------------------

#[test]
fn stdio_mode_driven_through_stdin() {
    let mut fx = StdioFixture::spawn_with(
        &fixture_bin!(),
        &["--name", "delta", "--page-size", "4"],
        &[("REFLOW_INJECTED", "v1")],
    )
    .expect("spawn");

    fx.send_line("{this is not json").expect("send");
    let parse_error = fx.recv(STEP).expect("reply");
    assert_eq!(parse_error["error"]["code"], -32700);
    assert_eq!(parse_error["id"], Value::Null);

    fx.send(&rpc(1, "initialize", init_params("2025-06-18")))
        .expect("send");
    let init = fx.recv(STEP).expect("reply");
    assert_eq!(init["id"], 1);
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    assert_eq!(init["result"]["serverInfo"]["name"], "delta");
    fx.send(&json!({"jsonrpc": "2.0", "method": "notifications/initialized"}))
        .expect("send");

    // Notifications get no answer: the next line is the reply to the next request.
    fx.send(&rpc(2, "tools/list", json!({}))).expect("send");
    let page1 = fx.recv(STEP).expect("reply");
    assert_eq!(page1["id"], 2);
    assert_eq!(page1["result"]["tools"].as_array().map(Vec::len), Some(4));
    let cursor = page1["result"]["nextCursor"].clone();
    assert!(cursor.is_string());
    fx.send(&rpc(3, "tools/list", json!({"cursor": cursor})))
        .expect("send");
    let page2 = fx.recv(STEP).expect("reply");
    assert_eq!(page2["result"]["tools"].as_array().map(Vec::len), Some(2));
    assert!(page2["result"].get("nextCursor").is_none());

    fx.send(&rpc(4, "no/such/method", json!({}))).expect("send");
    assert_eq!(fx.recv(STEP).expect("reply")["error"]["code"], -32601);

    fx.send(&rpc(5, "tools/call", json!({"name": "whoami"})))
        .expect("send");
    let who = whoami_report(&fx.recv(STEP).expect("reply")["result"]);
    assert_eq!(who["env"]["REFLOW_INJECTED"], "v1");
    assert_eq!(who["pid"], fx.pid());

    fx.send(&rpc(
        6,
        "tools/call",
        json!({"name": "slow", "arguments": {"ms": 40}, "_meta": {"progressToken": 99}}),
    ))
    .expect("send");
    for step in 1..=4 {
        let note = fx.recv(STEP).expect("progress");
        assert_eq!(note["method"], "notifications/progress");
        assert_eq!(note["params"]["progressToken"], 99);
        assert_eq!(note["params"]["progress"], step);
    }
    let done = fx.recv(STEP).expect("reply");
    assert_eq!(done["id"], 6);

    // crash: the process exits with code 3 and never answers.
    fx.send(&rpc(7, "tools/call", json!({"name": "crash"})))
        .expect("send");
    let status = fx.wait(STEP).expect("fixture exits");
    assert_eq!(status.code(), Some(3), "{}", fx.output());
    assert!(fx.recv(Duration::from_millis(200)).is_err());
}

#[test]
fn stdio_mode_exits_cleanly_on_eof() {
    let mut fx = StdioFixture::spawn_with(&fixture_bin!(), &[], &[]).expect("spawn");
    fx.send(&rpc(1, "ping", json!({}))).expect("send");
    assert_eq!(fx.recv(STEP).expect("reply")["result"], json!({}));
    fx.close_stdin();
    let status = fx.wait(STEP).expect("fixture exits");
    assert!(status.success(), "{}", fx.output());
}

// ---------------------------------------------------------------------------------------------
// Python SDK against server-everything
// ---------------------------------------------------------------------------------------------

fn check_everything(report: &Value) {
    let tools = names(ok_result(report, 0), "tools");
    assert!(tools.iter().any(|t| t == "echo"), "{tools:?}");
    assert_eq!(first_text(ok_result(report, 1)), "Echo: hello everything");
}

fn everything_actions() -> [Value; 2] {
    [
        py_ops::list_tools(),
        py_ops::call_tool("echo", json!({"message": "hello everything"})),
    ]
}

#[test]
fn python_sdk_against_server_everything_streamable_http() {
    let server =
        ServerEverything::spawn(EverythingMode::StreamableHttp).expect("server-everything");
    if let Some(loopback_only) = listens_on_loopback_only(server.port()) {
        assert!(
            loopback_only,
            "server-everything must listen on 127.0.0.1 only"
        );
    }
    let report = PyClient::streamable_http(server.url())
        .actions(everything_actions())
        .run()
        .expect("python client runs");
    check_everything(&report);
}

#[test]
fn python_sdk_against_server_everything_sse() {
    let server = ServerEverything::spawn(EverythingMode::Sse).expect("server-everything");
    if let Some(loopback_only) = listens_on_loopback_only(server.port()) {
        assert!(
            loopback_only,
            "server-everything must listen on 127.0.0.1 only"
        );
    }
    let report = PyClient::sse(server.url())
        .actions(everything_actions())
        .run()
        .expect("python client runs");
    check_everything(&report);
}

#[test]
fn python_sdk_against_server_everything_stdio() {
    let command = ServerEverything::stdio_command().expect("stdio command");
    let report = PyClient::stdio(command)
        .actions(everything_actions())
        .run()
        .expect("python client runs");
    check_everything(&report);
}

#[test]
fn fixture_listens_on_loopback_only() {
    let fx = fixture(&[]);
    assert!(fx.addr().ip().is_loopback());
    if let Some(loopback_only) = listens_on_loopback_only(fx.addr().port()) {
        assert!(loopback_only);
    }
    let refused = run_bounded(
        "fixture on 0.0.0.0",
        std::process::Command::new(fixture_bin!()).args(["--listen", "0.0.0.0:0"]),
        STEP,
    );
    match refused {
        Err(HarnessError::Failed { output, .. }) => assert!(output.contains("--allow-remote")),
        other => panic!("binding 0.0.0.0 must be refused, got {other:?}"),
    }
}
