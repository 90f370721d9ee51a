//! In-process gateway tests: real HTTP to the gateway, real HTTP to fake upstream MCP servers.

mod support;

use std::time::Duration;

use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use serde_json::{Value, json};
use support::*;

/// Two upstreams: `one` (paginated, with a denied `secret_tool`, alice's credential) and `two`.
async fn two_upstreams() -> (Harness, Upstream, Upstream) {
    let one = Upstream {
        tools: vec!["echo", "add", "secret_tool", "whoami", "fail"],
        page: 2,
        ..Default::default()
    };
    let two = Upstream {
        tools: vec!["search"],
        page: 10,
        ..Default::default()
    };
    let (u1, u2) = (
        start_upstream(one.clone()).await,
        start_upstream(two.clone()).await,
    );
    let dir = temp_dir();
    std::fs::write(
        dir.join("targets.yaml"),
        format!(
            "{}---\n{}",
            target_yaml("one", &u1, 5000),
            target_yaml("two", &u2, 5000)
        ),
    )
    .unwrap();
    std::fs::write(dir.join("secret.yaml"), SECRET).unwrap();
    std::fs::write(
        dir.join("cred.yaml"),
        credential_yaml("alice-key", "one", "alice", "x-api-key", "alice"),
    )
    .unwrap();
    std::fs::write(
        dir.join("policies.yaml"),
        format!(
            "{}---\n{}---\n{}",
            policy_yaml("all-one", "one", "Allow", &["*"], 0),
            policy_yaml("no-secret", "one", "Deny", &["secret_tool"], 0),
            policy_yaml("all-two", "two", "Allow", &["*"], 0)
        ),
    )
    .unwrap();
    (start_gateway(dir, GatewayConfig::default()).await, one, two)
}

#[tokio::test]
async fn aggregated_list_spans_targets_follows_pages_and_hides_denied() {
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    let names = h.tool_names("/mcp", "alice", &sid).await;
    assert_eq!(
        names,
        [
            "one_add",
            "one_echo",
            "one_fail",
            "one_whoami",
            "two_search"
        ]
    );
    // Unknown fields of items pass through.
    let r = h
        .rpc("/mcp", "alice", Some(&sid), "tools/list", json!({}))
        .await;
    assert_eq!(r.body["result"]["tools"][0]["x-extra"], true);
    assert_eq!(r.body["id"], 42);
}

#[tokio::test]
async fn denied_tool_answers_exactly_like_unknown() {
    let (h, one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    let denied = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "one_secret_tool"}),
        )
        .await;
    let unknown = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "one_secret_toolx"}),
        )
        .await;
    let unrouted = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "nope_x"}),
        )
        .await;
    assert_eq!(denied.body["error"]["code"], -32602);
    assert_eq!(
        denied.body["error"]["message"],
        "Unknown tool: one_secret_tool"
    );
    assert_eq!(
        unknown.body["error"]["message"],
        "Unknown tool: one_secret_toolx"
    );
    assert_eq!(unrouted.body["error"]["code"], -32602);
    assert_eq!(denied.status, unknown.status);
    // Only the allowed-but-unknown name reached the upstream; the denied one never did.
    let calls = one
        .headers_seen()
        .iter()
        .filter(|(m, _)| m == "tools/call")
        .count();
    assert_eq!(calls, 1);
    let audit = h.audit.events();
    let ev = audit
        .iter()
        .find(|e| e.name.as_deref() == Some("one_secret_tool"))
        .unwrap();
    assert_eq!(ev.decision, Some("deny"));
    assert_eq!(ev.policy.as_deref(), Some("no-secret"));
}

