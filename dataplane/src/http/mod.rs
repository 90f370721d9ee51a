//! The HTTP surface (axum): `/mcp` for every target, `/mcp/{ns}/{target}` for one, legacy `/sse`,
//! the stateless envelope, with Host/Origin checks, body limits, authentication, hardening, TLS,
//! the connection loop, and the health, metrics and metadata endpoints; requests go on to the
//! MCP router (`crate::mcp`).

mod admission;
use admission::{Admitted, read_message, store_unavailable};
mod client_stream;
mod connect;
mod connect_cimd;
mod connect_oauth;
mod connect_page;
mod connect_paste;
mod endpoints;
mod handoff;
use endpoints::{find_session, owned_session, session_not_found};
mod hardening;
mod hygiene;
mod legacy_sse;
pub mod listener;
pub mod net;
pub mod percore;
mod preamble;
mod proxy;
pub(crate) mod render;
mod stateless;
mod tls;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reflow_crds::Identity;
use serde_json::Value;
use tracing::{Instrument, Span, field, info_span};

use crate::authn;
use crate::identity_token::JWKS_PATH;
use crate::jsonrpc::{self, Message};
use crate::mcp::{Gateway, SUPPORTED_PROTOCOLS, UpcallError, call, streams};
use crate::session::{Scope, Session};
use crate::upstream::{PROTOCOL_HEADER, SESSION_HEADER};
use net::Peer;

pub use crate::server_config::{
    ClientAuth, ClientIdentity, CorsConfig, HttpConfig, TlsConfig, TrustedProxyConfig, UserFrom,
};
pub(crate) use client_stream::accepts;
pub use hardening::Guard;
pub use hardening::{LimitedListener, LimitedStream, PeerAddr};
pub(crate) use preamble::request_trace_id;
use preamble::{
    base_url, check_host_origin, continue_caller_trace, json_response, rpc_failure, trace_id,
};
pub use tls::{TlsError, TlsListener};

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The router as a service that records each connection's peer address, which token source
/// ranges and trusted proxies need: serve with `axum::serve(listener, http::service(gw))`.
/// A server built from [`router`] alone refuses source-limited tokens (fail closed).
/// Works with a plain `TcpListener` or a [`LimitedListener`].
pub fn service(
    gw: Arc<Gateway>,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, PeerAddr> {
    let guard = Guard::new(&gw.config.http);
    router(gw, guard).into_make_service_with_connect_info::<PeerAddr>()
}

/// The whole HTTP surface: MCP endpoints, RFC 9728 metadata, `/metrics`, `/healthz`, `/readyz`.
/// `guard` (the hardening settings and the in-flight cap) is shared by every router built
/// with it.
pub fn router(gw: Arc<Gateway>, guard: Arc<Guard>) -> Router {
    let limit = gw.config.max_body_bytes;
    let txt_guard = guard.clone();
    Router::new()
        .route(
            "/mcp",
            get(client_stream::get_aggregated)
                .post(endpoints::post_aggregated)
                .delete(endpoints::delete_aggregated),
        )
        .route(
            "/mcp/{namespace}/{target}",
            get(client_stream::get_target)
                .post(endpoints::post_target)
                .delete(endpoints::delete_target),
        )
        .route("/sse", get(legacy_sse::get_aggregated))
        .route("/sse/{namespace}/{target}", get(legacy_sse::get_target))
        .route("/messages", post(legacy_sse::post_aggregated))
        .route(
            "/messages/{namespace}/{target}",
            post(legacy_sse::post_target),
        )
        .route(METADATA_PATH, get(metadata))
        .route(&format!("{METADATA_PATH}/{{*rest}}"), get(metadata))
        .route(crate::mcp::CONNECT_PATH, get(connect_page::index))
        .route(
            &format!("{}/callback", crate::mcp::CONNECT_PATH),
            get(connect_oauth::callback),
        )
        .route(connect_paste::PASTE_PATH, post(connect_paste::paste))
        .route(
            connect_cimd::CLIENT_METADATA_PATH,
            get(connect_cimd::document),
        )
        .route(
            &format!("{}/{{link}}", crate::mcp::CONNECT_PATH),
            get(connect::show).post(connect::submit),
        )
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/robots.txt", get(hardening::robots_txt))
        .route(
            JWKS_PATH,
            get(|State(gw): State<Arc<Gateway>>| async move {
                axum::Json(gw.signer.jwks().clone()).into_response()
            }),
        )
        .route(
            "/.well-known/security.txt",
            get(move || async move { hardening::security_txt(&txt_guard) }),
        )
        .layer(DefaultBodyLimit::max(limit))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            handoff::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            gw.clone(),
            hygiene::middleware,
        ))
        .layer(axum::middleware::from_fn_with_state(
            guard,
            hardening::middleware,
        ))
        .with_state(gw)
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if let Some(age) = gw
        .controller_link
        .as_ref()
        .and_then(|l| l.cut_off_too_long())
    {
        // Opt-in (`--cutoff-unready-after`): better no traffic than an out-of-date policy.
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "cut off from the controller for {}s; the served snapshot may be out of date",
                age.as_secs()
            ),
        )
            .into_response();
    }
    if gw.snapshots.is_ready() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "no snapshot yet").into_response()
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    gw.metrics.sessions.set(gw.sessions.count() as i64);
    gw.metrics.sync_audit_dropped(gw.audit.dropped());
    gw.metrics.sync_audit_stalls(gw.audit.stalls());
    gw.metrics.sync_stdio(gw.upstream.stdio().stats());
    gw.metrics.audit_writable.set(i64::from(gw.audit.healthy()));
    if let Some(link) = &gw.controller_link {
        gw.metrics
            .controller_link_up
            .set(i64::from(link.connected()));
        gw.metrics
            .snapshot_age
            .set(i64::try_from(link.snapshot_age().as_secs()).unwrap_or(i64::MAX));
    }
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        gw.metrics.render(),
    )
        .into_response()
}

async fn metadata(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    let resource = format!("{}/mcp", base_url(&gw, &headers));
    axum::Json(authn::resource_metadata(gw.auth.as_ref(), &resource)).into_response()
}
