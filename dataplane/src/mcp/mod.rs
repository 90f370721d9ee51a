//! The MCP router, transport-agnostic: a session's requests dispatched by method, relayed to
//! their upstreams and answered (with progress, logging and server-to-client requests on the
//! session's streams), subscriptions, log fan-out, list cache and list_changed, pins, rate
//! limits, parked calls of stateless clients and cross-replica delivery.

pub(crate) mod answer;
pub(crate) mod authz;
pub(crate) mod call;
mod connect_gate;
mod connections_tool;
mod cross_replica;
pub(crate) mod dispatch;
mod forward;
mod forward_stateless;
pub(crate) mod handoff;
mod instances;
mod list_cache;
pub(crate) mod list_changed;
mod log_fanout;
pub(crate) mod mrtr;
mod pins;
pub(crate) mod protocol;
pub(crate) mod rate_limit;
mod recycle;
pub(crate) mod relay;
mod resource_uri;
mod stateless_call;
pub(crate) mod streams;
mod subscriptions;
mod token_exchange;
pub(crate) mod upcalls;

use std::sync::{Arc, LazyLock, Weak};
use std::time::{Duration, Instant};

use reflow_crds::SealingKey;
use serde::Deserialize;

use crate::audit::AuditSink;
use crate::authn::Authenticate;
use crate::identity_token::{IdentitySigner, IdentityTokenError, IdentityTokensConfig};
use crate::metrics::{Metrics, RequestLabels};
use crate::server_config::{HttpConfig, TlsConfig, TrustedProxyConfig};
use crate::session::SessionStore;
use crate::source::SnapshotStore;
use crate::upstream::instance::{ControllerApi, Instances, InstancesConfig};
use crate::upstream::{StdioConfig, ToSessions, UpstreamClient, UpstreamError, Upstreams};

pub use connect_gate::{CONNECT_PATH, URL_ELICITATION_REQUIRED};
pub use handoff::ReplicasConfig;
pub use protocol::{LATEST_PROTOCOL, SUPPORTED_PROTOCOLS, TARGET_META};
pub use streams::StreamError;
pub use upcalls::UpcallError;

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
    /// The web console at `/console` (off by default).
    pub console: crate::console::ConsoleConfig,
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
            console: crate::console::ConsoleConfig::default(),
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
    #[error("console: {0}")]
    Console(#[from] crate::console::ConsoleError),
}

impl GatewayError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Upstream(e) => e.label(),
            Self::IdentityTokens(_) => "identity_tokens",
            Self::Console(e) => e.label(),
        }
    }
}

/// What the gateway is built from: the settings and every store and link it uses. Optional
/// parts are chosen before the build (`app::AppConfig` is these parts and the console's
/// wiring); a built gateway is never patched afterwards.
pub struct Parts {
    pub gateway: GatewayConfig,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    pub key: SealingKey,
    /// The notification bus to other replicas (sessions shared in Postgres); none for one replica.
    pub bus: Option<Arc<dyn crate::postgres::NotificationBus>>,
    /// The controller's instance API (controller mode): `kubernetes` Targets are served through
    /// it; without it they answer an error at once.
    pub instances: Option<ControllerApi>,
    /// What the gateway observes of each upstream (reported to the controller, read by pins).
    pub observed: Arc<crate::observed::Observations>,
    /// The controller link (controller mode): its state is in `/metrics` and, opt-in, `/readyz`.
    pub controller_link: Option<Arc<crate::controller_client::ControllerLink>>,
    /// Where users' connections (`spec.userCredential`) are kept in standalone mode.
    pub connections: Option<crate::connect::ConnectionStore>,
    /// Controller mode: connections are handed to the controller (wins over `connections`).
    pub grant_store: Option<Arc<dyn crate::connect::GrantStore>>,
    /// The replica registry (database and replica token): requests for sessions another replica
    /// owns are handed to it; none keeps every request on this replica.
    pub replicas: Option<Arc<crate::postgres::ReplicaRegistry>>,
}

