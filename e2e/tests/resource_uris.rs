//! Issue 19: resource URIs on the aggregated endpoint name the Target serving them
//! (`reflow://<prefix>/<upstream uri>`), so two Targets serving the same URI never collide and a
//! Deny on one is never bypassed through the other; a single-Target endpoint keeps URIs as given.

use reflow_e2e::fixture_bin;
use reflow_e2e::harness::py_ops::{self, err_result, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, TestGateway, TsClient};
use serde_json::{Value, json};

const HELLO: &str = "fixture://static/hello";

fn fixture(name: &str) -> FixtureProcess {
    FixtureProcess::spawn_with(&fixture_bin!(), ["--name", name]).expect("fixture starts")
}

/// Two fixtures serving the same URIs; `one` denies its `HELLO` to everyone.
fn gateway(one: &FixtureProcess, two: &FixtureProcess) -> TestGateway {
    TestGateway::builder()
        .target("one", &one.mcp_url())
        .target("two", &two.mcp_url())
        .policy(
            PolicyDoc::allow("all-one", "one")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::allow("all-two", "two")
                .everyone()
                .rule("all", &["*"]),
        )
        .policy(
            PolicyDoc::deny("no-hello-on-one", "one")
                .everyone()
                .rule("resource", &[HELLO]),
        )
        .start()
        .expect("gateway starts")
}

fn uris(result: &Value, field: &str, key: &str) -> Vec<String> {
    let mut out: Vec<String> = result[field]
        .as_array()
        .map(|items| {
            items
                .iter()
                .filter_map(|i| i[key].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default();
    out.sort();
    out
}

#[test]
fn a_deny_on_one_target_is_never_bypassed_through_another_serving_the_same_uri() {
    let (one, two) = (fixture("one"), fixture("two"));
    let gw = gateway(&one, &two);
    let token = gw.token("alice", &[], &[]);
    // Read first, before any list: the route needs nothing learned.
    let report = TsClient::streamable_http(gw.mcp_url())
        .token(&token)
        .actions([
            py_ops::read_resource("reflow://two/fixture://static/hello"),
            py_ops::read_resource("reflow://one/fixture://static/hello"),
            py_ops::read_resource(HELLO),
            py_ops::read_resource("reflow://nobody/fixture://static/hello"),
            py_ops::list_resources(),
            py_ops::list_resource_templates(),
            py_ops::read_resource("reflow://one/fixture://items/5"),
            py_ops::read_resource("reflow://two/fixture://items/5"),
        ])
        .run()
        .expect("typescript client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    let two_hello = ok_result(&report, 0);
    assert_eq!(two_hello["contents"][0]["text"], "Hello from two");
    assert_eq!(
        two_hello["contents"][0]["uri"],
        "reflow://two/fixture://static/hello"
    );
    // Denied on `one`, unprefixed, or of no Target: all read as not found, none reaches `two`.
    for (i, what) in [
        (1, "denied on one"),
        (2, "no Target named"),
        (3, "unknown prefix"),
    ] {
        assert_eq!(err_result(&report, i)["code"], -32002, "{what}: {report:#}");
    }
    let listed = uris(ok_result(&report, 4), "resources", "uri");
    assert!(
        listed.contains(&"reflow://two/fixture://static/hello".to_owned()),
        "{listed:?}"
    );
    assert!(
        !listed
            .iter()
            .any(|u| u == "reflow://one/fixture://static/hello" || u == HELLO),
        "{listed:?}"
    );
    assert!(
        listed.iter().all(|u| u.starts_with("reflow://")),
        "{listed:?}"
    );
    assert_eq!(
        uris(ok_result(&report, 5), "resourceTemplates", "uriTemplate"),
        vec![
            "reflow://one/fixture://items/{id}".to_owned(),
            "reflow://two/fixture://items/{id}".to_owned()
        ]
    );
    for (i, server) in [(6, "one"), (7, "two")] {
        let text = ok_result(&report, i)["contents"][0]["text"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let item: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        assert_eq!(item, json!({"id": "5", "server": server}), "{report:#}");
    }
    // The denied read is audited as denied, under the URI the client sent, on `one`.
    let denied = gw
        .audit_events()
        .into_iter()
        .find(|e| e.name.as_deref() == Some("reflow://one/fixture://static/hello"))
        .expect("audit event for the denied read");
    assert_eq!(denied.decision, Some("deny"), "{denied:?}");
}

#[test]
fn a_single_target_endpoint_keeps_uris_exactly_as_the_upstream_gives_them() {
    let (one, two) = (fixture("one"), fixture("two"));
    let gw = gateway(&one, &two);
    let token = gw.token("alice", &[], &[]);
    let report = TsClient::streamable_http(gw.target_url("two"))
        .token(&token)
        .actions([
            py_ops::list_resources(),
            py_ops::list_resource_templates(),
            py_ops::read_resource(HELLO),
            py_ops::read_resource("reflow://two/fixture://static/hello"),
        ])
        .run()
        .expect("typescript client runs");
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(
        uris(ok_result(&report, 0), "resources", "uri").contains(&HELLO.to_owned()),
        "{report:#}"
    );
    assert_eq!(
        uris(ok_result(&report, 1), "resourceTemplates", "uriTemplate"),
        vec!["fixture://items/{id}".to_owned()]
    );
    assert_eq!(ok_result(&report, 2)["contents"][0]["uri"], HELLO);
    assert_eq!(
        ok_result(&report, 2)["contents"][0]["text"],
        "Hello from two"
    );
    // The aggregated form means nothing here: it is passed on as is, and the upstream knows it not.
    assert!(report["results"][3]["ok"] == false, "{report:#}");

    // `one`'s Deny holds on its own endpoint too.
    let report = TsClient::streamable_http(gw.target_url("one"))
        .token(&token)
        .actions([py_ops::read_resource(HELLO)])
        .run()
        .expect("typescript client runs");
    assert_eq!(err_result(&report, 0)["code"], -32002, "{report:#}");
}
