//! The console's "your connections" section, read from the bring-your-own-credentials store.

use futures::future::BoxFuture;
use reflow_crds::Identity;

use crate::connect::ConnectionStore;
use crate::console::{Connection, Connections};

/// The user's own stored connections (never another user's: the store is filtered by the
/// logged-in identity's user name, the same name connect links are bound to).
pub(super) struct StoredConnections(pub(super) ConnectionStore);

impl Connections for StoredConnections {
    fn connections<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Vec<Connection>> {
        Box::pin(async move {
            self.0
                .of_user(&identity.user)
                .into_iter()
                .map(|c| Connection {
                    target: format!("{}/{}", c.namespace, c.target),
                    status: "connected".to_owned(),
                    connect_path: None,
                })
                .collect()
        })
    }
}
