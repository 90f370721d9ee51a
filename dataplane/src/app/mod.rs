//! The one wiring entry: `App::build` assembles the gateway from its parts (stores, snapshot
//! source, authenticator, bus, instance API); the binary, the tests, the e2e harness and the bench all call it.

mod commands;
mod connections;
mod error;
mod serve;
mod stores;

use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use reflow_crds::SealingKey;

use crate::audit::AuditSink;
use crate::authn::Authenticate;
use crate::console::{self, Console};
use crate::http::{self, PeerAddr};
use crate::mcp::{Gateway, GatewayConfig, GatewayError, Parts};
use crate::metrics::Metrics;
use crate::postgres::NotificationBus;
use crate::session::SessionStore;
use crate::source::SnapshotStore;
use crate::upstream::instance::ControllerApi;

pub use commands::{
    AuditQuery, BridgeOptions, audit_query, install_bridge, mint_dev_token, run_bridge,
};
pub use error::AppError;
pub use serve::{ServeOptions, serve, shutdown_signal};
pub use stores::{Stores, stores};

/// Everything a gateway is built from: the router's parts (`mcp::Parts`, reached through this
/// type as its own fields: `config.bus = …`) and the console's wiring. Optional parts are
/// chosen here, before the build: a built `App` is never patched afterwards.
pub struct AppConfig {
    pub parts: Parts,
    /// The web console's extra parts (used only when `gateway.console.enabled`).
    pub console: ConsoleWiring,
}

impl std::ops::Deref for AppConfig {
    type Target = Parts;
    fn deref(&self) -> &Parts {
        &self.parts
    }
}

impl std::ops::DerefMut for AppConfig {
    fn deref_mut(&mut self) -> &mut Parts {
        &mut self.parts
    }
}

/// What the web console reads besides the gateway's own parts.
pub struct ConsoleWiring {
    /// Audit is read from Postgres when set (else from an in-memory ring of recent events).
    pub database: Option<crate::postgres::Database>,
    /// The user's upstream connections (bring-your-own credentials); none by default.
    pub connections: Arc<dyn console::Connections>,
    /// This dataplane's name on the admin page.
    pub dataplane: String,
    /// The replica registry, when replicas share a database: the admin page lists them all.
    pub replicas: Option<Arc<crate::postgres::ReplicaRegistry>>,
}

impl Default for ConsoleWiring {
    fn default() -> Self {
        Self {
            database: None,
            connections: Arc::new(console::NoConnections),
            dataplane: "this dataplane".to_owned(),
            replicas: None,
        }
    }
}

impl AppConfig {
    /// The required parts; fresh metrics, no bus, no instance API.
    pub fn new(
        gateway: GatewayConfig,
        snapshots: Arc<SnapshotStore>,
        sessions: Arc<dyn SessionStore>,
        auth: Arc<dyn Authenticate>,
        audit: Arc<dyn AuditSink>,
        key: SealingKey,
    ) -> Self {
        Self {
            parts: Parts {
                gateway,
                snapshots,
                sessions,
                auth,
                audit,
                metrics: Arc::new(Metrics::new()),
                key,
                bus: None,
                instances: None,
                observed: Arc::default(),
                controller_link: None,
                connections: None,
                grant_store: None,
                replicas: None,
            },
            console: ConsoleWiring::default(),
        }
    }

    pub fn with_connections(mut self, store: crate::connect::ConnectionStore) -> Self {
        self.connections = Some(store);
        self
    }

    pub fn with_bus(mut self, bus: Arc<dyn NotificationBus>) -> Self {
        self.bus = Some(bus);
        self
    }

    pub fn with_instances(mut self, api: ControllerApi) -> Self {
        self.instances = Some(api);
        self
    }
}

/// A built gateway: its HTTP surface and its shutdown.
#[derive(Clone)]
pub struct App {
    gateway: Arc<Gateway>,
    /// The HTTP hardening (one in-flight cap for every router of this app).
    guard: Arc<http::Guard>,
    console: Option<Arc<Console>>,
}

