//! User-brought credentials (`Target.spec.userCredential`): the single-use connect links a caller
//! who has not connected is sent to, and the sealed local store of what users connected
//! (standalone mode), which the manifests compiler reads as user-managed Credentials.

pub mod controller;
pub mod links;
pub mod store;

use futures::future::BoxFuture;
use reflow_crds::grant::{Grant, GrantKey};

pub use controller::ControllerGrants;
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
        }
    }
}
