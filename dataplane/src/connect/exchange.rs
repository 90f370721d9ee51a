//! `userCredential.mode: tokenExchange` (RFC 8693): the caller's own bearer token (the subject
//! token, exactly as presented to the gateway) is exchanged at the Target's `tokenEndpoint` for
//! a token scoped to the Target's `audience`, and kept per (Target and its exchange settings,
//! user, subject token) until shortly before it expires, never beyond the subject token's own
//! expiry.
//!
//! What an attacker would try, and what stops it:
//! * Reading the caller's token: [`SubjectToken`] prints `[REDACTED]` in `Debug`, has no
//!   `Display`, and is handed to the OAuth client only as a `SecretString`. No error here
//!   carries a token or an answer body ([`ExchangeError`] is built from labels and the RFC 6749
//!   `error` code only).
//! * Collecting callers' gateway tokens with a Target of one's own: the subject token is sent
//!   only to a token endpoint of the origin that issued it ([`same_origin`]); a Target naming
//!   another host gets an error and nothing is sent.
//! * Another user's (or a narrower token's) exchanged token: the cache key holds the user and a
//!   SHA-256 of the subject token, so a second token of the same user (say one narrowed by
//!   `scope`) never reuses what a wider one was given; and a digest of the exchange settings,
//!   so a changed `audience` never reuses a token for the old one.
//! * A slow, refusing or flooding IdP: one bounded client (no redirects, 5 s, 64 KiB), the
//!   whole exchange under a timeout, concurrent first calls of one key wait for one exchange.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use http::header::AUTHORIZATION;
use http::{HeaderMap, HeaderValue};
use reflow_crds::snapshot::{
    CompiledTokenExchange, CompiledUserCredential, ResolvedCredentials, ResolvedEntry, SealedEntry,
};
use reflow_crds::{Fingerprint, SealingKey};
use reflow_oauth::exchange::{DEFAULT_LIFETIME, EXPIRY_MARGIN, ExchangeRequest, exchange};
use reflow_oauth::{ExposeSecret, OAuthError, OAuthHttp, SecretString, TokenClient};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;

use crate::authn::Principal;

/// Bound on one request to the token endpoint (connect, send, read).
pub const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on the token endpoint's answer.
pub const MAX_ANSWER: usize = 64 * 1024;
/// Most exchanged tokens kept (the soonest-expiring dropped first).
pub const MAX_CACHED: usize = 10_000;
/// Longest an exchanged token is reused, whatever `expires_in` says.
pub const MAX_LIFETIME: Duration = Duration::from_secs(3600);
/// How long a failed exchange answers for its key without asking the IdP again: concurrent
/// callers waiting on it, and callers right after, share the failure instead of each waiting
/// out their own (a refusing or silent IdP is asked once per key per hold, not once per request).
pub const FAILURE_HOLD: Duration = Duration::from_secs(5);
/// The name audit and `Debug` give the entry an exchanged token fills.
pub const EXCHANGED: &str = "token-exchange";

/// The caller's own bearer token, kept only for callers the gateway authenticated by verifying
/// a bearer JWT. `Debug` shows the issuer, never the token; there is no `Display`.
#[derive(Clone)]
pub struct SubjectToken {
    /// The `Authorization` header as presented (marked sensitive; cloning shares its bytes).
    header: HeaderValue,
    issuer: Arc<str>,
    expires_at: Option<u64>,
}

impl fmt::Debug for SubjectToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubjectToken")
            .field("issuer", &self.issuer)
            .field("expires_at", &self.expires_at)
            .field("token", &"[REDACTED]")
            .finish()
    }
}

impl SubjectToken {
    /// The request's bearer token when `principal` was verified from one (a JWT of a trusted
    /// issuer, dev tokens included); `None` for certificates, trusted proxies and fixed
    /// identities, whose callers presented no token the gateway verified. Cheap on every
    /// request: the header's bytes are shared, not copied, and read only when exchanged.
    pub fn capture(principal: &Principal, headers: &HeaderMap) -> Option<Self> {
        let issuer = principal.issuer.clone()?;
        let mut values = headers.get_all(AUTHORIZATION).iter();
        let mut header = values.next()?.clone();
        if values.next().is_some() {
            return None;
        }
        header.set_sensitive(true);
        Some(Self {
            header,
            issuer,
            expires_at: principal.expires_at,
        })
    }

