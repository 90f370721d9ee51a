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

#[cfg(test)]
mod tests {
    use reflow_crds::SealingKey;
    use reflow_crds::snapshot::InjectAs;

    use super::*;
    use crate::connect::store::Slot;

    #[tokio::test]
    async fn a_user_sees_only_their_own_connections_and_never_a_value() {
        let dir =
            std::env::temp_dir().join(format!("reflow-console-conn-{}", uuid::Uuid::new_v4()));
        let store = ConnectionStore::in_manifests(&dir, SealingKey::from_bytes(&[3; 32]));
        let slot = Slot {
            inject_as: InjectAs::Header,
            name: "authorization",
            prefix: "token ",
        };
        for (target, user) in [("gh", "alice"), ("jira", "alice"), ("gh", "bob")] {
            let value = secrecy::SecretString::from(format!("secret-of-{user}"));
            store.put("team", target, user, &slot, &value).unwrap();
        }
        let listed = StoredConnections(store);
        let alice = Identity::new("alice", Vec::<String>::new(), Vec::<String>::new());
        let seen = listed.connections(&alice).await;
        let targets: Vec<&str> = seen.iter().map(|c| c.target.as_str()).collect();
        assert_eq!(targets, ["team/gh", "team/jira"]);
        assert!(seen.iter().all(|c| c.status == "connected"));
        assert!(!format!("{seen:?}").contains("secret-of"));
        let carol = Identity::new("carol", Vec::<String>::new(), Vec::<String>::new());
        assert!(listed.connections(&carol).await.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
