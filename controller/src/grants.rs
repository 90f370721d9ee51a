//! Users' grants (`Target.spec.userCredential`) in cluster mode. Dataplanes hold no API rights:
//! they hand a grant to the controller (`POST /v1/connections`), which writes one Secret (the
//! value sealed under the sealing key, bound to its owner) and one user-managed `Credential`
//! (subject: that user) with server-side apply, both owned by the Target (deleting the Target
//! collects them). The cluster source opens the sealed Secret in memory before each compile, so
//! the snapshot carries the value to every dataplane like an admin's Credential.
//!
//! Bounded: only Targets in the published snapshot that declare `userCredential` (so only
//! watched namespaces), only the fixed object name of (namespace, Target, user), never over an
//! object that is not user-managed.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::{Api, Client};
use reflow_crds::api::{Credential, Target, USER_MANAGED_LABEL};
use reflow_crds::grant::{Grant, GrantError, GrantKey, SECRET_VALUE_KEY};
use reflow_crds::snapshot::InjectAs;
use reflow_crds::snapshot::UserCredentialMode;
use reflow_crds::{Inputs, SealingKey, Snapshot};
use reflow_oauth::OAuthHttp;
use serde_json::json;
use tracing::{info, warn};

use crate::source::cluster::SECRET_LABEL;

/// Field manager of the objects written here.
pub const MANAGER: &str = "reflow-controller-connections";
/// On a grant's Secret: whose grant it is (the sealed value opens only under these).
pub const TARGET_ANNOTATION: &str = "mcp.reflow.io/target";
pub const USER_ANNOTATION: &str = "mcp.reflow.io/user";

#[derive(Debug, thiserror::Error)]
pub enum GrantsError {
    #[error("invalid grant: {0}")]
    Invalid(#[from] GrantError),
    #[error("no snapshot compiled yet")]
    NoSnapshot,
    #[error("Target {0} is not known to the controller")]
    NoTarget(String),
    #[error("Target {0} does not declare userCredential")]
    NotUserCredential(String),
    #[error("Target {0} is in mode tokenExchange: there is no grant to store")]
    NoStoredGrant(String),
    #[error("the grant does not fit Target {0}")]
    NotThisTarget(String),
    #[error("the Target's authorization server: {0}")]
    AuthServer(String),
    #[error("{kind} {name} exists and is not user-managed; refusing to overwrite it")]
    Collision { kind: &'static str, name: String },
    #[error("the Kubernetes API refused: {0}")]
    Kube(#[from] kube::Error),
}

impl GrantsError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Invalid(_) => "invalid",
            Self::NoSnapshot => "no_snapshot",
            Self::NoTarget(_) => "no_target",
            Self::NotUserCredential(_) => "not_user_credential",
            Self::NoStoredGrant(_) => "no_stored_grant",
            Self::NotThisTarget(_) => "not_this_target",
            Self::AuthServer(_) => "auth_server",
            Self::Collision { .. } => "collision",
            Self::Kube(_) => "kube",
        }
    }

    /// The HTTP status the API answers with.
    pub fn status(&self) -> u16 {
        match self {
            Self::Invalid(_) | Self::NoStoredGrant(_) => 422,
            Self::NoSnapshot => 503,
            Self::NoTarget(_) => 404,
            Self::NotUserCredential(_) | Self::NotThisTarget(_) => 403,
            Self::Collision { .. } => 409,
            Self::Kube(_) | Self::AuthServer(_) => 502,
        }
    }
}

fn user_managed(labels: Option<&BTreeMap<String, String>>) -> bool {
    labels
        .and_then(|l| l.get(USER_MANAGED_LABEL))
        .is_some_and(|v| v == "true")
}

/// Refuses to touch `name` when something not user-managed already has it.
async fn check_free<K>(api: &Api<K>, kind: &'static str, name: &str) -> Result<(), GrantsError>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.get_opt(name).await? {
        Some(o) if !user_managed(o.meta().labels.as_ref()) => Err(GrantsError::Collision {
            kind,
            name: name.to_owned(),
        }),
        _ => Ok(()),
    }
}

