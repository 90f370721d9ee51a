//! The bridge sidecar: one STDIO MCP server exposed as Streamable HTTP on `POST /mcp`, behind a
//! bearer token compared in constant time. Runs beside STDIO servers in MCPInstance pods.
//!
//! The child is started on first use and initialized once (with the first client's
//! `initialize` params); every later `initialize` is answered from that result. Client ids are
//! remapped by the child process code, so clients never collide. The child gets the bridge's
//! environment minus every `REFLOW_*` variable (the token among them).
//!
//! A request from a client that accepts `text/event-stream` is answered as a stream as soon as
//! the child says something about it before its reply: its notifications (progress, logs) and
//! its requests (`sampling/createMessage`, `elicitation/create`, `roots/list`) become events,
//! each request under a bridge-minted id the client answers with a POSTed response. A client
//! that accepts JSON only gets the reply alone; the child's requests are refused for it. A
//! client that closes the stream early cancels the call (the child gets `notifications/cancelled`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reflow_crds::token::BearerDigest;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use tokio::sync::Mutex as AsyncMutex;
use tokio::sync::mpsc;
use tracing::{debug, info, instrument, warn};

use crate::jsonrpc;
use crate::upstream::stdio::{ChildEnv, ChildProcess, ChildSpec, RestartBackoff, StdioError};
use crate::upstream::{CallHooks, Cancel, Inbound, Responder, Sink, Upcall};

/// What the child may say about one call before its reply, buffered; beyond it notifications
/// are dropped and requests refused (a slow client never stalls the child's reader).
const CALL_BACKLOG: usize = 256;
/// The child's requests waiting for a client's answer, across calls.
const MAX_WAITING: usize = 1024;

/// Environment variables with this prefix never reach the child.
pub const RESERVED_ENV_PREFIX: &str = "REFLOW_";

#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("the bridge token is empty")]
    EmptyToken,
    #[error("{0}")]
    Child(#[from] StdioError),
}

impl BridgeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::EmptyToken => "empty_token",
            Self::Child(e) => e.label(),
        }
    }
}

pub struct BridgeConfig {
    pub command: String,
    pub args: Vec<String>,
    pub token: SecretString,
    pub init_timeout: Duration,
    pub request_timeout: Duration,
    pub stop_grace: Duration,
    pub stderr_lines_per_second: u32,
    /// Delays restarts of a child that keeps crashing or failing to start.
    pub restarts: RestartBackoff,
}

#[derive(Default)]
struct Slot {
    running: Option<Running>,
}

struct Running {
    child: Arc<ChildProcess>,
    init: Map<String, Value>,
}

pub struct Bridge {
    config: BridgeConfig,
    token: BearerDigest,
    child: AsyncMutex<(Slot, RestartBackoff)>,
    /// The child's requests relayed to a client, by the id the client answers with.
    waiting: std::sync::Mutex<HashMap<String, Responder>>,
    /// Mints call routes and relayed request ids.
    next: AtomicU64,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Result<Arc<Self>, BridgeError> {
        let token =
            BearerDigest::of(config.token.expose_secret()).ok_or(BridgeError::EmptyToken)?;
        let restarts = config.restarts.clone();
        Ok(Arc::new(Self {
            config,
            token,
            child: AsyncMutex::new((Slot::default(), restarts)),
            waiting: std::sync::Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
        }))
    }

