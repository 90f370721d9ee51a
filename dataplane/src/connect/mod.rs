//! User-brought credentials (`Target.spec.userCredential`): the single-use connect links a caller
//! who has not connected is sent to, and the sealed local store of what users connected
//! (standalone mode), which the manifests compiler reads as user-managed Credentials.

pub mod flows;
pub mod grant;
pub mod grants;
pub mod links;
pub mod store;

pub use flows::{Flows, Pending, Phase};
pub use grant::{GrantOrigin, OpenGrant, StoredGrant};
pub use grants::{Disconnected, Grants, Refreshed};
pub use links::{ConnectLinks, LinkGrant};
pub use store::{CONNECTIONS_DIR, Connection, ConnectionStore};

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
}

impl ConnectError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadLink => "bad_link",
            Self::BadValue => "bad_value",
            Self::Store { .. } => "store",
            Self::Sealed => "sealed",
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
