//! The MCP server side (axum): `/mcp` for every target, `/mcp/{ns}/{target}` for one, legacy `/sse`,
//! with Host/Origin checks, body limits, authentication, sessions, health and metrics endpoints.

mod client_stream;
mod cross_replica;
mod dispatch;
mod endpoints;
use endpoints::{find_session, owned_session, session_not_found};
mod forward;
mod forward_stateless;
mod handoff;
mod hardening;
mod hygiene;
mod instances;
mod legacy_sse;
mod list_audit;
mod list_cache;
mod list_changed;
pub mod listener;
mod log_fanout;
mod mrtr;
pub mod net;
mod pins;
mod preamble;
mod proxy;
mod rate_limit;
mod recycle;
mod relay;
mod resource_uri;
mod stateless;
mod stateless_call;
mod streams;
mod subscriptions;
mod tls;
mod upcalls;

use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use reflow_crds::{Identity, SealingKey};
use serde::Deserialize;
use serde_json::Value;
use tracing::{Instrument, Span, field, info_span};

use crate::audit::{AuditEvent, AuditSink, now_ms};
use crate::authn::{self, Authenticate, Principal};
use crate::identity_token::{IdentitySigner, IdentityTokenError, IdentityTokensConfig, JWKS_PATH};
use crate::jsonrpc::{self, Message};
use crate::metrics::{Metrics, RequestLabels};
use crate::session::{Scope, Session, SessionStore};
use crate::source::SnapshotStore;
use crate::upstream::instance::{ControllerApi, Instances, InstancesConfig};
use crate::upstream::{
    PROTOCOL_HEADER, SESSION_HEADER, StdioConfig, UpstreamClient, UpstreamError,
};
use net::Peer;

pub(crate) use client_stream::accepts;
pub use dispatch::{LATEST_PROTOCOL, SUPPORTED_PROTOCOLS};
pub use handoff::ReplicasConfig;
pub use hardening::{CorsConfig, HttpConfig, LimitedListener, LimitedStream, PeerAddr};
use preamble::{
    authenticate, base_url, check_host_origin, continue_caller_trace, json_response,
    request_trace_id, rpc_failure, trace_id,
};
pub use proxy::TrustedProxyConfig;
pub use relay::TARGET_META;
pub use streams::StreamError;
pub(crate) use streams::plain_sse;
pub use tls::{ClientAuth, ClientIdentity, TlsConfig, TlsError, TlsListener, UserFrom};
pub use upcalls::UpcallError;

pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";

/// The decider named in audit events for a revoked token.
const REVOKED_BY: &str = "token-revocation";

