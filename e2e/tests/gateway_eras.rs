//! Clients and upstreams of different protocol eras through the gateway: the official Python SDK
//! in its 2026-07-28 (stateless) mode and its `auto` probe, multi round-trip requests translated
//! both ways (a stateless client in front of a stateful upstream that asks with server-to-client
//! requests, a handshake client in front of a stateless-only upstream that answers
//! `input_required`), and the stateless envelope's bad paths at the gateway.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::py_ops::{self, first_text, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway, http_client};
use serde_json::{Value, json};

/// The fixture with the conformance catalogue, speaking the given era(s).
fn fixture(era: &str) -> FixtureProcess {
    FixtureProcess::spawn_with(&fixture_bin!(), ["--conformance", "--era", era])
        .expect("fixture starts")
}

/// One Target `up` in front of `fx`, everything allowed for everyone.
fn gateway(fx: &FixtureProcess) -> TestGateway {
    TestGateway::builder()
        .target("up", &fx.mcp_url())
        .policy(PolicyDoc::allow("all", "up").everyone().rule("all", &["*"]))
        .start()
        .expect("gateway starts")
}

/// Waits (bounded) until a client holds a GET or listen stream at `gw`.
fn until_listening(gw: &TestGateway) {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.gateway().live_get_streams() == 0 {
        assert!(
            Instant::now() < deadline,
            "the SDK never opened its listen stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn asked_methods(report: &Value) -> Vec<String> {
    report["client_requests"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["method"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn python_sdk_in_2026_mode_lists_calls_and_answers_input_requests() {
    let fx = fixture("both");
    let gw = gateway(&fx);
    let report = PyClient::streamable_http(gw.target_url("up"))
        .mode("2026-07-28")
        .token(gw.token("alice", &[], &[]))
        .answer_client_requests()
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("test_simple_text", json!({})),
            py_ops::call_tool("test_input_required_result_elicitation", json!({})),
            py_ops::call_tool_with_progress("test_tool_with_progress", json!({})),
            py_ops::read_resource("test://static-text"),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(report["protocol_version"], "2026-07-28", "{report:#}");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(
        tools.contains(&"test_input_required_result_elicitation".to_owned()),
        "{tools:?}"
    );
    assert!(!first_text(ok_result(&report, 1)).is_empty(), "{report:#}");
    // The upstream's input request reached the SDK's callback, and the retry completed.
    let done = ok_result(&report, 2);
    assert!(first_text(done).starts_with("Hello"), "{done:#}");
    assert_eq!(asked_methods(&report), ["elicitation/create"], "{report:#}");
    let progress = &report["results"][3]["progress"];
    assert!(
        progress.as_array().is_some_and(|p| p.len() >= 3),
        "{report:#}"
    );
    let read = ok_result(&report, 4);
    assert!(read["contents"][0]["text"].is_string(), "{read:#}");
    // The gateway audited the stateless calls like any other, by user.
    let calls = gw
        .audit_events()
        .into_iter()
        .filter(|e| e.method == "tools/call" && e.user == "alice")
        .count();
    assert!(calls >= 3, "{calls} tools/call audit events");
}

#[test]
fn python_sdk_auto_mode_discovers_the_stateless_revision_at_the_gateway() {
    let fx = fixture("both");
    let gw = gateway(&fx);
    let report = PyClient::streamable_http(gw.mcp_url())
        .mode("auto")
        .token(gw.token("alice", &[], &[]))
        .actions([py_ops::call_tool("up_test_simple_text", json!({}))])
        .run()
        .expect("python client runs");
    assert_eq!(report["protocol_version"], "2026-07-28", "{report:#}");
    assert!(!first_text(ok_result(&report, 0)).is_empty(), "{report:#}");
}

#[test]
fn a_stateless_client_answers_what_a_stateful_upstream_asks_mid_call() {
    let fx = fixture("stateful");
    let gw = gateway(&fx);
    let report = PyClient::streamable_http(gw.target_url("up"))
        .mode("2026-07-28")
        .token(gw.token("alice", &[], &[]))
        .answer_client_requests()
        .actions([
            py_ops::call_tool("test_elicitation", json!({"message": "Who are you?"})),
            py_ops::call_tool("test_sampling", json!({"prompt": "Say hi"})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(report["protocol_version"], "2026-07-28", "{report:#}");
    let elicited = first_text(ok_result(&report, 0));
    assert!(elicited.contains("py-user"), "{report:#}");
    let sampled = first_text(ok_result(&report, 1));
    assert!(sampled.contains("sampled: Say hi"), "{report:#}");
    let asked = &report["client_requests"];
    assert_eq!(asked[0]["params"]["message"], "Who are you?", "{report:#}");
    assert_eq!(
        asked_methods(&report),
        ["elicitation/create", "sampling/createMessage"]
    );
}

#[test]
fn a_handshake_client_answers_what_a_stateless_only_upstream_asks() {
    let fx = fixture("stateless");
    let gw = gateway(&fx);
    let report = PyClient::streamable_http(gw.target_url("up"))
        .token(gw.token("alice", &[], &[]))
        .answer_client_requests()
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("test_input_required_result_elicitation", json!({})),
            py_ops::call_tool("test_input_required_result_multi_round", json!({})),
        ])
        .run()
        .expect("python client runs");
    // The client kept its handshake revision; the upstream was spoken to statelessly.
    assert_eq!(report["protocol_version"], "2025-11-25", "{report:#}");
    let tools = names(ok_result(&report, 0), "tools");
    assert!(tools.contains(&"test_input_required_result_multi_round".to_owned()));
    assert!(
        first_text(ok_result(&report, 1)).starts_with("Hello"),
        "{report:#}"
    );
    let multi = ok_result(&report, 2);
    assert_ne!(multi["isError"], json!(true), "{multi:#}");
    // One elicitation for the first call, two rounds for the second.
    assert_eq!(
        asked_methods(&report),
        [
            "elicitation/create",
            "elicitation/create",
            "elicitation/create"
        ],
        "{report:#}"
    );
}

/// One stateless POST; returns the HTTP status and the JSON-RPC body.
async fn post(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    body: Value,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = http
        .post(url)
        .bearer_auth(token)
        .header("accept", "application/json, text/event-stream")
        .json(&body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("gateway answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

fn meta(capabilities: Value) -> Value {
    json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": capabilities,
    })
}

fn call(id: u64, args: Value, caps: Value, extra: Value) -> Value {
    let mut params = json!({"name": "test_elicitation", "arguments": args, "_meta": meta(caps)});
    if let (Value::Object(p), Value::Object(e)) = (&mut params, extra) {
        p.extend(e);
    }
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call", "params": params})
}

const CALL_HEADERS: [(&str, &str); 3] = [
    ("mcp-protocol-version", "2026-07-28"),
    ("mcp-method", "tools/call"),
    ("mcp-name", "test_elicitation"),
];

#[test]
fn parked_calls_resume_only_for_their_caller_with_an_untampered_state() {
    let fx = fixture("stateful");
    let gw = gateway(&fx);
    let url = gw.target_url("up");
    let (alice, bob) = (gw.token("alice", &[], &[]), gw.token("bob", &[], &[]));
    let http = http_client().expect("http client");
    let caps = json!({"elicitation": {}});
    gw.block_on(async {
        let args = json!({"message": "Name?"});
        let (status, first) = post(
            &http,
            &url,
            &alice,
            call(1, args.clone(), caps.clone(), json!({})),
            &CALL_HEADERS,
        )
        .await;
        assert_eq!(status, 200);
        let r = &first["result"];
        assert_eq!(r["resultType"], "input_required", "{first:#}");
        let (key, asked) = r["inputRequests"]
            .as_object()
            .and_then(|m| m.iter().next())
            .expect("one input request");
        assert_eq!(asked["method"], "elicitation/create");
        assert_eq!(asked["params"]["message"], "Name?");
        let state = r["requestState"]
            .as_str()
            .expect("a sealed state")
            .to_owned();
        assert!(state.starts_with("reflow1."), "{state}");
        let answer = json!({"action": "accept", "content": {"username": "alice-ui"}});
        let retry = |id: u64, state: &str, responses: Value| {
            call(
                id,
                args.clone(),
                caps.clone(),
                json!({"requestState": state, "inputResponses": responses}),
            )
        };
        // Another user cannot resume alice's call.
        let (_, stolen) = post(
            &http,
            &url,
            &bob,
            retry(2, &state, json!({key.clone(): answer.clone()})),
            &CALL_HEADERS,
        )
        .await;
        assert_eq!(stolen["error"]["code"], -32602, "{stolen:#}");
        // A tampered state is refused.
        let tampered = format!("{state}A");
        let (_, bad) = post(
            &http,
            &url,
            &alice,
            retry(3, &tampered, json!({key.clone(): answer.clone()})),
            &CALL_HEADERS,
        )
        .await;
        assert_eq!(bad["error"]["code"], -32602, "{bad:#}");
        // Without the answer the same question comes back (and the call is still waiting).
        let (_, again) = post(
            &http,
            &url,
            &alice,
            retry(4, &state, json!({"other": answer.clone()})),
            &CALL_HEADERS,
        )
        .await;
        assert_eq!(again["result"]["resultType"], "input_required", "{again:#}");
        assert!(
            again["result"]["inputRequests"].get(key).is_some(),
            "{again:#}"
        );
        let state = again["result"]["requestState"]
            .as_str()
            .expect("state")
            .to_owned();
        let (status, done) = post(
            &http,
            &url,
            &alice,
            retry(5, &state, json!({key.clone(): answer})),
            &CALL_HEADERS,
        )
        .await;
        assert_eq!(status, 200);
        assert_eq!(done["id"], 5, "{done:#}");
        assert_eq!(done["result"]["resultType"], "complete", "{done:#}");
        let text = done["result"]["content"][0]["text"]
            .as_str()
            .unwrap_or_default();
        assert!(text.contains("alice-ui"), "{done:#}");
        // A client without the capability is never asked: the upstream is refused instead.
        let (_, refused) = post(
            &http,
            &url,
            &alice,
            call(6, args.clone(), json!({}), json!({})),
            &CALL_HEADERS,
        )
        .await;
        assert_ne!(
            refused["result"]["resultType"], "input_required",
            "{refused:#}"
        );
    });
}

#[test]
fn the_stateless_envelope_is_checked_at_the_gateway() {
    let fx = fixture("both");
    let gw = gateway(&fx);
    let url = gw.target_url("up");
    let token = gw.token("alice", &[], &[]);
    let http = http_client().expect("http client");
    gw.block_on(async {
        let body = call(1, json!({"message": "x"}), json!({}), json!({}));
        // Mcp-Name disagrees with the body.
        let (status, r) = post(&http, &url, &token, body.clone(), &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "something_else"),
        ])
        .await;
        assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32020)), "{r:#}");
        assert_eq!(r["id"], 1);
        // Mcp-Method missing.
        let (status, r) = post(&http, &url, &token, body.clone(), &[("mcp-protocol-version", "2026-07-28")]).await;
        assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32020)), "{r:#}");
        // A revision nobody serves, named in both places.
        let mut odd = body.clone();
        odd["params"]["_meta"]["io.modelcontextprotocol/protocolVersion"] = json!("2099-01-01");
        let (status, r) = post(&http, &url, &token, odd, &[
            ("mcp-protocol-version", "2099-01-01"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "test_elicitation"),
        ])
        .await;
        assert_eq!((status, r["error"]["code"].clone()), (400, json!(-32022)), "{r:#}");
        assert!(r["error"]["data"]["supported"].as_array().is_some_and(|v| v.contains(&json!("2026-07-28"))));
        // What the revision removed is not found.
        let ping = json!({"jsonrpc": "2.0", "id": 7, "method": "ping", "params": {"_meta": meta(json!({}))}});
        let (status, r) = post(&http, &url, &token, ping, &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "ping"),
        ])
        .await;
        assert_eq!((status, r["error"]["code"].clone()), (404, json!(-32601)), "{r:#}");
        // A name outside the header-safe set travels Base64-encoded.
        let mut unicode = body.clone();
        unicode["params"]["name"] = json!("héllo");
        let (status, r) = post(&http, &url, &token, unicode, &[
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "=?base64?aMOpbGxv?="),
        ])
        .await;
        // Past the envelope: the upstream does not know the tool.
        assert_eq!(status, 200, "{r:#}");
        assert_eq!(r["error"]["code"], -32602, "{r:#}");
        // No token, no answer.
        let resp = http.post(&url).json(&body).send().await.expect("answers");
        assert_eq!(resp.status().as_u16(), 401);
    });
}

