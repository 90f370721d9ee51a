//! Legacy HTTP+SSE clients (protocol 2024-11-05) against a fake upstream on loopback: the
//! endpoint event, answers on the stream, policy on calls, refusals (401, 404, 400), keep-alive
//! comments, and the session ending with its stream.

mod support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use reflow_dataplane::auth::{AuthConfig, Authenticator, IssuerConfig, TokenRequest, mint_token};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use secrecy::SecretString;
use serde_json::{Value, json};
use support::*;

/// One legacy stream, read event by event.
struct Stream {
    body: futures::stream::BoxStream<'static, reqwest::Result<axum::body::Bytes>>,
    buf: String,
    /// Keep-alive comments seen so far.
    comments: usize,
}

impl Stream {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
            comments: 0,
        }
    }

    /// The next event as (event name, data), or None when the stream ends.
    async fn next(&mut self) -> Option<(String, String)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if block.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let field = |name: &str| {
                    block
                        .lines()
                        .find_map(|l| l.strip_prefix(name))
                        .map(|v| v.trim().to_owned())
                        .unwrap_or_default()
                };
                return Some((field("event:"), field("data:")));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event in time")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }

    /// The next `message` event with this JSON-RPC id; notifications before it are returned too.
    async fn answer(&mut self, id: u64) -> (Value, Vec<Value>) {
        let mut before = Vec::new();
        loop {
            let (event, data) = self.next().await.expect("stream still open");
            assert_eq!(event, "message", "{data}");
            let msg: Value = serde_json::from_str(&data).expect("JSON data");
            if msg["id"] == json!(id) {
                return (msg, before);
            }
            before.push(msg);
        }
    }
}

async fn open_sse(h: &Harness, path: &str, token: Option<&str>) -> reqwest::Response {
    let mut req = h
        .http
        .get(format!("{}{path}", h.base))
        .header("accept", "text/event-stream");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    req.send().await.unwrap()
}

/// GET the stream and read its endpoint event.
async fn connect(h: &Harness, path: &str, user: &str) -> (Stream, String) {
    let resp = open_sse(h, path, Some(user)).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut s = Stream::new(resp);
    let (event, endpoint) = s.next().await.expect("endpoint event");
    assert_eq!(event, "endpoint");
    (s, endpoint)
}

async fn post_raw(h: &Harness, endpoint: &str, token: Option<&str>, body: String) -> (u16, String) {
    let mut req = h
        .http
        .post(format!("{}{endpoint}", h.base))
        .header("content-type", "application/json")
        .body(body);
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.text().await.unwrap())
}

async fn send(h: &Harness, endpoint: &str, user: &str, msg: Value) -> u16 {
    post_raw(h, endpoint, Some(user), msg.to_string()).await.0
}

fn request(id: u64, method: &str, params: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": method, "params": params})
}