#[tokio::test]
async fn lists_audit_what_was_shown_and_each_hidden_item() {
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    h.tool_names("/mcp", "alice", &sid).await;
    let listed: Vec<_> = h
        .audit
        .events()
        .into_iter()
        .filter(|e| e.method == "tools/list")
        .collect();
    let summary = |target: &str| {
        listed
            .iter()
            .filter(|e| e.target.as_deref() == Some(target) && e.outcome == "listed")
            .count()
    };
    assert_eq!((summary("t/one"), summary("t/two")), (1, 1), "{listed:?}");
    let hidden: Vec<_> = listed.iter().filter(|e| e.outcome == "hidden").collect();
    assert_eq!(hidden.len(), 1, "{listed:?}");
    let ev = hidden[0];
    assert_eq!(ev.name.as_deref(), Some("one_secret_tool"));
    assert_eq!(ev.decision, Some("deny"));
    assert_eq!(ev.policy.as_deref(), Some("no-secret"));
    assert_eq!(ev.session.as_deref(), Some(sid.as_str()));
    assert!(listed.iter().all(|e| e.user == "alice"));
}

#[tokio::test]
async fn a_single_target_list_audits_hidden_items_by_their_upstream_name() {
    // A single-target session shows (and so audits) names unprefixed.
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp/t/one", "bob").await;
    let names = h.tool_names("/mcp/t/one", "bob", &sid).await;
    assert!(!names.iter().any(|n| n == "secret_tool"), "{names:?}");
    let ev = h
        .audit
        .events()
        .into_iter()
        .find(|e| e.method == "tools/list" && e.outcome == "hidden")
        .expect("hidden item audited");
    assert_eq!(ev.name.as_deref(), Some("secret_tool"));
    assert_eq!(ev.policy.as_deref(), Some("no-secret"));
}

#[tokio::test]
async fn call_routes_by_prefix_remaps_ids_and_progress_tokens_and_passes_meta() {
    let (h, _one, two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    let r = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "two_search", "arguments": {"q": 1}, "_meta": {"progressToken": "p1", "k": "v"}}),
        )
        .await;
    assert_eq!(r.body["id"], 42, "{:?}", r.body);
    assert_eq!(r.body["result"]["content"][0]["text"], "search");
    // The upstream gets a gateway-minted progress token (tokens of different clients never
    // collide upstream); the rest of `_meta` passes as sent.
    let minted = &r.body["result"]["meta_seen"]["progressToken"];
    assert!(minted.is_string() && minted != "p1", "{minted}");
    assert_eq!(r.body["result"]["meta_seen"]["k"], "v");
    // The upstream answered as SSE with a log message first: relayed, tagged with the Target.
    assert_eq!(r.events.len(), 1, "{:?}", r.events);
    assert_eq!(r.events[0]["method"], "notifications/message");
    assert_eq!(
        r.events[0]["params"]["_meta"][reflow_dataplane::mcp::TARGET_META],
        "t/two"
    );
    assert_eq!(r.body["result"]["args"]["q"], 1);
    assert!(two.headers_seen().iter().any(|(m, _)| m == "tools/call"));
    let ev = h
        .audit
        .events()
        .into_iter()
        .find(|e| e.method == "tools/call")
        .unwrap();
    assert_eq!(
        (ev.decision, ev.outcome.as_str(), ev.policy.as_deref()),
        (Some("allow"), "ok", Some("all-two"))
    );
}

#[tokio::test]
async fn credentials_are_per_caller_and_client_authorization_is_never_forwarded() {
    let (h, one, _two) = two_upstreams().await;
    let alice = h.open("/mcp", "alice").await;
    let bob = h.open("/mcp", "bob").await;
    let r = h
        .rpc(
            "/mcp",
            "bob",
            Some(&bob),
            "tools/call",
            json!({"name": "one_whoami"}),
        )
        .await;
    assert!(r.body["result"].is_object(), "{:?}", r.body);
    let r = h
        .rpc(
            "/mcp",
            "alice",
            Some(&alice),
            "tools/call",
            json!({"name": "one_whoami"}),
        )
        .await;
    assert!(r.body["result"].is_object(), "{:?}", r.body);
    let seen = one.headers_seen();
    let calls: Vec<_> = seen.iter().filter(|(m, _)| m == "tools/call").collect();
    assert_eq!(calls.len(), 2);
    assert_eq!(
        calls[0].1.get("x-api-key"),
        None,
        "bob must not get alice's key"
    );
    assert_eq!(
        calls[1].1.get("x-api-key").map(String::as_str),
        Some("alice-upstream-secret")
    );
    for (_, headers) in &seen {
        let auth = headers.get("authorization").cloned().unwrap_or_default();
        assert!(
            !auth.contains("alice") && !auth.contains("bob"),
            "client token forwarded: {auth}"
        );
    }
}

