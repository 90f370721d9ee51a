//! The official Python `mcp` SDK through the Reflow gateway hears `notifications/tools/list_changed`
//! when a Policy edit changes what its caller may see, and its next list shows the new set.

use std::time::{Duration, Instant};

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::target_yaml;
use reflow_e2e::harness::py_ops::{self, names, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};

const LIST_CHANGED: &str = "notifications/tools/list_changed";

fn developers_deny(tool: &str) -> PolicyDoc {
    PolicyDoc::deny("no-tool-for-developers", "one")
        .group("developers")
        .rule("tool", &[tool])
}

fn developers_allow_all() -> PolicyDoc {
    PolicyDoc::allow("developers-use-one", "one")
        .group("developers")
        .rule("tool", &["*"])
}

#[test]
fn python_sdk_hears_list_changed_after_a_policy_edit_and_lists_the_new_set() {
    let one = FixtureProcess::spawn_with(&fixture_bin!(), ["--name", "one"]).expect("fixture");
    let gw = TestGateway::builder()
        .target("one", &one.mcp_url())
        .policy(developers_allow_all())
        .policy(developers_deny("crash"))
        .start()
        .expect("gateway starts");

    let client = PyClient::streamable_http(gw.mcp_url())
        .token(gw.token("alice", &["developers"], &[]))
        .actions([
            py_ops::list_tools(),
            py_ops::wait_notification(LIST_CHANGED, 30.0),
            py_ops::list_tools(),
        ]);
    let run = std::thread::spawn(move || client.run());

    // The first list is done (its hidden tool is audited) and the SDK's GET stream is open:
    // only then is the edit made, so the notification has a stream to go to.
    gw.wait_for_audit(Duration::from_secs(60), |e| {
        e.user == "alice" && e.method == "tools/list" && e.name.as_deref() == Some("one_crash")
    })
    .expect("the first list happened");
    let deadline = Instant::now() + Duration::from_secs(30);
    while gw.gateway().live_get_streams() == 0 {
        assert!(
            Instant::now() < deadline,
            "the SDK never opened its GET stream"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    gw.replace_manifests(&[
        target_yaml("one", "streamableHttp", &one.mcp_url()),
        developers_allow_all().to_yaml(),
        developers_deny("echo").to_yaml(),
    ])
    .expect("manifests replaced");

    let report = run
        .join()
        .expect("client thread")
        .expect("python client runs");
    let before = names(ok_result(&report, 0), "tools");
    assert!(before.contains(&"one_echo".to_owned()), "{before:?}");
    assert!(!before.contains(&"one_crash".to_owned()), "{before:?}");
    assert_eq!(ok_result(&report, 1)["method"], LIST_CHANGED, "{report:#}");
    let after = names(ok_result(&report, 2), "tools");
    assert!(after.contains(&"one_crash".to_owned()), "{after:?}");
    assert!(!after.contains(&"one_echo".to_owned()), "{after:?}");
    // Only tools changed for alice: nothing else was announced.
    assert_eq!(
        report["notifications"],
        serde_json::json!([LIST_CHANGED]),
        "{report:#}"
    );
}
