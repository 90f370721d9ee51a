//! What every console request passes: the Host check (DNS rebinding), the cross-site check on
//! POSTs, the security headers on every answer, and finding the caller's login from the cookie.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;

use super::logins::{Login, same};
use super::{Console, ConsoleError};

/// The session cookie (HttpOnly, SameSite=Strict, Secure behind TLS, scoped to /console).
pub const COOKIE: &str = "reflow_console";
/// Binds an OIDC login (or the login form) to the browser that started it. `Lax`: it must come
/// back on the IdP's top-level redirect to the callback.
pub const LOGIN_COOKIE: &str = "reflow_console_login";
/// The OIDC login in flight (state, PKCE verifier, nonce), sealed: `Lax` like the binding, so
/// it comes back on the IdP's redirect to whichever replica serves the callback.
pub const OIDC_COOKIE: &str = "reflow_console_oidc";

const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                   connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'";

pub async fn middleware(State(console): State<Arc<Console>>, req: Request, next: Next) -> Response {
    let span = tracing::info_span!("console", method = %req.method(), path = %req.uri().path());
    async move {
        if !host_allowed(&console.parts.allowed_hosts, req.headers()) {
            return with_headers(
                (axum::http::StatusCode::MISDIRECTED_REQUEST, "unknown host").into_response(),
            );
        }
        if req.method() == Method::POST && cross_site(req.headers()) {
            return with_headers(ConsoleError::Csrf.into_response());
        }
        with_headers(next.run(req).await)
    }
    .instrument(span)
    .await
}

fn with_headers(mut resp: Response) -> Response {
    let h = resp.headers_mut();
    for (name, value) in [
        ("content-security-policy", CSP),
        ("x-frame-options", "DENY"),
        ("x-content-type-options", "nosniff"),
        // Not `no-referrer`: with it a browser sends `Origin: null` on its own form POSTs.
        ("referrer-policy", "same-origin"),
        ("cross-origin-opener-policy", "same-origin"),
        ("cross-origin-resource-policy", "same-origin"),
        (
            "permissions-policy",
            "camera=(), microphone=(), geolocation=(), payment=()",
        ),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    resp
}

fn host_allowed(allowed: &[String], headers: &HeaderMap) -> bool {
    if allowed.is_empty() {
        return true;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    let name = host.rsplit_once(':').map_or(host, |(n, _)| n);
    allowed
        .iter()
        .any(|a| a.eq_ignore_ascii_case(host) || a.eq_ignore_ascii_case(name))
}

/// A POST another site made the browser send: `Sec-Fetch-Site: cross-site`, or an `Origin`
/// whose host is not this request's `Host`. (The CSRF token is checked as well, per form.)
fn cross_site(headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if matches!(site, Some("cross-site" | "same-site")) {
        return true;
    }
    let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let origin_host = origin.split_once("://").map(|(_, rest)| rest);
    origin == "null" || origin_host != host
}

/// A cookie's value from the request.
pub fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// `Set-Cookie` for the console: HttpOnly, SameSite as given, Secure when served over TLS.
pub fn set_cookie(
    name: &str,
    value: &str,
    max_age: u64,
    same_site: &str,
    secure: bool,
) -> HeaderValue {
    let secure = if secure { "; Secure" } else { "" };
    let text = format!(
        "{name}={value}; Path=/console; Max-Age={max_age}; HttpOnly; SameSite={same_site}{secure}"
    );
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

/// The caller's login, or `Unauthenticated`: the sealed cookie must open with this deployment's
/// key, be unexpired and not logged out (on any replica).
pub async fn login(console: &Console, headers: &HeaderMap) -> Result<Arc<Login>, ConsoleError> {
    let cookie = cookie(headers, COOKIE).ok_or(ConsoleError::Unauthenticated)?;
    let login = console
        .logins
        .get(cookie)
        .await
        .ok_or(ConsoleError::Unauthenticated)?;
    Ok(Arc::new(login))
}

/// The form's CSRF token must be the login's.
pub fn check_csrf(login: &Login, form_token: &str) -> Result<(), ConsoleError> {
    if same(&login.csrf, form_token) {
        Ok(())
    } else {
        Err(ConsoleError::Csrf)
    }
}

pub async fn not_found() -> Response {
    ConsoleError::NotFound.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn cross_site_posts_are_recognised() {
        assert!(!cross_site(&headers(&[("host", "gw:8080")])));
        assert!(!cross_site(&headers(&[
            ("host", "gw:8080"),
            ("origin", "http://gw:8080")
        ])));
        assert!(cross_site(&headers(&[
            ("host", "gw:8080"),
            ("origin", "http://evil.example")
        ])));
        assert!(cross_site(&headers(&[
            ("host", "gw:8080"),
            ("origin", "null")
        ])));
        assert!(cross_site(&headers(&[
            ("host", "gw"),
            ("sec-fetch-site", "cross-site")
        ])));
        assert!(!cross_site(&headers(&[
            ("host", "gw"),
            ("sec-fetch-site", "same-origin")
        ])));
    }

    #[test]
    fn hosts_and_cookies() {
        let allowed = vec!["localhost".to_owned()];
        assert!(host_allowed(
            &allowed,
            &headers(&[("host", "localhost:8080")])
        ));
        assert!(!host_allowed(
            &allowed,
            &headers(&[("host", "evil.example")])
        ));
        assert!(host_allowed(&[], &headers(&[("host", "anything")])));
        let h = headers(&[("cookie", "a=1; reflow_console=xyz"), ("cookie", "b=2")]);
        assert_eq!(cookie(&h, COOKIE), Some("xyz"));
        assert_eq!(cookie(&h, "b"), Some("2"));
        assert_eq!(cookie(&h, "c"), None);
    }
}
