//! The session endpoints' handlers: POST and DELETE on `/mcp` and `/mcp/{namespace}/{target}`
//! (host and origin, authentication, admission, the era's envelope, then the MCP router).

use super::*;
use tracing::debug_span;

pub(super) async fn post_aggregated(
    State(gw): State<Arc<Gateway>>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_post(gw, Scope::Aggregated, peer, headers, body).await
}

pub(super) async fn post_target(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    handle_post(gw, Scope::Target { namespace, name }, peer, headers, body).await
}

pub(super) async fn delete_aggregated(
    State(gw): State<Arc<Gateway>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    handle_delete(gw, Scope::Aggregated, peer, headers).await
}

pub(super) async fn delete_target(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    handle_delete(gw, Scope::Target { namespace, name }, peer, headers).await
}

/// The caller's session, or the HTTP answer for a missing (400) or unknown/foreign (404) one.
pub(super) async fn find_session(
    gw: &Gateway,
    scope: &Scope,
    identity: &Identity,
    headers: &HeaderMap,
) -> Result<Arc<Session>, Response> {
    let Some(id) = headers.get(SESSION_HEADER).and_then(|v| v.to_str().ok()) else {
        return Err(rpc_failure(
            StatusCode::BAD_REQUEST,
            jsonrpc::invalid_request(&Value::Null, "Mcp-Session-Id header is required"),
        ));
    };
    owned_session(gw, scope, identity, id).await
}

/// 404 for a session that is unknown, another identity's, or of another endpoint.
pub(super) fn session_not_found() -> Response {
    rpc_failure(
        StatusCode::NOT_FOUND,
        jsonrpc::error(&Value::Null, -32001, "session not found"),
    )
}

/// Session `id` if `identity` owns it on this endpoint (`scope`), then refreshed (the request
/// uses it); 503 when the store cannot answer. The owner is checked before the refresh, so a
/// stranger guessing or replaying an id cannot keep someone else's session alive.
pub(super) async fn owned_session(
    gw: &Gateway,
    scope: &Scope,
    identity: &Identity,
    id: &str,
) -> Result<Arc<Session>, Response> {
    match gw.sessions.get(id).await {
        // Another user's session is indistinguishable from an unknown one; the same user with
        // other groups or roles keeps it, moved to the new claims.
        Ok(Some(s)) if s.owner == crate::session::subject_of(identity) && s.scope == *scope => {
            gw.sessions.touch(id).await.map_err(store_unavailable)?;
            Ok(gw.adopt_claims(s, identity).await)
        }
        Ok(_) => Err(session_not_found()),
        Err(e) => Err(store_unavailable(e)),
    }
}

/// The request span continues the caller's trace (`traceparent`) when tracing is on; its parent
/// is set before it is first entered, which `#[instrument]` would not allow.
async fn handle_post(
    gw: Arc<Gateway>,
    scope: Scope,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    // At `info` only when spans are exported: at the usual `info` filter a request span costs
    // its allocation and field formatting on every message (issue #24).
    let span = if reflow_telemetry::propagation::enabled() {
        info_span!(
            "handle_post",
            otel.kind = "server",
            method = field::Empty,
            session = field::Empty,
            user = field::Empty
        )
    } else {
        debug_span!(
            "handle_post",
            method = field::Empty,
            session = field::Empty,
            user = field::Empty
        )
    };
    continue_caller_trace(&span, &headers, &body);
    serve_post(gw, scope, peer, headers, body)
        .instrument(span)
        .await
}

