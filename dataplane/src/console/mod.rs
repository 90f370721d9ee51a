//! The web console at `/console`: each user sees their own tools, connections, activity and
//! sessions; admins see every Target's health and live activity. Server-rendered HTML with
//! embedded assets, OIDC (code + PKCE) or dev-token login, a cookie session, CSRF on every POST.

mod assets;
mod audit_read;
mod connections;
mod error;
mod guard;
mod html;
mod live;
mod login;
mod logins;
mod oidc;
mod pages_admin;
mod pages_user;
mod revoked;
mod stats;
mod tap;

use std::sync::Arc;

use axum::Router;
use axum::routing::{get, post};
use futures::future::BoxFuture;
use serde::Deserialize;

use crate::authn::Authenticate;
use crate::observed::Observations;
use crate::postgres::Database;
use crate::session::SessionStore;
use crate::source::SnapshotStore;

pub use connections::{Connection, Connections, NoConnections};
pub use error::ConsoleError;
pub use tap::AuditTap;

/// Where the console lives.
pub const BASE: &str = "/console";

/// `gateway.console` in the configuration. Off unless `enabled`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// Accept a pasted bearer token (the same tokens `/mcp` accepts) as a login. For
    /// `make run` and tests; with OIDC configured, leave it off in production.
    pub dev_login: bool,
    /// Who is an admin: any listed user, group or role.
    pub admins: Admins,
    /// OIDC authorization code + PKCE against the issuer that signs MCP tokens.
    pub oidc: Option<OidcConfig>,
    /// How long a console login lasts, in seconds (default 8 hours).
    pub session_seconds: Option<u64>,
    /// Events kept in memory for the activity views when there is no Postgres (default 10,000).
    pub ring_capacity: Option<usize>,
    /// Mark cookies `Secure` although the gateway itself serves plain HTTP (TLS ends at a
    /// proxy in front of it). With `gateway.tls` they always are.
    pub secure_cookies: bool,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Admins {
    pub users: Vec<String>,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
}

impl Admins {
    pub fn includes(&self, id: &reflow_crds::Identity) -> bool {
        self.users.iter().any(|u| **u == *id.user)
            || self.groups.iter().any(|g| id.in_group(g))
            || self.roles.iter().any(|r| id.has_role(r))
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct OidcConfig {
    /// The issuer URL (discovery at `<issuer>/.well-known/openid-configuration`).
    pub issuer: String,
    pub client_id: String,
    /// A confidential client's secret, read from this file; absent for a public (PKCE) client.
    #[serde(default)]
    pub client_secret_file: Option<std::path::PathBuf>,
    /// The URL the IdP redirects back to: `https://<gateway>/console/callback`.
    pub redirect_url: String,
    /// Scopes asked for (default `openid profile email`).
    #[serde(default)]
    pub scopes: Vec<String>,
    /// RFC 8707 resource indicator sent with the request (the gateway's token audience), so
    /// the IdP issues an access token the gateway accepts.
    #[serde(default)]
    pub resource: Option<String>,
}

/// Ends a gateway session (store and upstream links); `false` when it did not exist.
pub type EndSession = Arc<dyn Fn(String) -> BoxFuture<'static, bool> + Send + Sync>;

/// What the console reads and acts on, handed over by the app wiring.
pub struct ConsoleParts {
    pub config: ConsoleConfig,
    pub auth: Arc<dyn Authenticate>,
    pub sessions: Arc<dyn SessionStore>,
    pub snapshots: Arc<SnapshotStore>,
    pub observed: Arc<Observations>,
    pub tap: Arc<AuditTap>,
    /// Audit is read from here when set, else from the tap's ring.
    pub database: Option<Database>,
    pub end_session: EndSession,
    pub connections: Arc<dyn Connections>,
    /// This dataplane's name, shown next to its snapshot version.
    pub dataplane: String,
    /// `Secure` cookies (the gateway serves TLS or sits behind a TLS-terminating proxy).
    pub secure_cookies: bool,
    /// Accepted `Host` values (the gateway's `allowedHosts`); empty accepts any.
    pub allowed_hosts: Vec<String>,
    /// Every replica's row (address, snapshot served, last beat), when replicas share a database.
    pub replicas: Option<Arc<crate::postgres::ReplicaRegistry>>,
    /// Seals login cookies: the deployment's sealing key, the same on every replica.
    pub key: reflow_crds::SealingKey,
}

/// The console's shared state.
pub struct Console {
    pub(crate) parts: ConsoleParts,
    pub(crate) logins: logins::Logins,
    pub(crate) oidc: Option<oidc::OidcClient>,
}

pub use oidc::{IdToken, OidcClient};

impl Console {
    pub fn new(parts: ConsoleParts) -> Result<Arc<Self>, ConsoleError> {
        let oidc = parts
            .config
            .oidc
            .as_ref()
            .map(oidc::OidcClient::new)
            .transpose()?;
        let ttl = std::time::Duration::from_secs(parts.config.session_seconds.unwrap_or(8 * 3600));
        let revoked = revoked::Revocations::new(parts.database.clone());
        Ok(Arc::new(Self {
            logins: logins::Logins::new(parts.key.clone(), ttl, revoked),
            oidc,
            parts,
        }))
    }
}

/// The console's routes, each behind the security headers and the Host check.
pub fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route(BASE, get(login::root))
        .route("/console/", get(login::root))
        .route("/console/login", get(login::login_page))
        .route("/console/login/token", post(login::token_login))
        .route("/console/login/oidc", get(login::oidc_start))
        .route("/console/callback", get(login::oidc_callback))
        .route("/console/logout", post(login::logout))
        .route("/console/me", get(pages_user::overview))
        .route("/console/activity", get(pages_user::activity))
        .route("/console/activity/{id}", get(pages_user::event))
        .route("/console/connections/connect", post(pages_user::connect))
        .route(
            "/console/connections/disconnect",
            post(pages_user::disconnect),
        )
        .route("/console/sessions", get(pages_user::sessions))
        .route("/console/sessions/{id}", get(pages_user::session))
        .route("/console/sessions/{id}/end", post(pages_user::end_session))
        .route("/console/admin", get(pages_admin::admin))
        .route("/console/admin/live", get(pages_admin::live))
        .route("/console/assets/{file}", get(assets::serve))
        .route(
            "/console/{*rest}",
            get(guard::not_found).post(guard::not_found),
        )
        .layer(axum::middleware::from_fn_with_state(
            console.clone(),
            guard::middleware,
        ))
        .with_state(console)
}
