//! The standalone store of connections: one file per (namespace, Target, user) in a dot-folder
//! inside the manifests folder (the loader skips it, the folder watch recompiles on change),
//! the value sealed with AES-256-GCM under the gateway's sealing key and bound to its owner.

use std::io::Write;
use std::path::{Path, PathBuf};

use futures::future::BoxFuture;
use reflow_crds::SealingKey;
use reflow_crds::compile::Inputs;
// One definition for both stores: a file here and a controller-written Secret seal alike.
use reflow_crds::grant::{Grant, GrantKey};
pub(super) use reflow_crds::grant::{connection_aad as aad, connection_id as file_id};
use reflow_crds::seal::SealedValue;
use reflow_crds::snapshot::InjectAs;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::ConnectError;

/// The store's folder name inside the manifests folder.
pub const CONNECTIONS_DIR: &str = ".reflow-connections";
/// Longest value a user may paste.
pub const MAX_VALUE_BYTES: usize = 8 * 1024;

/// One stored connection (what is on disk; `value` is sealed).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Connection {
    pub namespace: String,
    pub target: String,
    pub user: String,
    pub inject_as: InjectAs,
    pub name: String,
    pub prefix: String,
    pub connected_at_ms: u64,
    pub(super) value: SealedValue,
    /// `mode: oauth2`: what refreshing and revoking this grant needs (secrets sealed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<super::grant::StoredGrant>,
}

#[derive(Clone)]
pub struct ConnectionStore {
    dir: PathBuf,
    pub(super) key: SealingKey,
}

pub(super) fn store_err(path: &Path, e: impl std::fmt::Display) -> ConnectError {
    ConnectError::Store {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// A pasted value is one line of visible text: no control characters (they could split a header).
pub fn valid_value(v: &str) -> bool {
    !v.is_empty() && v.len() <= MAX_VALUE_BYTES && !v.chars().any(char::is_control)
}

/// Where one user's value goes and what it is prefixed with.
pub struct Slot<'a> {
    pub inject_as: InjectAs,
    pub name: &'a str,
    pub prefix: &'a str,
}

impl ConnectionStore {
    /// The store inside `manifests` (created on first write).
    pub fn in_manifests(manifests: &Path, key: SealingKey) -> Self {
        Self {
            dir: manifests.join(CONNECTIONS_DIR),
            key,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub(super) fn ensure_dir(&self) -> Result<(), ConnectError> {
        use std::os::unix::fs::DirBuilderExt;
        if !self.dir.is_dir() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .map_err(|e| store_err(&self.dir, e))?;
        }
        // Sealed values still do not belong in a GitOps repository.
        let ignore = self.dir.join(".gitignore");
        if !ignore.exists() {
            std::fs::write(&ignore, "*\n").map_err(|e| store_err(&ignore, e))?;
        }
        Ok(())
    }

    /// Stores (or replaces) `user`'s value for a Target, sealed; written atomically, mode 0600.
    pub fn put(
        &self,
        ns: &str,
        target: &str,
        user: &str,
        slot: &Slot<'_>,
        value: &SecretString,
    ) -> Result<(), ConnectError> {
        self.write_value(ns, target, user, slot, value)
    }

    fn write_value(
        &self,
        ns: &str,
        target: &str,
        user: &str,
        slot: &Slot<'_>,
        value: &SecretString,
    ) -> Result<(), ConnectError> {
        if !valid_value(value.expose_secret()) {
            return Err(ConnectError::BadValue);
        }
        let c = Connection {
            namespace: ns.to_owned(),
            target: target.to_owned(),
            user: user.to_owned(),
            inject_as: slot.inject_as,
            name: slot.name.to_owned(),
            prefix: slot.prefix.to_owned(),
            connected_at_ms: u64::try_from(crate::audit::now_ms()).unwrap_or(u64::MAX),
            value: self.key.seal(&aad(ns, target, user), value.expose_secret()),
            oauth: None,
        };
        self.write(&c)
    }

    /// Writes `c` (replacing the same user's file for that Target) atomically, mode 0600.
    pub(super) fn write(&self, c: &Connection) -> Result<(), ConnectError> {
        self.ensure_dir()?;
        let id = file_id(&c.namespace, &c.target, &c.user);
        let path = self.dir.join(format!("{id}.json"));
        let tmp = self.dir.join(format!(".{id}.tmp"));
        let body = serde_json::to_vec(c).map_err(|e| store_err(&path, e))?;
        {
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .mode(0o600)
                .open(&tmp)
                .map_err(|e| store_err(&tmp, e))?;
            f.write_all(&body).map_err(|e| store_err(&tmp, e))?;
            f.sync_all().map_err(|e| store_err(&tmp, e))?;
        }
        std::fs::rename(&tmp, &path).map_err(|e| store_err(&path, e))
    }

    /// One user's connection to one Target (value still sealed).
    pub fn get(&self, ns: &str, target: &str, user: &str) -> Option<Connection> {
        let path = self.dir.join(format!("{}.json", file_id(ns, target, user)));
        let bytes = std::fs::read(path).ok()?;
        serde_json::from_slice::<Connection>(&bytes)
            .ok()
            .filter(|c| c.namespace == ns && c.target == target && c.user == user)
    }

    /// Forgets `user`'s connection to a Target; whether there was one.
    pub fn remove(&self, ns: &str, target: &str, user: &str) -> Result<bool, ConnectError> {
        let path = self.dir.join(format!("{}.json", file_id(ns, target, user)));
        match std::fs::remove_file(&path) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(store_err(&path, e)),
        }
    }

    /// Every stored connection (values still sealed). Unreadable files are skipped.
    pub fn all(&self) -> Vec<Connection> {
        let Ok(entries) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut out: Vec<Connection> = entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "json"))
            .filter_map(|p| std::fs::read(&p).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| {
            (&a.namespace, &a.target, &a.user).cmp(&(&b.namespace, &b.target, &b.user))
        });
        out
    }

    /// One user's connections.
    pub fn of_user(&self, user: &str) -> Vec<Connection> {
        self.all().into_iter().filter(|c| c.user == user).collect()
    }

    /// Adds every connection to `inputs` as a user-managed Credential plus an in-memory Secret,
    /// exactly what the controller writes in cluster mode. A value that does not open under its
    /// owner's AAD (moved between files, key changed) is left out and counted.
    pub fn add_to(&self, inputs: &mut Inputs) -> usize {
        let mut refused = 0;
        for c in self.all() {
            let Ok(value) = self
                .key
                .open(&aad(&c.namespace, &c.target, &c.user), &c.value)
            else {
                refused += 1;
                continue;
            };
            let id = file_id(&c.namespace, &c.target, &c.user);
            let secret = json!({
                "apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": format!("reflow-connection-{id}"), "namespace": c.namespace},
                "stringData": {"value": value.expose_secret()},
            });
            let slot = match c.inject_as {
                InjectAs::Header => "headers",
                InjectAs::Env => "env",
            };
            let credential = json!({
                "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Credential",
                "metadata": {
                    "name": format!("reflow-connection-{id}"), "namespace": c.namespace,
                    "labels": {reflow_crds::api::USER_MANAGED_LABEL: "true"},
                },
                "spec": {
                    "targetRef": {"name": c.target},
                    "subject": {"user": c.user},
                    slot: [{
                        "name": c.name, "prefix": c.prefix,
                        "secretKeyRef": {"name": format!("reflow-connection-{id}"), "key": "value"},
                    }],
                },
            });
            match (
                serde_json::from_value(secret),
                serde_json::from_value(credential),
            ) {
                (Ok(s), Ok(cr)) => {
                    inputs.secrets.push(s);
                    inputs.credentials.push(cr);
                }
                _ => refused += 1,
            }
        }
        refused
    }
}