/// Server settings (also read from `--config FILE` as YAML, camelCase keys).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GatewayConfig {
    /// Largest accepted request body; larger bodies get 413.
    pub max_body_bytes: usize,
    /// Accepted `Host` values (`name` or `name:port`); empty accepts any host.
    pub allowed_hosts: Vec<String>,
    /// Accepted cross-origin `Origin`s (exact, or `*`). Same-origin requests are always accepted.
    pub allowed_origins: Vec<String>,
    pub session_idle_seconds: u64,
    pub connect_timeout_ms: u64,
    /// Public base URL (`https://mcp.example.com`) for RFC 9728 metadata; derived from Host if unset.
    pub public_url: Option<String>,
    /// Security headers, CORS, security.txt and request/connection limits.
    pub http: HttpConfig,
    /// Identity asserted by an authenticating proxy (off unless configured).
    pub trusted_proxy: Option<TrustedProxyConfig>,
    /// Signing of identity tokens forwarded to opted-in Targets.
    pub identity_tokens: IdentityTokensConfig,
    /// TLS (and mutual TLS) on the listener; plain HTTP when absent.
    pub tls: Option<TlsConfig>,
    /// STDIO process manager: process limits, HOME folders, stop grace, restart backoff.
    pub stdio: StdioConfig,
    /// How long a client has to answer a relayed server-to-client request (sampling,
    /// elicitation, roots) before the upstream gets an error.
    pub client_answer_timeout_ms: u64,
    /// `kubernetes` Targets: how long a call waits for its instance, polling, use reports.
    pub instances: InstancesConfig,
    /// How often a legacy HTTP+SSE stream (`GET /sse`) gets a keep-alive comment.
    pub sse_keepalive_ms: u64,
    /// Sessions and requests in flight per user and in total (`limits`).
    pub limits: crate::limits::LimitsConfig,
    /// How replicas sharing a database hand requests to each other (`handoff`).
    pub replicas: ReplicasConfig,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            max_body_bytes: 1024 * 1024,
            allowed_hosts: Vec::new(),
            allowed_origins: Vec::new(),
            session_idle_seconds: 3600,
            connect_timeout_ms: 5_000,
            public_url: None,
            http: HttpConfig::default(),
            trusted_proxy: None,
            identity_tokens: IdentityTokensConfig::default(),
            tls: None,
            stdio: StdioConfig::default(),
            client_answer_timeout_ms: 120_000,
            instances: InstancesConfig::default(),
            sse_keepalive_ms: 15_000,
            limits: crate::limits::LimitsConfig::default(),
            replicas: ReplicasConfig::default(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("upstream client: {0}")]
    Upstream(#[from] UpstreamError),
    #[error("{0}")]
    IdentityTokens(#[from] IdentityTokenError),
}

impl GatewayError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Upstream(e) => e.label(),
            Self::IdentityTokens(_) => "identity_tokens",
        }
    }
}

/// What the gateway is built from (by `App::build`, the one wiring entry).
pub(crate) struct Parts {
    pub config: GatewayConfig,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    pub key: SealingKey,
    pub bus: Option<Arc<dyn crate::postgres::NotificationBus>>,
    pub instances: Option<ControllerApi>,
    pub observed: Arc<crate::observed::Observations>,
    pub controller_link: Option<Arc<crate::controller_client::ControllerLink>>,
    /// The replica registry: requests for what another replica owns are handed to it.
    pub replicas: Option<Arc<crate::postgres::ReplicaRegistry>>,
}

pub struct Gateway {
    pub config: GatewayConfig,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    key: SealingKey,
    upstream: UpstreamClient,
    conns: forward::Conns,
    /// MCPInstances of `kubernetes` Targets (served only once a controller is set).
    instances: Instances,
    guard: Arc<hardening::Guard>,
    limits: Arc<crate::limits::Limits>,
    /// Signs identity tokens for Targets that forward identities; its keys are the JWKS.
    pub(crate) signer: IdentitySigner,
    /// Where links of sessions that expire outside a request are closed.
    runtime: Option<tokio::runtime::Handle>,
    /// Each session's SSE streams (GET and streamed POST replies) and cancellable requests.
    hubs: streams::Hubs,
    /// Server-to-client requests waiting for the client's answer.
    upcalls: Arc<upcalls::Upcalls>,
    /// Calls of stateless clients waiting for their input (multi round-trip requests).
    parking: mrtr::Parking,
    /// Answers of stateless upstreams that their `ttlMs`/`cacheScope` let the gateway reuse.
    list_cache: list_cache::ListCache,
    /// Resource subscriptions held on stateless upstreams as listen streams.
    listen_subs: forward_stateless::ListenSubscriptions,
    /// The notification bus to other replicas, when sessions are shared (Postgres).
    bus: std::sync::OnceLock<cross_replica::BusLink>,
    /// Subscribers per resource on shared STDIO children.
    subscriptions: subscriptions::SharedSubscriptions,
    /// The sessions using each STDIO child and the log level each asked for.
    child_levels: log_fanout::ChildLevels,
    /// What this dataplane saw of each upstream (tool digests for pins, reported to the
    /// controller for Target status).
    pub observed: Arc<crate::observed::Observations>,
    /// The controller link (controller mode), for `/metrics` and the opt-in `/readyz` cut-off.
    controller_link: Option<Arc<crate::controller_client::ControllerLink>>,
    /// Itself, for what outlives a request (upstream GET streams relaying to a session).
    me: Weak<Self>,
    /// Policy rate limits on this replica.
    rate_limiter: reflow_crds::rate_limiter::RateLimiter,
    /// Hands requests to the replica that owns their session (with a replica registry).
    handoff: Option<handoff::Handoff>,
}

