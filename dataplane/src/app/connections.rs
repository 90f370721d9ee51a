//! The console's "your connections" section: every Target whose `spec.userCredential` applies
//! to the user (a Policy lets them use it), connected or not, with a connect link minted by the
//! gateway (bound to the logged-in user, like the one a call gets) and removal of their own
//! stored connection.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};

use futures::future::BoxFuture;
use reflow_crds::Identity;
use reflow_crds::snapshot::UserCredentialMode;

use crate::connect::{ConnectionStore, LinkGrant};
use crate::console::{Connection, Connections};
use crate::mcp::CONNECT_PATH;
use crate::mcp::Gateway;
use crate::source::SnapshotStore;

/// The user's own connections (never another user's: the store is filtered by the logged-in
/// identity's user name, the same name connect links are bound to) and what is left to connect.
pub(super) struct StoredConnections {
    /// Standalone: the local folder. `None` in controller mode: the user's connections are
    /// the controller-written Credentials the snapshot carries (nothing new to trust).
    pub(super) store: Option<ConnectionStore>,
    pub(super) snapshots: Arc<SnapshotStore>,
    /// Mints connect links (gone when the gateway is).
    pub(super) gateway: Weak<Gateway>,
}

/// The modes a connect link can complete here (as the connect gate decides).
fn connectable(mode: UserCredentialMode) -> bool {
    matches!(
        mode,
        UserCredentialMode::Secret | UserCredentialMode::OAuth2
    )
}

fn split(target: &str) -> Option<(&str, &str)> {
    target.split_once('/')
}

impl Connections for StoredConnections {
    fn connections<'a>(&'a self, identity: &'a Identity) -> BoxFuture<'a, Vec<Connection>> {
        Box::pin(async move {
            let snapshot = self.snapshots.load();
            let stored: BTreeSet<String> = match &self.store {
                Some(store) => store
                    .of_user(&identity.user)
                    .into_iter()
                    .map(|c| format!("{}/{}", c.namespace, c.target))
                    .collect(),
                None => snapshot
                    .targets()
                    .iter()
                    .filter(|t| Gateway::connected_in_snapshot(t, &identity.user))
                    .map(|t| format!("{}/{}", t.namespace, t.name))
                    .collect(),
            };
            let mut out = Vec::new();
            for t in snapshot.targets() {
                let Some(u) = &t.user_credential else {
                    continue;
                };
                let key = format!("{}/{}", t.namespace, t.name);
                if !t.policy.view(identity).may_allow_anything() && !stored.contains(&key) {
                    continue;
                }
                let resolved = t.credentials.resolve(identity);
                let connected =
                    stored.contains(&key) || resolved.entries.iter().any(|e| u.is_slot(&e.entry));
                out.push(Connection {
                    credential: u.display_name.to_string(),
                    status: if connected {
                        "connected"
                    } else {
                        "not connected"
                    }
                    .to_owned(),
                    can_connect: !connected && connectable(u.mode),
                    can_disconnect: stored.contains(&key),
                    target: key,
                });
            }
            // Stored connections whose Target is gone from the snapshot: still removable.
            for key in stored {
                if !out.iter().any(|c| c.target == key) {
                    out.push(Connection {
                        credential: String::new(),
                        status: "connected (Target not served)".to_owned(),
                        can_connect: false,
                        can_disconnect: true,
                        target: key,
                    });
                }
            }
            out
        })
    }

    fn connect_link(&self, identity: &Identity, target: &str) -> Option<String> {
        let (ns, name) = split(target)?;
        let snapshot = self.snapshots.load();
        let t = snapshot.target(ns, name)?;
        let u = t.user_credential.as_ref()?;
        if !connectable(u.mode) || !t.policy.view(identity).may_allow_anything() {
            return None;
        }
        let gateway = self.gateway.upgrade()?;
        let link = gateway.connect_links.mint(LinkGrant {
            user: identity.user.to_string(),
            namespace: ns.to_owned(),
            target: name.to_owned(),
        });
        Some(format!("{CONNECT_PATH}/{link}"))
    }

