//! The HTTP+SSE transport of protocol 2024-11-05 for old clients: `GET /sse` opens a session and
//! its one stream, `POST /messages?sessionId=` carries the client's messages, answered on the stream.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde::Deserialize;
use serde_json::Value;
use tokio::sync::mpsc;
use tracing::{Instrument, Span, field, info_span, instrument};

use super::admission::{Admitted, read_message};
use super::net::Peer;
use super::{Gateway, client_stream, owned_session, rpc_failure, session_not_found, trace_id};
use crate::jsonrpc::{self, Message};
use crate::mcp::answer::Answer;
use crate::mcp::list_changed::Viewer;
use crate::mcp::streams::{Frame, GET_STREAM};
use crate::mcp::{call, dispatch, protocol};
use crate::session::{Scope, Session};

/// The query of `POST /messages`.
#[derive(Debug, Deserialize)]
pub(super) struct SessionQuery {
    #[serde(rename = "sessionId")]
    session_id: Option<String>,
}

pub(super) async fn get_aggregated(
    State(gw): State<Arc<Gateway>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    open_stream(gw, Scope::Aggregated, peer, headers).await
}

pub(super) async fn get_target(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    open_stream(gw, Scope::Target { namespace, name }, peer, headers).await
}

pub(super) async fn post_aggregated(
    State(gw): State<Arc<Gateway>>,
    Query(q): Query<SessionQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = post_span(&headers, &body);
    post_message(gw, Scope::Aggregated, q, peer, headers, body)
        .instrument(span)
        .await
}

pub(super) async fn post_target(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<SessionQuery>,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let span = post_span(&headers, &body);
    let scope = Scope::Target { namespace, name };
    post_message(gw, scope, q, peer, headers, body)
        .instrument(span)
        .await
}

fn post_span(headers: &HeaderMap, body: &[u8]) -> Span {
    let span = info_span!(
        "legacy_sse_post",
        otel.kind = "server",
        method = field::Empty,
        session = field::Empty,
        user = field::Empty
    );
    super::continue_caller_trace(&span, headers, body);
    span
}

/// Where the client posts its messages: relative to the gateway root, same scope as the stream.
fn endpoint(scope: &Scope, session_id: &str) -> String {
    match scope {
        Scope::Aggregated => format!("/messages?sessionId={session_id}"),
        Scope::Target { namespace, name } => {
            format!("/messages/{namespace}/{name}?sessionId={session_id}")
        }
    }
}

/// `GET /sse`: authenticates like `POST /mcp`, opens a session owned by the caller and answers
/// its stream; the session ends when the stream does.
#[instrument(skip_all, fields(session, user))]
async fn open_stream(gw: Arc<Gateway>, scope: Scope, peer: Peer, headers: HeaderMap) -> Response {
    let identity = match Admitted::admit(&gw, peer, &headers).await {
        Ok(a) => a.identity,
        Err(resp) => return resp,
    };
    // The same session limits as `initialize` on /mcp: a legacy stream is a session too.
    let owned = gw
        .sessions
        .count_owned(&crate::session::subject_of(&identity));
    if let Err(refusal) = gw.limits.admit_session(owned, gw.sessions.count(), None) {
        let trace = trace_id(&headers);
        return crate::limits::refuse(
            &*gw.audit,
            &identity.user,
            "sse",
            trace,
            refusal,
            &Value::Null,
        );
    }
    let session = Session::opened_by(
        &identity,
        scope.clone(),
        protocol::LEGACY_PROTOCOL.to_owned(),
    );
    let sid = session.id.clone();
    if let Err(e) = gw.sessions.create(session).await {
        tracing::warn!(error = %e, label = e.label(), "legacy SSE session not created");
        return (StatusCode::SERVICE_UNAVAILABLE, "session store unavailable").into_response();
    }
    Span::current().record("session", sid.as_str());
    // Its POSTs may reach any replica: they are handed here, where the stream is.
    gw.own(&crate::mcp::handoff::session_key(&sid)).await;
    let hub = gw.hubs.get_unjournaled(&sid);
    // The legacy stream is the session's GET stream: snapshot changes are announced on it too.
    hub.set_viewer(Viewer {
        identity: identity.clone(),
        scope: scope.clone(),
    });
    let (_, frames) = hub.attach_get();
    let first = format!("event: endpoint\ndata: {}\n\n", endpoint(&scope, &sid));
    let keepalive = Duration::from_millis(gw.config.sse_keepalive_ms.max(10));
    let state = StreamState {
        frames,
        tick: tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive),
        _ends: EndsSession { gw, sid },
    };
    let rest = futures::stream::unfold(state, |mut st| async move {
        let text = tokio::select! {
            frame = st.frames.recv() => match frame {
                Some(Frame::Event { data, .. }) => format!("event: message\ndata: {data}\n\n"),
                Some(Frame::End) | None => return None,
            },
            _ = st.tick.tick() => ": keep-alive\n\n".to_owned(),
        };
        Some((Ok::<_, Infallible>(Bytes::from(text)), st))
    });
    let body = futures::StreamExt::chain(
        futures::stream::once(async move { Ok::<_, Infallible>(Bytes::from(first)) }),
        rest,
    );
    (
        StatusCode::OK,
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        Body::from_stream(body),
    )
        .into_response()
}