    /// A subject token from its parts (tests, and callers that verified a bare token).
    pub fn new(token: &str, issuer: &str, expires_at: Option<u64>) -> Option<Self> {
        let mut header = HeaderValue::from_str(&format!("Bearer {token}")).ok()?;
        header.set_sensitive(true);
        let t = Self {
            header,
            issuer: issuer.into(),
            expires_at,
        };
        t.token().is_some().then_some(t)
    }

    /// Whether it reads as `Bearer <token>` (the authenticator accepted it as one).
    pub fn is_bearer(&self) -> bool {
        self.token().is_some()
    }

    /// The token after `Bearer `, parsed as the authenticator does.
    fn token(&self) -> Option<&str> {
        let value = self.header.to_str().ok()?.trim();
        let (scheme, token) = value.split_once(' ')?;
        let token = token.trim_start_matches(' ');
        (scheme.eq_ignore_ascii_case("bearer") && !token.is_empty()).then_some(token)
    }

    fn secret(&self) -> SecretString {
        SecretString::from(self.token().unwrap_or_default().to_owned())
    }

    /// SHA-256 of the token: part of the cache key, never the token itself.
    pub fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.token().unwrap_or_default().as_bytes()).into()
    }

    /// The `iss` of the verified token.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    pub fn expires_at(&self) -> Option<u64> {
        self.expires_at
    }
}

/// Whether `endpoint` is on the origin of `issuer` (scheme, host and port): the only place a
/// subject token is ever sent. A dev token (`iss: reflow-dev`, not a URL) matches nothing.
pub fn same_origin(issuer: &str, endpoint: &str) -> bool {
    match (reqwest::Url::parse(issuer), reqwest::Url::parse(endpoint)) {
        (Ok(a), Ok(b)) => a.origin().is_tuple() && a.origin() == b.origin(),
        _ => false,
    }
}

/// Why no exchanged token was had. Messages carry no token, no answer body and no
/// `error_description` (an IdP could echo what it was sent).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ExchangeError {
    #[error(
        "this Target exchanges the caller's own token from the identity provider, and this request carried none the gateway verified (certificate, trusted proxy or fixed identity)"
    )]
    NoBearer,
    #[error(
        "the caller's token was issued by {issuer:?}; the gateway sends it to no other origin than its issuer's (tokenEndpoint is {endpoint:?})"
    )]
    OtherIssuer { issuer: String, endpoint: String },
    #[error("the token exchange client is not usable: {0}")]
    Client(String),
    #[error("the identity provider did not answer the token exchange within {0:?}")]
    Timeout(Duration),
    #[error("the identity provider refused the token exchange: {0}")]
    Refused(String),
    #[error("the identity provider's token endpoint failed ({0})")]
    Endpoint(&'static str),
    #[error("the identity provider answered a token that cannot be injected")]
    Unusable,
}

impl ExchangeError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoBearer => "no_bearer",
            Self::OtherIssuer { .. } => "other_issuer",
            Self::Client(_) => "client",
            Self::Timeout(_) => "timeout",
            Self::Refused(_) => "refused",
            Self::Endpoint(l) => l,
            Self::Unusable => "unusable",
        }
    }

    fn from_oauth(e: &OAuthError) -> Self {
        match e {
            OAuthError::Refused { error, .. } => Self::Refused(error.clone()),
            OAuthError::Url { .. } => Self::Client(e.to_string()),
            other => Self::Endpoint(other.label()),
        }
    }
}

/// Which exchanged token: Target, its exchange settings, user, subject token.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ExchangeKey {
    target: Arc<str>,
    settings: [u8; 32],
    user: Arc<str>,
    subject: [u8; 32],
}

