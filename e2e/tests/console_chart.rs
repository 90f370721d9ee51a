//! The chart's `console` values: off by default (no `gateway.console` in the rendered config),
//! and when enabled they render into a `gateway.console` block the dataplane accepts.

use reflow_dataplane::mcp::GatewayConfig;
use reflow_e2e::harness::render;

fn gateway_block(sets: &[&str]) -> serde_yaml::Value {
    let m = render::helm_template(sets, &[]).unwrap_or_else(|e| panic!("{e}"));
    let yaml = render::secret_value(m.get("Secret", "reflow-dataplane-config"), "gateway.yaml")
        .unwrap_or_else(|e| panic!("{e}"));
    let config: serde_yaml::Value = serde_yaml::from_str(&yaml).expect("yaml");
    config["gateway"].clone()
}

#[test]
fn the_console_is_off_by_default_and_renders_when_enabled() {
    let off = gateway_block(&[]);
    assert!(off.get("console").is_none(), "{off:?}");
    let parsed: GatewayConfig = serde_yaml::from_value(off).expect("gateway block");
    assert!(!parsed.console.enabled);

    let on = gateway_block(&[
        "console.enabled=true",
        "console.admins.groups={platform-admins}",
        "console.oidc.issuer=https://idp.example.com",
        "console.oidc.clientId=reflow-console",
        "console.oidc.redirectUrl=https://mcp.example.com/console/callback",
        "console.oidc.resource=https://mcp.example.com/mcp",
    ]);
    let parsed: GatewayConfig = serde_yaml::from_value(on).expect("the dataplane accepts it");
    let console = parsed.console;
    assert!(console.enabled && console.secure_cookies && !console.dev_login);
    assert_eq!(console.admins.groups, ["platform-admins"]);
    let oidc = console.oidc.expect("oidc");
    assert_eq!(oidc.client_id, "reflow-console");
    assert_eq!(
        oidc.resource.as_deref(),
        Some("https://mcp.example.com/mcp")
    );
}

#[test]
fn make_run_turns_the_console_on_with_the_dev_token_login() {
    let path = reflow_e2e::harness::paths::workspace_root().join("config/local/gateway.yaml");
    let text = std::fs::read_to_string(&path).expect("config/local/gateway.yaml");
    let config: serde_yaml::Value = serde_yaml::from_str(&text).expect("yaml");
    let gateway: GatewayConfig =
        serde_yaml::from_value(config["gateway"].clone()).expect("gateway block");
    assert!(gateway.console.enabled && gateway.console.dev_login);
    assert_eq!(
        gateway.console.admins.groups,
        ["developers"],
        "run-local.sh's token group"
    );
    let script = std::fs::read_to_string(
        reflow_e2e::harness::paths::workspace_root().join("scripts/run-local.sh"),
    )
    .expect("run-local.sh");
    assert!(script.contains("--group developers") && script.contains("/console"));
}

#[test]
fn the_readme_console_config_is_accepted() {
    let readme =
        std::fs::read_to_string(reflow_e2e::harness::paths::workspace_root().join("README.md"))
            .expect("README.md");
    let section = readme
        .split("## The web console (`/console`)")
        .nth(1)
        .expect("console section");
    let block = section
        .split("```yaml\n")
        .nth(1)
        .and_then(|b| b.split("```").next())
        .expect("yaml block");
    let config: serde_yaml::Value = serde_yaml::from_str(block).expect("yaml");
    let gateway: GatewayConfig =
        serde_yaml::from_value(config["gateway"].clone()).expect("the dataplane accepts it");
    assert!(gateway.console.enabled && gateway.console.oidc.is_some());
}