#[tokio::test]
async fn sessions_are_required_and_bound_to_their_identity() {
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    let missing = h.rpc("/mcp", "alice", None, "tools/list", json!({})).await;
    assert_eq!(missing.status, 400);
    let unknown = h
        .rpc(
            "/mcp",
            "alice",
            Some("0123456789abcdef0123456789abcdef"),
            "tools/list",
            json!({}),
        )
        .await;
    assert_eq!(unknown.status, 404);
    let foreign = h
        .rpc("/mcp", "bob", Some(&sid), "tools/list", json!({}))
        .await;
    assert_eq!(foreign.status, 404);
    let ping = h.rpc("/mcp", "alice", Some(&sid), "ping", json!({})).await;
    assert_eq!(ping.body["result"], json!({}));
    // DELETE ends it.
    assert_eq!(h.delete_session("/mcp", "alice", &sid).await, 200);
    assert_eq!(
        h.rpc("/mcp", "alice", Some(&sid), "ping", json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn malformed_batch_oversize_and_unauthenticated_requests_are_refused() {
    let (h, _one, _two) = two_upstreams().await;
    let bad = h.post("/mcp", "alice", None, b"{not json".to_vec()).await;
    assert_eq!(bad.status, 400);
    assert_eq!(bad.body["error"]["code"], -32700);
    let batch = h.post("/mcp", "alice", None, b"[]".to_vec()).await;
    assert_eq!(batch.body["error"]["code"], -32600);
    let big = h
        .post("/mcp", "alice", None, vec![b' '; 2 * 1024 * 1024])
        .await;
    assert_eq!(big.status, 413);
    let anon = h
        .http
        .post(format!("{}/mcp", h.base))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(anon.status(), 401);
    let challenge = anon.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        challenge.contains("resource_metadata=")
            && challenge.contains("/.well-known/oauth-protected-resource"),
        "{challenge}"
    );
    let meta: serde_json::Value = h
        .http
        .get(format!("{}/.well-known/oauth-protected-resource", h.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(meta["resource"].as_str().unwrap().ends_with("/mcp"));
    let cross = h
        .http
        .post(format!("{}/mcp", h.base))
        .header("origin", "https://evil.example")
        .header("authorization", "Bearer alice")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(cross.status(), 403);
    let method = h.open("/mcp", "alice").await;
    let r = h
        .rpc("/mcp", "alice", Some(&method), "no/such", json!({}))
        .await;
    assert_eq!(r.body["error"]["code"], -32601);
}

#[tokio::test]
async fn single_target_endpoint_uses_unprefixed_names() {
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp/t/one", "alice").await;
    assert_eq!(
        h.tool_names("/mcp/t/one", "alice", &sid).await,
        ["add", "echo", "fail", "whoami"]
    );
    let r = h
        .rpc(
            "/mcp/t/one",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "echo"}),
        )
        .await;
    assert_eq!(r.body["result"]["content"][0]["text"], "echo");
    // A session of one endpoint is unknown on another.
    assert_eq!(
        h.rpc("/mcp", "alice", Some(&sid), "ping", json!({}))
            .await
            .status,
        404
    );
}

#[tokio::test]
async fn upstream_down_or_slow_gives_a_clear_error() {
    let slow = Upstream {
        tools: vec!["slow"],
        page: 5,
        delay: Duration::from_secs(3),
        ..Default::default()
    };
    let slow_url = start_upstream(slow).await;
    let dir = temp_dir();
    // Port 9 on localhost: nothing listens there.
    std::fs::write(
        dir.join("t.yaml"),
        format!(
            "{}---\n{}",
            target_yaml("down", "http://127.0.0.1:9/mcp", 2000),
            target_yaml("slow", &slow_url, 300)
        ),
    )
    .unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        format!(
            "{}---\n{}",
            policy_yaml("a", "down", "Allow", &["*"], 0),
            policy_yaml("b", "slow", "Allow", &["*"], 0)
        ),
    )
    .unwrap();
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let sid = h.open("/mcp", "alice").await;
    // Lists skip the failing upstream instead of failing.
    assert_eq!(h.tool_names("/mcp", "alice", &sid).await, ["slow_slow"]);
    let down = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "down_x"}),
        )
        .await;
    assert_eq!(down.body["error"]["code"], -32000, "{:?}", down.body);
    assert_eq!(down.body["error"]["data"]["reason"], "connect");
    let started = std::time::Instant::now();
    let slow = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "slow_slow"}),
        )
        .await;
    assert_eq!(
        slow.body["error"]["data"]["reason"], "timeout",
        "{:?}",
        slow.body
    );
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn upstream_session_loss_reinitializes_once() {
    let (h, one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    h.tool_names("/mcp", "alice", &sid).await;
    one.forget_sessions();
    let r = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "one_echo"}),
        )
        .await;
    assert_eq!(
        r.body["result"]["content"][0]["text"], "echo",
        "{:?}",
        r.body
    );
    let inits = one
        .headers_seen()
        .iter()
        .filter(|(m, _)| m == "initialize")
        .count();
    assert_eq!(inits, 2);
}