/// Target `t/up` with tools `echo` and `secret`; `secret` denied by a higher-priority Policy.
async fn setup(config: GatewayConfig) -> (Harness, Upstream) {
    let up = Upstream {
        tools: vec!["echo", "secret"],
        page: 10,
        ..Upstream::default()
    };
    let url = start_upstream(up.clone()).await;
    let dir = temp_dir();
    write_single_target(&dir, "up", &target_yaml("up", &url, 5000));
    std::fs::write(
        dir.join("deny.yaml"),
        policy_yaml("no-secret", "up", "Deny", &["secret"], 10),
    )
    .unwrap();
    let h = start_gateway(dir, config).await;
    // The first snapshot is loaded when the target's tool shows up.
    for _ in 0..50 {
        if h.gw.snapshots.is_ready() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (h, up)
}

async fn initialize(h: &Harness, s: &mut Stream, endpoint: &str, version: &str) -> Value {
    let init = request(
        1,
        "initialize",
        json!({"protocolVersion": version, "capabilities": {}, "clientInfo": {"name": "old", "version": "1"}}),
    );
    assert_eq!(send(h, endpoint, "alice", init).await, 202);
    let (reply, _) = s.answer(1).await;
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    assert_eq!(send(h, endpoint, "alice", note).await, 202);
    reply
}

#[tokio::test]
async fn an_old_client_lists_and_calls_through_its_stream_and_denied_tools_read_as_unknown() {
    let (h, _up) = setup(GatewayConfig::default()).await;
    let (mut s, endpoint) = connect(&h, "/sse", "alice").await;
    let sid = endpoint
        .strip_prefix("/messages?sessionId=")
        .expect("relative endpoint with the session id");
    assert_eq!(sid.len(), 32, "{endpoint}");

    let init = initialize(&h, &mut s, &endpoint, "2024-11-05").await;
    assert_eq!(init["result"]["protocolVersion"], "2024-11-05");
    assert_eq!(init["result"]["serverInfo"]["name"], "reflow");

    assert_eq!(
        send(&h, &endpoint, "alice", request(2, "tools/list", json!({}))).await,
        202
    );
    let (list, _) = s.answer(2).await;
    let names: Vec<&str> = list["result"]["tools"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"))
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["up_echo"]);

    let call = request(
        3,
        "tools/call",
        json!({"name": "up_echo", "arguments": {"x": 1}}),
    );
    assert_eq!(send(&h, &endpoint, "alice", call).await, 202);
    let (reply, before) = s.answer(3).await;
    assert_eq!(reply["result"]["content"][0]["text"], "echo", "{reply}");
    assert_eq!(reply["result"]["args"], json!({"x": 1}));
    // What the upstream said during the call came first, on the same stream, marked with its target.
    assert!(
        before.iter().any(|m| m["method"] == "notifications/message"
            && m["params"]["_meta"]["io.reflow/target"] == "t/up"),
        "{before:?}"
    );

    let denied = request(
        4,
        "tools/call",
        json!({"name": "up_secret", "arguments": {}}),
    );
    assert_eq!(send(&h, &endpoint, "alice", denied).await, 202);
    let unknown = request(
        5,
        "tools/call",
        json!({"name": "up_nothing", "arguments": {}}),
    );
    assert_eq!(send(&h, &endpoint, "alice", unknown).await, 202);
    let (denied, _) = s.answer(4).await;
    let (unknown, _) = s.answer(5).await;
    assert_eq!(denied["error"]["message"], "Unknown tool: up_secret");
    assert_eq!(unknown["error"]["message"], "Unknown tool: up_nothing");
    assert_eq!(denied["error"]["code"], unknown["error"]["code"]);
}

#[tokio::test]
async fn the_target_stream_posts_under_its_own_path_and_negotiates_newer_versions() {
    let (h, _up) = setup(GatewayConfig::default()).await;
    let (mut s, endpoint) = connect(&h, "/sse/t/up", "alice").await;
    let sid = endpoint
        .strip_prefix("/messages/t/up?sessionId=")
        .unwrap_or_else(|| panic!("{endpoint}"))
        .to_owned();
    let init = initialize(&h, &mut s, &endpoint, "2025-06-18").await;
    assert_eq!(init["result"]["protocolVersion"], "2025-06-18");
    // A version the gateway does not know gets its latest.
    let (mut s2, endpoint2) = connect(&h, "/sse", "alice").await;
    let init2 = initialize(&h, &mut s2, &endpoint2, "1999-01-01").await;
    assert_eq!(init2["result"]["protocolVersion"], "2025-11-25");

    assert_eq!(
        send(&h, &endpoint, "alice", request(2, "tools/list", json!({}))).await,
        202
    );
    let (list, _) = s.answer(2).await;
    assert_eq!(list["result"]["tools"][0]["name"], "echo", "{list}");
    // The session belongs to its scope: the aggregated endpoint does not know it.
    let other_scope = format!("/messages?sessionId={sid}");
    let ping = request(3, "ping", json!({}));
    assert_eq!(send(&h, &other_scope, "alice", ping).await, 404);
}

#[tokio::test]
async fn unknown_foreign_and_missing_sessions_and_malformed_bodies_are_refused() {
    let (h, _up) = setup(GatewayConfig::default()).await;
    let (mut s, endpoint) = connect(&h, "/sse", "alice").await;
    initialize(&h, &mut s, &endpoint, "2024-11-05").await;
    let ping = request(7, "ping", json!({})).to_string();

    // Another user's session is indistinguishable from an unknown one.
    let (status, body) = post_raw(&h, &endpoint, Some("bob"), ping.clone()).await;
    assert_eq!(status, 404, "{body}");
    let (status, _) = post_raw(
        &h,
        "/messages?sessionId=00000000000000000000000000000000",
        Some("alice"),
        ping.clone(),
    )
    .await;
    assert_eq!(status, 404);
    let (status, _) = post_raw(&h, "/messages", Some("alice"), ping.clone()).await;
    assert_eq!(status, 400);

    let (status, body) = post_raw(&h, &endpoint, Some("alice"), "{not json".into()).await;
    assert_eq!(status, 400);
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], -32700, "{body}");

    let (status, body) = post_raw(&h, &endpoint, Some("alice"), format!("[{ping}]")).await;
    assert_eq!(status, 400, "{body}");
    let err: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(err["error"]["code"], -32600, "batches are refused: {body}");

    // An answer to a server-to-client request the gateway never sent.
    let stray = json!({"jsonrpc": "2.0", "id": "never-minted", "result": {}});
    let (status, body) = post_raw(&h, &endpoint, Some("alice"), stray.to_string()).await;
    assert_eq!(status, 400, "{body}");

    // Nothing of that reached the stream: the owner's next answer is its own ping.
    assert_eq!(post_raw(&h, &endpoint, Some("alice"), ping).await.0, 202);
    let (pong, before) = s.answer(7).await;
    assert_eq!(pong["result"], json!({}));
    assert!(before.is_empty(), "{before:?}");
}