impl App {
    /// Builds the gateway with every part in place (must run inside a tokio runtime: the
    /// snapshot follower, the stream sweeper and the bus tasks are spawned here).
    pub fn build(config: AppConfig) -> Result<Self, GatewayError> {
        let AppConfig {
            parts: mut gateway_parts,
            console: mut wiring,
        } = config;
        let console_config = gateway_parts.gateway.console.clone();
        // With the console on, every audit event also passes its tap (ring + live stream).
        let tap = console_config.enabled.then(|| {
            console::AuditTap::new(
                gateway_parts.audit.clone(),
                console_config.ring_capacity.unwrap_or(10_000),
            )
        });
        if let Some(tap) = &tap {
            gateway_parts.audit = tap.clone();
        }
        let stored_connections = gateway_parts.connections.clone();
        let controller_grants = gateway_parts.grant_store.is_some();
        let registry = gateway_parts.replicas.clone();
        if let Some(r) = &registry {
            // Each heartbeat carries the snapshot this replica serves (the console lists them).
            let snapshots = gateway_parts.snapshots.clone();
            r.report_snapshot(Box::new(move || {
                let s = snapshots.load();
                (s.version(), s.hash().to_owned())
            }));
        }
        let guard = http::Guard::new(&gateway_parts.gateway.http);
        let gateway = Gateway::new(gateway_parts)?;
        wiring.replicas = registry;
        if stored_connections.is_some() || controller_grants {
            // The console lists what the connect pages stored (the local folder, or in
            // controller mode what the controller wrote, as the snapshot carries it).
            wiring.connections = Arc::new(connections::StoredConnections {
                store: stored_connections.filter(|_| !controller_grants),
                snapshots: gateway.snapshots.clone(),
                gateway: Arc::downgrade(&gateway),
            });
        }
        let console = match tap {
            Some(tap) => Some(build_console(&gateway, console_config, tap, wiring)?),
            None => None,
        };
        Ok(Self {
            gateway,
            guard,
            console,
        })
    }

    /// The gateway itself (its stores, metrics, STDIO pool), for inspection.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The whole HTTP surface: MCP endpoints, RFC 9728 metadata, `/metrics`, `/healthz`, `/readyz`.
    pub fn router(&self) -> Router {
        let router = http::router(self.gateway.clone(), self.guard.clone());
        match &self.console {
            Some(c) => router.merge(console::router(c.clone())),
            None => router,
        }
    }

    /// The router with each connection's peer address, as the binary serves it.
    pub fn service(&self) -> IntoMakeServiceWithConnectInfo<Router, PeerAddr> {
        self.router()
            .into_make_service_with_connect_info::<PeerAddr>()
    }

    /// Stops every STDIO child gracefully (stdin closed, then SIGTERM, then SIGKILL).
    pub async fn shutdown(&self) {
        self.gateway.shutdown().await;
    }
}

/// The console over the built gateway: ending a session from it is what `DELETE /mcp` does.
fn build_console(
    gw: &Arc<Gateway>,
    config: console::ConsoleConfig,
    tap: Arc<console::AuditTap>,
    wiring: ConsoleWiring,
) -> Result<Arc<Console>, GatewayError> {
    let weak = Arc::downgrade(gw);
    let end_session: console::EndSession = Arc::new(move |id: String| {
        let weak = weak.clone();
        Box::pin(async move {
            let Some(gw) = weak.upgrade() else {
                return false;
            };
            let deleted = gw.sessions.delete(&id).await.unwrap_or(false);
            gw.close_session_links(&id);
            deleted
        })
    });
    let parts = console::ConsoleParts {
        secure_cookies: gw.config.tls.is_some() || gw.config.console.secure_cookies,
        allowed_hosts: gw.config.allowed_hosts.clone(),
        key: gw.key.clone(),
        config,
        auth: gw.auth.clone(),
        sessions: gw.sessions.clone(),
        snapshots: gw.snapshots.clone(),
        observed: gw.observed.clone(),
        tap,
        database: wiring.database,
        end_session,
        connections: wiring.connections,
        dataplane: wiring.dataplane,
        replicas: wiring.replicas,
    };
    Ok(Console::new(parts)?)
}