#[test]
fn python_sdk_in_2026_mode_hears_list_changed_on_its_listen_stream_after_a_policy_edit() {
    use reflow_e2e::harness::gateway::target_yaml;
    let fx = fixture("both");
    let allow = |name: &str, tools: &[&str]| {
        PolicyDoc::allow(name, "up")
            .group("developers")
            .rule("tool", tools)
    };
    let gw = TestGateway::builder()
        .target("up", &fx.mcp_url())
        .policy(allow("dev", &["test_simple_text"]))
        .start()
        .expect("gateway starts");
    let client = PyClient::streamable_http(gw.mcp_url())
        .mode("2026-07-28")
        .token(gw.token("alice", &["developers"], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::listen(true, &[], 1, 30.0),
            py_ops::list_tools(),
        ]);
    let run = std::thread::spawn(move || client.run());
    until_listening(&gw);
    gw.replace_manifests(&[
        target_yaml("up", "streamableHttp", &fx.mcp_url()),
        allow("dev", &["test_simple_text", "test_image_content"]).to_yaml(),
    ])
    .expect("manifests replaced");
    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    assert_eq!(
        names(ok_result(&report, 0), "tools"),
        ["up_test_simple_text"]
    );
    assert_eq!(
        ok_result(&report, 1)["events"],
        json!(["ToolsListChanged"]),
        "{report:#}"
    );
    let after = names(ok_result(&report, 2), "tools");
    assert!(
        after.contains(&"up_test_image_content".to_owned()),
        "{after:?}"
    );
}

