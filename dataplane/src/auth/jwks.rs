//! One issuer's JWKS: discovery, fetching with timeouts and size limits, the cached key set, and
//! the refresh throttle that keeps unknown-`kid` floods from hammering the IdP.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::header::ACCEPT;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio::sync::{Mutex, OwnedMutexGuard};
use tracing::{Instrument, debug, info, warn};

use super::error::AuthConfigError;
use super::keys::VerifyingKey;

/// Discovery documents and JWKS are small; anything bigger is refused unread.
const MAX_BODY_BYTES: usize = 512 * 1024;
/// Bounds the work a kid-less token can cause (each candidate key is one verification).
const MAX_KEYS: usize = 64;

/// The keys currently trusted for an issuer's JWKS, swapped atomically on refresh.
#[derive(Debug, Default)]
pub(crate) struct KeySet {
    pub keys: Vec<VerifyingKey>,
    /// When the keys were last fetched successfully; `None` until the first success.
    pub fetched_at: Option<Instant>,
}

/// Result of asking for a refresh.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refresh {
    /// New keys were fetched and installed.
    Fetched,
    /// Another refresh ran within the minimum interval; nothing was fetched.
    Throttled,
    /// The fetch failed; the previous keys stay in place.
    Failed,
}

#[derive(Debug)]
enum Source {
    Direct(String),
    Discovery { url: String },
}

#[derive(Debug, Default)]
struct RefreshState {
    /// The `jwks_uri` found by discovery, kept until a fetch from it fails.
    discovered: Option<String>,
}

#[derive(Debug)]
pub(crate) struct Jwks {
    issuer: String,
    source: Source,
    client: reqwest::Client,
    min_refresh: Duration,
    max_age: Duration,
    keys: ArcSwap<KeySet>,
    /// Serialises fetches; whoever waits on it re-checks the throttle once it gets it.
    state: Arc<Mutex<RefreshState>>,
    /// Time of the last fetch attempt in ms since `epoch` plus one; 0 means never.
    last_attempt: AtomicU64,
    /// Whether the most recent fetch attempt failed.
    last_failed: std::sync::atomic::AtomicBool,
    epoch: Instant,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("request failed: {0}")]
    Http(reqwest::Error),
    #[error("unexpected HTTP status {0}")]
    Status(u16),
    #[error("response larger than {MAX_BODY_BYTES} bytes")]
    TooLarge,
    #[error("response is not the expected JSON document")]
    Json,
    #[error("discovery document names another issuer")]
    IssuerMismatch,
    #[error("discovery document has an unusable jwks_uri")]
    BadJwksUri,
    #[error("JWKS has no usable signing key")]
    NoUsableKeys,
}

impl From<reqwest::Error> for FetchError {
    fn from(e: reqwest::Error) -> Self {
        // The URL is configuration, but drop it anyway in case it carries userinfo.
        Self::Http(e.without_url())
    }
}