impl super::GrantStore for ConnectionStore {
    fn put<'a>(
        &'a self,
        slot: &'a Slot<'a>,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<(), ConnectError>> {
        Box::pin(async move {
            grant.validate().map_err(|_| ConnectError::BadValue)?;
            let k = &grant.key;
            if grant.oauth2.is_some() {
                // Standalone oauth2 grants keep their refresh material in the connection file
                // (`put_grant`, written by the connect flow and the local refresher).
                return Err(ConnectError::OAuth(
                    "an oauth2 grant is stored with put_grant in standalone mode".into(),
                ));
            }
            let value = SecretString::from(grant.value.expose().to_owned());
            self.write_value(&k.namespace, &k.target, &k.user, slot, &value)
        })
    }

    fn remove<'a>(&'a self, key: &'a GrantKey) -> BoxFuture<'a, Result<bool, ConnectError>> {
        Box::pin(
            async move { ConnectionStore::remove(self, &key.namespace, &key.target, &key.user) },
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (ConnectionStore, PathBuf) {
        let dir = std::env::temp_dir().join(format!("reflow-connect-{}", uuid::Uuid::new_v4()));
        let key = SealingKey::from_bytes(&[7; 32]);
        (ConnectionStore::in_manifests(&dir, key), dir)
    }

    const SLOT: Slot<'static> = Slot {
        inject_as: InjectAs::Header,
        name: "authorization",
        prefix: "token ",
    };

    #[test]
    fn values_are_sealed_on_disk_and_bound_to_their_owner() {
        let (s, dir) = store();
        s.put(
            "ns",
            "gh",
            "alice",
            &SLOT,
            &SecretString::from("ghp_alice_secret"),
        )
        .unwrap();
        s.put(
            "ns",
            "gh",
            "bob",
            &SLOT,
            &SecretString::from("ghp_bob_secret"),
        )
        .unwrap();
        for e in std::fs::read_dir(s.dir()).unwrap() {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            assert!(!text.contains("secret"), "plaintext on disk: {text}");
        }
        let mut inputs = Inputs::default();
        assert_eq!(s.add_to(&mut inputs), 0);
        assert_eq!((inputs.credentials.len(), inputs.secrets.len()), (2, 2));

        // Alice's file copied over Bob's: it no longer opens (the AAD names its owner).
        let alice = s
            .dir()
            .join(format!("{}.json", file_id("ns", "gh", "alice")));
        let bob = s.dir().join(format!("{}.json", file_id("ns", "gh", "bob")));
        let mut swapped: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&alice).unwrap()).unwrap();
        swapped["user"] = "bob".into();
        std::fs::write(&bob, serde_json::to_vec(&swapped).unwrap()).unwrap();
        let mut inputs = Inputs::default();
        assert_eq!(s.add_to(&mut inputs), 1);
        assert_eq!(inputs.credentials.len(), 1);

        assert!(s.remove("ns", "gh", "alice").unwrap());
        assert!(!s.remove("ns", "gh", "alice").unwrap());
        assert!(s.of_user("alice").is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn bad_values_are_refused_and_nothing_is_written() {
        let (s, dir) = store();
        for bad in [
            "",
            "a\r\nX-Evil: 1",
            "nul\0",
            &"x".repeat(MAX_VALUE_BYTES + 1),
        ] {
            let r = s.put(
                "ns",
                "gh",
                "alice",
                &SLOT,
                &SecretString::from(bad.to_owned()),
            );
            assert!(matches!(r, Err(ConnectError::BadValue)), "{bad:?}");
        }
        assert!(s.all().is_empty());
        let _ = std::fs::remove_dir_all(dir);
    }
}
