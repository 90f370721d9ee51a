//! The official Python `mcp` SDK as a client through the Reflow gateway (in-process, real JWT
//! authenticator) to real `reflow-fixture` upstreams: aggregation with prefixes and upstream
//! pagination, the per-target endpoint, policy, credential injection and token refusal.

use std::time::Duration;

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::NAMESPACE;
use reflow_e2e::harness::py_ops::{self, err_result, first_text, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway, http_client};
use serde_json::{Value, json};

fn fixture(args: &[&str]) -> FixtureProcess {
    FixtureProcess::spawn_with(&fixture_bin!(), args).expect("fixture starts")
}

/// The JSON document a fixture `whoami` call returned.
fn whoami_report(result: &Value) -> Value {
    serde_json::from_str(first_text(result)).expect("whoami returns JSON text")
}

/// The fixture's built-in tools, in its listing order.
const BUILTIN: [&str; 6] = ["echo", "add", "whoami", "slow", "fail", "crash"];

fn expected_tools(prefix: &str, extra: usize) -> Vec<String> {
    BUILTIN
        .iter()
        .map(|t| (*t).to_owned())
        .chain((0..extra).map(|i| format!("tool_{i:04}")))
        .map(|t| format!("{prefix}{t}"))
        .collect()
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

/// Two fixtures behind one gateway. Target `one` (3 extra tools, pages of 2) is fully allowed;
/// Target `two` (2 extra tools, pages of 3) allows tools and prompts but no resources.
struct TwoUpstreams {
    _one: FixtureProcess,
    _two: FixtureProcess,
    gw: TestGateway,
}

fn two_upstreams() -> TwoUpstreams {
    let one = fixture(&["--name", "one", "--extra-tools", "3", "--page-size", "2"]);
    let two = fixture(&["--name", "two", "--extra-tools", "2", "--page-size", "3"]);
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .target("two", &two.mcp_url())
        .policy(
            PolicyDoc::allow("one-all", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::allow("two-tools-and-prompts", "two")
                .everyone()
                .rule("tool", &["*"])
                .rule("prompt", &["*"]),
        )
        .start()
        .expect("gateway starts");
    TwoUpstreams {
        _one: one,
        _two: two,
        gw,
    }
}

#[test]
fn python_sdk_through_the_aggregated_endpoint() {
    let env = two_upstreams();
    let gw = &env.gw;
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("carol", &[], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_echo", json!({"text": "hi one"})),
            py_ops::call_tool("two_echo", json!({"text": "hi two"})),
            py_ops::call_tool("one_tool_0002", json!({})),
            py_ops::call_tool("two_tool_0001", json!({})),
            py_ops::call_tool("one_add", json!({"a": 20, "b": 22})),
            py_ops::list_resources(),
            py_ops::read_resource("reflow://one/fixture://static/hello"),
            py_ops::list_resource_templates(),
            py_ops::complete_resource_arg("reflow://one/fixture://items/{id}", "id", "4"),
            py_ops::list_prompts(),
            py_ops::get_prompt("two_greet", json!({"name": "carol"})),
            py_ops::complete_prompt_arg("one_greet", "name", "b"),
            py_ops::ping(),
        ])
        .run()
        .expect("python client runs");

    assert_eq!(report["server_info"]["name"], "reflow", "{report:#}");
    assert_eq!(report["protocol_version"], "2025-11-25");

    // Every upstream page was followed (5 pages from one, 3 from two) and merged into one page.
    let tools = ok_result(&report, 0);
    assert_eq!(tools["pages"], 1);
    let mut expected = expected_tools("one_", 3);
    expected.extend(expected_tools("two_", 2));
    assert_eq!(sorted(names(tools, "tools")), sorted(expected));
    assert_eq!(tools["tools"].as_array().map(Vec::len), Some(6 + 3 + 6 + 2));
    for tool in tools["tools"].as_array().expect("tools") {
        assert_eq!(tool["inputSchema"]["type"], "object", "{tool}");
    }

    assert_eq!(first_text(ok_result(&report, 1)), "[one] hi one");
    assert_eq!(first_text(ok_result(&report, 2)), "[two] hi two");
    assert_eq!(first_text(ok_result(&report, 3)), "[one] tool_0002");
    assert_eq!(first_text(ok_result(&report, 4)), "[two] tool_0001");
    assert_eq!(ok_result(&report, 5)["structuredContent"]["sum"], 42);

    // Resources come from `one` only: `two`'s policy allows none.
    let resources = ok_result(&report, 6);
    assert_eq!(names(resources, "resources"), vec!["hello".to_owned()]);
    assert_eq!(
        ok_result(&report, 7)["contents"][0]["text"],
        "Hello from one"
    );
    let templates = ok_result(&report, 8)["resourceTemplates"]
        .as_array()
        .expect("templates")
        .clone();
    assert_eq!(templates.len(), 1, "{templates:?}");
    // Resource URIs and templates name their Target on the aggregated endpoint.
    assert_eq!(
        templates[0]["uriTemplate"],
        "reflow://one/fixture://items/{id}"
    );
    assert_eq!(
        resources["resources"][0]["uri"],
        "reflow://one/fixture://static/hello"
    );
    assert_eq!(
        ok_result(&report, 7)["contents"][0]["uri"],
        "reflow://one/fixture://static/hello"
    );
    assert_eq!(ok_result(&report, 9)["completion"]["values"], json!(["42"]));

    assert_eq!(
        sorted(names(ok_result(&report, 10), "prompts")),
        vec!["one_greet".to_owned(), "two_greet".to_owned()]
    );
    assert_eq!(
        ok_result(&report, 11)["messages"][0]["content"]["text"],
        "Please greet carol warmly."
    );
    assert_eq!(
        ok_result(&report, 12)["completion"]["values"],
        json!(["bob"])
    );
    ok_result(&report, 13);
}

/// DESIGN: resources are routed by URI on the aggregated endpoint: a URI made from a listed
/// template (`reflow://one/fixture://items/{id}`) routes to the Target its prefix names.
#[test]
fn python_sdk_reads_a_templated_resource_through_the_aggregated_endpoint() {
    let env = two_upstreams();
    let gw = &env.gw;
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("carol", &[], &[]))
        .actions([
            py_ops::list_resource_templates(),
            py_ops::read_resource("reflow://one/fixture://items/42"),
        ])
        .run()
        .expect("python client runs");
    let item: Value = serde_json::from_str(
        ok_result(&report, 1)["contents"][0]["text"]
            .as_str()
            .expect("item text"),
    )
    .expect("item JSON");
    assert_eq!(item, json!({"id": "42", "server": "one"}));
}