#[test]
fn closing_a_stateless_response_stream_cancels_the_call() {
    use futures::StreamExt;
    use std::time::Duration;

    let fx = fixture("both");
    let gw = gateway(&fx);
    let url = gw.target_url("up");
    let token = gw.token("alice", &[], &[]);
    let http = http_client().expect("http client");
    gw.block_on(async {
        let mut params =
            json!({"name": "slow", "arguments": {"ms": 20000}, "_meta": meta(json!({}))});
        params["_meta"]["progressToken"] = json!("p1");
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": params});
        let resp = http
            .post(&url)
            .bearer_auth(&token)
            .header("accept", "application/json, text/event-stream")
            .header("mcp-protocol-version", "2026-07-28")
            .header("mcp-method", "tools/call")
            .header("mcp-name", "slow")
            .json(&body)
            .send()
            .await
            .expect("gateway answers");
        assert_eq!(resp.status().as_u16(), 200);
        assert!(
            resp.headers()["content-type"]
                .to_str()
                .unwrap_or("")
                .starts_with("text/event-stream")
        );
        let mut stream = resp.bytes_stream();
        let first = tokio::time::timeout(Duration::from_secs(10), stream.next())
            .await
            .expect("a progress event in time")
            .expect("a chunk")
            .expect("readable");
        let text = String::from_utf8_lossy(&first);
        assert!(
            text.contains("notifications/progress") && text.contains("\"p1\""),
            "{text}"
        );
        drop(stream);
    });
    let cancelled = gw.wait_for_audit(Duration::from_secs(10), |e| {
        e.method == "tools/call" && e.name.as_deref() == Some("slow")
    });
    let event = cancelled.expect("the call was audited once it ended");
    assert_eq!(event.outcome, "cancelled", "{event:?}");
}

