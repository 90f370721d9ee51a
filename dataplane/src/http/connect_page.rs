//! What the connect pages share: HTML escaping, the page frame with its security headers, the
//! "link not valid" page and the connect audit event.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};

use crate::audit::{AuditEvent, now_ms};
use crate::connect::LinkGrant;
use crate::mcp::Gateway;

/// The browser-binding cookie of a connect flow (HttpOnly, `Path=/connect`).
pub(super) const BIND_COOKIE: &str = "reflow_connect";

/// The value of cookie `name`.
pub(super) fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

pub(super) fn escape(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '<' => "&lt;".to_owned(),
            '>' => "&gt;".to_owned(),
            '&' => "&amp;".to_owned(),
            '"' => "&quot;".to_owned(),
            '\'' => "&#39;".to_owned(),
            c => c.to_string(),
        })
        .collect()
}

pub(super) fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>{t}</title></head><body><h1>{t}</h1>{body}</body></html>",
        t = escape(title)
    );
    let mut resp = (status, html).into_response();
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert("referrer-policy", HeaderValue::from_static("same-origin"));
    h.insert("x-frame-options", HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    resp
}

pub(super) fn bad_link() -> Response {
    page(
        StatusCode::NOT_FOUND,
        "Link not valid",
        "<p>This connect link is unknown, already used or expired. Call the tool again from your client for a new one.</p>",
    )
}

pub(super) fn audit(gw: &Gateway, grant: Option<&LinkGrant>, outcome: &str) {
    gw.audit.record(AuditEvent {
        id: crate::audit::new_event_id(),
        time_ms: now_ms(),
        user: grant.map(|g| g.user.clone()).unwrap_or_default(),
        session: None,
        method: "connect".to_owned(),
        target: grant.map(|g| format!("{}/{}", g.namespace, g.target)),
        name: None,
        decision: None,
        policy: None,
        outcome: outcome.to_owned(),
        duration_ms: 0.0,
        trace_id: String::new(),
    });
}

/// `GET /connect`: where a user finds their connections. The browser carries no bearer token,
/// so the list lives where the user is signed in: the console (`/console/me`, with a
/// disconnect button) when it is on, else the `reflow_connections` tool in their MCP client.
pub(super) async fn index(
    axum::extract::State(gw): axum::extract::State<std::sync::Arc<Gateway>>,
) -> Response {
    if gw.config.console.enabled {
        let mut resp = page(
            StatusCode::SEE_OTHER,
            "Your connections",
            "<p><a href=\"/console/me\">Your connections are in the console.</a></p>",
        );
        resp.headers_mut()
            .insert(header::LOCATION, HeaderValue::from_static("/console/me"));
        return resp;
    }
    page(
        StatusCode::OK,
        "Your connections",
        "<p>Ask your MCP client to call the <code>reflow_connections</code> tool: without \
         arguments it lists the accounts you connected (never their tokens); with \
         <code>{\"action\": \"disconnect\", \"target\": \"namespace/name\"}</code> it forgets \
         one and revokes it upstream where the service supports that.</p>",
    )
}
