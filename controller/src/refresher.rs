//! The one refresher of users' oauth2 grants: only the lease holder runs it, so a rotating
//! refresh token is never used twice by two replicas. It refreshes a grant shortly before its
//! access token expires, or at once when a dataplane reported an upstream 401
//! ([`REFRESH_ANNOTATION`]), and writes the new value sealed into the grant's Secret (with the
//! Secret's resourceVersion as a precondition); the recompile carries it to every dataplane.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Patch, PatchParams};
use kube::runtime::reflector::Store;
use kube::{Api, Client};
use reflow_crds::SealingKey;
use reflow_crds::grant::{Grant, Redacted};
use reflow_oauth::http::OAuthHttp;
use reflow_oauth::token::TokenClient;
use secrecy::SecretString;
use serde_json::json;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use crate::grants::{REFRESH_ANNOTATION, open_secret};
use crate::metrics::Metrics;
use crate::publish::Published;

/// When and how often the refresher looks.
#[derive(Clone, Copy, Debug)]
pub struct RefreshConfig {
    /// Refresh when the access token expires within this (`REFLOW_REFRESH_BEFORE`).
    pub before: Duration,
    pub every: Duration,
    /// After a failed refresh, that grant waits this long (a 401 request still goes at once).
    pub retry_after: Duration,
}