#[test]
fn a_listen_stream_carries_resource_updates_from_a_stateless_upstream() {
    use std::time::Duration;

    let fx = fixture("both");
    let gw = gateway(&fx);
    let client = PyClient::streamable_http(gw.target_url("up"))
        .mode("2026-07-28")
        .token(gw.token("alice", &[], &[]))
        .actions([py_ops::listen(false, &["test://watched-resource"], 1, 30.0)]);
    let run = std::thread::spawn(move || client.run());
    until_listening(&gw);
    // Another caller changes the resource (again, until the subscriber has heard it: the
    // gateway's own upstream subscription is opened in the background).
    let url = gw.target_url("up");
    let token = gw.token("bob", &[], &[]);
    let http = http_client().expect("http client");
    for i in 0..40 {
        if run.is_finished() {
            break;
        }
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "test_trigger_resource_update", "arguments": {}, "_meta": meta(json!({}))}});
        let headers = [
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", "tools/call"),
            ("mcp-name", "test_trigger_resource_update"),
        ];
        let (status, r) = gw.block_on(post(&http, &url, &token, body, &headers));
        assert_eq!(status, 200, "{r:#}");
        std::thread::sleep(Duration::from_millis(250));
    }
    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    assert_eq!(
        ok_result(&report, 0)["events"],
        json!(["ResourceUpdated"]),
        "{report:#}"
    );
}

