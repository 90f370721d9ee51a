//! Streams through the gateway against a scripted upstream on loopback: server-to-client requests
//! relayed under gateway ids (and refused when the client lacks the capability or answers an id
//! it was never given), progress tokens mapped back, `Last-Event-ID` replay, cancellation, and
//! the GET stream for a client that accepts only JSON and for what the upstream says outside
//! any request.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use reflow_dataplane::mcp::GatewayConfig;
use serde_json::{Value, json};
use support::*;
use tokio::sync::oneshot;

/// An upstream whose tools stream: `ask` sends `sampling/createMessage` and returns what it got
/// back, `progress` sends three progress notifications 150 ms apart, `hang` waits to be cancelled.
#[derive(Clone, Default)]
struct Scripted {
    /// Answers the upstream waits for, by its own request id.
    waiting: Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>,
    /// Every notification the upstream received.
    notes: Arc<Mutex<Vec<Value>>>,
    /// Ids of the requests it received, by tool name.
    call_ids: Arc<Mutex<HashMap<String, Value>>>,
}

fn sse_event(v: &Value) -> Result<Bytes, std::convert::Infallible> {
    Ok(Bytes::from(format!("event: message\ndata: {v}\n\n")))
}

fn sse(
    body: impl futures::Stream<Item = Result<Bytes, std::convert::Infallible>> + Send + 'static,
) -> Response {
    (
        [("content-type", "text/event-stream")],
        axum::body::Body::from_stream(body),
    )
        .into_response()
}

async fn scripted(State(up): State<Scripted>, _headers: HeaderMap, body: Bytes) -> Response {
    let msg: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let method = msg["method"].as_str().unwrap_or("").to_owned();
    let id = msg["id"].clone();
    if method.is_empty() {
        // A response to one of our requests.
        let key = id.to_string();
        if let Some(tx) = up.waiting.lock().unwrap().remove(&key) {
            let _ = tx.send(msg);
        }
        return StatusCode::ACCEPTED.into_response();
    }
    if id.is_null() {
        up.notes.lock().unwrap().push(msg);
        return StatusCode::ACCEPTED.into_response();
    }
    let reply = {
        let id = id.clone();
        move |result: Value| json!({"jsonrpc": "2.0", "id": id, "result": result})
    };
    match method.as_str() {
        "initialize" => {
            let body = reply(json!({
                "protocolVersion": msg["params"]["protocolVersion"],
                "capabilities": {"tools": {}},
                "serverInfo": {"name": "scripted", "version": "0"},
                "declared": msg["params"]["capabilities"],
            }));
            ([("mcp-session-id", "up-session")], axum::Json(body)).into_response()
        }
        "tools/call" => {
            let name = msg["params"]["name"].as_str().unwrap_or("").to_owned();
            up.call_ids.lock().unwrap().insert(name.clone(), id.clone());
            match name.as_str() {
                "ask" => {
                    let (tx, rx) = oneshot::channel();
                    up.waiting.lock().unwrap().insert("\"up-7\"".into(), tx);
                    let ask = json!({"jsonrpc": "2.0", "id": "up-7", "method": "sampling/createMessage",
                        "params": {"messages": [], "maxTokens": 5}});
                    let first = futures::stream::iter([sse_event(&ask)]);
                    let rest = futures::stream::once(async move {
                        let answer = tokio::time::timeout(Duration::from_secs(10), rx)
                            .await
                            .ok()
                            .and_then(Result::ok)
                            .unwrap_or(json!("no answer"));
                        sse_event(&reply(json!({"answer": answer})))
                    });
                    sse(first.chain(rest))
                }
                "progress" => {
                    let token = msg["params"]["_meta"]["progressToken"].clone();
                    let events = futures::stream::unfold(0u32, move |i| {
                        let token = token.clone();
                        let done = reply(json!({"token_seen": token}));
                        async move {
                            if i > 3 {
                                return None;
                            }
                            if i > 0 {
                                tokio::time::sleep(Duration::from_millis(150)).await;
                            }
                            let v = if i < 3 {
                                json!({"jsonrpc": "2.0", "method": "notifications/progress",
                                    "params": {"progressToken": token, "progress": i + 1, "total": 3}})
                            } else {
                                done
                            };
                            Some((sse_event(&v), i + 1))
                        }
                    });
                    sse(events)
                }
                "hang" => {
                    // Answers only after 3 s (a late reply the gateway must drop).
                    let late = futures::stream::once(async move {
                        tokio::time::sleep(Duration::from_secs(3)).await;
                        sse_event(&reply(json!({"late": true})))
                    });
                    sse(late)
                }
                _ => axum::Json(reply(json!({"content": []}))).into_response(),
            }
        }
        _ => axum::Json(
            json!({"jsonrpc": "2.0", "id": id, "error": {"code": -32601, "message": "nope"}}),
        )
        .into_response(),
    }
}