/// One upstream answering a request on a session it no longer knows with `forgotten`; a call
/// after it forgot. The call's reply and how many times the gateway initialized.
async fn call_after_forgetting(forgotten: (u16, &'static str)) -> (Value, usize) {
    let up = Upstream {
        tools: vec!["echo"],
        forgotten: Some(forgotten),
        ..Upstream::default()
    };
    let url = start_upstream(up.clone()).await;
    let dir = temp_dir();
    write_single_target(&dir, "one", &target_yaml("one", &url, 5000));
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let sid = h.open("/mcp", "alice").await;
    h.tool_names("/mcp", "alice", &sid).await;
    up.forget_sessions();
    let r = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "one_echo"}),
        )
        .await;
    let inits = up
        .headers_seen()
        .iter()
        .filter(|(m, _)| m == "initialize")
        .count();
    (r.body, inits)
}

/// Servers built from the TypeScript SDK's examples (server-everything among them) answer an
/// unknown session id with 400 and this message, not 404: the session is renewed all the same.
#[tokio::test]
async fn a_400_about_the_session_reinitializes_once_like_a_404() {
    let body = r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":null}"#;
    let (reply, inits) = call_after_forgetting((400, body)).await;
    assert_eq!(reply["result"]["content"][0]["text"], "echo", "{reply:?}");
    assert_eq!(inits, 2);
}

/// Any other 400 is the request's fault: it is not retried in a new upstream session.
#[tokio::test]
async fn a_400_about_anything_else_is_an_error_not_a_new_session() {
    for body in [
        r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params"},"id":1}"#,
        "not json at all, though it says session",
        r#"{"result":{"session":"x"}}"#,
    ] {
        let (reply, inits) = call_after_forgetting((400, body)).await;
        assert_eq!(reply["error"]["data"]["reason"], "status", "{reply:?}");
        assert_eq!(inits, 1, "{body}");
    }
}