#[test]
fn a_resource_read_on_the_aggregated_endpoint_needs_no_prior_list() {
    let fx = fixture("both");
    let gw = gateway(&fx);
    for (mode, user) in [("2026-07-28", "mod"), ("legacy", "leg")] {
        let report = PyClient::streamable_http(gw.mcp_url())
            .mode(mode)
            .token(gw.token(user, &[], &[]))
            .actions([
                py_ops::read_resource("reflow://up/test://static-text"),
                py_ops::read_resource("reflow://up/test://no-such-resource"),
                py_ops::read_resource("test://no-such-resource-either"),
            ])
            .run()
            .expect("python client runs");
        let read = ok_result(&report, 0);
        assert!(read["contents"][0]["text"].is_string(), "{mode}: {read:#}");
        let code = &report["results"][1]["error"]["code"];
        let expected = if mode == "legacy" { -32002 } else { -32602 };
        assert_eq!(code, &json!(expected), "{mode}: {report:#}");
        // A URI without a Target prefix is no Target's: not found, without asking any upstream.
        assert_eq!(
            &report["results"][2]["error"]["code"],
            &json!(expected),
            "{mode}: {report:#}"
        );
        // The URI names its Target: routing never lists on the caller's behalf.
        let lists = gw
            .audit_events()
            .into_iter()
            .filter(|e| e.user == user && e.method == "resources/list")
            .count();
        assert_eq!(lists, 0, "{mode}: resources/list audit events");
    }
}

#[test]
fn python_sdk_cancellation_reaches_the_gateway_in_both_modes() {
    use std::time::Duration;

    let fx = fixture("both");
    let gw = gateway(&fx);
    for (mode, user) in [("legacy", "leg"), ("2026-07-28", "mod")] {
        let report = PyClient::streamable_http(gw.target_url("up"))
            .mode(mode)
            .token(gw.token(user, &[], &[]))
            .actions([
                py_ops::call_tool_cancelled("slow", json!({"ms": 20000}), 1.0),
                // The session (or the stateless client) goes on working after a cancellation.
                py_ops::call_tool("test_simple_text", json!({})),
            ])
            .run()
            .expect("python client runs");
        assert_eq!(
            ok_result(&report, 0)["cancelled"],
            true,
            "{mode}: {report:#}"
        );
        assert!(
            !first_text(ok_result(&report, 1)).is_empty(),
            "{mode}: {report:#}"
        );
        let event = gw
            .wait_for_audit(Duration::from_secs(15), |e| {
                e.user == user && e.method == "tools/call" && e.name.as_deref() == Some("slow")
            })
            .expect("the cancelled call was audited");
        assert_eq!(event.outcome, "cancelled", "{mode}: {event:?}");
    }
}