impl Default for RefreshConfig {
    fn default() -> Self {
        Self {
            before: Duration::from_secs(60),
            every: Duration::from_secs(1),
            retry_after: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error("the grant has no refresh token")]
    NoRefreshToken,
    #[error("the token endpoint refused: {0}")]
    OAuth(#[from] reflow_oauth::OAuthError),
    #[error("writing the refreshed grant: {0}")]
    Kube(#[from] kube::Error),
    #[error("sealing the refreshed grant: {0}")]
    Grant(#[from] reflow_crds::grant::GrantError),
}

impl RefreshError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoRefreshToken => "no_refresh_token",
            Self::OAuth(e) if e.is_invalid_grant() => "invalid_grant",
            Self::OAuth(_) => "oauth",
            Self::Kube(_) => "kube",
            Self::Grant(_) => "grant",
        }
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Whether `grant` in `secret` is due: expiring within `before`, or asked for by a dataplane.
pub fn due(secret: &Secret, grant: &Grant, now_ms: u64, before: Duration) -> bool {
    let Some(o) = &grant.oauth2 else {
        return false;
    };
    let asked = secret
        .metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key(REFRESH_ANNOTATION));
    let before_ms = u64::try_from(before.as_millis()).unwrap_or(u64::MAX);
    asked
        || o.expires_at_ms
            .is_some_and(|e| e <= now_ms.saturating_add(before_ms))
}

pub struct Refresher {
    pub client: Client,
    pub secrets: Vec<Store<Secret>>,
    pub key: SealingKey,
    pub published: watch::Receiver<Option<Published>>,
    pub leading: watch::Receiver<bool>,
    pub metrics: Arc<Metrics>,
    pub config: RefreshConfig,
}

impl Refresher {
    pub fn spawn(self) -> tokio::task::JoinHandle<()> {
        tokio::spawn(self.run().instrument(info_span!("grant_refresher")))
    }

    async fn run(self) {
        let http = OAuthHttp::new(Duration::from_secs(10), 256 * 1024);
        let mut failed: HashMap<String, Instant> = HashMap::new();
        loop {
            tokio::time::sleep(self.config.every).await;
            if !*self.leading.borrow() {
                continue;
            }
            let now = now_ms();
            for secret in self.secrets.iter().flat_map(Store::state) {
                let Some(Ok(grant)) = open_secret(&secret, &self.key) else {
                    continue;
                };
                if !due(&secret, &grant, now, self.config.before) {
                    continue;
                }
                let name = grant.key.object_name();
                let asked = secret
                    .metadata
                    .annotations
                    .as_ref()
                    .is_some_and(|a| a.contains_key(REFRESH_ANNOTATION));
                if !asked
                    && failed
                        .get(&name)
                        .is_some_and(|t| t.elapsed() < self.config.retry_after)
                {
                    continue;
                }
                // Leadership may have moved while this round ran: never refresh as a follower.
                if !*self.leading.borrow() {
                    break;
                }
                let span = info_span!("refresh", target = %format!("{}/{}", grant.key.namespace, grant.key.target), user = %grant.key.user);
                match self.refresh(&http, &secret, grant).instrument(span).await {
                    Ok(()) => {
                        failed.remove(&name);
                        Metrics::inc(&self.metrics.grant_refreshes, "refreshed");
                    }
                    Err(e) => {
                        warn!(error = %e, label = e.label(), "a user's grant was not refreshed");
                        failed.insert(name, Instant::now());
                        Metrics::inc(&self.metrics.grant_refreshes, e.label());
                    }
                }
            }
        }
    }

    /// The client secret for a grant (see [`crate::grant_oauth::client_secret`]).
    fn client_secret(&self, grant: &Grant) -> Option<SecretString> {
        let published = self.published.borrow();
        let snapshot = published.as_ref().map(|p| &p.snapshot);
        crate::grant_oauth::client_secret(snapshot, &self.key, grant)
    }

    async fn refresh(
        &self,
        http: &OAuthHttp,
        secret: &Secret,
        mut grant: Grant,
    ) -> Result<(), RefreshError> {
        let secret_value = self.client_secret(&grant);
        let Some(o) = grant.oauth2.as_mut() else {
            return Ok(());
        };
        let refresh_token = o
            .refresh_token
            .as_ref()
            .map(|r| SecretString::from(r.expose().to_owned()))
            .ok_or(RefreshError::NoRefreshToken)?;
        // As the AS's metadata called for when the grant was stored (basic, post or none).
        let auth = crate::grant_oauth::client_auth(o, secret_value);
        let tokens = TokenClient::new(http.clone(), &o.token_endpoint, None, auth)?;
        let received = SystemTime::now();
        let answer = tokens
            .refresh(&refresh_token, &o.scopes, o.resource.as_deref())
            .await?;
        grant.value = Redacted::from(answer.access_token.clone());
        let o = grant.oauth2.as_mut().ok_or(RefreshError::NoRefreshToken)?;
        if let Some(rt) = &answer.refresh_token {
            // Rotated: the old one is spent; keep only the new one.
            o.refresh_token = Some(Redacted::from(rt.clone()));
        }
        o.expires_at_ms = answer.expires_at(received).map(|t| {
            t.duration_since(UNIX_EPOCH)
                .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        });
        let expires_at_ms = o.expires_at_ms;
        let data: std::collections::BTreeMap<String, ByteString> = grant
            .seal(&self.key)?
            .into_iter()
            .map(|(k, v)| (k, ByteString(v)))
            .collect();
        // resourceVersion makes it conditional: a grant replaced meanwhile (a reconnect) wins.
        let patch = json!({
            "metadata": {
                "resourceVersion": secret.metadata.resource_version,
                "annotations": {REFRESH_ANNOTATION: null},
            },
            "data": data,
        });
        let api: Api<Secret> = Api::namespaced(self.client.clone(), &grant.key.namespace);
        api.patch(
            &grant.key.object_name(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?;
        info!(?expires_at_ms, "a user's grant was refreshed");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::grant::{GrantClient, GrantKey, OAuth2Grant};
    use std::collections::BTreeMap;

    fn grant(expires_at_ms: Option<u64>) -> Grant {
        Grant {
            key: GrantKey {
                namespace: "ns".into(),
                target: "t".into(),
                user: "alice".into(),
            },
            value: Redacted::new("at"),
            oauth2: Some(OAuth2Grant {
                refresh_token: Some(Redacted::new("rt")),
                expires_at_ms,
                token_endpoint: "http://127.0.0.1:1/token".into(),
                issuer: None,
                revocation_endpoint: None,
                client: GrantClient {
                    client_id: "c".into(),
                    registered_secret: None,
                    auth_method: None,
                },
                scopes: vec![],
                resource: None,
            }),
        }
    }

    #[test]
    fn due_before_expiry_or_when_asked() {
        let before = Duration::from_secs(60);
        let s = Secret::default();
        assert!(!due(&s, &grant(Some(1_000_000)), 900_000, before));
        assert!(due(&s, &grant(Some(1_000_000)), 950_000, before));
        assert!(!due(&s, &grant(None), 950_000, before));
        let mut asked = Secret::default();
        asked.metadata.annotations = Some(BTreeMap::from([(
            REFRESH_ANNOTATION.to_owned(),
            "1".to_owned(),
        )]));
        assert!(due(&asked, &grant(Some(1_000_000)), 0, before));
        let mut secret_mode = grant(None);
        secret_mode.oauth2 = None;
        assert!(!due(&asked, &secret_mode, 0, before), "nothing to refresh");
    }
}
