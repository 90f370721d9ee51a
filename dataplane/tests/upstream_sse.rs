//! Legacy HTTP+SSE upstreams (MCP 2024-11-05) and `auto` detection through the gateway, against
//! an in-test legacy server on 127.0.0.1:0 that records every request and its headers.

mod support;

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reflow_dataplane::mcp::GatewayConfig;
use reflow_dataplane::session::MemorySessionStore;
use serde_json::{Value, json};
use support::*;
use tokio::sync::mpsc;

/// Every test is bounded: a hang fails instead of stalling the suite.
async fn bounded<F: Future<Output = ()>>(f: F) {
    tokio::time::timeout(Duration::from_secs(30), f)
        .await
        .expect("test timed out");
}

/// A legacy SSE MCP server: `GET /sse` streams, `POST /messages?sessionId=` takes requests.
#[derive(Clone, Default)]
struct Legacy {
    /// ("GET" or the JSON-RPC method, headers) in arrival order.
    seen: Arc<Mutex<Seen>>,
    streams: Arc<Mutex<HashMap<String, mpsc::UnboundedSender<String>>>>,
    /// Announced instead of the local `/messages` endpoint.
    endpoint: Option<String>,
    /// Streams that ended on the server side (client went away or the server dropped it).
    closed: Arc<AtomicUsize>,
    /// Streamable HTTP probes (`POST /sse`), answered 405.
    probes: Arc<AtomicUsize>,
}

impl Legacy {
    fn count(&self, what: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(m, _)| m == what)
            .count()
    }
}

fn record(up: &Legacy, what: &str, headers: &HeaderMap) {
    let h = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    up.seen.lock().unwrap().push((what.to_owned(), h));
}

struct CountOnDrop(Arc<AtomicUsize>);

impl Drop for CountOnDrop {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

async fn sse_get(State(up): State<Legacy>, headers: HeaderMap) -> Response {
    record(&up, "GET", &headers);
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (tx, rx) = mpsc::unbounded_channel::<String>();
    let endpoint = up
        .endpoint
        .clone()
        .unwrap_or_else(|| format!("/messages?sessionId={id}"));
    tx.send(format!("event: endpoint\ndata: {endpoint}\n\n"))
        .unwrap();
    up.streams.lock().unwrap().insert(id, tx);
    // Keep-alive comments make a vanished client noticeable (and exercise comment parsing).
    let ticker = tokio::time::interval(Duration::from_millis(100));
    let guard = CountOnDrop(up.closed.clone());
    let body = futures::stream::unfold((rx, ticker, guard), |(mut rx, mut t, g)| async move {
        tokio::select! {
            m = rx.recv() => m.map(|m| (Ok::<_, Infallible>(Bytes::from(m)), (rx, t, g))),
            _ = t.tick() => Some((Ok(Bytes::from_static(b": keepalive\n\n")), (rx, t, g))),
        }
    });
    (
        [("content-type", "text/event-stream")],
        Body::from_stream(body),
    )
        .into_response()
}

async fn sse_probe(State(up): State<Legacy>) -> Response {
    up.probes.fetch_add(1, Ordering::SeqCst);
    StatusCode::METHOD_NOT_ALLOWED.into_response()
}

async fn messages(
    State(up): State<Legacy>,
    Query(q): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Ok(msg) = serde_json::from_slice::<Value>(&body) else {
        return StatusCode::BAD_REQUEST.into_response();
    };
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    record(&up, &method, &headers);
    let sid = q.get("sessionId").cloned().unwrap_or_default();
    let Some(tx) = up.streams.lock().unwrap().get(&sid).cloned() else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let Some(id) = msg.get("id").cloned() else {
        return StatusCode::ACCEPTED.into_response();
    };
    let result = match method.as_str() {
        "initialize" => json!({"protocolVersion": "2024-11-05", "capabilities": {"tools": {}},
            "serverInfo": {"name": "legacy", "version": "0"}}),
        "tools/list" => json!({"tools": [
            {"name": "echo", "inputSchema": {"type": "object"}},
            {"name": "drop", "inputSchema": {"type": "object"}},
            {"name": "slow", "inputSchema": {"type": "object"}},
        ]}),
        "tools/call" => match msg["params"]["name"].as_str() {
            Some("echo") => json!({"content": [{"type": "text",
                "text": format!("echo {}", msg["params"]["arguments"]["say"])}]}),
            Some("drop") => {
                // Accept the request, then end the stream without answering.
                up.streams.lock().unwrap().remove(&sid);
                return StatusCode::ACCEPTED.into_response();
            }
            // Accepted and never answered.
            _ => return StatusCode::ACCEPTED.into_response(),
        },
        _ => {
            let e =
                json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "nope"}});
            let _ = tx.send(format!("event: message\ndata: {e}\n\n"));
            return StatusCode::ACCEPTED.into_response();
        }
    };
    let note = json!({"jsonrpc": "2.0", "method": "notifications/message", "params": {"level": "info", "data": "x"}});
    let reply = json!({"jsonrpc": "2.0", "id": id, "result": result});
    let _ = tx.send(format!(
        "event: message\ndata: {note}\n\nevent: message\ndata: {reply}\n\n"
    ));
    StatusCode::ACCEPTED.into_response()
}

