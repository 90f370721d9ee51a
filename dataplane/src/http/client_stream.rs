//! What a client sends besides requests, and its GET stream: `GET /mcp` (live or resumed with
//! `Last-Event-ID`), its answers to relayed requests, and `notifications/cancelled`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::{Map, Value};
use tracing::{Span, instrument};

use super::admission::Admitted;
use super::net::Peer;
use super::{Gateway, UpcallError, find_session, rpc_failure, streams};
use crate::jsonrpc;
use crate::mcp::list_changed::Viewer;
use crate::session::{Scope, Session};

pub(super) async fn get_aggregated(
    State(gw): State<Arc<Gateway>>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    handle_get(gw, Scope::Aggregated, peer, headers).await
}

pub(super) async fn get_target(
    State(gw): State<Arc<Gateway>>,
    Path((namespace, name)): Path<(String, String)>,
    peer: Peer,
    headers: HeaderMap,
) -> Response {
    handle_get(gw, Scope::Target { namespace, name }, peer, headers).await
}

/// Whether the request's `Accept` headers name `media`.
pub(crate) fn accepts(headers: &HeaderMap, media: &str) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.contains(media))
}

/// `GET /mcp`: the session's stream of messages that belong to no open request, or with
/// `Last-Event-ID` the rest of any stream of the session (SSE polling, SEP-1699).
#[instrument(skip_all, fields(session, user))]
async fn handle_get(gw: Arc<Gateway>, scope: Scope, peer: Peer, headers: HeaderMap) -> Response {
    let identity = match Admitted::admit(&gw, peer, &headers).await {
        Ok(a) => a.identity,
        Err(resp) => return resp,
    };
    if !accepts(&headers, "text/event-stream") {
        return (
            StatusCode::NOT_ACCEPTABLE,
            "GET /mcp needs Accept: text/event-stream",
        )
            .into_response();
    }
    let session = match find_session(&gw, &scope, &identity, &headers).await {
        Ok(s) => s,
        Err(resp) => return resp,
    };
    Span::current().record("session", session.id.as_str());
    let hub = gw.hubs.get(&session.id);
    hub.set_viewer(Viewer { identity, scope });
    let primes = streams::primes(&session.protocol_version);
    match headers.get("last-event-id").map(|v| v.to_str()) {
        Some(Ok(last)) => match hub.resume(last) {
            Ok(frames) => super::render::sse_response(None, frames),
            Err(e) => rpc_failure(
                match e {
                    // Not an id this gateway gives out (garbage, out of range): a bad request.
                    streams::StreamError::Malformed => StatusCode::BAD_REQUEST,
                    streams::StreamError::UnknownStream => StatusCode::NOT_FOUND,
                },
                jsonrpc::error(&Value::Null, jsonrpc::INVALID_REQUEST, &e.to_string()),
            ),
        },
        Some(Err(_)) => rpc_failure(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(
                &Value::Null,
                jsonrpc::INVALID_REQUEST,
                "malformed Last-Event-ID",
            ),
        ),
        None => {
            let (priming, frames) = hub.attach_get();
            super::render::sse_response(primes.then_some(priming), frames)
        }
    }
}

/// A client notification: `notifications/cancelled` cancels the named request if it is in
/// flight; everything else is accepted and needs nothing from the gateway.
pub(super) fn notification(
    gw: &Gateway,
    session: &Session,
    method: &str,
    object: &Map<String, Value>,
) -> Response {
    if method == "notifications/cancelled"
        && let Some(id) = object.get("params").and_then(|p| p.get("requestId"))
    {
        let found = gw.hubs.get(&session.id).cancel(&id.to_string());
        tracing::debug!(found, "client cancelled a request");
    }
    StatusCode::ACCEPTED.into_response()
}

/// A client's answer to a relayed request: delivered to the upstream that asked (202), or 400
/// for an id the gateway did not mint for this session or that was answered already.
pub(super) async fn response(
    gw: &Gateway,
    session: &Session,
    answer: &Map<String, Value>,
) -> Response {
    let id = answer.get("id").cloned().unwrap_or(Value::Null);
    match gw.upcalls.resolve(&session.id, &id, answer).await {
        Ok(()) => StatusCode::ACCEPTED.into_response(),
        Err(e @ UpcallError::Unknown) => rpc_failure(
            StatusCode::BAD_REQUEST,
            jsonrpc::error(&id, jsonrpc::INVALID_REQUEST, &e.to_string()),
        ),
        Err(e) => {
            tracing::warn!(error = %e, label = e.label(), "relaying a client answer failed");
            rpc_failure(
                StatusCode::BAD_GATEWAY,
                jsonrpc::error(&id, jsonrpc::UPSTREAM_ERROR, &e.to_string()),
            )
        }
    }
}
