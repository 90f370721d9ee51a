//! Controller mode's [`GrantStore`]: the dataplane holds no Kubernetes rights, so it hands the
//! grant to the controller over its authenticated API; the controller writes the Secret (sealed)
//! and the user-managed Credential, and the next snapshot brings the value back to every
//! dataplane.

use std::time::Duration;

use futures::future::BoxFuture;
use reflow_crds::grant::{DISCONNECT_PATH, GRANTS_PATH, Grant, GrantKey, REFRESH_PATH};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

use super::{ConnectError, Disconnected, GrantStore, Slot};

/// A call to the controller that takes longer is given up (the user retries from a new link).
const TIMEOUT: Duration = Duration::from_secs(10);
/// Longest answer body read from the controller (a disconnect's outcome is a few bytes).
const MAX_ANSWER: usize = 4096;

pub struct ControllerGrants {
    http: reqwest::Client,
    url: String,
    token: SecretString,
}

impl ControllerGrants {
    /// `url` is the controller's base URL; `token` the bearer token dataplanes present.
    pub fn new(url: &str, token: SecretString) -> Result<Self, ConnectError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(TIMEOUT)
            .build()
            .map_err(|e| ConnectError::Controller(e.to_string()))?;
        Ok(Self {
            http,
            url: url.trim_end_matches('/').to_owned(),
            token,
        })
    }

    /// The status (2xx or 404); else the controller's one-line reason (never echoes a value:
    /// it has none).
    async fn post<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<reqwest::StatusCode, ConnectError> {
        self.post_reading(path, body).await.map(|(s, _)| s)
    }

    /// As [`Self::post`], with the body of a 2xx answer (at most [`MAX_ANSWER`] bytes read).
    async fn post_reading<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
    ) -> Result<(reqwest::StatusCode, Vec<u8>), ConnectError> {
        let resp = self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(self.token.expose_secret())
            .json(body)
            .send()
            .await
            .map_err(|e| ConnectError::Controller(e.without_url().to_string()))?;
        let status = resp.status();
        if status.is_success() || status == reqwest::StatusCode::NOT_FOUND {
            let mut body = Vec::new();
            let mut resp = resp;
            while let Ok(Some(chunk)) = resp.chunk().await {
                if body.len() + chunk.len() > MAX_ANSWER {
                    break;
                }
                body.extend_from_slice(&chunk);
            }
            return Ok((status, body));
        }
        let text = resp.text().await.unwrap_or_default();
        let line: String = text
            .lines()
            .next()
            .unwrap_or("")
            .chars()
            .take(300)
            .collect();
        Err(ConnectError::Controller(format!(
            "{} {line}",
            status.as_u16()
        )))
    }

    /// An upstream answered 401 with this grant's value: ask the lease holder to refresh now.
    pub async fn refresh_now(&self, key: &GrantKey) -> Result<(), ConnectError> {
        self.post(REFRESH_PATH, key).await.map(|_| ())
    }
}

impl GrantStore for ControllerGrants {
    fn put<'a>(
        &'a self,
        _slot: &'a Slot<'a>,
        grant: &'a Grant,
    ) -> BoxFuture<'a, Result<(), ConnectError>> {
        Box::pin(async move {
            grant.validate().map_err(|_| ConnectError::BadValue)?;
            match self.post(GRANTS_PATH, grant).await? {
                s if s.is_success() => Ok(()),
                _ => Err(ConnectError::Controller(
                    "404 the controller does not know this Target".to_owned(),
                )),
            }
        })
    }

    fn remove<'a>(&'a self, key: &'a GrantKey) -> BoxFuture<'a, Result<bool, ConnectError>> {
        Box::pin(async move {
            let status = self.post(DISCONNECT_PATH, key).await?;
            Ok(status != reqwest::StatusCode::NOT_FOUND)
        })
    }

    fn disconnect<'a>(
        &'a self,
        key: &'a GrantKey,
    ) -> BoxFuture<'a, Result<Disconnected, ConnectError>> {
        Box::pin(async move {
            let (status, body) = self.post_reading(DISCONNECT_PATH, key).await?;
            if status == reqwest::StatusCode::NOT_FOUND {
                return Ok(Disconnected {
                    existed: false,
                    revoked: None,
                });
            }
            // `{"existed": true, "revoked": true|false|null}`; an empty 2xx: deleted, not revoked.
            let revoked = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v.get("revoked").and_then(serde_json::Value::as_bool));
            Ok(Disconnected {
                existed: true,
                revoked,
            })
        })
    }

    fn upstream_refused<'a>(&'a self, key: &'a GrantKey) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            if let Err(e) = self.refresh_now(key).await {
                tracing::warn!(error = %e, label = e.label(), "the controller did not take a refresh request");
            }
        })
    }
}