/// The upstream session's GET stream: one `list_changed` shortly after it opens, then quiet.
async fn scripted_get(headers: HeaderMap) -> Response {
    if headers.get("mcp-session-id").is_none() {
        return StatusCode::BAD_REQUEST.into_response();
    }
    let note = json!({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"});
    let first = futures::stream::once(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        sse_event(&note)
    });
    sse(first.chain(futures::stream::pending()))
}

async fn start_scripted(up: Scripted) -> String {
    let app = axum::Router::new()
        .route("/mcp", axum::routing::post(scripted).get(scripted_get))
        .with_state(up);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}/mcp")
}

const PATH: &str = "/mcp/t/up";

async fn setup() -> (Harness, Scripted) {
    let up = Scripted::default();
    let url = start_scripted(up.clone()).await;
    let dir = temp_dir();
    write_single_target(&dir, "up", &target_yaml("up", &url, 8000));
    let h = start_gateway(dir, GatewayConfig::default()).await;
    (h, up)
}

/// initialize with `capabilities`, then `notifications/initialized`; the session id.
async fn open_with(h: &Harness, capabilities: Value) -> String {
    let r = h
        .rpc(PATH, "alice", None, "initialize", json!({"protocolVersion": "2025-11-25", "capabilities": capabilities, "clientInfo": {"name": "t", "version": "1"}}))
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let sid = r.session.expect("session");
    let note = json!({"jsonrpc": "2.0", "method": "notifications/initialized"});
    let n = h
        .post(PATH, "alice", Some(&sid), note.to_string().into_bytes())
        .await;
    assert_eq!(n.status, 202);
    sid
}

/// Reads SSE events (id, JSON data) off a live response, one at a time.
struct Events {
    body: futures::stream::BoxStream<'static, reqwest::Result<Bytes>>,
    buf: String,
}

impl Events {
    fn new(resp: reqwest::Response) -> Self {
        Self {
            body: resp.bytes_stream().boxed(),
            buf: String::new(),
        }
    }

    /// The next event with data (priming events are skipped), or None at the end.
    async fn next(&mut self) -> Option<(String, Value)> {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let id = block
                    .lines()
                    .find_map(|l| l.strip_prefix("id: "))
                    .unwrap_or("")
                    .to_owned();
                let data: String = block
                    .lines()
                    .filter_map(|l| l.strip_prefix("data:"))
                    .map(str::trim)
                    .collect();
                if data.is_empty() {
                    continue;
                }
                return Some((id, serde_json::from_str(&data).expect("event data is JSON")));
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.body.next())
                .await
                .expect("an event in time")?;
            self.buf.push_str(&String::from_utf8_lossy(&chunk.ok()?));
        }
    }
}

async fn post_streaming(h: &Harness, sid: &str, msg: &Value) -> reqwest::Response {
    h.http
        .post(format!("{}{PATH}", h.base))
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-session-id", sid)
        .body(msg.to_string())
        .send()
        .await
        .unwrap()
}

fn call(id: u64, tool: &str, meta: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "method": "tools/call",
        "params": {"name": tool, "arguments": {}, "_meta": meta}})
}

