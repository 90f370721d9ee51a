//! The request preamble every handler runs before MCP: Host/Origin checks, authentication
//! (proxy, mTLS, bearer) with revocation and scope limits, the one refusal answers, trace ids.

use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_crds::Identity;
use serde_json::Value;
use tracing::Span;

use super::METADATA_PATH;
use super::net::Peer;
use crate::audit::now_ms;
use crate::authn::{self, Principal};
use crate::mcp::{Gateway, GatewayConfig, REVOKED_BY};
use crate::scope::OutOfScope;

pub(super) fn base_url(gw: &Gateway, headers: &HeaderMap) -> String {
    match &gw.config.public_url {
        Some(u) => u.trim_end_matches('/').to_owned(),
        None => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or("localhost");
            format!("http://{host}")
        }
    }
}

pub(super) fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, axum::Json(body)).into_response()
}

pub(super) fn rpc_failure(status: StatusCode, body: Value) -> Response {
    json_response(status, &body)
}

/// Rejects DNS-rebinding and cross-origin browser requests.
pub(super) fn check_host_origin(
    config: &GatewayConfig,
    headers: &HeaderMap,
) -> Result<(), (StatusCode, &'static str)> {
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !config.allowed_hosts.is_empty() {
        let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
        if !config.allowed_hosts.iter().any(|h| h == host || h == name) {
            return Err((StatusCode::FORBIDDEN, "host not allowed"));
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let origin = origin.to_str().unwrap_or("");
        let authority = origin.split_once("://").map_or("", |(_, a)| a);
        let same_origin = !authority.is_empty() && authority.eq_ignore_ascii_case(host);
        let listed = config
            .allowed_origins
            .iter()
            .any(|o| o == "*" || o == origin)
            || config.http.cors.allows(origin);
        if !same_origin && !listed {
            return Err((StatusCode::FORBIDDEN, "origin not allowed"));
        }
    }
    Ok(())
}

/// Authenticates the request (a trusted proxy's identity headers, else the bearer token),
/// refuses revoked tokens, and applies the request-level limits of a scoped token: the client
/// address and the time window (403 `insufficient_scope`, audited).
pub(super) async fn authenticate(
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
        gw.audit_token_refusal(&principal.identity, REVOKED_BY, "revoked", headers);
        return Err(unauthorized(authn::AuthFailure {
            label: "revoked",
            message: "the token has been revoked".to_owned(),
            token_presented: true,
        }));
    }
    let now = u64::try_from(now_ms() / 1000).unwrap_or(u64::MAX);
    if let Err(why) = principal.scope.admits(client, now) {
        gw.audit_token_refusal(
            &principal.identity,
            &crate::mcp::dispatch::TOKEN_SCOPE,
            why.label(),
            headers,
        );
        return Err(insufficient_scope(why));
    }
    Ok(principal)
}

pub(super) fn insufficient_scope(why: OutOfScope) -> Response {
    let mut resp = (StatusCode::FORBIDDEN, why.to_string()).into_response();
    let challenge = format!("Bearer error=\"insufficient_scope\", error_description=\"{why}\"");
    if let Ok(v) = HeaderValue::from_str(&challenge) {
        resp.headers_mut().insert(header::WWW_AUTHENTICATE, v);
    }
    resp
}

/// Random per process (drawn once), so ids from different replicas do not collide.
static TRACE_PREFIX: LazyLock<u64> = LazyLock::new(|| uuid::Uuid::new_v4().as_u64_pair().0);
static TRACE_COUNTER: AtomicU64 = AtomicU64::new(1);

/// Makes `span` continue the caller's trace: the one in the message's `params._meta` (SEP-414)
/// when it carries one, else the `traceparent` header. Only read when tracing is on.
pub(super) fn continue_caller_trace(span: &Span, headers: &HeaderMap, body: &[u8]) {
    use reflow_telemetry::propagation;
    if !propagation::enabled() {
        return;
    }
    /// Just the `_meta` of a message (everything else is skipped, not kept).
    #[derive(serde::Deserialize)]
    struct Peek {
        params: Option<PeekParams>,
    }
    #[derive(serde::Deserialize)]
    struct PeekParams {
        #[serde(rename = "_meta")]
        meta: Option<Value>,
    }
    let meta = serde_json::from_slice::<Peek>(body)
        .ok()
        .and_then(|p| p.params)
        .and_then(|p| p.meta);
    match propagation::meta_context(meta.as_ref()) {
        Some(carried) => propagation::continue_remote(span, &carried),
        None => propagation::continue_remote(span, headers),
    }
}

/// The trace id of the request being served: the OTel one when tracing is on (so the audit row
/// leads to the trace), else the caller's `traceparent` one, else a fresh one.
pub(crate) fn request_trace_id(headers: &HeaderMap) -> String {
    reflow_telemetry::propagation::trace_id(&Span::current()).unwrap_or_else(|| trace_id(headers))
}

/// The caller's W3C trace id, or a fresh one: 128 bits, a random process prefix and a counter
/// (unique without a system call per request, unlike a random v4 uuid).
pub(super) fn trace_id(headers: &HeaderMap) -> String {
    // W3C traceparent: version-traceid-parentid-flags.
    headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        .filter(|t| t.len() == 32)
        .map(str::to_owned)
        .unwrap_or_else(|| {
            let n = TRACE_COUNTER.fetch_add(1, Ordering::Relaxed);
            format!("{:016x}{n:016x}", *TRACE_PREFIX)
        })
}