/// On a grant's Secret: a dataplane's upstream refused the token (Unix ms); the lease holder's
/// refresher refreshes at once and removes it.
pub const REFRESH_ANNOTATION: &str = "mcp.reflow.io/refresh-requested";

/// What the connections API needs besides the cluster client.
#[derive(Clone)]
pub struct GrantsApi {
    pub key: SealingKey,
    /// The bounded OAuth client: the Target's AS is checked at store time and revoked at on
    /// disconnect.
    pub http: OAuthHttp,
}

/// What a disconnect did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Deleted {
    /// There was a connection (now gone).
    pub existed: bool,
    /// `Some(true)`: revoked at the AS; `Some(false)`: the AS refused or failed (deleted
    /// anyway); `None`: nothing to revoke.
    pub revoked: Option<bool>,
}

impl GrantsApi {
    pub fn new(key: SealingKey) -> Self {
        Self {
            key,
            http: OAuthHttp::new(std::time::Duration::from_secs(10), 256 * 1024),
        }
    }

    /// Marks the grant's Secret for an immediate refresh. Any replica takes the request; the
    /// lease holder (the one refresher) acts on it, so rotating refresh tokens are never raced.
    pub async fn request_refresh(
        &self,
        client: &Client,
        key: &GrantKey,
    ) -> Result<(), GrantsError> {
        let name = key.object_name();
        let secrets: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
        match secrets.get_opt(&name).await? {
            Some(s) if user_managed(s.metadata.labels.as_ref()) => {}
            Some(_) => {
                return Err(GrantsError::Collision {
                    kind: "Secret",
                    name,
                });
            }
            None => {
                return Err(GrantsError::NoTarget(format!(
                    "{}/{} (no connection for this user)",
                    key.namespace, key.target
                )));
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let patch = json!({"metadata": {"annotations": {REFRESH_ANNOTATION: now.to_string()}}});
        secrets
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }
}

/// Writes (or replaces) the user's Secret and Credential for a grant, once it fits its Target
/// ([`crate::grant_oauth::check`]).
pub async fn put(
    client: &Client,
    snapshot: Option<&Snapshot>,
    api: &GrantsApi,
    grant: &Grant,
) -> Result<(), GrantsError> {
    grant.validate()?;
    let key = &api.key;
    let mut grant = grant.clone();
    let k = &grant.key;
    let full = format!("{}/{}", k.namespace, k.target);
    let snapshot = snapshot.ok_or(GrantsError::NoSnapshot)?;
    let target = snapshot
        .target(&k.namespace, &k.target)
        .ok_or_else(|| GrantsError::NoTarget(full.clone()))?;
    let u = target
        .user_credential
        .as_ref()
        .ok_or_else(|| GrantsError::NotUserCredential(full.clone()))?;
    if u.mode == UserCredentialMode::TokenExchange {
        return Err(GrantsError::NoStoredGrant(full));
    }
    crate::grant_oauth::check(&api.http, &full, u, &mut grant).await?;
    let grant = &grant;
    let k = &grant.key;
    let name = k.object_name();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &k.namespace);
    let credentials: Api<Credential> = Api::namespaced(client.clone(), &k.namespace);
    check_free(&secrets, "Secret", &name).await?;
    check_free(&credentials, "Credential", &name).await?;
    let owner = Api::<Target>::namespaced(client.clone(), &k.namespace)
        .get_opt(&k.target)
        .await?
        .and_then(|t| t.metadata.uid)
        .ok_or_else(|| GrantsError::NoTarget(full.clone()))?;
    let owners = json!([{
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Target",
        "name": k.target, "uid": owner,
    }]);
    // ByteString serializes as the base64 Kubernetes expects in `data`.
    let data: BTreeMap<String, ByteString> = grant
        .seal(key)?
        .into_iter()
        .map(|(k, v)| (k, ByteString(v)))
        .collect();
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "name": name, "namespace": k.namespace,
            "labels": {SECRET_LABEL: "true", USER_MANAGED_LABEL: "true"},
            "annotations": {TARGET_ANNOTATION: k.target, USER_ANNOTATION: k.user},
            "ownerReferences": owners,
        },
        "type": "Opaque",
        "data": data,
    });
    let slot = match u.inject_as {
        InjectAs::Header => "headers",
        InjectAs::Env => "env",
    };
    let credential = json!({
        "apiVersion": "mcp.reflow.io/v1alpha1", "kind": "Credential",
        "metadata": {
            "name": name, "namespace": k.namespace,
            "labels": {USER_MANAGED_LABEL: "true"},
            "ownerReferences": owners,
        },
        "spec": {
            "targetRef": {"name": k.target},
            "subject": {"user": k.user},
            slot: [{
                "name": &*u.name, "prefix": &*u.prefix,
                "secretKeyRef": {"name": name, "key": SECRET_VALUE_KEY},
            }],
        },
    });
    let pp = PatchParams::apply(MANAGER).force();
    secrets.patch(&name, &pp, &Patch::Apply(&secret)).await?;
    credentials
        .patch(&name, &pp, &Patch::Apply(&credential))
        .await?;
    info!(target = %full, user = %k.user, "a user's grant was stored");
    Ok(())
}