async fn eventually<F: AsyncFn() -> bool>(f: F) -> bool {
    for _ in 0..50 {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn manifests_reload_live_and_keep_the_last_good_snapshot() {
    let (h, _one, _two) = two_upstreams().await;
    let sid = h.open("/mcp", "alice").await;
    assert!(
        h.tool_names("/mcp", "alice", &sid)
            .await
            .contains(&"one_echo".to_owned())
    );
    // Deny echo too: the next list reflects it.
    std::fs::write(
        h.dir.join("extra.yaml"),
        policy_yaml("no-echo", "one", "Deny", &["echo"], 0),
    )
    .unwrap();
    assert!(
        eventually(async || !h
            .tool_names("/mcp", "alice", &sid)
            .await
            .contains(&"one_echo".to_owned()))
        .await
    );
    let version = h.gw.snapshots.load().version();
    // A broken file: the last good snapshot stays.
    std::fs::write(h.dir.join("broken.yaml"), "kind: [unterminated").unwrap();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(h.gw.snapshots.load().version(), version);
    let names = h.tool_names("/mcp", "alice", &sid).await;
    assert!(!names.contains(&"one_echo".to_owned()) && names.contains(&"one_add".to_owned()));
    // Fixed again: reloads.
    std::fs::remove_file(h.dir.join("broken.yaml")).unwrap();
    std::fs::remove_file(h.dir.join("extra.yaml")).unwrap();
    assert!(
        eventually(async || h
            .tool_names("/mcp", "alice", &sid)
            .await
            .contains(&"one_echo".to_owned()))
        .await
    );
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let (h, _one, _two) = two_upstreams().await;
    let ready = h
        .http
        .get(format!("{}/readyz", h.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    let sid = h.open("/mcp", "alice").await;
    h.tool_names("/mcp", "alice", &sid).await;
    let text = h
        .http
        .get(format!("{}/metrics", h.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains("reflow_mcp_requests_total{method=\"tools/list\""),
        "{text}"
    );
    assert!(text.contains("reflow_upstream_seconds"), "{text}");
    assert!(text.contains("reflow_sessions 1"), "{text}");
}

#[tokio::test]
async fn an_expired_session_ends_its_upstream_sessions() {
    let up = Upstream {
        tools: vec!["echo"],
        page: 10,
        ..Default::default()
    };
    let url = start_upstream(up.clone()).await;
    let dir = temp_dir();
    write_single_target(&dir, "one", &target_yaml("one", &url, 5000));
    let store = MemorySessionStore::new(Duration::from_millis(300));
    let h = start_gateway_with(dir, GatewayConfig::default(), store.clone()).await;
    let sid = h.open("/mcp", "alice").await;
    let r = h
        .rpc(
            "/mcp",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "one_echo"}),
        )
        .await;
    assert!(r.body["result"].is_object(), "{:?}", r.body);
    let upstream_sid = up.sessions.lock().unwrap()[0].clone();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(store.sweep(), 1);
    let mut deleted = None;
    for _ in 0..50 {
        deleted = up
            .headers_seen()
            .into_iter()
            .find(|(m, _)| m == "DELETE")
            .map(|(_, h)| h);
        if deleted.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let headers = deleted.expect("the upstream session was not ended");
    assert_eq!(headers.get("mcp-session-id"), Some(&upstream_sid));
    // With the caller's injected credential, as every other upstream request.
    assert_eq!(
        headers.get("x-api-key").map(String::as_str),
        Some("alice-upstream-secret")
    );
    assert!(up.sessions.lock().unwrap().is_empty());
}

/// An upstream that answers with a redirect is not followed: the caller's injected credential
/// never reaches where the redirect points, and the call fails with the upstream's status.
#[tokio::test]
async fn an_upstream_redirect_is_not_followed_with_the_callers_credentials() {
    use std::sync::{Arc, Mutex};

    use axum::Router;
    use axum::http::{HeaderMap, StatusCode, header};
    use axum::response::IntoResponse;

    let seen: Arc<Mutex<Vec<HeaderMap>>> = Arc::default();
    let trap_seen = seen.clone();
    let trap = Router::new().fallback(move |headers: HeaderMap| {
        let seen = trap_seen.clone();
        async move {
            seen.lock().unwrap().push(headers);
            StatusCode::OK
        }
    });
    let trap_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let trap_url = format!("http://{}/mcp", trap_listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(trap_listener, trap).await });
    let to = trap_url.clone();
    let redirector = Router::new().fallback(move || {
        let to = to.clone();
        async move { (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, to)]).into_response() }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/mcp", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, redirector).await });

    let dir = temp_dir();
    write_single_target(&dir, "up", &target_yaml("up", &url, 3000));
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let sid = h.open("/mcp/t/up", "alice").await;
    let r = h
        .rpc(
            "/mcp/t/up",
            "alice",
            Some(&sid),
            "tools/call",
            json!({"name": "echo", "arguments": {}}),
        )
        .await;
    assert_eq!(r.body["error"]["code"], -32000, "{:?}", r.body);
    assert!(
        r.body["error"]["message"]
            .as_str()
            .unwrap_or("")
            .contains("307"),
        "{:?}",
        r.body
    );
    assert!(seen.lock().unwrap().is_empty(), "the redirect was followed");
}

/// An identity provider whose keys cannot be fetched right now.
struct IdpDown;

impl reflow_dataplane::authn::Authenticate for IdpDown {
    fn authenticate<'a>(
        &'a self,
        _: &'a axum::http::HeaderMap,
    ) -> futures::future::BoxFuture<
        'a,
        Result<reflow_dataplane::authn::Principal, reflow_dataplane::authn::AuthFailure>,
    > {
        let down = reflow_dataplane::auth::AuthError::JwksUnavailable;
        Box::pin(async move { Err(down.into()) })
    }
}

#[tokio::test]
async fn keys_that_cannot_be_fetched_answer_503_not_401_on_every_endpoint() {
    let dir = temp_dir();
    let sessions = MemorySessionStore::new(Duration::from_secs(60));
    let h = start_gateway_auth(
        dir,
        GatewayConfig::default(),
        sessions,
        std::sync::Arc::new(IdpDown),
    )
    .await;
    let init = json!({"protocolVersion": "2025-06-18"});
    for path in ["/mcp", "/mcp/t/a"] {
        let r = h.rpc(path, "alice", None, "initialize", init.clone()).await;
        assert_eq!(r.status, 503, "{path}: retry later, not re-authenticate");
        assert!(
            r.headers.contains_key("www-authenticate"),
            "{path}: the challenge still names the metadata"
        );
    }
    let sse = h
        .http
        .get(format!("{}/sse", h.base))
        .bearer_auth("alice")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.status(), 503, "legacy SSE answers alike");
    // Every other handler runs the same admission: the GET stream, DELETE, legacy POST and
    // the stateless envelope (a POST /mcp with the revision in `_meta`).
    let get = h
        .http
        .get(format!("{}/mcp", h.base))
        .bearer_auth("alice")
        .header("accept", "text/event-stream")
        .header("mcp-session-id", "s")
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 503, "GET /mcp");
    let delete = h
        .http
        .delete(format!("{}/mcp", h.base))
        .bearer_auth("alice")
        .header("mcp-session-id", "s")
        .send()
        .await
        .unwrap();
    assert_eq!(delete.status(), 503, "DELETE /mcp");
    let post = h
        .http
        .post(format!("{}/messages?sessionId=s", h.base))
        .bearer_auth("alice")
        .json(&json!({"jsonrpc": "2.0", "id": 1, "method": "ping"}))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 503, "POST /messages");
}

