//! Test harness: tiny in-process upstream MCP servers that record what they receive, a manifests
//! folder, and a gateway on 127.0.0.1:0 with a bearer-token-is-the-user authenticator.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use reflow_crds::{Identity, SealingKey};
use reflow_dataplane::app::{App, AppConfig};
use reflow_dataplane::audit::MemorySink;
use reflow_dataplane::authn::{AuthFailure, Authenticate, Principal};
use reflow_dataplane::mcp::{Gateway, GatewayConfig};
use reflow_dataplane::session::MemorySessionStore;
use reflow_dataplane::source::{self, ManifestsWatch, SnapshotStore};
use reflow_dataplane::upstream::instance::ControllerApi;
use serde_json::{Value, json};

/// `Authorization: Bearer <user>[:group]` → that identity.
pub struct TokenIsUser;

impl Authenticate for TokenIsUser {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthFailure>> {
        let token = headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .map(str::to_owned);
        Box::pin(async move {
            match token {
                Some(t) => {
                    let (user, group) = t.split_once(':').unwrap_or((&t, "none"));
                    Ok(Principal::from_identity(Identity::new(
                        user,
                        [group],
                        Vec::<String>::new(),
                    )))
                }
                None => Err(AuthFailure {
                    label: "missing",
                    message: "no bearer token".into(),
                    token_presented: false,
                }),
            }
        })
    }
}

/// (method, request headers) as the upstream received them.
pub type Seen = Vec<(String, HashMap<String, String>)>;

/// One fake upstream: `tools` served in pages of `page` items; records each request's headers.
#[derive(Clone, Default)]
pub struct Upstream {
    pub tools: Vec<&'static str>,
    pub page: usize,
    pub seen: Arc<Mutex<Seen>>,
    pub sessions: Arc<Mutex<Vec<String>>>,
    pub delay: Duration,
    /// How a request on an unknown session is answered (status, JSON body); 404 when `None`.
    pub forgotten: Option<(u16, &'static str)>,
}

impl Upstream {
    pub fn headers_seen(&self) -> Seen {
        self.seen.lock().unwrap().clone()
    }

    /// Forget all upstream sessions (the next request with an old id gets 404).
    pub fn forget_sessions(&self) {
        self.sessions.lock().unwrap().clear();
    }
}

async fn upstream_handler(State(up): State<Upstream>, headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap();
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    let hmap = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    up.seen.lock().unwrap().push((method.clone(), hmap));
    if method != "initialize" {
        let sid = headers
            .get("mcp-session-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !up.sessions.lock().unwrap().iter().any(|s| s == sid) {
            if let Some((status, body)) = up.forgotten {
                let status = StatusCode::from_u16(status).unwrap();
                return (status, [("content-type", "application/json")], body).into_response();
            }
            return StatusCode::NOT_FOUND.into_response();
        }
    }
    if msg.get("id").is_none() {
        return StatusCode::ACCEPTED.into_response();
    }
    let id = msg["id"].clone();
    let result = match method.as_str() {
        "initialize" => {
            let sid = uuid::Uuid::new_v4().to_string();
            up.sessions.lock().unwrap().push(sid.clone());
            let body = json!({"jsonrpc":"2.0","id":id,"result":{
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}}, "serverInfo": {"name": "fake", "version": "0"}}});
            return ([("mcp-session-id", sid)], axum::Json(body)).into_response();
        }
        "tools/list" => {
            let start: usize = msg["params"]["cursor"]
                .as_str()
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let page = up.page.max(1);
            let items: Vec<Value> = up
                .tools
                .iter()
                .skip(start)
                .take(page)
                .map(|n| json!({"name": n, "inputSchema": {"type": "object"}, "x-extra": true}))
                .collect();
            let mut r = json!({"tools": items});
            if start + page < up.tools.len() {
                r["nextCursor"] = json!((start + page).to_string());
            }
            r
        }
        "tools/call" => {
            tokio::time::sleep(up.delay).await;
            let name = msg["params"]["name"].as_str().unwrap_or("").to_owned();
            if !up.tools.contains(&name.as_str()) {
                return axum::Json(json!({"jsonrpc":"2.0","id":id,"error":{"code":-32602,"message":format!("Unknown tool: {name}")}})).into_response();
            }
            if name == "verbatim" {
                // Plain JSON, members out of order and a number as written: what a gateway
                // that rebuilt the result would sort and reformat.
                let body = format!(
                    r#"{{"jsonrpc":"2.0","id":{id},"result":{{"z":[1.50,2],"content":[{{"type":"text","text":"verbatim"}}],"a":{{}}}}}}"#
                );
                return ([("content-type", "application/json")], body).into_response();
            }
            json!({"content":[{"type":"text","text": name}], "meta_seen": msg["params"]["_meta"], "args": msg["params"]["arguments"]})
        }
        _ => {
            return axum::Json(
                json!({"jsonrpc":"2.0","id":id,"error":{"code":-32601,"message":"nope"}}),
            )
            .into_response();
        }
    };
    // Answer as SSE, with an unrelated notification first, to exercise stream parsing.
    let sse = format!(
        "event: message\ndata: {}\n\nevent: message\ndata: {}\n\n",
        json!({"jsonrpc":"2.0","method":"notifications/message","params":{"level":"info","data":"x"}}),
        json!({"jsonrpc":"2.0","id":id,"result":result})
    );
    ([("content-type", "text/event-stream")], sse).into_response()
}