/// Deletes the user's Secret and Credential, revoking an oauth2 grant at its AS first (RFC
/// 7009, see [`crate::grant_oauth::revoke`]); objects that are not user-managed are never
/// touched. A failed revocation does not keep the grant: the user asked to disconnect, and a
/// kept grant would go on injecting their token; the AS's own expiry ends what it did not revoke.
pub async fn delete(
    client: &Client,
    snapshot: Option<&Snapshot>,
    api: &GrantsApi,
    key: &GrantKey,
) -> Result<Deleted, GrantsError> {
    key.validate()?;
    let name = key.object_name();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &key.namespace);
    let credentials: Api<Credential> = Api::namespaced(client.clone(), &key.namespace);
    let stored = secrets.get_opt(&name).await?;
    if stored
        .as_ref()
        .is_some_and(|s| !user_managed(s.metadata.labels.as_ref()))
    {
        return Err(GrantsError::Collision {
            kind: "Secret",
            name,
        });
    }
    check_free(&credentials, "Credential", &name).await?;
    let grant = stored
        .as_ref()
        .and_then(|s| open_secret(s, &api.key))
        .and_then(Result::ok)
        .filter(|g| g.key == *key);
    let revoked = match &grant {
        Some(g) => crate::grant_oauth::revoke(&api.http, snapshot, &api.key, g).await,
        None => None,
    };
    let mut existed = false;
    for deleted in [
        credentials
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
        secrets
            .delete(&name, &DeleteParams::default())
            .await
            .map(|_| ()),
    ] {
        match deleted {
            Ok(()) => existed = true,
            Err(kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => return Err(e.into()),
        }
    }
    if existed {
        info!(target = %format!("{}/{}", key.namespace, key.target), user = %key.user, ?revoked, "a user's grant was deleted");
    }
    Ok(Deleted { existed, revoked })
}

/// The grant a user-managed Secret holds, if it is one and opens: bound to its fixed name and
/// to the namespace, Target and user it names.
pub fn open_secret(s: &Secret, key: &SealingKey) -> Option<Result<Grant, GrantError>> {
    if !user_managed(s.metadata.labels.as_ref()) {
        return None;
    }
    let ann = s.metadata.annotations.as_ref();
    let get = |k: &str| ann.and_then(|a| a.get(k)).cloned();
    let gk = GrantKey {
        namespace: s.metadata.namespace.clone().unwrap_or_default(),
        target: get(TARGET_ANNOTATION).unwrap_or_default(),
        user: get(USER_ANNOTATION).unwrap_or_default(),
    };
    if s.metadata.name.as_deref() != Some(gk.object_name().as_str()) {
        return Some(Err(GrantError::Malformed));
    }
    let data: BTreeMap<String, Vec<u8>> = s
        .data
        .as_ref()
        .map(|d| d.iter().map(|(k, v)| (k.clone(), v.0.clone())).collect())
        .unwrap_or_default();
    Some(Grant::open(gk, &data, key))
}

