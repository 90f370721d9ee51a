//! A denied resource answers exactly like a missing one, on the single-Target endpoint and on
//! the aggregated one: a caller cannot learn which URIs exist behind a Deny by comparing answers.

use reflow_e2e::harness::PolicyDoc;
use serde_json::{Value, json};

mod hostile_support;
use hostile_support::{gateway_to_fixture_with, initialize_body, post_to, runtime};

fn read(uri: &str) -> Value {
    json!({"jsonrpc": "2.0", "id": 7, "method": "resources/read", "params": {"uri": uri}})
}

/// The JSON-RPC error of a `resources/read` on `path` (a session opened on it first).
async fn read_error(
    http: &reqwest::Client,
    gw: &hostile_support::Gw,
    path: &str,
    uri: &str,
) -> Value {
    let (status, headers, body) = post_to(
        http,
        gw,
        path,
        "mallory",
        None,
        &initialize_body(json!({"name": "probe", "version": "0"})),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .expect("session id")
        .to_owned();
    let (status, _, body) = post_to(http, gw, path, "mallory", Some(&sid), &read(uri)).await;
    assert_eq!(status, 200, "{body}");
    let reply: Value = serde_json::from_str(&body).expect("a JSON reply");
    reply
        .get("error")
        .cloned()
        .unwrap_or_else(|| panic!("an error answer for {uri}: {reply}"))
}

#[test]
fn a_denied_resource_reads_exactly_like_a_missing_one() {
    // Everything on `one` is allowed except the item resources, which exist upstream.
    let policies = [
        PolicyDoc::allow("one-all", "one")
            .everyone()
            .rule("all", &["*"])
            .to_yaml(),
        PolicyDoc::deny("one-no-items", "one")
            .everyone()
            .priority(10)
            .rule("resource", &["fixture://items/*"])
            .to_yaml(),
    ];
    let (_fixture, gw) = gateway_to_fixture_with("resources", "{}", &policies);
    let rt = runtime();
    rt.block_on(async {
        let http = reflow_e2e::harness::http_client().expect("http client");
        let single = "/mcp/e2e/one";
        let denied = read_error(&http, &gw, single, "fixture://items/secret").await;
        let missing = read_error(&http, &gw, single, "fixture://nothing/here").await;
        // The same code and message; the data names the URI the caller asked for, nothing else.
        assert_eq!(denied["code"], missing["code"], "{denied} vs {missing}");
        assert_eq!(
            denied["message"], missing["message"],
            "{denied} vs {missing}"
        );
        assert_eq!(denied["data"], json!({"uri": "fixture://items/secret"}));
        assert_eq!(missing["data"], json!({"uri": "fixture://nothing/here"}));

        // The aggregated endpoint: a missing URI under a real prefix is the upstream's answer,
        // restated the same way (never the upstream's own URI).
        let denied = read_error(&http, &gw, "/mcp", "reflow://one/fixture://items/secret").await;
        let missing = read_error(&http, &gw, "/mcp", "reflow://one/fixture://nothing/here").await;
        let no_target = read_error(&http, &gw, "/mcp", "reflow://zzz/fixture://x").await;
        for e in [&missing, &no_target] {
            assert_eq!(denied["code"], e["code"], "{denied} vs {e}");
            assert_eq!(denied["message"], e["message"], "{denied} vs {e}");
        }
        assert_eq!(
            missing["data"],
            json!({"uri": "reflow://one/fixture://nothing/here"})
        );

        // An allowed, existing resource is still served.
        let (_, headers, _) = post_to(
            &http,
            &gw,
            single,
            "mallory",
            None,
            &initialize_body(json!({"name": "probe", "version": "0"})),
        )
        .await;
        let sid = headers["mcp-session-id"].to_str().expect("sid").to_owned();
        let (_, _, body) = post_to(
            &http,
            &gw,
            single,
            "mallory",
            Some(&sid),
            &read("fixture://static/hello"),
        )
        .await;
        assert!(body.contains("Hello from one"), "{body}");
    });
}