/// Starts the legacy server; returns its SSE URL.
async fn start_legacy(up: Legacy) -> String {
    let app = axum::Router::new()
        .route("/sse", axum::routing::get(sse_get).post(sse_probe))
        .route("/messages", axum::routing::post(messages))
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/sse")
}

fn target(name: &str, transport: &str, url: &str, request_ms: u32) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  transport: {transport}\n  url: {url}\n  prefix: {name}\n  timeouts: {{requestMs: {request_ms}, initMs: 3000}}\n"
    )
}

/// A legacy SSE upstream behind a gateway target `up` of `transport`, and alice's open session.
async fn legacy_for_alice(transport: &str, request_ms: u32) -> (Legacy, Harness, String) {
    let up = Legacy::default();
    let url = start_legacy(up.clone()).await;
    let h = gateway(transport, &url, request_ms).await;
    let sid = h.open("/mcp", "alice").await;
    (up, h, sid)
}

/// A gateway with one target `up` (all tools allowed, alice's `x-api-key` credential).
async fn gateway(transport: &str, url: &str, request_ms: u32) -> Harness {
    let dir = temp_dir();
    write_single_target(&dir, "up", &target("up", transport, url, request_ms));
    start_gateway(dir, GatewayConfig::default()).await
}

async fn call(h: &Harness, sid: &str, tool: &str) -> Value {
    h.rpc(
        "/mcp",
        "alice",
        Some(sid),
        "tools/call",
        json!({"name": tool, "arguments": {"say": "hi"}}),
    )
    .await
    .body
}

