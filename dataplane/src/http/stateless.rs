//! Clients of the stateless 2026-07-28 revision on the same endpoints: header/body validation,
//! `server/discover`, `subscriptions/listen`, and requests answered without a protocol session.
//!
//! The client has no session, but its upstreams of older revisions need one, and so do learned
//! resource routes and parked calls: each (caller, endpoint, declared capabilities) gets a gateway
//! session of its own, never shown to the client. Its id is a digest, so every replica finds the
//! same one in a shared store.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde_json::{Map, Value, json};

use super::admission::store_unavailable;
use super::{Gateway, json_response, rpc_failure};
use crate::era::{self, RequestMeta, STATELESS};
use crate::jsonrpc::{self, Message, Request};
use crate::mcp::call::Ctx;
use crate::mcp::list_changed::Viewer;
use crate::mcp::streams::Frame;
use crate::scope::TokenScope;
use crate::session::{Scope, Session};
use crate::upstream::{PROTOCOL_HEADER, SESSION_HEADER};

/// The methods of the stateless revision the gateway answers.
const SERVED_METHODS: [&str; 10] = [
    "server/discover",
    "subscriptions/listen",
    "tools/list",
    "tools/call",
    "prompts/list",
    "prompts/get",
    "resources/list",
    "resources/templates/list",
    "resources/read",
    "completion/complete",
];

/// How long a listen stream may stay silent before a keep-alive comment.
const KEEPALIVE: std::time::Duration = std::time::Duration::from_secs(15);

/// How long a client may cache `server/discover` (the gateway's answer changes only on upgrade).
const DISCOVER_TTL_MS: u64 = 60_000;

/// Whether a POST speaks the stateless revision: it says so in `MCP-Protocol-Version`, or it
/// carries no session and either names its revision in `_meta` or asks `server/discover`.
pub(super) fn is_stateless(headers: &HeaderMap, message: &Message) -> bool {
    let header = headers.get(PROTOCOL_HEADER).and_then(|v| v.to_str().ok());
    if header == Some(STATELESS) {
        return true;
    }
    if headers.contains_key(SESSION_HEADER) {
        return false;
    }
    match message {
        Message::Request(r) => {
            r.method == "server/discover"
                || (r.method != "initialize"
                    && RequestMeta::of(r.params()).protocol_version.is_some())
        }
        _ => false,
    }
}

/// Who asks, as `serve_post` established it.
pub(super) struct Caller {
    pub identity: Identity,
    pub scope: Arc<TokenScope>,
    pub trace_id: String,
    pub started: Instant,
    /// The verified bearer token (`tokenExchange` Targets exchange it); never logged.
    pub subject: Option<crate::connect::exchange::SubjectToken>,
}

/// Answers one stateless POST.
pub(super) async fn serve(
    gw: &Arc<Gateway>,
    endpoint: Scope,
    caller: Caller,
    headers: &HeaderMap,
    message: Message,
) -> Response {
    let req = match message {
        Message::Request(r) => r,
        // Nothing a stateless client notifies needs the gateway (cancellation is closing the
        // response stream).
        Message::Notification { .. } => return StatusCode::ACCEPTED.into_response(),
        Message::Response(_) => {
            return rpc_failure(
                StatusCode::BAD_REQUEST,
                jsonrpc::invalid_request(&Value::Null, "stateless clients send no responses"),
            );
        }
    };
    let meta = match validate(&req, headers) {
        Ok(meta) => meta,
        Err(body) => return rpc_failure(StatusCode::BAD_REQUEST, body),
    };
    match req.method.as_str() {
        "server/discover" => {
            gw.count("server/discover", None, "ok", caller.started);
            return json_response(StatusCode::OK, &discover(&req.id));
        }
        m if !SERVED_METHODS.contains(&m) => {
            // Includes what this revision removed (initialize, ping, logging/setLevel,
            // resources/subscribe): 404 with the JSON-RPC error, as the transport requires.
            gw.count(
                crate::metrics::method_label(m),
                None,
                "method_not_found",
                caller.started,
            );
            return rpc_failure(
                StatusCode::NOT_FOUND,
                jsonrpc::method_not_found(&req.id, &req.method),
            );
        }
        _ => {}
    }
    let session = match own_session(gw, &caller.identity, &endpoint, &meta).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    tracing::Span::current().record("session", session.id.as_str());
    let ctx = Ctx {
        identity: caller.identity,
        scope: caller.scope,
        snapshot: gw.snapshots.load(),
        session,
        trace_id: caller.trace_id,
        started: caller.started,
        hooks: Default::default(),
        pin: None,
        subject: caller.subject,
    };
    if req.method == "subscriptions/listen" {
        // Upstreams connected first, so their list changes have somewhere to go once the client
        // hears the acknowledgement.
        gw.warm_links(&ctx).await;
        return listen(gw, ctx, &req);
    }
    let sse = super::client_stream::accepts(headers, "text/event-stream");
    super::render::answer(gw.respond_stateless(ctx, req, sse).await)
}

