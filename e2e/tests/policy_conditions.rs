//! Issue #22 parts 1 and 2 through the whole gateway, with the official Python `mcp` SDK as the
//! client and a real `reflow-fixture` upstream: an argument-conditioned tool listed and then
//! allowed or denied per call, a claims condition, and a rate-limited caller refused (JSON-RPC
//! error with a retry hint, HTTP 429 + Retry-After, audited, counted) while another is not.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::{AUDIENCE, HS256_SECRET, ISSUER, NAMESPACE, target_yaml};
use reflow_e2e::harness::py_ops::{self, err_result, first_text, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PyClient, RawInit, RawSession, TestGateway};
use serde_json::{Value, json};

fn policy(name: &str, effect: &str, rules: &str, extra: &str) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: {NAMESPACE}}}\nspec:\n  targetRef: {{name: one}}\n  subjects: [{{everyone: true}}]\n  effect: {effect}\n  rules: {rules}\n{extra}"
    )
}

/// A token from the test issuer carrying extra claims.
fn token_with(user: &str, extra: Value) -> String {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let mut claims = json!({
        "iss": ISSUER, "aud": AUDIENCE, "sub": user, "groups": [], "roles": [],
        "iat": now, "nbf": now, "exp": now + 600,
        "jti": uuid::Uuid::new_v4().to_string(),
    });
    if let (Some(c), Value::Object(more)) = (claims.as_object_mut(), extra) {
        c.extend(more);
    }
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(HS256_SECRET.as_bytes()),
    )
    .expect("HS256 signing cannot fail")
}

fn gateway() -> (FixtureProcess, TestGateway) {
    let one = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .manifest(policy(
            "acme-echo",
            "Allow",
            "[{kind: tool, names: [echo], when: 'args.text.startsWith(\"acme/\")'}]",
            "",
        ))
        .manifest(policy(
            "finance-add",
            "Allow",
            "[{kind: tool, names: [add], when: 'claims.department == \"finance\"'}]",
            "",
        ))
        .manifest(policy(
            "whoami-limited",
            "Allow",
            "[{kind: tool, names: [whoami]}]",
            "  rateLimit: {requests: 2, interval: 1h, burst: 2, per: tool}\n",
        ))
        .start()
        .expect("gateway starts");
    (one, gw)
}

#[test]
fn python_sdk_argument_and_claims_conditions() {
    let (_one, gw) = gateway();
    let carol = gw.token("carol", &[], &[]);
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&carol)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_echo", json!({"text": "acme/ok"})),
            py_ops::call_tool("one_echo", json!({"text": "evil/no"})),
            py_ops::call_tool("one_echo", json!({"text": 42})),
            py_ops::call_tool("one_add", json!({"a": 1, "b": 2})),
        ])
        .run()
        .expect("python client runs");
    // The args-conditioned tool is listed (it may be callable); the claims-conditioned one is
    // not (carol has no department), and the rate-limited one is.
    let mut listed = names(ok_result(&report, 0), "tools");
    listed.sort();
    assert_eq!(listed, vec!["one_echo", "one_whoami"], "{report:#}");
    assert_eq!(first_text(ok_result(&report, 1)), "[one] acme/ok");
    // Denied per call, exactly like an unknown tool.
    for i in [2, 3] {
        assert_eq!(
            err_result(&report, i)["message"],
            "Unknown tool: one_echo",
            "{report:#}"
        );
    }
    assert_eq!(err_result(&report, 4)["message"], "Unknown tool: one_add");

    // Every decision audits the Policy and the condition's outcome.
    let audited = |outcome: &str, policy: &str| {
        gw.wait_for_audit(Duration::from_secs(5), |e| {
            e.user == "carol"
                && e.method == "tools/call"
                && e.outcome == outcome
                && e.policy.as_deref() == Some(policy)
        })
        .unwrap_or_else(|| panic!("no {outcome} event by {policy}: {:#?}", gw.audit_events()))
    };
    assert_eq!(audited("ok", "acme-echo when=true").decision, Some("allow"));
    assert_eq!(
        audited("denied", "acme-echo when=false").decision,
        Some("deny")
    );
    audited("denied", "acme-echo when=error");
    // carol's token has no `department` claim: an error, so the Allow does not apply.
    audited("denied", "finance-add when=error");

    // The list hid `add` and says why.
    let hidden = gw
        .wait_for_audit(Duration::from_secs(5), |e| {
            e.method == "tools/list" && e.name.as_deref() == Some("one_add")
        })
        .expect("the hidden tool is audited");
    assert_eq!(hidden.policy.as_deref(), Some("finance-add when=error"));
    assert_eq!(hidden.decision, Some("deny"));

    // A caller whose token says department: finance sees and may call `add`.
    let fin = token_with("fiona", json!({"department": "finance"}));
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&fin)
        .actions([
            py_ops::list_tools(),
            py_ops::call_tool("one_add", json!({"a": 20, "b": 22})),
        ])
        .run()
        .expect("python client runs");
    assert!(names(ok_result(&report, 0), "tools").contains(&"one_add".to_owned()));
    assert_eq!(ok_result(&report, 1)["structuredContent"]["sum"], 42);
    // An odd claim type does not pass for "finance".
    let odd = token_with("oscar", json!({"department": ["finance"]}));
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&odd)
        .actions([py_ops::call_tool("one_add", json!({"a": 1, "b": 1}))])
        .run()
        .expect("python client runs");
    assert_eq!(err_result(&report, 0)["message"], "Unknown tool: one_add");
}