#[test]
fn python_sdk_through_a_target_endpoint_sees_unprefixed_names() {
    let env = two_upstreams();
    let gw = &env.gw;
    let token = gw.token("carol", &[], &[]);

    let report = PyClient::streamable_http(gw.target_url("one"))
        .token(&token)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("echo", json!({"text": "direct"})),
            py_ops::call_tool("tool_0001", json!({})),
            py_ops::read_resource("fixture://items/7"),
            py_ops::list_prompts(),
            py_ops::get_prompt("greet", json!({"name": "alice"})),
            py_ops::complete_prompt_arg("greet", "name", "c"),
            py_ops::call_tool("one_echo", json!({"text": "prefixed"})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(
        names(ok_result(&report, 0), "tools"),
        expected_tools("", 3),
        "upstream order, all pages, no prefix"
    );
    assert_eq!(first_text(ok_result(&report, 1)), "[one] direct");
    assert_eq!(first_text(ok_result(&report, 2)), "[one] tool_0001");
    let item: Value = serde_json::from_str(
        ok_result(&report, 3)["contents"][0]["text"]
            .as_str()
            .expect("item text"),
    )
    .expect("item JSON");
    assert_eq!(item, json!({"id": "7", "server": "one"}));
    assert_eq!(
        names(ok_result(&report, 4), "prompts"),
        vec!["greet".to_owned()]
    );
    assert_eq!(
        ok_result(&report, 5)["messages"][0]["content"]["text"],
        "Please greet alice warmly."
    );
    assert_eq!(
        ok_result(&report, 6)["completion"]["values"],
        json!(["carol"])
    );
    // The prefixed name means nothing on a target endpoint.
    assert_eq!(
        err_result(&report, 7)["message"],
        "Unknown tool: one_echo",
        "{report:#}"
    );

    let report = PyClient::streamable_http(gw.target_url("two"))
        .token(&token)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("echo", json!({"text": "direct"})),
            py_ops::list_resources(),
            py_ops::read_resource("fixture://static/hello"),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(names(ok_result(&report, 0), "tools"), expected_tools("", 2));
    assert_eq!(first_text(ok_result(&report, 1)), "[two] direct");
    assert_eq!(
        ok_result(&report, 2)["resources"],
        json!([]),
        "two's policy allows no resources"
    );
    assert_eq!(err_result(&report, 3)["code"], -32002, "{report:#}");
}

#[test]
fn policy_hides_and_refuses_a_denied_tool_like_an_unknown_one() {
    let one = fixture(&["--name", "one"]);
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(
            PolicyDoc::allow("developers-use-one", "one")
                .group("developers")
                .rule("tool", &["*"]),
        )
        .policy(
            PolicyDoc::deny("no-crash-for-developers", "one")
                .group("developers")
                .rule("tool", &["crash"]),
        )
        .start()
        .expect("gateway starts");

    let alice = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("alice", &["developers"], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_crash", json!({})),
            py_ops::call_tool("one_no_such_tool", json!({})),
            py_ops::call_tool("nowhere_echo", json!({})),
            py_ops::call_tool("one_echo", json!({"text": "still fine"})),
        ])
        .run()
        .expect("python client runs");
    let expected: Vec<String> = BUILTIN
        .iter()
        .filter(|t| **t != "crash")
        .map(|t| format!("one_{t}"))
        .collect();
    assert_eq!(names(ok_result(&alice, 0), "tools"), expected);

    // Denied, unknown on a known target, unknown target: the same error, naming the tool.
    let denied = err_result(&alice, 1);
    for (i, name) in [
        (1, "one_crash"),
        (2, "one_no_such_tool"),
        (3, "nowhere_echo"),
    ] {
        let err = err_result(&alice, i);
        assert_eq!(err["type"], "MCPError", "{err}");
        assert_eq!(err["code"], denied["code"], "{err}");
        assert_eq!(err["message"], format!("Unknown tool: {name}"), "{err}");
        assert_eq!(err.get("data"), denied.get("data"), "{err}");
    }
    assert_eq!(denied["code"], -32602);
    // The upstream never saw the denied call (it would have answered 500 and broken the session).
    assert_eq!(first_text(ok_result(&alice, 4)), "[one] still fine");

    // The list hid it (audited as such) and the call was refused (audited too).
    let hidden = gw
        .wait_for_audit(Duration::from_secs(5), |e| {
            e.user == "alice" && e.method == "tools/list" && e.name.as_deref() == Some("one_crash")
        })
        .unwrap_or_else(|| {
            panic!(
                "no audit event for the hidden tool: {:#?}",
                gw.audit_events()
            )
        });
    assert_eq!(
        (
            hidden.decision,
            hidden.outcome.as_str(),
            hidden.policy.as_deref()
        ),
        (Some("deny"), "hidden", Some("no-crash-for-developers"))
    );
    let deny = gw
        .wait_for_audit(Duration::from_secs(5), |e| {
            e.user == "alice" && e.method == "tools/call" && e.name.as_deref() == Some("one_crash")
        })
        .unwrap_or_else(|| {
            panic!(
                "no audit event for the denied call: {:#?}",
                gw.audit_events()
            )
        });
    assert_eq!(deny.method, "tools/call");
    assert_eq!(deny.decision, Some("deny"));
    assert_eq!(deny.policy.as_deref(), Some("no-crash-for-developers"));
    assert_eq!(deny.outcome, "denied");
    assert_eq!(deny.target.as_deref(), Some(&*format!("{NAMESPACE}/one")));
    let allow = gw
        .wait_for_audit(Duration::from_secs(5), |e| {
            e.user == "alice" && e.name.as_deref() == Some("one_echo")
        })
        .expect("audit event for the allowed call");
    assert_eq!(allow.decision, Some("allow"));
    assert_eq!(allow.policy.as_deref(), Some("developers-use-one"));
    assert_eq!(allow.outcome, "ok");

    // Outside the group nothing is allowed (default deny): no tools, and calls read as unknown.
    let bob = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("bob", &["testers"], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_echo", json!({"text": "x"})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(ok_result(&bob, 0)["tools"], json!([]));
    assert_eq!(err_result(&bob, 1)["message"], "Unknown tool: one_echo");
    let bob_deny = gw
        .wait_for_audit(Duration::from_secs(5), |e| e.user == "bob")
        .expect("audit event for bob");
    assert_eq!(bob_deny.decision, Some("deny"));
    assert_eq!(bob_deny.policy, None, "default deny names no policy");
}

#[test]
fn credentials_reach_the_upstream_only_for_their_subject() {
    let one = fixture(&["--name", "one"]);
    let alice_key = format!("alice-upstream-{}", uuid::Uuid::new_v4().simple());
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(
            PolicyDoc::allow("everyone", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .secret("upstream-keys", &[("alice", &alice_key)])
        .credential_header(
            "alice-api-key",
            "one",
            "user: alice",
            "x-api-key",
            ("upstream-keys", "alice"),
        )
        .start()
        .expect("gateway starts");

    let whoami = |user: &str| {
        let token = gw.token(user, &["developers"], &[]);
        let report = PyClient::streamable_http(gw.mcp_url())
            .token(&token)
            .header("x-api-key", "client-supplied")
            .header("x-client-secret", "must-not-leak")
            .actions([py_ops::call_tool("one_whoami", json!({}))])
            .run()
            .expect("python client runs");
        (whoami_report(ok_result(&report, 0)), token)
    };

    let (alice, alice_token) = whoami("alice");
    let headers = &alice["headers"];
    assert_eq!(headers["x-api-key"], json!(alice_key), "{alice:#}");
    assert!(headers.get("authorization").is_none(), "{alice:#}");
    assert!(headers.get("x-client-secret").is_none(), "{alice:#}");
    assert!(
        !alice.to_string().contains(&alice_token),
        "the client's token reached the upstream: {alice:#}"
    );

    let (bob, bob_token) = whoami("bob");
    let headers = &bob["headers"];
    assert!(headers.get("x-api-key").is_none(), "{bob:#}");
    assert!(headers.get("authorization").is_none(), "{bob:#}");
    assert!(!bob.to_string().contains(&bob_token), "{bob:#}");
    assert!(!bob.to_string().contains(&alice_key), "{bob:#}");
}

#[test]
fn bad_tokens_are_refused() {
    let one = fixture(&["--name", "one"]);
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(
            PolicyDoc::allow("everyone", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .start()
        .expect("gateway starts");

    let ok = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("alice", &[], &[]))
        .actions([py_ops::call_tool("one_echo", json!({"text": "let in"}))])
        .run()
        .expect("python client runs");
    assert_eq!(first_text(ok_result(&ok, 0)), "[one] let in");

    let bad = [
        ("expired", Some(gw.expired_token("alice"))),
        ("foreign issuer", Some(gw.foreign_issuer_token("alice"))),
        ("wrong signature", Some(gw.wrongly_signed_token("alice"))),
        ("garbage", Some("not-a-jwt".to_owned())),
        ("none", None),
    ];
    for (what, token) in &bad {
        let mut client = PyClient::streamable_http(gw.mcp_url())
            .timeout(Duration::from_secs(30))
            .actions([py_ops::list_tools()]);
        if let Some(t) = token {
            client = client.token(t);
        }
        let report = client.run().expect("python client runs");
        assert_eq!(report["ok"], json!(false), "{what}: {report:#}");
        assert!(
            report["results"].as_array().is_none_or(Vec::is_empty),
            "{what}: no action may run: {report:#}"
        );
        // Without an OAuth provider the SDK turns a non-JSON-RPC 4xx answer to `initialize`
        // into this stand-in error; the raw-HTTP half below checks the 401 itself.
        assert_eq!(
            report["protocol_version"],
            Value::Null,
            "{what}: {report:#}"
        );
        assert_eq!(
            (&report["error"]["type"], &report["error"]["code"]),
            (&json!("MCPError"), &json!(-32603)),
            "{what}: {report:#}"
        );
        assert_eq!(
            report["error"]["message"], "Server returned an error response",
            "{what}: {report:#}"
        );
    }

    // The same tokens over raw HTTP: 401 with an RFC 6750 challenge.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let http = http_client().expect("http client");
    rt.block_on(async {
        for (what, token) in &bad {
            let mut req = http
                .post(gw.mcp_url())
                .header("content-type", "application/json")
                .header("accept", "application/json, text/event-stream")
                .body(
                    json!({"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {
                        "protocolVersion": "2025-06-18", "capabilities": {},
                        "clientInfo": {"name": "raw", "version": "0"}}})
                    .to_string(),
                );
            if let Some(t) = token {
                req = req.bearer_auth(t);
            }
            let resp = req.send().await.expect("gateway answers");
            assert_eq!(resp.status().as_u16(), 401, "{what}");
            let challenge = resp
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned();
            assert!(challenge.starts_with("Bearer "), "{what}: {challenge}");
            assert!(
                challenge.contains("resource_metadata="),
                "{what}: {challenge}"
            );
            assert_eq!(
                challenge.contains("error=\"invalid_token\""),
                token.is_some(),
                "{what}: {challenge}"
            );
        }
    });
    assert!(
        gw.audit_events().iter().all(|e| e.user == "alice"),
        "refused requests never reach dispatch: {:#?}",
        gw.audit_events()
    );
}

#[test]
fn python_sdk_through_the_gateway_to_a_legacy_sse_upstream() {
    let legacy = fixture(&["--name", "legacy", "--extra-tools", "2", "--page-size", "3"]);
    let gw = TestGateway::builder()
        .target_with("legacy", "sse", &legacy.sse_url())
        .policy(
            PolicyDoc::allow("everyone", "legacy")
                .everyone()
                .rule("all", &["*"]),
        )
        .secret("keys", &[("default", "legacy-default-key")])
        .credential_header(
            "default-key",
            "legacy",
            "default: true",
            "x-api-key",
            ("keys", "default"),
        )
        .start()
        .expect("gateway starts");
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("dave", &[], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("legacy_echo", json!({"text": "over sse"})),
            py_ops::call_tool("legacy_whoami", json!({})),
            py_ops::get_prompt("legacy_greet", json!({"name": "bob"})),
        ])
        .run()
        .expect("python client runs");
    assert_eq!(
        sorted(names(ok_result(&report, 0), "tools")),
        sorted(expected_tools("legacy_", 2))
    );
    assert_eq!(first_text(ok_result(&report, 1)), "[legacy] over sse");
    let who = whoami_report(ok_result(&report, 2));
    assert_eq!(who["transport"], "sse", "{who:#}");
    assert_eq!(who["headers"]["x-api-key"], "legacy-default-key", "{who:#}");
    assert!(who["headers"].get("authorization").is_none(), "{who:#}");
    assert_eq!(
        ok_result(&report, 3)["messages"][0]["content"]["text"],
        "Please greet bob warmly."
    );
}
