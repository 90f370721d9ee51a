//! "This user's connections" as the console shows them: a small interface the
//! bring-your-own-credentials store implements (wired in by the app); empty by default.

use futures::future::BoxFuture;
use reflow_crds::Identity;

/// One upstream account a user has connected (or could connect) for a Target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connection {
    /// `namespace/name` of the Target.
    pub target: String,
    /// `connected`, `expired`, `not connected`, ...
    pub status: String,
    /// A same-origin path to the connect page (`/connect/...`), when one exists.
    pub connect_path: Option<String>,
}

pub trait Connections: Send + Sync + 'static {
    /// `identity`'s connections; never another user's.
    fn connections<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Vec<Connection>> {
        let _ = identity;
        Box::pin(async { Vec::new() })
    }
}

/// No connection store (until bring-your-own credentials are wired in).
pub struct NoConnections;

impl Connections for NoConnections {}