/// DELETE ends an upstream session; recorded as method `DELETE`.
async fn upstream_delete(State(up): State<Upstream>, headers: HeaderMap) -> Response {
    let hmap = headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    up.seen.lock().unwrap().push(("DELETE".to_owned(), hmap));
    let sid = headers
        .get("mcp-session-id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    up.sessions.lock().unwrap().retain(|s| s != sid);
    StatusCode::OK.into_response()
}

pub async fn start_upstream(up: Upstream) -> String {
    let app = axum::Router::new()
        .route(
            "/mcp",
            axum::routing::post(upstream_handler).delete(upstream_delete),
        )
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("reflow-dp-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

pub fn target_yaml(name: &str, url: &str, request_ms: u32) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  transport: streamableHttp\n  url: {url}\n  prefix: {name}\n  timeouts: {{requestMs: {request_ms}}}\n"
    )
}

pub fn policy_yaml(
    name: &str,
    target: &str,
    effect: &str,
    names: &[&str],
    priority: i32,
) -> String {
    let names = names
        .iter()
        .map(|n| format!("\"{n}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subjects: [{{everyone: true}}]\n  rules: [{{kind: tool, names: [{names}]}}]\n  effect: {effect}\n  priority: {priority}\n"
    )
}

pub fn credential_yaml(
    name: &str,
    target: &str,
    user: &str,
    header: &str,
    secret_key: &str,
) -> String {
    format!(
        "apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: t}}\nspec:\n  targetRef: {{name: {target}}}\n  subject: {{user: {user}}}\n  headers:\n    - name: {header}\n      secretKeyRef: {{name: keys, key: {secret_key}}}\n"
    )
}

/// Writes a manifests folder with one Target (`target_doc`, named `target`), alice's `x-api-key`
/// Credential and a policy allowing everything on it.
pub fn write_single_target(dir: &std::path::Path, target: &str, target_doc: &str) {
    std::fs::write(dir.join("target.yaml"), target_doc).unwrap();
    std::fs::write(dir.join("secret.yaml"), SECRET).unwrap();
    std::fs::write(
        dir.join("cred.yaml"),
        credential_yaml("alice-key", target, "alice", "x-api-key", "alice"),
    )
    .unwrap();
    std::fs::write(
        dir.join("policy.yaml"),
        policy_yaml("all", target, "Allow", &["*"], 0),
    )
    .unwrap();
}

pub const SECRET: &str = "apiVersion: v1\nkind: Secret\nmetadata: {name: keys, namespace: t}\nstringData:\n  alice: alice-upstream-secret\n";

pub struct Harness {
    pub base: String,
    /// The built gateway, served on `base`.
    pub app: App,
    /// `app.gateway()`, for inspection.
    pub gw: Arc<Gateway>,
    pub audit: MemorySink,
    pub dir: PathBuf,
    pub _watch: ManifestsWatch,
    pub http: reqwest::Client,
}

pub async fn start_gateway(dir: PathBuf, config: GatewayConfig) -> Harness {
    let sessions = MemorySessionStore::new(Duration::from_secs(config.session_idle_seconds));
    start_gateway_with(dir, config, sessions).await
}

/// A gateway on a session store the test holds (to sweep it).
pub async fn start_gateway_with(
    dir: PathBuf,
    config: GatewayConfig,
    sessions: Arc<MemorySessionStore>,
) -> Harness {
    start_gateway_auth(dir, config, sessions, Arc::new(TokenIsUser)).await
}

/// A gateway serving `kubernetes` Targets through the controller API at `controller`.
pub async fn start_gateway_instances(
    dir: PathBuf,
    config: GatewayConfig,
    controller: ControllerApi,
) -> Harness {
    let sessions = MemorySessionStore::new(Duration::from_secs(config.session_idle_seconds));
    start_app(
        dir,
        config,
        sessions,
        Arc::new(TokenIsUser),
        Some(controller),
    )
    .await
}

/// A gateway with a real authenticator (tokens passed where other helpers take a user name).
pub async fn start_gateway_auth(
    dir: PathBuf,
    config: GatewayConfig,
    sessions: Arc<MemorySessionStore>,
    auth: Arc<dyn Authenticate>,
) -> Harness {
    start_app(dir, config, sessions, auth, None).await
}

/// Builds the gateway through `App::build` (as the binary does) on the folder `dir`.
async fn start_app(
    dir: PathBuf,
    config: GatewayConfig,
    sessions: Arc<MemorySessionStore>,
    auth: Arc<dyn Authenticate>,
    instances: Option<ControllerApi>,
) -> Harness {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let key = SealingKey::from_base64(&SealingKey::generate_base64()).unwrap();
    let snapshots = SnapshotStore::new();
    let watch = source::watch_manifests(dir.clone(), key.clone(), snapshots.clone()).unwrap();
    let audit = MemorySink::default();
    let mut parts = AppConfig::new(
        config,
        snapshots,
        sessions,
        auth,
        Arc::new(audit.clone()),
        key,
    );
    parts.instances = instances;
    let app = App::build(parts).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = app.service();
    tokio::spawn(async move { axum::serve(listener, service).await.unwrap() });
    Harness {
        base: format!("http://{addr}"),
        gw: app.gateway().clone(),
        app,
        audit,
        dir,
        _watch: watch,
        http: reqwest::Client::new(),
    }
}

pub struct Reply {
    pub status: u16,
    pub session: Option<String>,
    /// The JSON body, or for an SSE reply the response message it ended with.
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
    /// For an SSE reply, every message before the response (notifications, requests).
    pub events: Vec<Value>,
    /// The body as it came.
    pub text: String,
}

/// The JSON messages of an SSE body, in order (priming events carry none).
pub fn sse_messages(text: &str) -> Vec<Value> {
    text.split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(str::trim)
                .collect();
            serde_json::from_str(&data.join("\n")).ok()
        })
        .collect()
}

