//! Gateway API tokens through the whole gateway with the real JWT authenticator: scopes narrow
//! what policies allow (targets, permissions, source ranges, time window) and every refusal is
//! audited; the `env` claim binds a token to one environment.

mod support;

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use reflow_dataplane::auth::{AuthConfig, Authenticator, IssuerConfig, TokenRequest, mint_token};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::scope::TokenScope;
use reflow_dataplane::session::MemorySessionStore;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::*;

const ISS: &str = "reflow-test";
const AUD: &str = "reflow";
const KEY: &str = "0123456789abcdef0123456789abcdef-scope";

fn authenticator(environment: Option<&str>, require_env: bool) -> Arc<Authenticator> {
    let mut issuer = IssuerConfig::new(ISS, [AUD]);
    issuer.hs256_secret = Some(SecretString::from(KEY));
    let mut config = AuthConfig::new(vec![issuer]);
    config.environment = environment.map(str::to_owned);
    config.require_env_claim = require_env;
    Arc::new(Authenticator::new(config).unwrap())
}

fn token(user: &str, scope: Option<Value>, env: Option<&str>) -> String {
    let request = TokenRequest {
        user: user.to_owned(),
        groups: vec!["dev".into()],
        ttl: Duration::from_secs(600),
        env: env.map(str::to_owned),
        scope,
        ..TokenRequest::default()
    };
    mint_token(&SecretString::from(KEY), ISS, AUD, &request)
        .unwrap()
        .token
}

fn scope(targets: &[&str], permissions: &[&str], ranges: &[&str], window: Option<&str>) -> Value {
    let own = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    TokenScope::claim(&own(targets), &own(permissions), &own(ranges), window)
        .unwrap()
        .unwrap()
}

/// Two targets `a` (tools a1, a2) and `b` (tool b1), everything allowed to everyone.
async fn two_targets(auth: Arc<Authenticator>) -> Harness {
    let dir = temp_dir();
    for (name, tools) in [("a", vec!["a1", "a2"]), ("b", vec!["b1"])] {
        let url = start_upstream(Upstream {
            tools,
            ..Upstream::default()
        })
        .await;
        std::fs::write(
            dir.join(format!("{name}.yaml")),
            target_yaml(name, &url, 5_000),
        )
        .unwrap();
        std::fs::write(
            dir.join(format!("allow-{name}.yaml")),
            policy_yaml(&format!("allow-{name}"), name, "Allow", &["*"], 0),
        )
        .unwrap();
    }
    let config = GatewayConfig::default();
    let sessions = MemorySessionStore::new(Duration::from_secs(config.session_idle_seconds));
    let h = start_gateway_auth(dir, config, sessions, auth).await;
    wait_ready(&h).await;
    h
}