/// Header/body agreement and the revision; otherwise the JSON-RPC error (sent with a 400).
fn validate(req: &Request, headers: &HeaderMap) -> Result<RequestMeta, Value> {
    let meta = RequestMeta::of(req.params());
    let header = |name: &str| headers.get(name).map(|v| v.to_str().ok());
    let mismatch = |what: String| {
        jsonrpc::error(
            &req.id,
            era::HEADER_MISMATCH,
            &format!("Header mismatch: {what}"),
        )
    };
    let declared = header(PROTOCOL_HEADER);
    let version = match (&meta.protocol_version, declared) {
        (Some(body), Some(Some(h))) if body == h => body.clone(),
        (Some(body), Some(Some(h))) => {
            return Err(mismatch(format!(
                "MCP-Protocol-Version '{h}' does not match _meta '{body}'"
            )));
        }
        (Some(_), _) => return Err(mismatch("MCP-Protocol-Version header is missing".into())),
        (None, _) => {
            return Err(jsonrpc::invalid_params(
                &req.id,
                &format!("params._meta[\"{}\"] is required", era::META_PROTOCOL),
            ));
        }
    };
    if meta.capabilities.is_none() {
        return Err(jsonrpc::invalid_params(
            &req.id,
            &format!("params._meta[\"{}\"] is required", era::META_CAPABILITIES),
        ));
    }
    if version != STATELESS {
        return Err(era::unsupported_version(&req.id, &version));
    }
    match header(era::METHOD_HEADER) {
        Some(Some(m)) if m == req.method => {}
        Some(Some(m)) => {
            return Err(mismatch(format!(
                "Mcp-Method '{m}' does not match body method '{}'",
                req.method
            )));
        }
        _ => return Err(mismatch("Mcp-Method header is missing".into())),
    }
    if let Some(body) = era::mirrored_name(&req.method, req.params()) {
        match header(era::NAME_HEADER) {
            Some(Some(raw)) => match era::decode_header_value(raw) {
                Some(h) if h == body => {}
                Some(h) => {
                    return Err(mismatch(format!(
                        "Mcp-Name '{h}' does not match body value '{body}'"
                    )));
                }
                None => return Err(mismatch("Mcp-Name is not valid Base64".into())),
            },
            _ => return Err(mismatch("Mcp-Name header is missing".into())),
        }
    }
    Ok(meta)
}

/// The gateway's `server/discover` answer: the same for every caller.
fn discover(id: &Value) -> Value {
    let mut result = json!({
        "supportedVersions": era::SERVED,
        "capabilities": {
            "tools": {"listChanged": true},
            "resources": {"subscribe": true, "listChanged": true},
            "prompts": {"listChanged": true},
            "completions": {},
            "logging": {},
        },
        "ttlMs": DISCOVER_TTL_MS,
        "cacheScope": "public",
    });
    if let Value::Object(r) = &mut result {
        era::stamp_result(r);
    }
    jsonrpc::result(id, result)
}

/// The gateway session standing for this caller on this endpoint with these capabilities.
async fn own_session(
    gw: &Gateway,
    identity: &Identity,
    endpoint: &Scope,
    meta: &RequestMeta,
) -> Result<Arc<Session>, Response> {
    let capabilities = meta.capabilities.clone().unwrap_or_else(|| json!({}));
    let claims = identity.fingerprint();
    let owner = crate::session::subject_of(identity);
    // Keyed with the sealing key (shared by replicas): from public claims alone nobody can
    // compute the id, so nobody else can address, probe or refresh this hidden session.
    let mut h = Vec::with_capacity(64);
    // The claims, not just the user: other groups or roles are another session (nothing to
    // recycle, the client keeps no session).
    h.extend_from_slice(&claims.0);
    match endpoint {
        Scope::Aggregated => h.extend_from_slice(b"\0*"),
        Scope::Target { namespace, name } => {
            h.extend_from_slice(format!("\0{namespace}/{name}").as_bytes())
        }
    }
    h.push(0);
    h.extend_from_slice(capabilities.to_string().as_bytes());
    let id = hex::encode(&gw.key.mac("reflow/stateless-session/v2", &h)[..16]);
    match gw.sessions.get(&id).await {
        Ok(Some(s)) if s.owner == owner && s.scope == *endpoint => {
            gw.sessions.touch(&id).await.map_err(store_unavailable)?;
            return Ok(s);
        }
        // A digest collision with someone else's session: refuse rather than share it.
        Ok(Some(_)) => return Err(super::session_not_found()),
        Ok(None) => {}
        Err(e) => return Err(store_unavailable(e)),
    }
    let mut session = Session::opened_by(identity, endpoint.clone(), STATELESS.to_owned());
    session.id = id;
    session.client_capabilities = capabilities;
    session.client_info = meta.client_info.clone().unwrap_or(Value::Null);
    gw.sessions
        .create(session.clone())
        .await
        .map_err(store_unavailable)?;
    Ok(Arc::new(session))
}