#[tokio::test]
async fn sampling_goes_to_the_client_under_a_gateway_id_and_its_answer_back_upstream() {
    let (h, up) = setup().await;
    let sid = open_with(&h, json!({"sampling": {}})).await;
    let resp = post_streaming(&h, &sid, &call(5, "ask", json!({}))).await;
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = Events::new(resp);
    let (_, asked) = events.next().await.expect("the relayed request");
    assert_eq!(asked["method"], "sampling/createMessage");
    let gid = asked["id"].clone();
    assert!(gid.is_string() && gid != "up-7", "{gid}");

    // An id the gateway never minted is refused; so is the right id from another session.
    let bogus = json!({"jsonrpc": "2.0", "id": "reflow-nope-1", "result": {}});
    let r = h
        .post(PATH, "alice", Some(&sid), bogus.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 400, "{:?}", r.body);
    let other = open_with(&h, json!({"sampling": {}})).await;
    let answer = json!({"jsonrpc": "2.0", "id": gid, "result": {"role": "assistant",
        "content": {"type": "text", "text": "hi"}, "model": "m"}});
    let r = h
        .post(PATH, "alice", Some(&other), answer.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 400, "another session answered: {:?}", r.body);

    let r = h
        .post(PATH, "alice", Some(&sid), answer.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 202, "{:?}", r.body);
    let (_, done) = events.next().await.expect("the call's response");
    assert_eq!(done["id"], 5);
    // The upstream got the answer under its own id.
    assert_eq!(done["result"]["answer"]["id"], "up-7");
    assert_eq!(done["result"]["answer"]["result"]["content"]["text"], "hi");
    assert!(
        events.next().await.is_none(),
        "the stream ends after the response"
    );

    // Answered once: the same id again is as unknown as a made-up one.
    let r = h
        .post(PATH, "alice", Some(&sid), answer.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 400);
    assert!(up.waiting.lock().unwrap().is_empty());
}

#[tokio::test]
async fn without_the_sampling_capability_the_upstream_gets_an_error() {
    let (h, _up) = setup().await;
    let sid = open_with(&h, json!({"elicitation": {}})).await;
    let r = h
        .post(
            PATH,
            "alice",
            Some(&sid),
            call(6, "ask", json!({})).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200);
    // Nothing was asked of the client; the upstream's request was answered with an error.
    assert!(r.events.is_empty(), "{:?}", r.events);
    let answer = &r.body["result"]["answer"];
    assert_eq!(answer["id"], "up-7", "{:?}", r.body);
    assert_eq!(answer["error"]["code"], -32601, "{:?}", r.body);
    assert!(answer["result"].is_null());
}

#[tokio::test]
async fn progress_comes_back_with_the_clients_token_and_last_event_id_replays_what_was_missed() {
    let (h, _up) = setup().await;
    let sid = open_with(&h, json!({})).await;
    let resp = post_streaming(
        &h,
        &sid,
        &call(9, "progress", json!({"progressToken": "mine"})),
    )
    .await;
    let mut events = Events::new(resp);
    let (first_id, first) = events.next().await.expect("first progress");
    assert_eq!(first["method"], "notifications/progress");
    assert_eq!(first["params"]["progressToken"], "mine");
    assert_eq!(first["params"]["progress"], 1);
    // The client goes away after one event; the call goes on.
    drop(events);
    tokio::time::sleep(Duration::from_millis(900)).await;

    let resumed = h
        .http
        .get(format!("{}{PATH}", h.base))
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-session-id", &sid)
        .header("last-event-id", &first_id)
        .send()
        .await
        .unwrap();
    assert_eq!(resumed.status(), 200);
    let mut events = Events::new(resumed);
    let mut missed = Vec::new();
    while let Some(e) = events.next().await {
        missed.push(e);
    }
    let progress: Vec<Value> = missed
        .iter()
        .filter(|(_, m)| m["method"] == "notifications/progress")
        .map(|(_, m)| m["params"]["progress"].clone())
        .collect();
    assert_eq!(
        progress,
        [json!(2), json!(3)],
        "exactly the missed events: {missed:?}"
    );
    assert_eq!(missed.len(), 3, "{missed:?}");
    let (_, done) = missed.last().expect("the response");
    assert_eq!(done["id"], 9);
    let upstream_token = &done["result"]["token_seen"];
    assert!(upstream_token.is_string() && upstream_token != "mine");
    // Ids are unique and increasing on the stream.
    assert!(missed.iter().all(|(id, _)| id != &first_id));

    // An id from no stream of this session is refused.
    let bad = h
        .http
        .get(format!("{}{PATH}", h.base))
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-session-id", &sid)
        .header("last-event-id", "999:1")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 404);
}