struct StreamState {
    frames: mpsc::Receiver<Frame>,
    tick: tokio::time::Interval,
    _ends: EndsSession,
}

/// Dropped with the stream's body (the client went away, or the session ended): the session
/// and its upstream links go too, as with DELETE on Streamable HTTP.
struct EndsSession {
    gw: Arc<Gateway>,
    sid: String,
}

impl Drop for EndsSession {
    fn drop(&mut self) {
        let gw = self.gw.clone();
        let sid = std::mem::take(&mut self.sid);
        gw.close_session_links(&sid);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = gw.sessions.delete(&sid).await {
                    tracing::warn!(error = %e, label = e.label(), "legacy SSE session not deleted");
                }
            });
        }
    }
}

/// The caller's legacy session named by `sessionId`; unknown, foreign or of another scope → 404.
async fn find_session(
    gw: &Gateway,
    scope: &Scope,
    identity: &Identity,
    q: &SessionQuery,
) -> Result<Arc<Session>, Response> {
    let Some(id) = q.session_id.as_deref() else {
        return Err(rpc_failure(
            StatusCode::BAD_REQUEST,
            jsonrpc::invalid_request(&Value::Null, "the sessionId query parameter is required"),
        ));
    };
    // Only sessions with a stream on this replica: their answers have nowhere else to go.
    if gw.hubs.find(id).is_none_or(|h| !h.has_live(GET_STREAM)) {
        return Err(session_not_found());
    }
    owned_session(gw, scope, identity, id).await
}

/// `POST /messages`: 202 at once for anything the session can take; the answer to a request
/// follows on the session's stream.
async fn post_message(
    gw: Arc<Gateway>,
    scope: Scope,
    q: SessionQuery,
    peer: Peer,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let started = Instant::now();
    let principal = match Admitted::admit(&gw, peer, &headers).await {
        Ok(a) => a,
        Err(resp) => return resp,
    };
    let session = match find_session(&gw, &scope, &principal.identity, &q).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    Span::current().record("session", session.id.as_str());
    let message = match read_message(&gw, &body, started) {
        Ok(m) => m,
        Err(unread) => return unread.into_response(),
    };
    let request = match message {
        Message::Request(r) => r,
        Message::Notification { method, object } => {
            return client_stream::notification(&gw, &session, &method, &object);
        }
        Message::Response(answer) => {
            return client_stream::response(&gw, &session, &answer).await;
        }
    };
    Span::current().record("method", request.method.as_str());
    let trace = reflow_telemetry::propagation::trace_id(&Span::current())
        .unwrap_or_else(|| trace_id(&headers));
    let user = principal.identity.user.clone();
    let refuse = |refusal| {
        let id = request.id.clone();
        crate::limits::refuse(
            &*gw.audit,
            &user,
            &request.method,
            trace.clone(),
            refusal,
            &id,
        )
    };
    if request.method == "initialize" {
        // Only the size check: the session exists already (counted when its stream opened).
        if let Err(refusal) = gw.limits.admit_session(0, 0, request.params()) {
            return refuse(refusal);
        }
        return initialize(&gw, &session, &request, started).await;
    }
    // Held by the task until the answer is on the stream, as on /mcp.
    let in_flight = match gw.limits.enter(&user) {
        Ok(p) => p,
        Err(refusal) => return refuse(refusal),
    };
    let ctx = call::Ctx {
        identity: principal.identity,
        scope: principal.scope,
        snapshot: gw.snapshots.load(),
        session: session.clone(),
        trace_id: trace,
        started,
        hooks: Default::default(),
        pin: None,
        subject: principal.subject,
    };
    let worker = gw.clone();
    tokio::spawn(
        async move {
            // Without SSE on the reply, everything upstreams say meanwhile goes to the session
            // stream, which is where this client listens.
            match worker.respond(ctx, request, false).await {
                Answer::Json { message, .. } => deliver(&worker, &session.id, message.into_tree()),
                Answer::StatelessJson(message) => deliver(&worker, &session.id, message),
                // Not asked for (no SSE on the reply); nothing to deliver.
                Answer::Stream { .. } | Answer::Events(_) => {
                    tracing::warn!("reply was a stream; not delivered")
                }
            }
            drop(in_flight);
        }
        .instrument(Span::current()),
    );
    StatusCode::ACCEPTED.into_response()
}

/// `initialize` on a legacy session: negotiated and stored; the answer goes on the stream.
async fn initialize(
    gw: &Gateway,
    session: &Session,
    request: &jsonrpc::Request,
    started: Instant,
) -> Response {
    let mut updated = Session::clone(session);
    let reply = dispatch::negotiate(&mut updated, request, true);
    let reply = match gw.sessions.put(updated).await {
        Ok(()) => reply,
        Err(e) => jsonrpc::error(&request.id, jsonrpc::INTERNAL_ERROR, &e.to_string()),
    };
    deliver(gw, &session.id, reply);
    gw.count("initialize", None, "ok", started);
    StatusCode::ACCEPTED.into_response()
}

/// One message on the session's stream.
fn deliver(gw: &Gateway, session_id: &str, reply: Value) {
    let Value::Object(msg) = reply else {
        return;
    };
    gw.to_get_stream(session_id, &gw.hubs.get(session_id), &msg);
}