    /// True when `headers` carry `Authorization: Bearer <our token>`. Both sides are hashed
    /// first so the comparison takes the same time whatever the length or content presented.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let value = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        self.token.matches_header(value)
    }

    /// The child's pid, if one is running (for tests and logs).
    pub async fn child_pid(&self) -> Option<u32> {
        let guard = self.child.lock().await;
        guard
            .0
            .running
            .as_ref()
            .filter(|r| r.child.is_alive())
            .and_then(|r| r.child.pid())
    }

    /// The live, initialized child; started (and initialized with `params`) if there is none.
    async fn running(
        &self,
        params: Option<&Value>,
    ) -> Result<(Arc<ChildProcess>, Map<String, Value>), StdioError> {
        let mut guard = self.child.lock().await;
        let (slot, restarts) = &mut *guard;
        if let Some(r) = slot.running.as_ref().filter(|r| r.child.is_alive()) {
            return Ok((r.child.clone(), r.init.clone()));
        }
        if let Some(gone) = slot.running.take() {
            restarts.child_gone(&gone.child);
        }
        restarts.wait().await?;
        let mut env = ChildEnv::default();
        for (k, v) in std::env::vars_os() {
            let (Some(k), Some(v)) = (k.to_str(), v.to_str()) else {
                continue;
            };
            if !k.starts_with(RESERVED_ENV_PREFIX) {
                env.set(k, v.to_owned())?;
            }
        }
        let child = ChildProcess::spawn(ChildSpec {
            command: self.config.command.clone(),
            args: self.config.args.clone(),
            env,
            home: None,
            // The bridge runs the pod's one server: the pod (Pod Security restricted) is its
            // sandbox, and there is no other identity's child beside it to protect.
            sandbox: None,
            label: self.config.command.clone(),
            stderr_lines_per_second: self.config.stderr_lines_per_second,
            unrouted: None,
            on_exit: None,
        })
        .inspect_err(|_| restarts.failed())?;
        info!(pid = child.pid(), "STDIO server started");
        let default = crate::upstream::handshake::initialize_params(
            crate::mcp::LATEST_PROTOCOL,
            &json!({}),
            crate::upstream::handshake::BRIDGE,
        );
        let init = match child
            .initialize(params.unwrap_or(&default), self.config.init_timeout)
            .await
        {
            Ok(init) => init,
            Err(e) => {
                warn!(error = %e, "STDIO server failed to initialize; stopping it");
                restarts.failed();
                child.stop(self.config.stop_grace).await;
                return Err(e);
            }
        };
        slot.running = Some(Running {
            child: child.clone(),
            init: init.clone(),
        });
        Ok((child, init))
    }

    /// Stops the child gracefully (stdin closed, SIGTERM, SIGKILL).
    pub async fn shutdown(&self) {
        let running = self.child.lock().await.0.running.take();
        if let Some(r) = running {
            r.child.stop(self.config.stop_grace).await;
        }
    }

    async fn handle(self: &Arc<Self>, message: jsonrpc::Message, streams: bool) -> Response {
        match message {
            jsonrpc::Message::Request(req) if req.method == "initialize" => {
                let body = match self.running(req.object.get("params")).await {
                    Ok((_, init)) => jsonrpc::result(&req.id, Value::Object(init)),
                    Err(e) => reply_message(&req.id, Err(e)),
                };
                (StatusCode::OK, axum::Json(body)).into_response()
            }
            jsonrpc::Message::Request(req) => match self.running(None).await {
                Ok((child, _)) if streams => self.call_streaming(child, req).await,
                Ok((child, _)) => {
                    let reply = child
                        .request(
                            &req.method,
                            req.object.get("params"),
                            self.config.request_timeout,
                        )
                        .await;
                    (StatusCode::OK, axum::Json(reply_message(&req.id, reply))).into_response()
                }
                Err(e) => {
                    (StatusCode::OK, axum::Json(reply_message(&req.id, Err(e)))).into_response()
                }
            },
            jsonrpc::Message::Notification { method, object } => {
                // The bridge initialized the child itself, and client request ids are not the
                // child's, so neither `initialized` nor `cancelled` can be passed on as is.
                let passes =
                    method != "notifications/initialized" && method != "notifications/cancelled";
                if passes && let Ok((child, _)) = self.running(None).await {
                    let _ = child.notify(&method, object.get("params"));
                }
                StatusCode::ACCEPTED.into_response()
            }
            jsonrpc::Message::Response(answer) => {
                let responder = answer
                    .get("id")
                    .and_then(Value::as_str)
                    .and_then(|id| self.lock_waiting().remove(id));
                match responder {
                    Some(r) => {
                        if let Err(e) = r.answer(&answer).await {
                            warn!(error = %e, "the answer could not reach the STDIO server");
                        }
                    }
                    None => debug!("an answer nobody waits for; dropped"),
                }
                StatusCode::ACCEPTED.into_response()
            }
        }
    }

    fn lock_waiting(&self) -> std::sync::MutexGuard<'_, HashMap<String, Responder>> {
        // The map holds no invariant a panicking holder could break.
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A call whose client takes a stream: the reply alone as JSON when the child says nothing
    /// else first, else an event stream of what it says, ending with the reply.
    async fn call_streaming(
        self: &Arc<Self>,
        child: Arc<ChildProcess>,
        req: jsonrpc::Request,
    ) -> Response {
        let (tx, mut upcalls) = mpsc::channel(CALL_BACKLOG);
        let cancel = Cancel::default();
        let hooks = CallHooks {
            sink: Some(Sink::new(tx, Arc::from("bridge"))),
            cancel: Some(cancel.clone()),
        };
        // Its own route per call: the child's messages reach this call only while it is the
        // one in flight (or by progress token), never another client's.
        let route = format!("bridge-call-{}", self.next.fetch_add(1, Ordering::Relaxed));
        let timeout = self.config.request_timeout;
        let id = req.id.clone();
        let method = req.method.clone();
        let params = req.object.get("params").cloned();
        let mut work = Box::pin(async move {
            let reply = child
                .request_with(&method, params.as_ref(), timeout, &hooks, Some(&route))
                .await;
            reply_message(&id, reply)
        });
        let first = tokio::select! {
            biased;
            reply = &mut work => {
                let early: Vec<Upcall> = std::iter::from_fn(|| upcalls.try_recv().ok()).collect();
                if early.iter().all(|u| matches!(u.inbound, Inbound::Streaming)) {
                    return (StatusCode::OK, axum::Json(reply)).into_response();
                }
                Err((early, reply))
            }
            Some(up) = upcalls.recv() => Ok(up),
        };
        let (events, rx) = mpsc::channel::<String>(CALL_BACKLOG);
        let bridge = self.clone();
        tokio::spawn(async move {
            let mut minted = Vec::new();
            match first {
                Err((early, reply)) => {
                    for up in early {
                        bridge.relay(up, &events, &mut minted).await;
                    }
                    let _ = events.send(reply.to_string()).await;
                }
                Ok(up) => {
                    bridge.relay(up, &events, &mut minted).await;
                    loop {
                        tokio::select! {
                            biased;
                            Some(up) = upcalls.recv() => bridge.relay(up, &events, &mut minted).await,
                            reply = &mut work => {
                                let _ = events.send(reply.to_string()).await;
                                break;
                            }
                            () = events.closed() => {
                                // The client went away: the call stops, the child is told.
                                cancel.cancel();
                                let _ = work.await;
                                break;
                            }
                        }
                    }
                }
            }
            // The child's questions this call never got answered die with it.
            for id in minted {
                if let Some(r) = bridge.lock_waiting().remove(&id) {
                    r.refuse_later(
                        jsonrpc::INTERNAL_ERROR,
                        "the call this request belongs to ended",
                    );
                }
            }
        });
        crate::http::render::plain_sse(tokio_stream::wrappers::ReceiverStream::new(rx))
    }

    /// One thing the child said about a call, as an event for its client; a request is kept
    /// (under a minted id, recorded in `minted`) until the client answers it.
    async fn relay(&self, up: Upcall, events: &mpsc::Sender<String>, minted: &mut Vec<String>) {
        let message = match up.inbound {
            Inbound::Streaming => return,
            Inbound::Notification(msg) => msg,
            Inbound::Request(mut msg, responder) => {
                let id = format!("bridge-{}", self.next.fetch_add(1, Ordering::Relaxed));
                {
                    let mut waiting = self.lock_waiting();
                    if waiting.len() >= MAX_WAITING {
                        drop(waiting);
                        responder.refuse_later(
                            jsonrpc::INTERNAL_ERROR,
                            "too many requests wait for an answer",
                        );
                        return;
                    }
                    waiting.insert(id.clone(), responder);
                }
                msg.insert("id".into(), Value::String(id.clone()));
                minted.push(id);
                msg
            }
        };
        let _ = events.send(Value::Object(message).to_string()).await;
    }
}

