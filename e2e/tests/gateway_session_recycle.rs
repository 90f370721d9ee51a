//! The official Python `mcp` SDK through the Reflow gateway keeps its session when its token
//! changes to one with other groups (same user): the gateway recycles the session, announces
//! `notifications/tools/list_changed` on it, and the next list shows the new groups' view.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::py_ops::{self, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};
use serde_json::json;

const LIST_CHANGED: &str = "notifications/tools/list_changed";

#[test]
fn python_sdk_keeps_its_session_across_a_groups_change_and_hears_list_changed() {
    let one = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(
            PolicyDoc::allow("developers-use-one", "one")
                .group("developers")
                .rule("tool", &["*"]),
        )
        .policy(
            PolicyDoc::allow("auditors-echo", "one")
                .group("auditors")
                .rule("tool", &["echo"]),
        )
        .start()
        .expect("gateway starts");

    let report = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("alice", &["developers"], &[]))
        .actions([
            py_ops::list_tools(),
            // The SDK opens its GET stream after initialize; give it time to be there.
            py_ops::sleep(1.0),
            py_ops::set_token(&gw.token("alice", &["auditors"], &[])),
            py_ops::list_tools(),
            py_ops::wait_notification(LIST_CHANGED, 30.0),
            py_ops::call_tool("one_echo", json!({"text": "still here"})),
        ])
        .run()
        .expect("python client runs");

    let before = names(ok_result(&report, 0), "tools");
    assert!(before.contains(&"one_whoami".to_owned()), "{before:?}");
    let after = names(ok_result(&report, 3), "tools");
    assert_eq!(after, ["one_echo"], "{report:#}");
    assert_eq!(ok_result(&report, 4)["method"], LIST_CHANGED, "{report:#}");
    let echoed = py_ops::first_text(ok_result(&report, 5));
    assert!(echoed.contains("still here"), "{report:#}");
    assert_eq!(report["notifications"], json!([LIST_CHANGED]), "{report:#}");

    // One session throughout: every request of the run was on it, and the change is audited.
    let events = gw.audit_events();
    let alice: Vec<_> = events.iter().filter(|e| e.user == "alice").collect();
    let sessions: std::collections::BTreeSet<_> =
        alice.iter().filter_map(|e| e.session.clone()).collect();
    assert_eq!(sessions.len(), 1, "{alice:#?}");
    assert_eq!(
        alice
            .iter()
            .filter(|e| e.method == "session/claimsChanged")
            .count(),
        1,
        "{alice:#?}"
    );
}
