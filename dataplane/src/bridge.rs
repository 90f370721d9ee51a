//! The bridge sidecar: one STDIO MCP server exposed as Streamable HTTP on `POST /mcp`, behind a
//! bearer token compared in constant time. Runs beside STDIO servers in MCPInstance pods.
//!
//! The child is started on first use and initialized once (with the first client's
//! `initialize` params); every later `initialize` is answered from that result. Client ids are
//! remapped by the child process code, so clients never collide. The child gets the bridge's
//! environment minus every `REFLOW_*` variable (the token among them).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Map, Value, json};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;
use tracing::{info, instrument, warn};

use crate::jsonrpc;
use crate::upstream::stdio::{ChildEnv, ChildProcess, ChildSpec, RestartBackoff, StdioError};

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
    token_digest: [u8; 32],
    child: AsyncMutex<(Slot, RestartBackoff)>,
}

impl Bridge {
    pub fn new(config: BridgeConfig) -> Result<Arc<Self>, BridgeError> {
        let token = config.token.expose_secret().trim();
        if token.is_empty() {
            return Err(BridgeError::EmptyToken);
        }
        let token_digest = Sha256::digest(token.as_bytes()).into();
        let restarts = config.restarts.clone();
        Ok(Arc::new(Self {
            config,
            token_digest,
            child: AsyncMutex::new((Slot::default(), restarts)),
        }))
    }

    /// True when `headers` carry `Authorization: Bearer <our token>`. Both sides are hashed
    /// first so the comparison takes the same time whatever the length or content presented.
    fn authorized(&self, headers: &HeaderMap) -> bool {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .unwrap_or("");
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let diff = digest
            .iter()
            .zip(self.token_digest.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        !presented.is_empty() && diff == 0
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
            label: self.config.command.clone(),
            stderr_lines_per_second: self.config.stderr_lines_per_second,
            unrouted: None,
            on_exit: None,
        })
        .inspect_err(|_| restarts.failed())?;
        info!(pid = child.pid(), "STDIO server started");
        let default = json!({
            "protocolVersion": crate::gateway::LATEST_PROTOCOL,
            "capabilities": {},
            "clientInfo": {"name": "reflow-bridge", "version": env!("CARGO_PKG_VERSION")},
        });
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

    async fn handle(&self, message: jsonrpc::Message) -> Response {
        match message {
            jsonrpc::Message::Request(req) => {
                let reply = if req.method == "initialize" {
                    self.running(req.object.get("params"))
                        .await
                        .map(|(_, init)| jsonrpc::result(&req.id, Value::Object(init)))
                } else {
                    match self.running(None).await {
                        Ok((child, _)) => child
                            .request(
                                &req.method,
                                req.object.get("params"),
                                self.config.request_timeout,
                            )
                            .await
                            .map(|mut reply| {
                                reply.insert("id".into(), req.id.clone());
                                reply.insert("jsonrpc".into(), json!("2.0"));
                                Value::Object(reply)
                            }),
                        Err(e) => Err(e),
                    }
                };
                let body = reply.unwrap_or_else(|e| {
                    let mut err = jsonrpc::error(&req.id, jsonrpc::INTERNAL_ERROR, &e.to_string());
                    err["error"]["data"] = json!({"reason": e.label()});
                    err
                });
                (StatusCode::OK, axum::Json(body)).into_response()
            }
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
            // Answers to server-to-client requests: there is no stream that carried any.
            jsonrpc::Message::Response(_) => StatusCode::ACCEPTED.into_response(),
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
    match jsonrpc::parse(&body) {
        Ok(m) => bridge.handle(m).await,
        Err(e) => (StatusCode::BAD_REQUEST, axum::Json(e.to_response())).into_response(),
    }
}