impl Gateway {
    pub(crate) fn new(p: Parts) -> Result<Arc<Self>, GatewayError> {
        let upstream = UpstreamClient::with_stdio(
            Duration::from_millis(p.config.connect_timeout_ms),
            p.config.stdio.clone(),
        )?;
        let guard = hardening::Guard::new(&p.config.http);
        let limits = crate::limits::Limits::new(p.config.limits.clone());
        let signer =
            IdentitySigner::from_config(&p.config.identity_tokens, p.config.public_url.as_deref())?;
        let answer_timeout = Duration::from_millis(p.config.client_answer_timeout_ms);
        let idle = Duration::from_secs(p.config.session_idle_seconds.max(1));
        let instances = Instances::new(p.config.instances.clone());
        if let Some(api) = p.instances {
            instances.use_controller(api);
        }
        let bus = p.bus;
        let handoff = match p.replicas {
            Some(r) => Some(
                handoff::Handoff::new(r, &p.config.replicas)
                    .map_err(|e| GatewayError::Upstream(UpstreamError::Client(e.to_string())))?,
            ),
            None => None,
        };
        let gw = Arc::new_cyclic(|weak: &Weak<Self>| {
            // Sessions the store expires (idle) take their upstream links with them.
            let expiring = weak.clone();
            p.sessions.on_expire(Arc::new(move |id: &str| {
                if let Some(gw) = expiring.upgrade() {
                    gw.close_session_links(id);
                }
            }));
            Self {
                config: p.config,
                snapshots: p.snapshots,
                sessions: p.sessions,
                auth: p.auth,
                audit: p.audit,
                metrics: p.metrics,
                key: p.key,
                upstream,
                conns: forward::Conns::default(),
                instances,
                guard,
                limits,
                signer,
                runtime: tokio::runtime::Handle::try_current().ok(),
                hubs: streams::Hubs::default(),
                upcalls: upcalls::Upcalls::new(answer_timeout),
                parking: mrtr::Parking::default(),
                list_cache: list_cache::ListCache::default(),
                listen_subs: Default::default(),
                bus: std::sync::OnceLock::new(),
                subscriptions: Default::default(),
                child_levels: Default::default(),
                observed: p.observed,
                controller_link: p.controller_link,
                me: weak.clone(),
                rate_limiter: Default::default(),
                handoff,
            }
        });
        let weak = Arc::downgrade(&gw);
        gw.upstream.stdio().set_session_relay(Arc::new(
            move |sid: &str, target, inbound| match weak.upgrade() {
                Some(gw) => gw.relay_to_session(sid, target, inbound),
                None => crate::upstream::unroutable(inbound),
            },
        ));
        let weak = Arc::downgrade(&gw);
        gw.upstream.stdio().set_shared_relay(Arc::new(
            move |child: &str, target, inbound| match weak.upgrade() {
                Some(gw) => gw.relay_shared(child, target, inbound),
                None => Some(inbound),
            },
        ));
        if let Some(bus) = bus {
            gw.attach_bus(bus);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            list_changed::follow_snapshots(Arc::downgrade(&gw), &gw.snapshots, &rt);
            let weak = Arc::downgrade(&gw);
            rt.spawn(async move {
                let mut tick = tokio::time::interval(idle.min(Duration::from_secs(60)));
                loop {
                    tick.tick().await;
                    let Some(gw) = weak.upgrade() else { return };
                    gw.hubs.sweep(idle);
                }
            });
        }
        Ok(gw)
    }

    /// Stops every STDIO child gracefully (stdin closed, then SIGTERM, then SIGKILL).
    pub async fn shutdown(&self) {
        self.upstream.stdio().shutdown().await;
    }