async fn wait_ready(h: &Harness) {
    for _ in 0..100 {
        if h.gw.snapshots.load().targets().len() == 2 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the manifests never compiled");
}

fn scope_denials(h: &Harness) -> Vec<(String, Option<String>, String)> {
    h.audit
        .events()
        .into_iter()
        .filter(|e| e.policy.as_deref() == Some("token-scope"))
        .map(|e| (e.method, e.name, e.outcome))
        .collect()
}

#[tokio::test]
async fn scope_targets_hide_and_refuse_other_targets() {
    let h = two_targets(authenticator(None, false)).await;
    let unscoped = token("alice", None, None);
    let sid = h.open("/mcp", &unscoped).await;
    assert_eq!(
        h.tool_names("/mcp", &unscoped, &sid).await,
        ["a_a1", "a_a2", "b_b1"]
    );

    let only_a = token("alice", Some(scope(&["t/a"], &[], &[], None)), None);
    let sid = h.open("/mcp", &only_a).await;
    assert_eq!(h.tool_names("/mcp", &only_a, &sid).await, ["a_a1", "a_a2"]);
    let ok = h
        .rpc(
            "/mcp",
            &only_a,
            Some(&sid),
            "tools/call",
            json!({"name": "a_a1"}),
        )
        .await;
    assert_eq!(
        ok.body["result"]["content"][0]["text"], "a1",
        "{:?}",
        ok.body
    );

    // Out of scope reads exactly like an unknown tool, and the refusal is audited.
    let refused = h
        .rpc(
            "/mcp",
            &only_a,
            Some(&sid),
            "tools/call",
            json!({"name": "b_b1"}),
        )
        .await;
    let unknown = h
        .rpc(
            "/mcp",
            &only_a,
            Some(&sid),
            "tools/call",
            json!({"name": "b_nope"}),
        )
        .await;
    assert_eq!(refused.body["error"]["code"], -32602);
    assert_eq!(refused.body["error"]["message"], "Unknown tool: b_b1");
    assert_eq!(unknown.body["error"]["message"], "Unknown tool: b_nope");
    // Both route to target `b` by prefix, so the scope decides both, before any upstream.
    let denied = |name: &str| {
        (
            "tools/call".to_owned(),
            Some(name.to_owned()),
            "denied".to_owned(),
        )
    };
    assert_eq!(scope_denials(&h), [denied("b_b1"), denied("b_nope")]);

    // The single-target endpoint of an out-of-scope target lists nothing.
    let sid_b = h.open("/mcp/t/b", &only_a).await;
    assert!(h.tool_names("/mcp/t/b", &only_a, &sid_b).await.is_empty());
}

#[tokio::test]
async fn scope_list_only_token_cannot_call() {
    let h = two_targets(authenticator(None, false)).await;
    let list_only = token("alice", Some(scope(&[], &["list"], &[], None)), None);
    let sid = h.open("/mcp", &list_only).await;
    assert_eq!(h.tool_names("/mcp", &list_only, &sid).await.len(), 3);
    let r = h
        .rpc(
            "/mcp",
            &list_only,
            Some(&sid),
            "tools/call",
            json!({"name": "a_a1"}),
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.body["error"]["code"], -32003, "{:?}", r.body);
    assert_eq!(
        r.body["error"]["message"],
        "the token does not grant the `call` permission"
    );
    assert_eq!(
        scope_denials(&h),
        [("tools/call".to_owned(), None, "scope_permission".to_owned())]
    );
}

#[tokio::test]
async fn scope_source_ranges_are_checked_against_the_peer() {
    let h = two_targets(authenticator(None, false)).await;
    let loopback = token("alice", Some(scope(&[], &[], &["127.0.0.0/8"], None)), None);
    h.open("/mcp", &loopback).await;

    let elsewhere = token("alice", Some(scope(&[], &[], &["10.0.0.0/8"], None)), None);
    let r = h
        .rpc(
            "/mcp",
            &elsewhere,
            None,
            "initialize",
            json!({"protocolVersion": "2025-06-18"}),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "the token is not valid from this address");
    let challenge = r.headers["www-authenticate"].to_str().unwrap();
    assert!(
        challenge.contains("error=\"insufficient_scope\""),
        "{challenge}"
    );
    assert_eq!(
        scope_denials(&h),
        [("-".to_owned(), None, "scope_source".to_owned())]
    );
}

#[tokio::test]
async fn scope_time_window_outside_now_is_refused() {
    let h = two_targets(authenticator(None, false)).await;
    let now_min = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
        / 60
        % 1440;
    let hhmm = |m: u64| format!("{:02}:{:02}", (m % 1440) / 60, m % 60);
    // A window that started two hours ago and lasts four: now is inside; the opposite is not.
    let inside = format!("{}-{}", hhmm(now_min + 1440 - 120), hhmm(now_min + 120));
    let outside = format!("{}-{}", hhmm(now_min + 120), hhmm(now_min + 1440 - 120));
    let ok = token("alice", Some(scope(&[], &[], &[], Some(&inside))), None);
    h.open("/mcp", &ok).await;
    let late = token("alice", Some(scope(&[], &[], &[], Some(&outside))), None);
    let r = h
        .rpc(
            "/mcp",
            &late,
            None,
            "initialize",
            json!({"protocolVersion": "2025-06-18"}),
        )
        .await;
    assert_eq!(r.status, 403);
    assert_eq!(r.body, "the token is not valid at this time of day");
}

#[tokio::test]
async fn scope_malformed_claim_refuses_the_token() {
    let h = two_targets(authenticator(None, false)).await;
    let bad = token("alice", Some(json!({"permissions": ["admin"]})), None);
    let r = h
        .rpc(
            "/mcp",
            &bad,
            None,
            "initialize",
            json!({"protocolVersion": "2025-06-18"}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "the token's `reflow` claim has an unexpected type");
}

#[tokio::test]
async fn env_claim_binds_tokens_to_one_environment() {
    let h = two_targets(authenticator(Some("production"), false)).await;
    h.open("/mcp", &token("alice", None, Some("production")))
        .await;
    h.open("/mcp", &token("alice", None, None)).await;
    let staging = token("alice", None, Some("staging"));
    let r = h
        .rpc(
            "/mcp",
            &staging,
            None,
            "initialize",
            json!({"protocolVersion": "2025-06-18"}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "the token was issued for another environment");

    let strict = two_targets(authenticator(Some("production"), true)).await;
    strict
        .open("/mcp", &token("alice", None, Some("production")))
        .await;
    let r = strict
        .rpc(
            "/mcp",
            &token("alice", None, None),
            None,
            "initialize",
            json!({"protocolVersion": "2025-06-18"}),
        )
        .await;
    assert_eq!(r.status, 401);
    assert_eq!(r.body, "the token lacks the required claim `env`");
}