/// The client's reply to its request `id`: the child's answer under the client's id, or a
/// JSON-RPC error saying why there is none.
fn reply_message(id: &Value, reply: Result<Map<String, Value>, StdioError>) -> Value {
    match reply {
        Ok(mut reply) => {
            reply.insert("id".into(), id.clone());
            reply.insert("jsonrpc".into(), json!("2.0"));
            Value::Object(reply)
        }
        Err(e) => {
            let mut err = jsonrpc::error(id, jsonrpc::INTERNAL_ERROR, &e.to_string());
            err["error"]["data"] = json!({"reason": e.label()});
            err
        }
    }
}

/// `POST /mcp` (other methods: 405) and `/healthz`.
pub fn router(bridge: Arc<Bridge>) -> Router {
    router_at(bridge, "/mcp")
}

/// The bridge's routes with MCP served at `path` (the Target's pod `path`, e.g. `/mcp`).
pub fn router_at(bridge: Arc<Bridge>, path: &str) -> Router {
    Router::new()
        .route(path, post(post_mcp).get(not_allowed).delete(not_allowed))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(bridge)
}

async fn not_allowed() -> Response {
    (StatusCode::METHOD_NOT_ALLOWED, [(header::ALLOW, "POST")]).into_response()
}

#[instrument(skip_all)]
async fn post_mcp(State(bridge): State<Arc<Bridge>>, headers: HeaderMap, body: Bytes) -> Response {
    if !bridge.authorized(&headers) {
        return (
            StatusCode::UNAUTHORIZED,
            [(header::WWW_AUTHENTICATE, "Bearer")],
            "a valid bearer token is required",
        )
            .into_response();
    }
    let streams = crate::http::accepts(&headers, "text/event-stream");
    match jsonrpc::parse(&body) {
        Ok(m) => bridge.handle(m, streams).await,
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(e.to_response())).into_response(),
    }
}