#[tokio::test]
async fn a_cancelled_call_reaches_the_upstream_under_its_own_id_and_its_late_reply_is_dropped() {
    let (h, up) = setup().await;
    let sid = open_with(&h, json!({})).await;
    let h = Arc::new(h);
    let caller = {
        let (h, sid) = (h.clone(), sid.clone());
        tokio::spawn(async move {
            let msg = json!({"jsonrpc": "2.0", "id": "c-1", "method": "tools/call",
                "params": {"name": "hang", "arguments": {}}});
            h.post(PATH, "alice", Some(&sid), msg.to_string().into_bytes())
                .await
        })
    };
    // Wait until the upstream has the call.
    for _ in 0..100 {
        if up.call_ids.lock().unwrap().contains_key("hang") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let upstream_id = up.call_ids.lock().unwrap()["hang"].clone();
    let cancel = json!({"jsonrpc": "2.0", "method": "notifications/cancelled",
        "params": {"requestId": "c-1", "reason": "user"}});
    let r = h
        .post(PATH, "alice", Some(&sid), cancel.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 202);
    let reply = tokio::time::timeout(Duration::from_secs(2), caller)
        .await
        .expect("the call ends well before the upstream's late reply")
        .unwrap();
    // The upstream streamed, so the client got SSE; a cancelled request gets no response.
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, Value::Null, "{:?}", reply.body);
    assert!(reply.events.is_empty(), "{:?}", reply.events);
    let mut told = None;
    for _ in 0..100 {
        told = up
            .notes
            .lock()
            .unwrap()
            .iter()
            .find(|n| n["method"] == "notifications/cancelled")
            .cloned();
        if told.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let told = told.expect("the upstream was told");
    assert_eq!(told["params"]["requestId"], upstream_id);
}

#[tokio::test]
async fn a_json_only_client_is_asked_on_its_get_stream() {
    let (h, _up) = setup().await;
    let sid = open_with(&h, json!({"sampling": {}})).await;
    let get = h
        .http
        .get(format!("{}{PATH}", h.base))
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(get.status(), 200);
    let mut stream = Events::new(get);
    let json_call = {
        let (http, url, sid) = (h.http.clone(), format!("{}{PATH}", h.base), sid.clone());
        tokio::spawn(async move {
            http.post(url)
                .header("content-type", "application/json")
                .header("accept", "application/json")
                .header("authorization", "Bearer alice")
                .header("mcp-session-id", sid)
                .body(call(11, "ask", json!({})).to_string())
                .send()
                .await
                .unwrap()
        })
    };
    let (_, asked) = stream.next().await.expect("asked on the GET stream");
    assert_eq!(asked["method"], "sampling/createMessage");
    let answer = json!({"jsonrpc": "2.0", "id": asked["id"], "result": {"role": "assistant",
        "content": {"type": "text", "text": "via get"}, "model": "m"}});
    let r = h
        .post(PATH, "alice", Some(&sid), answer.to_string().into_bytes())
        .await;
    assert_eq!(r.status, 202);
    let resp = tokio::time::timeout(Duration::from_secs(10), json_call)
        .await
        .expect("the call finishes")
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/json")
    );
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["id"], 11);
    assert_eq!(
        body["result"]["answer"]["result"]["content"]["text"],
        "via get"
    );
}

#[tokio::test]
async fn what_the_upstream_says_outside_requests_reaches_the_sessions_get_stream() {
    let (h, _up) = setup().await;
    let sid = open_with(&h, json!({})).await;
    let get = h
        .http
        .get(format!("{}{PATH}", h.base))
        .header("accept", "text/event-stream")
        .header("authorization", "Bearer alice")
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    let mut stream = Events::new(get);
    // The first call opens the upstream session, and with it the upstream's GET stream.
    let r = h
        .post(
            PATH,
            "alice",
            Some(&sid),
            call(1, "plain", json!({})).to_string().into_bytes(),
        )
        .await;
    assert_eq!(r.status, 200, "{:?}", r.body);
    let (_, note) = stream.next().await.expect("the upstream's notification");
    assert_eq!(note["method"], "notifications/tools/list_changed");
    assert_eq!(
        note["params"]["_meta"][reflow_dataplane::mcp::TARGET_META],
        "t/up"
    );
    // Ending the session ends the client's stream.
    assert_eq!(h.delete_session(PATH, "alice", &sid).await, 200);
    assert!(stream.next().await.is_none());
}