pub struct Gateway {
    pub config: GatewayConfig,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    pub(crate) key: SealingKey,
    /// Every upstream, whatever its transport, and the sessions' upstream sessions.
    pub(crate) upstream: Upstreams,
    pub(crate) limits: Arc<crate::limits::Limits>,
    /// Signs identity tokens for Targets that forward identities; its keys are the JWKS.
    pub(crate) signer: IdentitySigner,
    /// Where links of sessions that expire outside a request are closed.
    pub(crate) runtime: Option<tokio::runtime::Handle>,
    /// Each session's SSE streams (GET and streamed POST replies) and cancellable requests.
    pub(crate) hubs: streams::Hubs,
    /// Server-to-client requests waiting for the client's answer.
    pub(crate) upcalls: Arc<upcalls::Upcalls>,
    /// Calls of stateless clients waiting for their input (multi round-trip requests).
    pub(crate) parking: mrtr::Parking,
    /// Answers of stateless upstreams that their `ttlMs`/`cacheScope` let the gateway reuse.
    pub(crate) list_cache: list_cache::ListCache,
    /// The notification bus to other replicas, when sessions are shared (Postgres).
    pub(crate) bus: std::sync::OnceLock<cross_replica::BusLink>,
    /// Subscribers per resource on shared STDIO children.
    pub(crate) subscriptions: subscriptions::SharedSubscriptions,
    /// The sessions using each STDIO child and the log level each asked for.
    pub(crate) child_levels: log_fanout::ChildLevels,
    /// What this dataplane saw of each upstream (tool digests for pins, reported to the
    /// controller for Target status).
    pub observed: Arc<crate::observed::Observations>,
    /// The controller link (controller mode), for `/metrics` and the opt-in `/readyz` cut-off.
    pub(crate) controller_link: Option<Arc<crate::controller_client::ControllerLink>>,
    /// Itself, for what outlives a request (upstream GET streams relaying to a session).
    pub(crate) me: Weak<Self>,
    /// Policy rate limits on this replica.
    pub(crate) rate_limiter: reflow_crds::rate_limiter::RateLimiter,
    /// Live connect links (`spec.userCredential`) minted by this replica.
    pub(crate) connect_links: crate::connect::ConnectLinks,
    /// Where connections are stored (the local folder, or the controller); none: connecting is
    /// not available here.
    pub(crate) connections: Option<Arc<dyn crate::connect::GrantStore>>,
    /// `mode: oauth2`: flows in flight, registered clients, the grants' refresher (standalone).
    pub(crate) oauth: crate::connect::OAuthSide,
    /// Hands requests to the replica that owns their session (with a replica registry).
    pub(crate) handoff: Option<handoff::Handoff>,
    /// `mode: tokenExchange`: exchanged tokens (sealed) and exchanges in flight.
    pub(crate) exchanges: crate::connect::exchange::Exchanges,
}

impl Gateway {
    pub(crate) fn new(p: Parts) -> Result<Arc<Self>, GatewayError> {
        let (to_sessions, unprompted) = ToSessions::channel();
        let upstream = UpstreamClient::with_stdio(
            Duration::from_millis(p.gateway.connect_timeout_ms),
            p.gateway.stdio.clone(),
            to_sessions,
        )?;
        let limits = crate::limits::Limits::new(p.gateway.limits.clone());
        let signer = IdentitySigner::from_config(
            &p.gateway.identity_tokens,
            p.gateway.public_url.as_deref(),
        )?;
        let answer_timeout = Duration::from_millis(p.gateway.client_answer_timeout_ms);
        let idle = Duration::from_secs(p.gateway.session_idle_seconds.max(1));
        let instances = Instances::new(p.gateway.instances.clone());
        if let Some(api) = p.instances {
            instances.use_controller(api);
        }
        let upstream = Upstreams::new(upstream, instances, p.sessions.clone(), p.key.clone());
        let bus = p.bus;
        let handoff = match p.replicas {
            Some(r) => Some(
                handoff::Handoff::new(r, &p.gateway.replicas)
                    .map_err(|e| GatewayError::Upstream(UpstreamError::Client(e.to_string())))?,
            ),
            None => None,
        };
        let journal = handoff.as_ref().map(|h| h.registry.journal().clone());
        let oauth = crate::connect::OAuthSide::with_store(
            p.connections.clone(),
            p.audit.clone(),
            tokio::runtime::Handle::try_current().ok().as_ref(),
        );
        let gw = Arc::new_cyclic(|weak: &Weak<Self>| {
            // Sessions the store expires (idle) take their upstream links with them.
            let expiring = weak.clone();
            p.sessions.on_expire(Arc::new(move |id: &str| {
                if let Some(gw) = expiring.upgrade() {
                    gw.close_session_links(id);
                }
            }));
            Self {
                config: p.gateway,
                snapshots: p.snapshots,
                sessions: p.sessions,
                auth: p.auth,
                audit: p.audit,
                metrics: p.metrics,
                key: p.key,
                upstream,
                limits,
                signer,
                runtime: tokio::runtime::Handle::try_current().ok(),
                hubs: streams::Hubs::new(journal),
                upcalls: upcalls::Upcalls::new(answer_timeout),
                parking: mrtr::Parking::default(),
                list_cache: list_cache::ListCache::default(),
                bus: std::sync::OnceLock::new(),
                subscriptions: Default::default(),
                child_levels: Default::default(),
                observed: p.observed,
                controller_link: p.controller_link,
                me: weak.clone(),
                rate_limiter: Default::default(),
                connect_links: Default::default(),
                oauth,
                connections: p.grant_store.or_else(|| {
                    p.connections
                        .map(|s| Arc::new(s) as Arc<dyn crate::connect::GrantStore>)
                }),
                handoff,
                exchanges: Default::default(),
            }
        });
        if let Some(bus) = bus {
            gw.attach_bus(bus);
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            // Without a runtime the receiver is dropped: upstreams' messages outside calls
            // are then refused, as no session could take them.
            rt.spawn(relay::take_unprompted(Arc::downgrade(&gw), unprompted));
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
        let Some(links) = self.upstream.end_session(session_id) else {
            return;
        };
        let snapshot = self.snapshots.load();
        let gw = self.clone();
        let close = async move { gw.upstream.close_links(links, &snapshot).await };
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

/// The `target` label of requests that reached no target.
static NO_TARGET: LazyLock<Arc<str>> = LazyLock::new(|| Arc::from("-"));

impl Gateway {
    pub(crate) fn count(
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
