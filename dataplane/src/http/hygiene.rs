//! Request hygiene in front of every route: the Host (and Origin) check everywhere but the
//! probes, 415/406 for MCP POSTs a client could not mean, and no metadata for a foreign Host.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{Gateway, METADATA_PATH, check_host_origin};

/// Paths kubelet probes use with the pod IP as Host: never Host-checked.
const PROBES: [&str; 2] = ["/healthz", "/readyz"];

/// Paths that take JSON-RPC POSTs.
fn is_rpc_post(req: &Request) -> bool {
    let path = req.uri().path();
    req.method() == Method::POST
        && (path == "/mcp"
            || path.starts_with("/mcp/")
            || path == "/messages"
            || path.starts_with("/messages/"))
}

pub(crate) async fn middleware(
    State(gw): State<Arc<Gateway>>,
    req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path();
    if !PROBES.contains(&path) {
        if let Err(refusal) = check_host_origin(&gw.config, req.headers()) {
            return refusal.into_response();
        }
        if path.starts_with(METADATA_PATH) && !names_itself(&gw, req.headers()) {
            return (
                StatusCode::MISDIRECTED_REQUEST,
                "set gateway.publicUrl or gateway.allowedHosts to serve metadata for this host",
            )
                .into_response();
        }
    }
    if is_rpc_post(&req)
        && let Err(refusal) = check_media(req.headers())
    {
        return refusal.into_response();
    }
    next.run(req).await
}

/// Whether the metadata may name `Host` as the resource: a public URL is configured (the Host
/// is not used), the Host passed a configured allow-list, or it is an address or `localhost`
/// (no name a DNS-rebinding page could have pointed here).
fn names_itself(gw: &Gateway, headers: &HeaderMap) -> bool {
    if gw.config.public_url.is_some() || !gw.config.allowed_hosts.is_empty() {
        return true;
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split_once(']').map_or(rest, |(n, _)| n),
        None => host.rsplit_once(':').map_or(host, |(n, _)| n),
    };
    name.eq_ignore_ascii_case("localhost") || name.parse::<IpAddr>().is_ok()
}

/// 415 unless the body is declared JSON; 406 unless the client accepts JSON or SSE.
fn check_media(headers: &HeaderMap) -> Result<(), (StatusCode, &'static str)> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if essence != "application/json" {
        return Err((
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "POST a JSON-RPC message with Content-Type: application/json",
        ));
    }
    let Some(accept) = headers.get(header::ACCEPT) else {
        return Ok(());
    };
    let accept = accept.to_str().unwrap_or("");
    let acceptable = accept.split(',').any(|range| {
        let range = range.split(';').next().unwrap_or("").trim();
        // `text/*` covers text/event-stream, `application/*` covers JSON.
        [
            "application/json",
            "text/event-stream",
            "*/*",
            "application/*",
            "text/*",
        ]
        .iter()
        .any(|ok| range.eq_ignore_ascii_case(ok))
    });
    if !acceptable {
        return Err((
            StatusCode::NOT_ACCEPTABLE,
            "accept application/json and text/event-stream",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::http::HeaderValue;

    use super::*;

    fn headers(ct: Option<&str>, accept: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(ct) = ct {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_str(ct).expect("ct"));
        }
        if let Some(a) = accept {
            h.insert(header::ACCEPT, HeaderValue::from_str(a).expect("accept"));
        }
        h
    }

    #[test]
    fn media_types_are_checked() {
        let ok = |ct, a| check_media(&headers(ct, a)).map_err(|(s, _)| s.as_u16());
        assert_eq!(ok(Some("application/json"), None), Ok(()));
        assert_eq!(
            ok(Some("Application/JSON; charset=utf-8"), Some("*/*")),
            Ok(())
        );
        assert_eq!(
            ok(
                Some("application/json"),
                Some("application/json, text/event-stream")
            ),
            Ok(())
        );
        assert_eq!(ok(Some("text/plain"), None), Err(415));
        assert_eq!(ok(None, None), Err(415));
        assert_eq!(ok(Some("application/json"), Some("text/html")), Err(406));
        assert_eq!(ok(Some("application/json"), Some("image/*")), Err(406));
    }
}