/// A plain JSON result passes through as the upstream wrote it (member order, number text),
/// under the client's id, on both endpoints: no tree is built for it (issue #24).
#[tokio::test]
async fn a_plain_json_result_reaches_the_client_as_the_upstream_wrote_it() {
    let up = Upstream {
        tools: vec!["verbatim"],
        page: 10,
        ..Default::default()
    };
    let url = start_upstream(up).await;
    let dir = temp_dir();
    std::fs::write(dir.join("t.yaml"), target_yaml("v", &url, 5000)).unwrap();
    std::fs::write(
        dir.join("p.yaml"),
        policy_yaml("all-v", "v", "Allow", &["*"], 0),
    )
    .unwrap();
    let h = start_gateway(dir, GatewayConfig::default()).await;
    let written = r#""result":{"z":[1.50,2],"content":[{"type":"text","text":"verbatim"}],"a":{}}"#;
    for (path, name) in [("/mcp/t/v", "verbatim"), ("/mcp", "v_verbatim")] {
        let sid = h.open(path, "alice").await;
        let r = h
            .rpc(
                path,
                "alice",
                Some(&sid),
                "tools/call",
                json!({"name": name}),
            )
            .await;
        assert_eq!(r.status, 200, "{path}: {}", r.text);
        assert_eq!(r.body["id"], 42, "{path}: the client's id");
        assert_eq!(r.body["jsonrpc"], "2.0");
        assert!(r.text.contains(written), "{path}: {}", r.text);
    }
}