/// Before a compile: every user-managed Secret's sealed value opened in memory (what the
/// compiler reads), and one that does not open (tampered, moved to another user's name, key
/// changed) left out, so its Credential reports the Secret missing. Returns how many were left out.
pub fn open_user_managed(inputs: &mut Inputs, key: &SealingKey) -> usize {
    let mut refused = 0;
    inputs.secrets.retain_mut(|s| match open_secret(s, key) {
        None => true,
        Some(Ok(g)) => {
            s.data = Some(BTreeMap::from([(
                SECRET_VALUE_KEY.to_owned(),
                ByteString(g.value.expose().as_bytes().to_vec()),
            )]));
            true
        }
        Some(Err(e)) => {
            warn!(
                namespace = s.metadata.namespace.as_deref().unwrap_or(""),
                name = s.metadata.name.as_deref().unwrap_or(""),
                error = %e,
                "a user-managed Secret does not open; its Credential is left out"
            );
            refused += 1;
            false
        }
    });
    refused
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::grant::Redacted;

    fn grant(user: &str, value: &str) -> Grant {
        Grant {
            key: GrantKey {
                namespace: "team".into(),
                target: "gh".into(),
                user: user.into(),
            },
            value: Redacted::new(value),
            oauth2: None,
        }
    }

    fn secret_of(g: &Grant, key: &SealingKey) -> Secret {
        let data = g
            .seal(key)
            .unwrap()
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        let mut s = Secret::default();
        s.metadata.name = Some(g.key.object_name());
        s.metadata.namespace = Some(g.key.namespace.clone());
        s.metadata.labels = Some(BTreeMap::from([(
            USER_MANAGED_LABEL.to_owned(),
            "true".to_owned(),
        )]));
        s.metadata.annotations = Some(BTreeMap::from([
            (TARGET_ANNOTATION.to_owned(), g.key.target.clone()),
            (USER_ANNOTATION.to_owned(), g.key.user.clone()),
        ]));
        s.data = Some(data);
        s
    }

    #[test]
    fn sealed_secrets_open_in_memory_only_for_their_owner() {
        let key = SealingKey::from_bytes(&[4; 32]);
        let alice = secret_of(&grant("alice", "tok-alice"), &key);
        let mut moved = alice.clone();
        moved
            .metadata
            .annotations
            .as_mut()
            .unwrap()
            .insert(USER_ANNOTATION.to_owned(), "bob".to_owned());
        moved.metadata.name = Some(grant("bob", "x").key.object_name());
        let admin = Secret {
            metadata: kube::api::ObjectMeta {
                name: Some("admin".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let mut inputs = Inputs {
            secrets: vec![alice, moved, admin],
            ..Inputs::default()
        };
        assert_eq!(open_user_managed(&mut inputs, &key), 1);
        assert_eq!(inputs.secrets.len(), 2);
        let opened = &inputs.secrets[0].data.as_ref().unwrap()[SECRET_VALUE_KEY];
        assert_eq!(opened.0, b"tok-alice");
        assert_eq!(inputs.secrets[1].metadata.name.as_deref(), Some("admin"));
    }

    #[test]
    fn errors_map_to_clear_statuses_and_never_hold_a_value() {
        let e = GrantsError::Collision {
            kind: "Secret",
            name: "reflow-connection-x".into(),
        };
        assert_eq!(e.status(), 409);
        assert!(e.to_string().contains("not user-managed"));
        let mut g = grant("alice", "tok-secret-value");
        g.key.namespace = "Kube_System".into();
        let e = GrantsError::from(g.validate().unwrap_err());
        assert_eq!(e.status(), 422);
        assert!(!e.to_string().contains("tok-secret-value"));
    }
}