/// Reads a live SSE response as its events come: the JSON `data` of each event that has one
/// (priming events and keep-alives are skipped).
pub struct SseReader {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> Self {
        use futures::StreamExt;
        Self {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// `GET path` as `user` on session `sid` (the session's stream), asserted open.
    pub async fn open(h: &Harness, path: &str, user: &str, sid: &str) -> Self {
        let resp = h
            .http
            .get(format!("{}{path}", h.base))
            .header("accept", "text/event-stream")
            .header("authorization", format!("Bearer {user}"))
            .header("mcp-session-id", sid)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        Self::new(resp)
    }

    /// The next message within `wait`; `None` when the stream ends or nothing came in time.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Value> {
        use futures::StreamExt;
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                if let Some(v) = sse_messages(&block).into_iter().next() {
                    return Some(v);
                }
                continue;
            }
            match tokio::time::timeout_at(deadline, self.body.next()).await {
                Ok(Some(Ok(chunk))) => self.buf.push_str(&String::from_utf8_lossy(&chunk)),
                _ => return None,
            }
        }
    }

    /// The methods of every message that arrives within `wait`.
    pub async fn drain(&mut self, wait: Duration) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + wait;
        let mut out = Vec::new();
        while let Some(m) = self
            .next_within(deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
        {
            out.push(m["method"].as_str().unwrap_or("").to_owned());
        }
        out
    }
}

impl Harness {
    pub async fn post(
        &self,
        path: &str,
        user: &str,
        session: Option<&str>,
        body: Vec<u8>,
    ) -> Reply {
        let mut req = self
            .http
            .post(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .header("accept", "application/json, text/event-stream")
            .header("authorization", format!("Bearer {user}"))
            .body(body);
        if let Some(s) = session {
            req = req.header("mcp-session-id", s);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let session = headers
            .get("mcp-session-id")
            .map(|v| v.to_str().unwrap().to_owned());
        let text = resp.text().await.unwrap();
        let is_sse = headers
            .get("content-type")
            .is_some_and(|v| v.to_str().unwrap_or("").starts_with("text/event-stream"));
        let (body, events) = if is_sse {
            let mut all = sse_messages(&text);
            let last = all.pop().unwrap_or(Value::Null);
            (last, all)
        } else {
            let body = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
            (body, Vec::new())
        };
        Reply {
            status,
            session,
            body,
            headers,
            events,
            text,
        }
    }

    pub async fn rpc(
        &self,
        path: &str,
        user: &str,
        session: Option<&str>,
        method: &str,
        params: Value,
    ) -> Reply {
        let msg = json!({"jsonrpc": "2.0", "id": 42, "method": method, "params": params});
        self.post(path, user, session, serde_json::to_vec(&msg).unwrap())
            .await
    }

    /// DELETE of a session; returns the HTTP status.
    pub async fn delete_session(&self, path: &str, user: &str, sid: &str) -> u16 {
        self.http
            .delete(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {user}"))
            .header("mcp-session-id", sid)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// initialize + notifications/initialized; returns the session id.
    pub async fn open(&self, path: &str, user: &str) -> String {
        let r = self
            .rpc(path, user, None, "initialize", json!({"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert_eq!(r.body["result"]["protocolVersion"], "2025-06-18");
        let sid = r.session.expect("session header");
        let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
        let n = self
            .post(path, user, Some(&sid), serde_json::to_vec(&note).unwrap())
            .await;
        assert_eq!(n.status, 202);
        sid
    }

    pub async fn tool_names(&self, path: &str, user: &str, sid: &str) -> Vec<String> {
        let r = self
            .rpc(path, user, Some(sid), "tools/list", json!({}))
            .await;
        assert_eq!(r.status, 200, "{:?}", r.body);
        let mut names: Vec<String> = r.body["result"]["tools"]
            .as_array()
            .unwrap_or_else(|| panic!("no tools: {:?}", r.body))
            .iter()
            .map(|t| t["name"].as_str().unwrap().to_owned())
            .collect();
        names.sort();
        names
    }
}