#[test]
fn an_upstream_listen_stream_that_ends_is_reopened() {
    use std::time::Duration;

    let first = fixture("both");
    let addr = first.addr().to_string();
    let gw = gateway(&first);
    let client = PyClient::streamable_http(gw.target_url("up"))
        .mode("2026-07-28")
        .token(gw.token("alice", &[], &[]))
        .actions([py_ops::listen(true, &[], 1, 40.0)]);
    let run = std::thread::spawn(move || client.run());
    until_listening(&gw);
    // The upstream goes away (its listen stream with it) and comes back on the same address.
    drop(first);
    let _second = FixtureProcess::spawn_with(
        &fixture_bin!(),
        ["--conformance", "--era", "both", "--listen", addr.as_str()],
    )
    .expect("fixture restarts");
    let url = gw.target_url("up");
    let token = gw.token("bob", &[], &[]);
    let http = http_client().expect("http client");
    let headers = [
        ("mcp-protocol-version", "2026-07-28"),
        ("mcp-method", "tools/call"),
        ("mcp-name", "test_trigger_tool_change"),
    ];
    for i in 0..60 {
        if run.is_finished() {
            break;
        }
        let body = json!({"jsonrpc": "2.0", "id": i, "method": "tools/call", "params": {
            "name": "test_trigger_tool_change", "arguments": {}, "_meta": meta(json!({}))}});
        let _ = gw.block_on(post(&http, &url, &token, body, &headers));
        std::thread::sleep(Duration::from_millis(500));
    }
    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    assert_eq!(
        ok_result(&report, 0)["events"],
        json!(["ToolsListChanged"]),
        "{report:#}"
    );
}

/// A stateless upstream that lets its lists be cached for a minute still reaches callers with
/// what it announces: the `list_changed` the gateway hears drops the cached list, so the list
/// after the announcement is fetched again (with the cache kept, it would be the old one).
#[test]
fn an_announced_list_change_is_not_hidden_by_the_gateways_cache() {
    let fx = FixtureProcess::spawn_with(
        &fixture_bin!(),
        ["--conformance", "--era", "both", "--cache-ttl-ms", "60000"],
    )
    .expect("fixture starts");
    let gw = gateway(&fx);
    let url = gw.target_url("up");
    let token = gw.token("alice", &[], &[]);
    let http = http_client().expect("http client");
    // One stateless request; `name` is the tool a call names (mirrored in `Mcp-Name`).
    let stateless = |method: &str, name: Option<&str>, params: Value| {
        let body = json!({"jsonrpc": "2.0", "id": 1, "method": method, "params": params});
        let mut headers = vec![
            ("mcp-protocol-version", "2026-07-28"),
            ("mcp-method", method),
        ];
        headers.extend(name.map(|n| ("mcp-name", n)));
        let (status, reply) = gw.block_on(post(&http, &url, &token, body, &headers));
        assert_eq!(status, 200, "{reply}");
        reply
    };
    let dynamic = "test_dynamic_tool".to_owned();
    // The first list is fetched and kept; the second is the kept one, its TTL running down.
    let list = json!({"_meta": meta(json!({}))});
    let first = stateless("tools/list", None, list.clone());
    assert!(
        !names(&first["result"], "tools").contains(&dynamic),
        "{first}"
    );
    let kept = stateless("tools/list", None, list);
    let ttl = kept["result"]["ttlMs"].as_u64();
    assert!(ttl.is_some_and(|t| t < 60_000), "{kept}");

    let client = PyClient::streamable_http(url.clone())
        .mode("2026-07-28")
        .token(token.clone())
        .actions([py_ops::listen(true, &[], 1, 30.0), py_ops::list_tools()]);
    let run = std::thread::spawn(move || client.run());
    until_listening(&gw);
    let trigger = "test_trigger_tool_change";
    stateless(
        "tools/call",
        Some(trigger),
        json!({"name": trigger, "arguments": {}, "_meta": meta(json!({}))}),
    );
    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    assert_eq!(
        ok_result(&report, 0)["events"],
        json!(["ToolsListChanged"]),
        "{report:#}"
    );
    let after = names(ok_result(&report, 1), "tools");
    assert!(after.contains(&dynamic), "{after:?}");
}