impl ExchangeKey {
    pub fn new(
        target: &Arc<str>,
        u: &CompiledUserCredential,
        x: &CompiledTokenExchange,
        user: &Arc<str>,
        subject: &SubjectToken,
    ) -> Self {
        let mut h = Sha256::new();
        for part in [
            &*x.token_endpoint,
            &*x.audience,
            &*x.client.client_id,
            u.inject_as.as_str(),
            &*u.name,
            &*u.prefix,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for s in &x.scopes {
            h.update(s.as_bytes());
            h.update([0]);
        }
        if let Some(secret) = &x.client.client_secret {
            h.update(secret.value.digest.as_bytes());
        }
        Self {
            target: target.clone(),
            settings: h.finalize().into(),
            user: user.clone(),
            subject: subject.digest(),
        }
    }
}

/// How long an exchanged token is kept: until `EXPIRY_MARGIN` before it expires (default
/// lifetime without `expires_in`, at most [`MAX_LIFETIME`]), and never beyond the subject
/// token's `exp`. `None`: use it for this call only.
pub fn keep_until(
    now: Instant,
    now_unix: u64,
    expires_in: Option<u64>,
    subject_exp: Option<u64>,
) -> Option<Instant> {
    let lifetime = expires_in
        .map_or(DEFAULT_LIFETIME, Duration::from_secs)
        .min(MAX_LIFETIME);
    let mut keep = lifetime.checked_sub(EXPIRY_MARGIN)?;
    if let Some(exp) = subject_exp {
        keep = keep.min(Duration::from_secs(exp.saturating_sub(now_unix)));
    }
    (!keep.is_zero()).then_some(now + keep)
}

/// The exchanged token as the slot's entry: `prefix + token`, sealed under an AAD of its own
/// (so the cache holds no plain token, and the value opens in no other slot).
pub fn seal_entry(
    key: &SealingKey,
    target: (&str, &str),
    user: &str,
    u: &CompiledUserCredential,
    token: &SecretString,
) -> Result<SealedEntry, ExchangeError> {
    let raw = token.expose_secret();
    if raw.is_empty() || raw.len() > 16 * 1024 || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ExchangeError::Unusable);
    }
    let aad = reflow_crds::seal::slot_aad(
        target.0,
        target.1,
        &format!("{EXCHANGED}:{user}"),
        u.inject_as.as_str(),
        &u.name,
    );
    let value = key.seal(&aad, &format!("{}{raw}", u.prefix));
    Ok(SealedEntry {
        inject_as: u.inject_as,
        name: u.name.clone(),
        aad: aad.into(),
        value,
    })
}

/// `creds` with `entry` in its slot; the fingerprint changes with the entry (processes and
/// pods keyed by it never serve another exchanged token).
pub fn with_entry(mut creds: ResolvedCredentials, entry: SealedEntry) -> ResolvedCredentials {
    let mut h = Sha256::new();
    h.update(creds.fingerprint.0);
    h.update(entry.inject_as.as_str());
    h.update([0]);
    h.update(entry.name.as_bytes());
    h.update([0]);
    h.update(entry.value.digest.as_bytes());
    creds.fingerprint = Fingerprint(h.finalize().into());
    creds
        .entries
        .retain(|e| !(e.entry.inject_as == entry.inject_as && e.entry.name == entry.name));
    creds.entries.push(ResolvedEntry {
        entry,
        credential: EXCHANGED.into(),
    });
    creds
}

struct Cached {
    entry: SealedEntry,
    until: Instant,
}

/// What one exchange needs besides the key.
pub struct ExchangeCall<'a> {
    pub client: &'a TokenClient,
    pub subject: &'a SubjectToken,
    pub request: ExchangeRequest<'a>,
    /// Seals the exchanged token into the slot's entry.
    pub seal: &'a (dyn Fn(&SecretString) -> Result<SealedEntry, ExchangeError> + Sync),
}

/// Exchanged tokens (sealed) per [`ExchangeKey`], and the exchanges in flight.
pub struct Exchanges {
    http: OAuthHttp,
    cache: Mutex<HashMap<ExchangeKey, Cached>>,
    inflight: Mutex<HashMap<ExchangeKey, Arc<AsyncMutex<()>>>>,
    /// The last failure per key and until when it answers for that key.
    failed: Mutex<HashMap<ExchangeKey, (ExchangeError, Instant)>>,
    timeout: Duration,
    failure_hold: Duration,
}

impl Default for Exchanges {
    fn default() -> Self {
        Self::new(EXCHANGE_TIMEOUT)
    }
}

impl Exchanges {
    pub fn new(timeout: Duration) -> Self {
        Self {
            // The whole exchange is bounded by `timeout` below; the client's own bound is a
            // little longer, so a slow IdP reads as a timeout, not a transport error.
            http: OAuthHttp::new(timeout + Duration::from_secs(1), MAX_ANSWER),
            cache: Mutex::default(),
            inflight: Mutex::default(),
            failed: Mutex::default(),
            timeout,
            failure_hold: FAILURE_HOLD,
        }
    }