#[test]
fn python_sdk_rate_limited_caller_is_refused_another_is_not() {
    let (_one, gw) = gateway();
    let alice = gw.token("alice", &[], &[]);
    let bob = gw.token("bob", &[], &[]);
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&alice)
        .actions([
            py_ops::call_tool("one_whoami", json!({})),
            py_ops::call_tool("one_whoami", json!({})),
            py_ops::call_tool("one_whoami", json!({})),
            // Another tool is another bucket (and not limited at all here).
            py_ops::call_tool("one_echo", json!({"text": "acme/still fine"})),
        ])
        .run()
        .expect("python client runs");
    ok_result(&report, 0);
    ok_result(&report, 1);
    let refused = err_result(&report, 2);
    assert_eq!(refused["code"], -32029, "{report:#}");
    let retry = refused["data"]["retryAfter"].as_u64().expect("retry hint");
    assert!((1700..=1800).contains(&retry), "{refused}");
    assert!(
        refused["message"]
            .as_str()
            .is_some_and(|m| m.contains("retry after")),
        "{refused}"
    );
    assert_eq!(first_text(ok_result(&report, 3)), "[one] acme/still fine");

    // Bob is not charged for alice's calls.
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(&bob)
        .actions([
            py_ops::call_tool("one_whoami", json!({})),
            py_ops::call_tool("one_whoami", json!({})),
        ])
        .run()
        .expect("python client runs");
    ok_result(&report, 0);
    ok_result(&report, 1);

    // On the wire: HTTP 429 with Retry-After, and the JSON-RPC error in the body.
    let (status, retry_after, body) = gw.block_on(raw_call(&gw.mcp_url(), &alice));
    assert_eq!(status, 429, "{body}");
    let secs: u64 = retry_after.parse().expect("Retry-After is whole seconds");
    assert!((1700..=1800).contains(&secs), "{retry_after}");
    assert_eq!(body["error"]["code"], -32029, "{body}");

    // Audited with the Policy, counted with bounded labels.
    let ev = gw
        .wait_for_audit(Duration::from_secs(5), |e| e.outcome == "rate_limited")
        .expect("the refusal is audited");
    assert_eq!(ev.user, "alice");
    assert_eq!(ev.policy.as_deref(), Some("whoami-limited"));
    assert_eq!(ev.decision, Some("deny"));
    let metrics = gw.gateway().metrics.render();
    let line = metrics
        .lines()
        .find(|l| l.starts_with("reflow_rate_limited_total{"))
        .unwrap_or_else(|| panic!("no rate_limited series:\n{metrics}"));
    assert!(line.contains("policy=\"whoami-limited\""), "{line}");
    assert!(line.ends_with(" 2"), "two refusals so far: {line}");
    assert!(!line.contains("alice"), "users are never labels: {line}");
}

/// initialize, then one tools/call of `one_whoami` with plain JSON accepted: (status,
/// Retry-After, body).
async fn raw_call(url: &str, token: &str) -> (u16, String, Value) {
    let init = RawInit {
        protocol: "2025-06-18".to_owned(),
        initialized: false,
        ..RawInit::named("raw")
    };
    let session = RawSession::open(url, token, init)
        .await
        .expect("initialize");
    let resp = session
        .request(&json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
               "params": {"name": "one_whoami", "arguments": {}}}))
        .send()
        .await
        .expect("tools/call");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body: Value = resp.json().await.expect("a JSON body");
    (status, retry, body)
}

#[test]
fn editing_a_condition_re_filters_live_sessions() {
    const LIST_CHANGED: &str = "notifications/tools/list_changed";
    let one = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let finance = |dept: &str| {
        policy(
            "finance-add",
            "Allow",
            &format!("[{{kind: tool, names: [add], when: 'claims.department == \"{dept}\"'}}]"),
            "",
        )
    };
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .manifest(finance("finance"))
        .start()
        .expect("gateway starts");
    let client = PyClient::streamable_http(gw.mcp_url())
        .token(token_with("fiona", json!({"department": "finance"})))
        .actions([
            py_ops::list_tools(),
            py_ops::wait_notification(LIST_CHANGED, 30.0),
            py_ops::list_tools(),
        ]);
    let run = std::thread::spawn(move || client.run());
    gw.wait_for_audit(Duration::from_secs(60), |e| {
        e.user == "fiona" && e.method == "tools/list"
    })
    .expect("the first list happened");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.gateway().live_get_streams() == 0 {
        assert!(Instant::now() < deadline, "no GET stream");
        std::thread::sleep(Duration::from_millis(50));
    }
    // Only the condition changes: the rule's names, subjects and priority stay.
    gw.replace_manifests(&[
        target_yaml("one", "streamableHttp", &one.mcp_url()),
        finance("legal"),
    ])
    .expect("manifests replaced");
    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    assert_eq!(names(ok_result(&report, 0), "tools"), vec!["one_add"]);
    assert_eq!(ok_result(&report, 1)["method"], LIST_CHANGED, "{report:#}");
    assert!(
        names(ok_result(&report, 2), "tools").is_empty(),
        "{report:#}"
    );
}
