//! The one wiring entry: `App::build` assembles the gateway from its parts (stores, snapshot
//! source, authenticator, bus, instance API); the binary, the tests, the e2e harness and the bench all call it.

mod commands;
mod error;
mod serve;
mod stores;

use std::sync::Arc;

use axum::Router;
use axum::extract::connect_info::IntoMakeServiceWithConnectInfo;
use reflow_crds::SealingKey;

use crate::audit::AuditSink;
use crate::authn::Authenticate;
use crate::http::{self, PeerAddr};
use crate::mcp::{self, Gateway, GatewayConfig, GatewayError};
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

/// Everything a gateway is built from. Optional parts are chosen here, before the build: a
/// built `App` is never patched afterwards.
pub struct AppConfig {
    pub gateway: GatewayConfig,
    pub snapshots: Arc<SnapshotStore>,
    pub sessions: Arc<dyn SessionStore>,
    pub auth: Arc<dyn Authenticate>,
    pub audit: Arc<dyn AuditSink>,
    pub metrics: Arc<Metrics>,
    pub key: SealingKey,
    /// The notification bus to other replicas (sessions shared in Postgres); none for one replica.
    pub bus: Option<Arc<dyn NotificationBus>>,
    /// The controller's instance API (controller mode): `kubernetes` Targets are served through
    /// it; without it they answer an error at once.
    pub instances: Option<ControllerApi>,
    /// What the gateway observes of each upstream (reported to the controller, read by pins).
    pub observed: Arc<crate::observed::Observations>,
    /// The controller link (controller mode): its state is in `/metrics` and, opt-in, `/readyz`.
    pub controller_link: Option<Arc<crate::controller_client::ControllerLink>>,
    /// The replica registry (database and replica token): requests for sessions another replica
    /// owns are handed to it; none keeps every request on this replica.
    pub replicas: Option<Arc<crate::postgres::ReplicaRegistry>>,
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
            replicas: None,
        }
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
}

impl App {
    /// Builds the gateway with every part in place (must run inside a tokio runtime: the
    /// snapshot follower, the stream sweeper and the bus tasks are spawned here).
    pub fn build(config: AppConfig) -> Result<Self, GatewayError> {
        let gateway = Gateway::new(mcp::Parts {
            config: config.gateway,
            snapshots: config.snapshots,
            sessions: config.sessions,
            auth: config.auth,
            audit: config.audit,
            metrics: config.metrics,
            key: config.key,
            bus: config.bus,
            instances: config.instances,
            observed: config.observed,
            controller_link: config.controller_link,
            replicas: config.replicas,
        })?;
        Ok(Self { gateway })
    }

    /// The gateway itself (its stores, metrics, STDIO pool), for inspection.
    pub fn gateway(&self) -> &Arc<Gateway> {
        &self.gateway
    }

    /// The whole HTTP surface: MCP endpoints, RFC 9728 metadata, `/metrics`, `/healthz`, `/readyz`.
    pub fn router(&self) -> Router {
        http::router(self.gateway.clone())
    }

    /// The router with each connection's peer address, as the binary serves it.
    pub fn service(&self) -> IntoMakeServiceWithConnectInfo<Router, PeerAddr> {
        http::service(self.gateway.clone())
    }

    /// Stops every STDIO child gracefully (stdin closed, then SIGTERM, then SIGKILL).
    pub async fn shutdown(&self) {
        self.gateway.shutdown().await;
    }
}