    fn disconnect<'a>(&'a self, identity: &'a Identity, target: &'a str) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let Some((ns, name)) = split(target) else {
                return false;
            };
            // Standalone: the gateway's own grants (one lock per grant, shared with the
            // refresher); controller mode: the controller. Either way an oauth2 grant is
            // revoked at its AS first (RFC 7009); a pasted value is removed.
            let Some(gateway) = self.gateway.upgrade() else {
                return false;
            };
            match gateway
                .disconnect_connection(ns, name, &identity.user)
                .await
            {
                Ok(d) => d.existed,
                Err(e) => {
                    tracing::warn!(error = %e, "console: removing a connection");
                    false
                }
            }
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
        let listed = StoredConnections {
            store: Some(store),
            snapshots: SnapshotStore::new(),
            gateway: Weak::new(),
        };
        let alice = Identity::new("alice", Vec::<String>::new(), Vec::<String>::new());
        let seen = listed.connections(&alice).await;
        let targets: Vec<&str> = seen.iter().map(|c| c.target.as_str()).collect();
        assert_eq!(targets, ["team/gh", "team/jira"]);
        assert!(seen.iter().all(|c| c.can_disconnect && !c.can_connect));
        assert!(
            listed.connect_link(&alice, "team/gh").is_none(),
            "not served"
        );
        assert!(
            !listed.disconnect(&alice, "team/gh").await,
            "no gateway, no removal"
        );
        assert!(!format!("{seen:?}").contains("secret-of"));
        let carol = Identity::new("carol", Vec::<String>::new(), Vec::<String>::new());
        assert!(listed.connections(&carol).await.is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }

    /// Controller mode: no local folder; the list is the user's controller-written Credential
    /// as the snapshot carries it (its fixed name), never another user's, never a value.
    #[tokio::test]
    async fn in_controller_mode_the_list_comes_from_the_snapshot() {
        let dir =
            std::env::temp_dir().join(format!("reflow-console-snap-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = SealingKey::from_bytes(&[5; 32]);
        let written = reflow_crds::grant::GrantKey {
            namespace: "team".into(),
            target: "gh".into(),
            user: "alice".into(),
        }
        .object_name();
        let user_managed = |name: &str, user: &str| {
            format!(
                "apiVersion: v1\nkind: Secret\nmetadata: {{name: {name}, namespace: team}}\nstringData: {{value: secret-of-{user}}}\n---\n\
                 apiVersion: mcp.reflow.io/v1alpha1\nkind: Credential\nmetadata: {{name: {name}, namespace: team, labels: {{mcp.reflow.io/user-managed: 'true'}}}}\n\
                 spec: {{targetRef: {{name: gh}}, subject: {{user: {user}}}, headers: [{{name: Authorization, prefix: 'token ', secretKeyRef: {{name: {name}, key: value}}}}]}}\n---\n"
            )
        };
        let manifests = format!(
            "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {{name: gh, namespace: team}}\n\
             spec: {{transport: streamableHttp, url: 'http://127.0.0.1:9/mcp', userCredential: {{mode: secret, inject: {{header: Authorization, prefix: 'token '}}}}}}\n---\n\
             apiVersion: mcp.reflow.io/v1alpha1\nkind: Policy\nmetadata: {{name: all, namespace: team}}\n\
             spec: {{targetRef: {{name: gh}}, subjects: [{{everyone: true}}], rules: [{{kind: all, names: ['*']}}], effect: Allow}}\n---\n{}{}",
            user_managed(&written, "alice"),
            // Another user-managed Credential for bob, not under the controller's name for him.
            user_managed("hand-written", "bob"),
        );
        std::fs::write(dir.join("all.yaml"), manifests).unwrap();
        let snapshots = SnapshotStore::new();
        snapshots.publish(crate::source::compile_dir(&dir, &key).unwrap());
        let listed = StoredConnections {
            store: None,
            snapshots,
            gateway: Weak::new(),
        };
        let who = |u: &str| Identity::new(u, Vec::<String>::new(), Vec::<String>::new());
        let alice = listed.connections(&who("alice")).await;
        assert_eq!(alice.len(), 1, "{alice:?}");
        assert_eq!(alice[0].target, "team/gh");
        assert_eq!(alice[0].status, "connected");
        assert!(alice[0].can_disconnect && !alice[0].can_connect);
        assert!(!format!("{alice:?}").contains("secret-of"));
        // Bob's value fills the slot, but it is not one the controller wrote for him: shown
        // connected, not disconnectable here.
        let bob = listed.connections(&who("bob")).await;
        assert_eq!(bob[0].status, "connected");
        assert!(!bob[0].can_disconnect);
        let carol = listed.connections(&who("carol")).await;
        assert_eq!(carol[0].status, "not connected");
        assert!(carol[0].can_connect && !carol[0].can_disconnect);
        let _ = std::fs::remove_dir_all(dir);
    }
}
