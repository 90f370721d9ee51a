//! The one admission every handler runs first, so no handler writes its own: Host and Origin
//! checked, the caller authenticated (mTLS certificate, trusted proxy or bearer token) with
//! revocation and the token's scope applied (`authenticate`, private here so that no handler can skip the rest), the user recorded on
//! the request's span; then, for posted messages, the body parsed and a failClosed audit store
//! checked. Every refusal here is answered by the functions below, one status each.

use std::sync::Arc;
use std::time::Instant;

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde_json::Value;
use tracing::Span;

use super::METADATA_PATH;
use super::net::Peer;
use super::preamble::{base_url, check_host_origin, request_trace_id, rpc_failure};
use crate::audit::{AuditEvent, now_ms};
use crate::authn::{self, Principal};
use crate::connect::exchange::SubjectToken;
use crate::jsonrpc::{self, Message};
use crate::mcp::Gateway;
use crate::scope::{OutOfScope, TokenScope};

/// The decider named in audit events for a revoked token.
const REVOKED_BY: &str = "token-revocation";

/// A caller past the preamble: who it is and what its token allows.
pub(super) struct Admitted {
    pub identity: Identity,
    pub scope: Arc<TokenScope>,
    /// The verified bearer token itself (`tokenExchange` Targets exchange it); never logged.
    pub subject: Option<SubjectToken>,
}

impl Admitted {
    /// Host/Origin (403), authentication (401, 503 when the issuer's keys cannot be fetched,
    /// `AuthFailure::status`), revocation (401) and token scope (403), then the user recorded
    /// on the current span.
    pub(super) async fn admit(
        gw: &Gateway,
        peer: Peer,
        headers: &HeaderMap,
    ) -> Result<Self, Response> {
        check_host_origin(&gw.config, headers).map_err(IntoResponse::into_response)?;
        let principal = authenticate(gw, peer, headers).await?;
        let subject = SubjectToken::capture(&principal, headers);
        let Principal {
            identity, scope, ..
        } = principal;
        Span::current().record("user", &*identity.user);
        Ok(Self {
            identity,
            scope,
            subject,
        })
    }
}

/// A posted body as a JSON-RPC message (400 when it is none), refused with 503 while a
/// failClosed audit store cannot be written.
pub(super) fn read_message(gw: &Gateway, body: &[u8], started: Instant) -> Result<Message, Unread> {
    let message = jsonrpc::parse(body).map_err(|e| Unread::Malformed(e.to_response()))?;
    if gw.audit.fail_closed() && !gw.audit.healthy() {
        gw.count("-", None, "audit_unavailable", started);
        let id = match &message {
            Message::Request(r) => r.id.clone(),
            _ => Value::Null,
        };
        return Err(Unread::AuditUnavailable { id });
    }
    Ok(message)
}

/// Why a posted message was not read; `into_response` gives each its status.
pub(super) enum Unread {
    /// Not a JSON-RPC message: 400 with the parse error.
    Malformed(Value),
    /// `audit.failurePolicy: failClosed` and the audit store cannot be written: nothing is
    /// served, so nothing happens unaudited. 503 with `Retry-After`, and a JSON-RPC error
    /// naming the request.
    AuditUnavailable { id: Value },
}

impl IntoResponse for Unread {
    fn into_response(self) -> Response {
        match self {
            Self::Malformed(body) => rpc_failure(StatusCode::BAD_REQUEST, body),
            Self::AuditUnavailable { id } => {
                let mut resp = rpc_failure(
                    StatusCode::SERVICE_UNAVAILABLE,
                    jsonrpc::error(
                        &id,
                        jsonrpc::INTERNAL_ERROR,
                        "audit log unavailable: requests are refused until audit events can be written (audit.failurePolicy: failClosed)",
                    ),
                );
                resp.headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
                resp
            }
        }
    }
}

/// The session store cannot answer: 503, the client may retry.
pub(super) fn store_unavailable(e: crate::session::SessionError) -> Response {
    rpc_failure(
        StatusCode::SERVICE_UNAVAILABLE,
        jsonrpc::error(&Value::Null, jsonrpc::INTERNAL_ERROR, &e.to_string()),
    )
}

/// Authenticates the request (a trusted proxy's identity headers, else the bearer token),
/// refuses revoked tokens, and applies the request-level limits of a scoped token: the client
/// address and the time window (403 `insufficient_scope`, audited).
async fn authenticate(
    gw: &Gateway,
    peer: Peer,
    headers: &HeaderMap,
) -> Result<Principal, Response> {
    let unauthorized = |failure: authn::AuthFailure| {
        let url = format!("{}{METADATA_PATH}", base_url(gw, headers));
        let mut resp = (failure.status(), failure.message.clone()).into_response();
        if let Ok(v) = HeaderValue::from_str(&authn::challenge(&failure, &url)) {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        resp
    };
    let proxy = gw.config.trusted_proxy.as_ref();
    let principal = if let Some(cert) = &peer.cert {
        // A verified client certificate that names the caller (mTLS, clientIdentity: certificate).
        Principal::from_identity(Identity::clone(cert))
    } else {
        match proxy.and_then(|p| p.principal(peer.ip, headers)) {
            Some(asserted) => asserted.map_err(unauthorized)?,
            None => gw.auth.authenticate(headers).await.map_err(unauthorized)?,
        }
    };
    let client = proxy.map_or(peer.ip, |p| p.client_addr(peer.ip, headers));
    // Checked on every request against the active snapshot (never cached with the token), so
    // a revocation applies as soon as the snapshot carrying it is.
    if gw.snapshots.load().revocations().revokes(
        principal.token_id.as_deref(),
        &principal.identity.user,
        principal.issued_at,
    ) {
        audit_token_refusal(gw, &principal.identity, REVOKED_BY, "revoked", headers);
        return Err(unauthorized(authn::AuthFailure {
            label: "revoked",
            message: "the token has been revoked".to_owned(),
            token_presented: true,
        }));
    }
    let now = u64::try_from(now_ms() / 1000).unwrap_or(u64::MAX);
    if let Err(why) = principal.scope.admits(client, now) {
        audit_token_refusal(
            gw,
            &principal.identity,
            &crate::mcp::authz::TOKEN_SCOPE,
            why.label(),
            headers,
        );
        return Err(insufficient_scope(why));
    }
    Ok(principal)
}

fn insufficient_scope(why: OutOfScope) -> Response {
    let mut resp = (StatusCode::FORBIDDEN, why.to_string()).into_response();
    let challenge = format!("Bearer error=\"insufficient_scope\", error_description=\"{why}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// A request refused for what its token is (revoked, out of scope) before it reached a
/// session; its row carries the request's trace id like every other row.
fn audit_token_refusal(
    gw: &Gateway,
    identity: &Identity,
    by: &str,
    outcome: &str,
    headers: &HeaderMap,
) {
    gw.audit.record(AuditEvent {
        id: crate::audit::new_event_id(),
        time_ms: now_ms(),
        user: identity.user.to_string(),
        session: None,
        method: "-".to_owned(),
        target: None,
        name: None,
        decision: Some("deny"),
        policy: Some(by.to_owned()),
        outcome: outcome.to_owned(),
        duration_ms: 0.0,
        trace_id: request_trace_id(headers),
    });
}