impl Jwks {
    pub fn new(
        issuer: &str,
        jwks_uri: Option<&str>,
        client: reqwest::Client,
        min_refresh: Duration,
        max_age: Duration,
    ) -> Self {
        let source = match jwks_uri {
            Some(uri) => Source::Direct(uri.to_string()),
            None => Source::Discovery {
                url: format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                ),
            },
        };
        Self {
            issuer: issuer.to_string(),
            source,
            client,
            min_refresh,
            max_age,
            keys: ArcSwap::from_pointee(KeySet::default()),
            state: Arc::new(Mutex::new(RefreshState::default())),
            last_attempt: AtomicU64::new(0),
            last_failed: std::sync::atomic::AtomicBool::new(false),
            epoch: Instant::now(),
        }
    }

    pub fn keys(&self) -> Arc<KeySet> {
        self.keys.load_full()
    }

    /// No keys were ever fetched, or the latest attempt failed: a missing key may be the IdP's
    /// fault rather than the token's.
    pub fn degraded(&self) -> bool {
        self.keys.load().fetched_at.is_none() || self.last_failed.load(Ordering::Relaxed)
    }

    fn throttled(&self) -> bool {
        match self.last_attempt.load(Ordering::Acquire) {
            0 => false,
            stamp => {
                let last = self.epoch + Duration::from_millis(stamp - 1);
                last.elapsed() < self.min_refresh
            }
        }
    }

    fn mark_attempt(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.last_attempt.store(ms + 1, Ordering::Release);
    }

    /// Fetches the JWKS now unless one was fetched (or attempted) within the minimum interval.
    /// Concurrent callers queue behind one fetch and then see it as their own result.
    pub async fn refresh(&self) -> Refresh {
        let guard = Arc::clone(&self.state).lock_owned().await;
        if self.throttled() {
            return Refresh::Throttled;
        }
        self.refresh_locked(guard).await
    }

    /// Refreshes keys older than the maximum age without delaying the request that noticed.
    pub fn refresh_in_background_if_stale(self: &Arc<Self>) {
        let stale = self
            .keys
            .load()
            .fetched_at
            .is_some_and(|at| at.elapsed() >= self.max_age);
        if !stale || self.throttled() {
            return;
        }
        let Ok(guard) = Arc::clone(&self.state).try_lock_owned() else {
            return; // a refresh is already running
        };
        let this = Arc::clone(self);
        tokio::spawn(
            async move {
                this.refresh_locked(guard).await;
            }
            .in_current_span(),
        );
    }

    async fn refresh_locked(&self, mut state: OwnedMutexGuard<RefreshState>) -> Refresh {
        self.mark_attempt();
        match self.fetch(&mut state).await {
            Ok(keys) => {
                info!(issuer = %self.issuer, keys = keys.len(), "JWKS refreshed");
                self.keys.store(Arc::new(KeySet {
                    keys,
                    fetched_at: Some(Instant::now()),
                }));
                self.last_failed.store(false, Ordering::Relaxed);
                Refresh::Fetched
            }
            Err(error) => {
                warn!(issuer = %self.issuer, %error, "JWKS refresh failed; keeping previous keys");
                self.last_failed.store(true, Ordering::Relaxed);
                Refresh::Failed
            }
        }
    }

    async fn fetch(&self, state: &mut RefreshState) -> Result<Vec<VerifyingKey>, FetchError> {
        let uri = match (&self.source, &state.discovered) {
            (Source::Direct(uri), _) => uri.clone(),
            (Source::Discovery { .. }, Some(uri)) => uri.clone(),
            (Source::Discovery { url }, None) => {
                let uri = self.discover(url).await?;
                state.discovered = Some(uri.clone());
                uri
            }
        };
        let set: RawJwkSet = match self.get_json(&uri).await {
            Ok(set) => set,
            Err(e) => {
                // The IdP may have moved its JWKS; look it up again next time.
                state.discovered = None;
                return Err(e);
            }
        };
        let mut keys = Vec::new();
        for raw in set.keys.iter().take(MAX_KEYS) {
            match VerifyingKey::from_jwk(raw) {
                Ok(key) => keys.push(key),
                Err(reason) => {
                    let kid = raw.get("kid").and_then(|k| k.as_str()).unwrap_or("");
                    debug!(issuer = %self.issuer, kid, reason, "skipping JWK");
                }
            }
        }
        if keys.is_empty() {
            return Err(FetchError::NoUsableKeys);
        }
        Ok(keys)
    }

    async fn discover(&self, url: &str) -> Result<String, FetchError> {
        let doc: Discovery = self.get_json(url).await?;
        // OpenID Connect Discovery §4.3: the document must be for the issuer we asked about.
        if doc.issuer != self.issuer {
            return Err(FetchError::IssuerMismatch);
        }
        let jwks = reqwest::Url::parse(&doc.jwks_uri).map_err(|_| FetchError::BadJwksUri)?;
        let issuer_https = self.issuer.starts_with("https://");
        match jwks.scheme() {
            "https" => {}
            // Never downgrade from an https issuer to plain-http keys.
            "http" if !issuer_https => {}
            _ => return Err(FetchError::BadJwksUri),
        }
        Ok(doc.jwks_uri)
    }

    async fn get_json<T: DeserializeOwned>(&self, url: &str) -> Result<T, FetchError> {
        let mut resp = self
            .client
            .get(url)
            .header(ACCEPT, "application/json")
            .send()
            .await?;
        if !resp.status().is_success() {
            return Err(FetchError::Status(resp.status().as_u16()));
        }
        if resp
            .content_length()
            .is_some_and(|len| len > MAX_BODY_BYTES as u64)
        {
            return Err(FetchError::TooLarge);
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp.chunk().await? {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(FetchError::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        serde_json::from_slice(&body).map_err(|_| FetchError::Json)
    }
}

#[derive(Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

#[derive(Deserialize)]
struct RawJwkSet {
    keys: Vec<serde_json::Value>,
}

/// The HTTP client for discovery and JWKS. reqwest is built without a default rustls crypto
/// provider; install ring if the binary has not installed one yet, so building never panics.
pub(crate) fn http_client(timeout: Duration) -> Result<reqwest::Client, AuthConfigError> {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race with another installer is fine: either provider serves.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
        .timeout(timeout)
        .connect_timeout(timeout)
        .redirect(reqwest::redirect::Policy::limited(5))
        .user_agent(concat!("reflow-dataplane/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| AuthConfigError::HttpClient(e.without_url().to_string()))
}
