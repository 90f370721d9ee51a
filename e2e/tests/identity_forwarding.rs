//! Identity forwarding checked by the upstream itself: a `reflow-fixture` started with the
//! gateway's JWKS URL verifies the gateway-signed identity token on every call and reports the
//! verified claims through `whoami`, called by the official Python SDK through the gateway.

use reflow_dataplane::mcp::GatewayConfig;
use reflow_e2e::fixture_bin;
use reflow_e2e::harness::gateway::{NAMESPACE, target_yaml};
use reflow_e2e::harness::py_ops::{self, first_text, ok_result};
use reflow_e2e::harness::{FixtureProcess, PolicyDoc, PyClient, TestGateway};
use serde_json::{Value, json};

fn whoami(gw: &TestGateway, token: String) -> Value {
    let report = PyClient::streamable_http(gw.mcp_url())
        .token(token)
        .actions([py_ops::call_tool("fx_whoami", json!({}))])
        .run()
        .expect("python client runs");
    serde_json::from_str(first_text(ok_result(&report, 0))).expect("whoami returns JSON")
}

#[test]
fn the_fixture_verifies_forwarded_identities_against_the_gateway_jwks() {
    let config = GatewayConfig {
        public_url: None,
        ..GatewayConfig::default()
    };
    // The gateway first (its JWKS URL is the fixture's trust anchor), the Target after.
    let gw = TestGateway::builder()
        .config(config)
        .start()
        .expect("gateway starts");
    let jwks = format!("{}/.well-known/jwks.json", gw.base_url());
    let audience = format!("{NAMESPACE}/fx");
    let fx = FixtureProcess::spawn_with(
        &fixture_bin!(),
        [
            "--name",
            "fx",
            "--identity-jwks",
            &jwks,
            "--identity-audience",
            &audience,
        ],
    )
    .expect("fixture starts");
    let target = format!(
        "{}  identityForwarding: {{jwt: {{}}, headers: true}}\n",
        target_yaml("fx", "streamableHttp", &fx.mcp_url())
    );
    let policy = PolicyDoc::allow("all", "fx").everyone().rule("all", &["*"]);
    gw.replace_manifests(&[target, policy.to_yaml()])
        .expect("manifests compile");

    let report = whoami(&gw, gw.token("alice", &["dev", "ops"], &["admin"]));
    let identity = &report["identity"];
    assert_eq!(identity["verified"], true, "{report:#}");
    assert_eq!(identity["claims"]["sub"], "alice");
    assert_eq!(identity["claims"]["groups"], json!(["dev", "ops"]));
    assert_eq!(identity["claims"]["roles"], json!(["admin"]));
    assert_eq!(identity["claims"]["aud"], audience);
    let headers = &report["headers"];
    assert_eq!(headers["x-reflow-user"], "alice");
    assert_eq!(headers["x-reflow-groups"], "dev,ops");
    assert!(
        headers.get("authorization").is_none(),
        "the client's token reached the upstream: {headers}"
    );

    // A fixture that trusts another gateway's keys refuses the same forwarded identity.
    let other = TestGateway::builder().start().expect("second gateway");
    let stranger = FixtureProcess::spawn_with(
        &fixture_bin!(),
        [
            "--name",
            "fx",
            "--identity-jwks",
            &format!("{}/.well-known/jwks.json", other.base_url()),
        ],
    )
    .expect("fixture starts");
    let target = format!(
        "{}  identityForwarding: {{jwt: {{}}}}\n",
        target_yaml("fx", "streamableHttp", &stranger.mcp_url())
    );
    gw.replace_manifests(&[target, policy.to_yaml()])
        .expect("manifests compile");
    let report = whoami(&gw, gw.token("alice", &[], &[]));
    assert_eq!(report["identity"]["verified"], false, "{report:#}");
    let error = report["identity"]["error"].as_str().unwrap_or_default();
    assert!(error.contains("no key with the token's kid"), "{error}");
}