#[tokio::test]
async fn closing_the_stream_ends_the_session_and_its_upstream_links() {
    let (h, up) = setup(GatewayConfig::default()).await;
    let before = h.gw.sessions.count();
    let (mut s, endpoint) = connect(&h, "/sse", "alice").await;
    initialize(&h, &mut s, &endpoint, "2024-11-05").await;
    assert_eq!(
        send(&h, &endpoint, "alice", request(2, "tools/list", json!({}))).await,
        202
    );
    s.answer(2).await;
    assert_eq!(h.gw.sessions.count(), before + 1);
    drop(s);

    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let status = send(&h, &endpoint, "alice", request(3, "ping", json!({}))).await;
        let deleted_upstream = up.headers_seen().iter().any(|(m, _)| m == "DELETE");
        if status == 404 && h.gw.sessions.count() == before && deleted_upstream {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "session still alive: POST {status}, sessions {}, upstream DELETE {deleted_upstream}",
            h.gw.sessions.count()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_idle_stream_gets_keep_alive_comments() {
    let config = GatewayConfig {
        sse_keepalive_ms: 50,
        ..GatewayConfig::default()
    };
    let (h, _up) = setup(config).await;
    let (mut s, endpoint) = connect(&h, "/sse", "alice").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        send(&h, &endpoint, "alice", request(1, "ping", json!({}))).await,
        202
    );
    s.answer(1).await;
    assert!(s.comments >= 2, "{} keep-alive comments", s.comments);
}

const ISS: &str = "reflow-test";
const AUD: &str = "reflow";
const KEY: &str = "0123456789abcdef0123456789abcdef-legacy";

#[tokio::test]
async fn both_endpoints_need_a_valid_token() {
    let mut issuer = IssuerConfig::new(ISS, [AUD]);
    issuer.hs256_secret = Some(SecretString::from(KEY));
    let auth = Arc::new(Authenticator::new(AuthConfig::new(vec![issuer])).unwrap());
    let dir = temp_dir();
    let sessions = MemorySessionStore::new(Duration::from_secs(60));
    let h = start_gateway_auth(dir.clone(), GatewayConfig::default(), sessions, auth).await;
    let minted = mint_token(
        &SecretString::from(KEY),
        ISS,
        AUD,
        &TokenRequest {
            user: "alice".into(),
            ttl: Duration::from_secs(600),
            ..TokenRequest::default()
        },
    )
    .unwrap();
    let alice = minted.token.clone();
    let forged = mint_token(
        &SecretString::from("another-key-another-key-another-key!"),
        ISS,
        AUD,
        &TokenRequest {
            user: "alice".into(),
            ttl: Duration::from_secs(600),
            ..TokenRequest::default()
        },
    )
    .unwrap()
    .token;

    for token in [None, Some("garbage"), Some(forged.as_str())] {
        let resp = open_sse(&h, "/sse", token).await;
        assert_eq!(resp.status(), 401, "{token:?}");
        assert!(resp.headers().contains_key("www-authenticate"));
        assert_eq!(open_sse(&h, "/sse/t/up", token).await.status(), 401);
    }
    let (mut s, endpoint) = connect(&h, "/sse", &alice).await;
    let ping = request(1, "ping", json!({})).to_string();
    for token in [None, Some("garbage"), Some(forged.as_str())] {
        let (status, _) = post_raw(&h, &endpoint, token, ping.clone()).await;
        assert_eq!(status, 401, "{token:?}");
    }
    assert_eq!(post_raw(&h, &endpoint, Some(&alice), ping).await.0, 202);
    let (pong, _) = s.answer(1).await;
    assert_eq!(pong["result"], json!({}));

    // Revoking the token refuses the next POST on the open session, and new streams.
    std::fs::write(
        dir.join("revoke.yaml"),
        format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: TokenRevocation\nmetadata: {{name: incident}}\nspec:\n  tokenIds: [{}]\n  reason: test\n",
            minted.jti
        ),
    )
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let ping = request(2, "ping", json!({})).to_string();
    loop {
        let (status, body) = post_raw(&h, &endpoint, Some(&alice), ping.clone()).await;
        if status == 401 {
            assert_eq!(body, "the token has been revoked");
            break;
        }
        assert!(Instant::now() < deadline, "still {status} after revocation");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(open_sse(&h, "/sse", Some(&alice)).await.status(), 401);
}

#[tokio::test]
async fn a_foreign_host_is_refused_on_both_endpoints() {
    let config = GatewayConfig {
        allowed_hosts: vec!["gateway.example".into()],
        ..GatewayConfig::default()
    };
    let (h, _up) = setup(config).await;
    assert_eq!(open_sse(&h, "/sse", Some("alice")).await.status(), 403);
    let ping = request(1, "ping", json!({})).to_string();
    let (status, _) = post_raw(
        &h,
        "/messages?sessionId=00000000000000000000000000000000",
        Some("alice"),
        ping,
    )
    .await;
    assert_eq!(status, 403);
}