async fn eventually(f: impl Fn() -> bool) -> bool {
    for _ in 0..50 {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

#[tokio::test]
async fn sse_target_lists_and_calls_tools_over_one_stream() {
    bounded(async {
        let (up, h, sid) = legacy_for_alice("sse", 5000).await;
        assert_eq!(
            h.tool_names("/mcp", "alice", &sid).await,
            ["up_drop", "up_echo", "up_slow"]
        );
        let r = call(&h, &sid, "up_echo").await;
        assert_eq!(r["id"], 42, "{r:?}");
        assert_eq!(r["result"]["content"][0]["text"], "echo \"hi\"", "{r:?}");
        // One stream, one upstream session, every request POSTed to the announced endpoint.
        assert_eq!(up.count("GET"), 1);
        assert_eq!(up.count("initialize"), 1);
        assert_eq!(up.count("notifications/initialized"), 1);
        assert_eq!(up.count("tools/list"), 1);
        assert_eq!(up.count("tools/call"), 1);
        assert_eq!(up.probes.load(Ordering::SeqCst), 0);
    })
    .await;
}

#[tokio::test]
async fn sse_credentials_go_on_stream_and_posts_and_client_token_never_does() {
    bounded(async {
        let (up, h, sid) = legacy_for_alice("sse", 5000).await;
        let r = call(&h, &sid, "up_echo").await;
        assert!(r["result"].is_object(), "{r:?}");
        let seen = up.seen.lock().unwrap().clone();
        assert!(seen.len() >= 4, "{seen:?}");
        assert_eq!(seen[0].0, "GET");
        for (what, headers) in &seen {
            assert_eq!(
                headers.get("x-api-key").map(String::as_str),
                Some("alice-upstream-secret"),
                "{what} lacks the injected credential"
            );
            let auth = headers.get("authorization").cloned().unwrap_or_default();
            assert!(!auth.contains("alice"), "client token forwarded on {what}");
        }
    })
    .await;
}

#[tokio::test]
async fn dropped_stream_fails_the_call_clearly_and_the_next_call_reconnects() {
    bounded(async {
        let (up, h, sid) = legacy_for_alice("sse", 5000).await;
        assert!(call(&h, &sid, "up_echo").await["result"].is_object());
        let started = Instant::now();
        let r = call(&h, &sid, "up_drop").await;
        assert_eq!(r["error"]["code"], -32000, "{r:?}");
        assert_eq!(r["error"]["data"]["reason"], "sse_stream_closed", "{r:?}");
        let msg = r["error"]["message"].as_str().unwrap_or("");
        assert!(msg.contains("stream closed"), "{msg}");
        // Failed as soon as the stream ended, not at the 5 s request timeout.
        assert!(started.elapsed() < Duration::from_secs(2));
        let r = call(&h, &sid, "up_echo").await;
        assert_eq!(r["result"]["content"][0]["text"], "echo \"hi\"", "{r:?}");
        assert_eq!(up.count("GET"), 2);
        assert_eq!(up.count("initialize"), 2);
    })
    .await;
}

#[tokio::test]
async fn unanswered_request_times_out_per_target_and_the_stream_stays_usable() {
    bounded(async {
        let (up, h, sid) = legacy_for_alice("sse", 300).await;
        let started = Instant::now();
        let r = call(&h, &sid, "up_slow").await;
        assert_eq!(r["error"]["data"]["reason"], "timeout", "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        let r = call(&h, &sid, "up_echo").await;
        assert!(r["result"].is_object(), "{r:?}");
        assert_eq!(up.count("GET"), 1);
    })
    .await;
}

#[tokio::test]
async fn endpoint_on_another_origin_is_refused() {
    bounded(async {
        let up = Legacy {
            endpoint: Some("http://127.0.0.1:9/messages?sessionId=x".into()),
            ..Default::default()
        };
        let url = start_legacy(up.clone()).await;
        let h = gateway("sse", &url, 5000).await;
        let sid = h.open("/mcp", "alice").await;
        let r = call(&h, &sid, "up_echo").await;
        assert_eq!(r["error"]["code"], -32000, "{r:?}");
        assert_eq!(
            r["error"]["data"]["reason"], "sse_foreign_endpoint",
            "{r:?}"
        );
        assert!(
            r["error"]["message"]
                .as_str()
                .unwrap_or("")
                .contains("another origin"),
            "{r:?}"
        );
        // Only the stream was opened; nothing was POSTed anywhere we could see.
        assert_eq!(up.count("GET"), 1);
        assert_eq!(up.seen.lock().unwrap().len(), 1);
    })
    .await;
}

#[tokio::test]
async fn auto_falls_back_to_sse_and_remembers_it_for_later_sessions() {
    bounded(async {
        let (up, h, first) = legacy_for_alice("auto", 5000).await;
        let r = call(&h, &first, "up_echo").await;
        assert_eq!(r["result"]["content"][0]["text"], "echo \"hi\"", "{r:?}");
        // Two POSTs: `initialize`, and (it failed) `server/discover`, in case the upstream only
        // speaks the stateless revision.
        assert_eq!(up.probes.load(Ordering::SeqCst), 2);
        let second = h.open("/mcp", "alice").await;
        let r = call(&h, &second, "up_echo").await;
        assert!(r["result"].is_object(), "{r:?}");
        // The second session went straight to SSE: no new Streamable HTTP probe.
        assert_eq!(up.probes.load(Ordering::SeqCst), 2);
        assert_eq!(up.count("GET"), 2);
    })
    .await;
}

#[tokio::test]
async fn auto_uses_streamable_http_when_the_upstream_speaks_it() {
    bounded(async {
        let up = Upstream {
            tools: vec!["echo"],
            page: 10,
            ..Default::default()
        };
        let url = start_upstream(up.clone()).await;
        let h = gateway("auto", &url, 5000).await;
        let sid = h.open("/mcp", "alice").await;
        let r = call(&h, &sid, "up_echo").await;
        assert_eq!(r["result"]["content"][0]["text"], "echo", "{r:?}");
        let seen = up.headers_seen();
        let methods: Vec<&str> = seen.iter().map(|(m, _)| m.as_str()).collect();
        assert_eq!(
            methods,
            ["initialize", "notifications/initialized", "tools/call"]
        );
        // Streamable HTTP session header on the call: not the legacy transport.
        assert!(seen[2].1.contains_key("mcp-session-id"));
    })
    .await;
}

#[tokio::test]
async fn ending_the_gateway_session_closes_the_upstream_stream() {
    bounded(async {
        let (up, h, sid) = legacy_for_alice("sse", 5000).await;
        assert!(call(&h, &sid, "up_echo").await["result"].is_object());
        assert_eq!(up.closed.load(Ordering::SeqCst), 0);
        assert_eq!(h.delete_session("/mcp", "alice", &sid).await, 200);
        let closed = up.closed.clone();
        assert!(eventually(|| closed.load(Ordering::SeqCst) == 1).await);
    })
    .await;
}

#[tokio::test]
async fn an_expired_gateway_session_closes_the_upstream_stream() {
    bounded(async {
        let up = Legacy::default();
        let url = start_legacy(up.clone()).await;
        let dir = temp_dir();
        write_single_target(&dir, "up", &target("up", "sse", &url, 5000));
        let store = MemorySessionStore::new(Duration::from_millis(300));
        let h = start_gateway_with(dir, GatewayConfig::default(), store.clone()).await;
        let sid = h.open("/mcp", "alice").await;
        assert!(call(&h, &sid, "up_echo").await["result"].is_object());
        assert_eq!(up.closed.load(Ordering::SeqCst), 0);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(store.sweep(), 1);
        let closed = up.closed.clone();
        assert!(eventually(|| closed.load(Ordering::SeqCst) == 1).await);
    })
    .await;
}
