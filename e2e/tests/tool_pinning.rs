//! Pinned tool definitions (issue #22 part 3) with the official Python `mcp` SDK: a fixture whose
//! `echo` changes its description at runtime (`--rug-pull`) behind a Target that pins every
//! reviewed definition. In `enforce` the changed `echo` disappears from lists and answers like an
//! unknown tool; in `warn` it stays, with an audit event. Either way a session connected before
//! the change hears `notifications/tools/list_changed`, and the dataplane's observations (what
//! it reports to the controller for `ToolsDrifted`) hold the new digest.

use std::time::{Duration, Instant};

use reflow_crds::snapshot::tool_digest;
use reflow_e2e::fixture::tools::{catalog, pulled, rug_pull_definition};
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::{NAMESPACE, target_yaml};
use reflow_e2e::harness::py_ops::{self, err_result, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};
use serde_json::json;

const LIST_CHANGED: &str = "notifications/tools/list_changed";

/// Every definition the fixture lists before the rug pull, as the reviewed pins.
fn reviewed_pins() -> String {
    let mut tools = catalog(0);
    tools.push(rug_pull_definition());
    tools
        .iter()
        .map(|t| {
            format!(
                "    - {{name: {}, digest: {}}}\n",
                t["name"].as_str().expect("name"),
                tool_digest(t)
            )
        })
        .collect()
}

fn pinned_gateway(mode: &str) -> (FixtureProcess, TestGateway) {
    let one = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one", "--rug-pull"])
        .expect("fixture");
    let target = format!(
        "{}  toolPinning:\n    mode: {mode}\n    pins:\n{}",
        target_yaml("one", "streamableHttp", &one.mcp_url()),
        reviewed_pins()
    );
    let gw = TestGateway::builder()
        .manifest(target)
        .policy(
            PolicyDoc::allow("all", "one")
                .everyone()
                .rule("tool", &["*"]),
        )
        .start()
        .expect("gateway starts");
    (one, gw)
}

/// Alice lists, waits for `list_changed`, lists again and calls `echo`; meanwhile bob makes the
/// fixture change `echo` and lists (the list that notices the change). Returns alice's report.
fn rug_pull_seen_by_a_connected_session(gw: &TestGateway) -> serde_json::Value {
    let alice = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("alice", &[], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::wait_notification(LIST_CHANGED, 30.0),
            py_ops::list_tools(),
            py_ops::call_tool("one_echo", json!({"text": "hi"})),
        ]);
    let run = std::thread::spawn(move || alice.run());
    gw.wait_for_audit(Duration::from_secs(60), |e| {
        e.user == "alice" && e.method == "tools/list"
    })
    .expect("alice listed");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.gateway().live_get_streams() == 0 {
        assert!(
            Instant::now() < deadline,
            "the SDK never opened its GET stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let bob = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("bob", &[], &[]))
        .actions([
            py_ops::call_tool("one_rug_pull", json!({})),
            py_ops::list_tools(),
        ])
        .run()
        .expect("bob's client runs");
    assert!(
        ok_result(&bob, 0)["content"][0]["text"]
            .as_str()
            .is_some_and(|t| t.contains("changed"))
    );
    let report = run
        .join()
        .expect("client thread")
        .expect("alice's client runs");
    let before = names(ok_result(&report, 0), "tools");
    assert!(
        before.contains(&"one_echo".to_owned()),
        "reviewed echo is listed: {before:?}"
    );
    assert_eq!(ok_result(&report, 1)["method"], LIST_CHANGED, "{report:#}");
    // The dataplane now observes the changed definition (what it reports to the controller).
    let pulled_echo = pulled(&catalog(0)).remove(0);
    assert_eq!(
        gw.gateway().observed.digest_of(NAMESPACE, "one", "echo"),
        Some(Some(tool_digest(&pulled_echo)))
    );
    report
}

#[test]
fn enforce_hides_and_refuses_a_changed_definition() {
    let (_one, gw) = pinned_gateway("enforce");
    let report = rug_pull_seen_by_a_connected_session(&gw);
    let after = names(ok_result(&report, 2), "tools");
    assert!(
        !after.contains(&"one_echo".to_owned()),
        "drifted echo is hidden: {after:?}"
    );
    assert!(
        after.contains(&"one_add".to_owned()),
        "the others stay: {after:?}"
    );
    let err = err_result(&report, 3);
    assert!(
        err.to_string().contains("Unknown tool: one_echo"),
        "refused like an unknown tool: {err}"
    );
    let hidden = gw
        .wait_for_audit(Duration::from_secs(10), |e| {
            e.user == "alice" && e.outcome == "hidden" && e.name.as_deref() == Some("one_echo")
        })
        .expect("the hidden echo is audited");
    assert_eq!(hidden.policy.as_deref(), Some("tool-pinning"));
    let refused = gw
        .wait_for_audit(Duration::from_secs(10), |e| {
            e.user == "alice" && e.method == "tools/call" && e.outcome == "denied"
        })
        .expect("the refused call is audited");
    assert_eq!(refused.policy.as_deref(), Some("tool-pinning:drifted"));
}

#[test]
fn warn_serves_a_changed_definition_with_an_audit_event() {
    let (_one, gw) = pinned_gateway("warn");
    let report = rug_pull_seen_by_a_connected_session(&gw);
    let after = names(ok_result(&report, 2), "tools");
    assert!(after.contains(&"one_echo".to_owned()), "{after:?}");
    let echoed = ok_result(&report, 3)["content"][0]["text"].clone();
    assert_eq!(echoed, "[one] hi");
    for method in ["tools/list", "tools/call"] {
        let warned = gw
            .wait_for_audit(Duration::from_secs(10), |e| {
                e.user == "alice"
                    && e.method == method
                    && e.outcome == "tool_unapproved"
                    && e.name.as_deref() == Some("one_echo")
            })
            .unwrap_or_else(|| panic!("{method} of the changed echo is audited"));
        assert_eq!(warned.policy.as_deref(), Some("tool-pinning:drifted"));
        assert_eq!(warned.decision, Some("allow"));
    }
}