async fn serve_post(
    gw: Arc<Gateway>,
    scope: Scope,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let Admitted {
        identity,
        scope: token_scope,
        subject,
    } = match Admitted::admit(&gw, peer, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let message = match read_message(&gw, &body, started) {
        Ok(m) => m,
        Err(unread) => return unread.into_response(),
    };
    let trace = request_trace_id(&headers);
    // Held until the response has been sent to its end (an SSE reply outlives this handler):
    // one user's flood cannot take every worker.
    let in_flight = match gw.limits.enter(&identity.user) {
        Ok(p) => p,
        Err(r) => return refuse_limit(&gw, &identity, &message, trace, r),
    };
    let caller = stateless::Caller {
        identity,
        scope: token_scope,
        trace_id: trace,
        started,
        subject,
    };
    in_flight.hold(route_post(&gw, scope, caller, &headers, message).await)
}

/// A parsed JSON-RPC message of an admitted caller, to the era and handler it belongs to.
async fn route_post(
    gw: &Arc<Gateway>,
    scope: Scope,
    caller: stateless::Caller,
    headers: &HeaderMap,
    message: Message,
) -> Response {
    if stateless::is_stateless(headers, &message) {
        if let Message::Request(r) = &message {
            Span::current().record("method", r.method.as_str());
        }
        return stateless::serve(gw, scope, caller, headers, message).await;
    }
    let stateless::Caller {
        identity,
        scope: token_scope,
        trace_id: trace,
        started,
        subject,
    } = caller;
    if let Some(v) = headers.get(PROTOCOL_HEADER) {
        let ok = v.to_str().is_ok_and(|v| SUPPORTED_PROTOCOLS.contains(&v));
        if !ok {
            return rpc_failure(
                StatusCode::BAD_REQUEST,
                jsonrpc::invalid_request(&Value::Null, "unsupported MCP-Protocol-Version"),
            );
        }
    }
    let request = match message {
        Message::Request(r) if r.method == "initialize" => {
            return initialize(gw, &identity, scope, r, trace, started).await;
        }
        Message::Request(r) => r,
        Message::Notification { method, object } => {
            return match find_session(gw, &scope, &identity, headers).await {
                Ok(session) => client_stream::notification(gw, &session, &method, &object),
                Err(resp) => resp,
            };
        }
        Message::Response(answer) => {
            return match find_session(gw, &scope, &identity, headers).await {
                Ok(session) => client_stream::response(gw, &session, &answer).await,
                Err(resp) => resp,
            };
        }
    };
    Span::current().record("method", request.method.as_str());
    let session = match find_session(gw, &scope, &identity, headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    Span::current().record("session", session.id.as_str());
    let ctx = call::Ctx {
        identity,
        scope: token_scope,
        snapshot: gw.snapshots.load(),
        session,
        trace_id: trace,
        started,
        hooks: Default::default(),
        pin: None,
        subject,
    };
    let sse = client_stream::accepts(headers, "text/event-stream");
    super::render::answer(gw.respond(ctx, request, sse).await)
}

/// `initialize` on the session endpoints: admitted against the session limits, then a session.
async fn initialize(
    gw: &Arc<Gateway>,
    identity: &Identity,
    scope: Scope,
    r: jsonrpc::Request,
    trace: String,
    started: Instant,
) -> Response {
    Span::current().record("method", "initialize");
    let owned = gw
        .sessions
        .count_owned(&crate::session::subject_of(identity));
    let admitted = gw
        .limits
        .admit_session(owned, gw.sessions.count(), r.params());
    if let Err(refusal) = admitted {
        return refuse_limit(gw, identity, &Message::Request(r), trace, refusal);
    }
    let (resp, sid) = gw.initialize(identity, scope, &r).await;
    let mut out = json_response(StatusCode::OK, &resp);
    if let Some(sid) = sid.and_then(|s| HeaderValue::from_str(&s).ok()) {
        out.headers_mut().insert(SESSION_HEADER, sid);
    }
    gw.count("initialize", None, "ok", started);
    out
}

/// A limit refused the request (see `limits`): audited, answered with its status.
fn refuse_limit(
    gw: &Gateway,
    identity: &Identity,
    message: &Message,
    trace: String,
    refusal: crate::limits::Refusal,
) -> Response {
    let (method, id) = match message {
        Message::Request(r) => (r.method.as_str(), r.id.clone()),
        Message::Notification { method, .. } => (method.as_str(), Value::Null),
        Message::Response(_) => ("-", Value::Null),
    };
    crate::limits::refuse(&*gw.audit, &identity.user, method, trace, refusal, &id)
}

/// DELETE of a session, in a server span like POST (continuing the caller's trace).
async fn handle_delete(gw: Arc<Gateway>, scope: Scope, peer: Peer, headers: HeaderMap) -> Response {
    let span = info_span!(
        "handle_delete",
        otel.kind = "server",
        session = field::Empty,
        user = field::Empty
    );
    reflow_telemetry::propagation::continue_remote(&span, &headers);
    delete_session(gw, scope, peer, headers)
        .instrument(span)
        .await
}

async fn delete_session(
    gw: Arc<Gateway>,
    scope: Scope,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    let identity = match Admitted::admit(&gw, peer, &headers).await {
        Ok(a) => a.identity,
        Err(resp) => return resp,
    };
    let session = match find_session(&gw, &scope, &identity, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    Span::current().record("session", session.id.as_str());
    let _ = gw.sessions.delete(&session.id).await;
    gw.close_session_links(&session.id);
    StatusCode::OK.into_response()
}
