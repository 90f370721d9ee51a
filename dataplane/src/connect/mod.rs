//! User-brought credentials (`Target.spec.userCredential`): the single-use connect links a caller
//! who has not connected is sent to, and the sealed local store of what users connected
//! (standalone mode), which the manifests compiler reads as user-managed Credentials.

pub mod controller;
pub mod exchange;
pub mod flows;
pub mod grant;
pub mod grants;
pub mod links;
pub mod store;

use futures::future::BoxFuture;
use reflow_crds::grant::{Grant, GrantKey};

pub use controller::ControllerGrants;
pub use flows::{Flows, Pending, Phase};
pub use grant::{GrantOrigin, OpenGrant, StoredGrant};
pub use grants::{Disconnected, Grants, Refreshed};
pub use links::{ConnectLinks, LinkGrant};
pub use store::{CONNECTIONS_DIR, Connection, ConnectionStore, Slot};

/// Where a user's grant goes once they connected: the sealed local folder (standalone,
/// [`ConnectionStore`]) or the controller, which writes it as a Secret and a Credential
/// ([`ControllerGrants`]). The connect flow is the same for both; either way the grant reaches
/// the gateway through the next snapshot.
pub trait GrantStore: Send + Sync {
    /// Stores (or replaces) the grant. `slot` is the Target's `userCredential` slot as this
    /// dataplane compiled it (the controller uses its own compile of the Target instead).
    fn put<'a>(
        &'a self,
        slot: &'a Slot<'a>,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<(), ConnectError>>;
    /// Forgets the grant; whether there was one.
    fn remove<'a>(&'a self, key: &'a GrantKey) -> BoxFuture<'a, Result<bool, ConnectError>>;
    /// A user's disconnect: revokes the grant where it can (the controller at the AS), then
    /// forgets it. Default: forgets it (nothing revoked here).
    fn disconnect<'a>(
        &'a self,
        key: &'a GrantKey,
    ) -> BoxFuture<'a, Result<Disconnected, ConnectError>> {
        Box::pin(async move {
            Ok(Disconnected {
                existed: self.remove(key).await?,
                revoked: None,
            })
        })
    }
    /// The upstream answered 401 to this grant's token: refresh it now where a refresher runs
    /// elsewhere (the controller's lease holder). Default: nothing to do here.
    fn upstream_refused<'a>(&'a self, _key: &'a GrantKey) -> BoxFuture<'a, ()> {
        Box::pin(async {})
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the connect link is unknown, used or expired")]
    BadLink,
    #[error("the value is empty, too long, or contains control characters")]
    BadValue,
    #[error("connection store {path}: {message}")]
    Store { path: String, message: String },
    #[error("a stored connection does not open (sealing key changed or file tampered)")]
    Sealed,
    /// From the upstream's authorization server (never carries a token).
    #[error("authorization server: {0}")]
    OAuth(String),
    #[error("the controller did not store the connection: {0}")]
    Controller(String),
}

impl ConnectError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadLink => "bad_link",
            Self::BadValue => "bad_value",
            Self::Store { .. } => "store",
            Self::Sealed => "sealed",
            Self::Controller(_) => "controller",
            Self::OAuth(_) => "oauth",
        }
    }
}

/// The gateway's side of `mode: oauth2`: the bounded OAuth client, authorization requests in
/// flight, clients registered on the fly (RFC 7591, per AS and redirect URI) and, with a store,
/// the grants' refresher.
#[derive(Default)]
pub struct OAuthSide {
    pub http: reflow_oauth::OAuthHttp,
    pub flows: Flows,
    pub clients:
        std::sync::Mutex<std::collections::HashMap<String, reflow_oauth::RegisteredClient>>,
    pub grants: Option<std::sync::Arc<Grants>>,
}

impl OAuthSide {
    /// With a store: grants refreshed in the background (on `rt`, when given) and disconnectable.
    pub fn with_store(
        store: Option<ConnectionStore>,
        audit: std::sync::Arc<dyn crate::audit::AuditSink>,
        rt: Option<&tokio::runtime::Handle>,
    ) -> Self {
        let http = reflow_oauth::OAuthHttp::default();
        let grants = store.map(|s| Grants::new(s, http.clone(), audit));
        if let (Some(g), Some(rt)) = (&grants, rt) {
            g.spawn_refresher(rt);
        }
        Self {
            http,
            grants,
            ..Self::default()
        }
    }
}
