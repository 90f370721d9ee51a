//! "This user's connections" as the console shows them: a small interface the
//! bring-your-own-credentials side implements (wired in by the app); empty by default.
//! Every method takes the logged-in identity: nothing here reaches another user's connection.

use futures::future::BoxFuture;
use reflow_crds::Identity;

/// One Target whose `spec.userCredential` applies to the user: connected or not.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `namespace/name` of the Target.
    pub target: String,
    /// What the user connects (the credential's display name).
    pub credential: String,
    /// `connected`, `not connected`, ...
    pub status: String,
    /// The console may mint a connect link for it (see [`Connections::connect_link`]).
    pub can_connect: bool,
    /// The console may remove it (see [`Connections::disconnect`]).
    pub can_disconnect: bool,
}

pub trait Connections: Send + Sync + 'static {
    /// `identity`'s connections and the Targets still to connect; never another user's.
    fn connections<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Vec<Connection>> {
        let _ = identity;
        Box::pin(async { Vec::new() })
    }

    /// A same-origin path to a fresh connect link for `target` (`namespace/name`) bound to
    /// `identity`, when that Target takes a credential `identity` can connect here.
    fn connect_link(&self, identity: &Identity, target: &str) -> Option<String> {
        let _ = (identity, target);
        None
    }

    /// Removes `identity`'s own connection to `target`; whether there was one.
    fn disconnect<'a>(&'a self, identity: &'a Identity, target: &'a str) -> BoxFuture<'a, bool> {
        let _ = (identity, target);
        Box::pin(async { false })
    }
}

/// No connection store (until bring-your-own credentials are wired in).
pub struct NoConnections;

impl Connections for NoConnections {}