    /// The STDIO process pool (live children, counters).
    pub fn stdio(&self) -> &Arc<crate::upstream::stdio::StdioPool> {
        self.upstream.stdio()
    }

    /// Forgets a session's upstream links and closes them in the background: DELETE for
    /// Streamable HTTP sessions (best effort), ending the stream for legacy SSE ones, stopping
    /// the session's own children of stateful STDIO targets.
    pub(crate) fn close_session_links(self: &Arc<Self>, session_id: &str) {
        self.hubs.remove(session_id);
        self.upcalls.drop_session(session_id);
        self.drop_listen_subscriptions(session_id);
        let rt = tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone());
        if let Some(rt) = &rt {
            let gw = self.clone();
            let sid = session_id.to_owned();
            rt.spawn(async move {
                gw.release_subscriptions(&sid, |_| true).await;
                gw.release_levels(&sid, |_| true).await;
                gw.upstream.stdio().end_session(&sid).await
            });
        }
        let Some(links) = self.conns.remove_session(session_id) else {
            return;
        };
        let snapshot = self.snapshots.load();
        let gw = self.clone();
        let close = async move {
            let identity = links.identity;
            for (key, cell) in links.links {
                let Some((ns, name)) = key.split_once('/') else {
                    continue;
                };
                let Some(target) = snapshot.target(ns, name) else {
                    continue;
                };
                let link = cell.lock().await.clone();
                let creds = target.credentials.resolve(&identity);
                match crate::upstream::InjectedHeaders::open(&creds, &gw.key) {
                    Ok(h) => gw.upstream.close_link(target, &h, &link).await,
                    // No headers needed to end a stream; dropping `cell` and `link` closes it too.
                    Err(_) => {
                        gw.upstream
                            .close_link(target, &Default::default(), &link)
                            .await
                    }
                }
            }
        };
        match tokio::runtime::Handle::try_current()
            .ok()
            .or_else(|| self.runtime.clone())
        {
            Some(rt) => {
                rt.spawn(close);
            }
            // No runtime to close on: dropping the links still ends legacy streams.
            None => drop(close),
        }
    }
}

/// The router as a service that records each connection's peer address, which token source
/// ranges and trusted proxies need: serve with `axum::serve(listener, gateway::service(gw))`.
/// A server built from [`router`] alone refuses source-limited tokens (fail closed).
/// Works with a plain `TcpListener` or a [`LimitedListener`].
pub fn service(
    gw: Arc<Gateway>,
) -> axum::extract::connect_info::IntoMakeServiceWithConnectInfo<Router, PeerAddr> {
    router(gw).into_make_service_with_connect_info::<PeerAddr>()
}

/// The whole HTTP surface: MCP endpoints, RFC 9728 metadata, `/metrics`, `/healthz`, `/readyz`.
pub fn router(gw: Arc<Gateway>) -> Router {
    let limit = gw.config.max_body_bytes;
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
            get(|State(gw): State<Arc<Gateway>>| async move { hardening::security_txt(&gw.guard) }),
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
            gw.guard.clone(),
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

/// The `target` label of requests that reached no target.
static NO_TARGET: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));

impl Gateway {
    /// A request refused for what its token is (revoked, out of scope) before it reached a
    /// session; its row carries the request's trace id like every other row.
    fn audit_token_refusal(
        &self,
        identity: &Identity,
        by: &str,
        outcome: &str,
        headers: &HeaderMap,
    ) {
        self.audit.record(AuditEvent {
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

    fn count(
        &self,
        method: impl Into<std::borrow::Cow<'static, str>>,
        target: Option<Arc<str>>,
        outcome: &'static str,
        started: Instant,
    ) {
        let labels = RequestLabels {
            method: method.into(),
            target: target.unwrap_or_else(|| NO_TARGET.clone()),
            outcome,
        };
        self.metrics.requests.get_or_create(&labels).inc();
        self.metrics
            .request_seconds
            .get_or_create(&labels)
            .observe(started.elapsed().as_secs_f64());
    }
}