impl Gateway {
    /// Subscribes the listening session to each URI at the upstream that serves it (policy
    /// decided as for `resources/subscribe`); updates then reach the listen stream.
    async fn subscribe_for_listen(self: &Arc<Self>, ctx: &Ctx, uris: &[String]) {
        for uri in uris {
            let mut object = Map::new();
            object.insert("params".into(), json!({"uri": uri}));
            let req = Request {
                id: json!(format!("listen:{uri}")),
                method: "resources/subscribe".into(),
                object,
            };
            let crate::mcp::call::Reply {
                message: reply,
                outcome,
                ..
            } = self.dispatch(ctx, req).await;
            if reply.as_tree().is_some_and(|r| r.get("error").is_some()) {
                tracing::debug!(uri, outcome, "a listen subscription was not taken upstream");
            }
        }
    }
}

/// Which change notifications a `subscriptions/listen` opted in to.
#[derive(Debug, Clone, Default)]
struct Filter {
    tools: bool,
    prompts: bool,
    resources: bool,
    uris: Vec<String>,
}

impl Filter {
    fn of(req: &Request) -> Self {
        let n = req.params().and_then(|p| p.get("notifications"));
        let flag = |k: &str| n.and_then(|n| n.get(k)).and_then(Value::as_bool) == Some(true);
        Self {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            uris: n
                .and_then(|n| n.get("resourceSubscriptions"))
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(|u| u.as_str().map(str::to_owned))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// What the gateway acknowledges: everything asked for (it serves all four kinds).
    fn acknowledged(&self) -> Value {
        let mut out = Map::new();
        if self.tools {
            out.insert("toolsListChanged".into(), json!(true));
        }
        if self.prompts {
            out.insert("promptsListChanged".into(), json!(true));
        }
        if self.resources {
            out.insert("resourcesListChanged".into(), json!(true));
        }
        if !self.uris.is_empty() {
            out.insert("resourceSubscriptions".into(), json!(self.uris));
        }
        Value::Object(out)
    }

    fn admits(&self, msg: &Value) -> bool {
        match msg.get("method").and_then(Value::as_str) {
            Some("notifications/tools/list_changed") => self.tools,
            Some("notifications/prompts/list_changed") => self.prompts,
            Some("notifications/resources/list_changed") => self.resources,
            Some("notifications/resources/updated") => msg
                .pointer("/params/uri")
                .and_then(Value::as_str)
                .is_some_and(|u| self.uris.iter().any(|s| s == u)),
            _ => false,
        }
    }
}

/// `subscriptions/listen`: an SSE stream that acknowledges the filter, then carries the change
/// notifications it admits (snapshot changes that alter the caller's view, upstream list changes
/// and resource updates), each tagged with the subscription id. It ends when the client closes it.
fn listen(gw: &Arc<Gateway>, ctx: Ctx, req: &Request) -> Response {
    let filter = Filter::of(req);
    let hub = gw.hubs.get(&ctx.session.id);
    hub.set_viewer(Viewer {
        identity: ctx.identity.clone(),
        scope: ctx.session.scope.clone(),
    });
    let (_, frames) = hub.attach_get();
    let subscription = req.id.clone();
    let tag = move |mut msg: Value| {
        if let Some(params) = msg
            .as_object_mut()
            .map(|m| m.entry("params").or_insert_with(|| json!({})))
            && let Some(params) = params.as_object_mut()
        {
            let meta = params.entry("_meta").or_insert_with(|| json!({}));
            if let Some(meta) = meta.as_object_mut() {
                meta.insert(era::META_SUBSCRIPTION.into(), subscription.clone());
            }
        }
        msg
    };
    let ack = tag(json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {"notifications": filter.acknowledged()},
    }));
    gw.count("subscriptions/listen", None, "ok", ctx.started);
    // Upstreams already subscribed through this session's links keep delivering here.
    let resources = filter.uris.clone();
    let gw2 = gw.clone();
    tokio::spawn(async move { gw2.subscribe_for_listen(&ctx, &resources).await });
    let rest = futures::stream::unfold(frames, move |mut rx| {
        let filter = filter.clone();
        let tag = tag.clone();
        async move {
            loop {
                // A quiet stream still says something now and then, so intermediaries and
                // client idle timers keep it open.
                let Ok(frame) = tokio::time::timeout(KEEPALIVE, rx.recv()).await else {
                    return Some((String::new(), rx));
                };
                match frame {
                    Some(Frame::Event { data, .. }) => {
                        let Ok(msg) = serde_json::from_str::<Value>(&data) else {
                            continue;
                        };
                        if !filter.admits(&msg) {
                            continue;
                        }
                        return Some((tag(msg).to_string(), rx));
                    }
                    Some(Frame::End) | None => return None,
                }
            }
        }
    });
    let first = futures::stream::iter([ack.to_string()]);
    super::render::plain_sse(futures::StreamExt::chain(first, rest))
}