    /// The same with another [`FAILURE_HOLD`] (tests).
    pub fn with_failure_hold(mut self, hold: Duration) -> Self {
        self.failure_hold = hold;
        self
    }

    /// The failure that still answers for `key`, if any.
    fn held_failure(&self, key: &ExchangeKey) -> Option<ExchangeError> {
        let failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed
            .get(key)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(e, _)| e.clone())
    }

    /// Records the outcome of an exchange for `key`: a failure is held, a success clears it.
    fn note_outcome(&self, key: &ExchangeKey, out: &Result<SealedEntry, ExchangeError>) {
        let now = Instant::now();
        let mut failed = self.failed.lock().unwrap_or_else(|p| p.into_inner());
        failed.retain(|_, (_, until)| *until > now);
        match out {
            Ok(_) => {
                failed.remove(key);
            }
            // Bounded like the cache: past the cap a new failure is simply not held.
            Err(e) if failed.len() < MAX_CACHED => {
                failed.insert(key.clone(), (e.clone(), now + self.failure_hold));
            }
            Err(_) => {}
        }
    }

    /// The bounded client every exchange goes through.
    pub fn http(&self) -> &OAuthHttp {
        &self.http
    }

    /// The cached entry for `key` while it is good.
    pub fn get(&self, key: &ExchangeKey) -> Option<SealedEntry> {
        let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache
            .get(key)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.entry.clone())
    }

    fn put(&self, key: ExchangeKey, entry: SealedEntry, until: Instant) {
        let now = Instant::now();
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        cache.retain(|_, c| c.until > now);
        if cache.len() >= MAX_CACHED
            && let Some(soonest) = cache
                .iter()
                .min_by_key(|(_, c)| c.until)
                .map(|(k, _)| k.clone())
        {
            cache.remove(&soonest);
        }
        cache.insert(key, Cached { entry, until });
    }

    /// How many tokens are kept (tests, diagnostics).
    pub fn len(&self) -> usize {
        self.cache.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Forgets `user`'s tokens for `target` (`namespace/name`): the upstream refused one.
    /// How many were kept.
    pub fn forget(&self, target: &str, user: &str) -> usize {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        let before = cache.len();
        cache.retain(|k, _| !(&*k.target == target && &*k.user == user));
        before - cache.len()
    }

    /// The cached entry, else one exchange (concurrent callers of one key wait for it, and a
    /// failure answers for its key for [`FAILURE_HOLD`]); `true` when this call exchanged.
    pub async fn get_or_exchange(
        &self,
        key: &ExchangeKey,
        call: ExchangeCall<'_>,
    ) -> Result<(SealedEntry, bool), ExchangeError> {
        if let Some(e) = self.get(key) {
            return Ok((e, false));
        }
        let lock = self
            .inflight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone();
        let out = {
            let _one = lock.lock().await;
            match (self.get(key), self.held_failure(key)) {
                (Some(e), _) => Ok((e, false)),
                (None, Some(failure)) => Err(failure),
                (None, None) => {
                    let out = self.exchange_now(key, &call).await;
                    self.note_outcome(key, &out);
                    out.map(|e| (e, true))
                }
            }
        };
        let mut inflight = self.inflight.lock().unwrap_or_else(|p| p.into_inner());
        // Only the map and this call hold it: nobody waits on this key any more.
        if Arc::strong_count(&lock) <= 2 {
            inflight.remove(key);
        }
        out
    }

    async fn exchange_now(
        &self,
        key: &ExchangeKey,
        call: &ExchangeCall<'_>,
    ) -> Result<SealedEntry, ExchangeError> {
        let subject = call.subject.secret();
        // The client bounds each request; this bounds the whole exchange as well.
        let answer =
            tokio::time::timeout(self.timeout, exchange(call.client, &subject, &call.request))
                .await
                .map_err(|_| ExchangeError::Timeout(self.timeout))?
                .map_err(|e| ExchangeError::from_oauth(&e))?;
        let entry = (call.seal)(&answer.access_token)?;
        let now_unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if let Some(until) = keep_until(
            Instant::now(),
            now_unix,
            answer.expires_in,
            call.subject.expires_at,
        ) {
            self.put(key.clone(), entry.clone(), until);
        }
        Ok(entry)
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
