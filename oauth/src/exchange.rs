//! RFC 8693 token exchange (`userCredential.mode: tokenExchange`): the caller's access token,
//! presented at the caller's IdP, for a token scoped to the upstream's `audience`; and the
//! per-(user, Target) cache that keeps it until shortly before it expires.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use secrecy::SecretString;

use crate::token::{TokenClient, TokenResponse};
use crate::{OAuthError, Result};

/// The grant type of RFC 8693 §2.1.
pub const TOKEN_EXCHANGE_GRANT: &str = "urn:ietf:params:oauth:grant-type:token-exchange";
/// RFC 8693 §3: the subject and the requested token are access tokens.
pub const ACCESS_TOKEN_TYPE: &str = "urn:ietf:params:oauth:token-type:access_token";
/// A cached token is replaced this long before it expires.
pub const EXPIRY_MARGIN: Duration = Duration::from_secs(30);
/// Without `expires_in`, an exchanged token is reused this long.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(60);
/// Most cached tokens kept (oldest-expiring dropped first).
pub const MAX_CACHED: usize = 10_000;

/// What to exchange for.
#[derive(Clone, Debug)]
pub struct ExchangeRequest<'a> {
    pub audience: &'a str,
    pub scopes: &'a [String],
    /// RFC 8707 `resource`, when the upstream wants it too.
    pub resource: Option<&'a str>,
}

/// Exchanges `subject_token` at `client`'s token endpoint (the caller's IdP).
pub async fn exchange(
    client: &TokenClient,
    subject_token: &SecretString,
    req: &ExchangeRequest<'_>,
) -> Result<TokenResponse> {
    use secrecy::ExposeSecret;
    let scope = req.scopes.join(" ");
    let mut params = vec![
        ("subject_token", subject_token.expose_secret()),
        ("subject_token_type", ACCESS_TOKEN_TYPE),
        ("requested_token_type", ACCESS_TOKEN_TYPE),
        ("audience", req.audience),
    ];
    if !req.scopes.is_empty() {
        params.push(("scope", scope.as_str()));
    }
    if let Some(r) = req.resource {
        params.push(("resource", r));
    }
    let token = client.request(TOKEN_EXCHANGE_GRANT, &params).await?;
    if token
        .issued_token_type
        .as_deref()
        .is_some_and(|t| t != ACCESS_TOKEN_TYPE)
    {
        return Err(OAuthError::Json {
            url: client.token_endpoint().to_string(),
            message: "issued_token_type is not an access token".to_owned(),
        });
    }
    Ok(token)
}

struct Cached {
    token: SecretString,
    /// When to stop using it (expiry minus the margin).
    until: Instant,
}

/// Exchanged tokens per key (e.g. `namespace/target` + user), reused until shortly before expiry.
#[derive(Default)]
pub struct ExchangeCache {
    tokens: Mutex<HashMap<String, Cached>>,
}

impl ExchangeCache {
    /// The cached token for `key` if it is still good.
    pub fn get(&self, key: &str) -> Option<SecretString> {
        let tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens
            .get(key)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.token.clone())
    }

    /// Keeps `token` for `key` until `EXPIRY_MARGIN` before it expires (not at all when it
    /// expires sooner than that).
    pub fn put(&self, key: &str, token: &TokenResponse) {
        let lifetime = token
            .expires_in
            .map_or(DEFAULT_LIFETIME, Duration::from_secs);
        let Some(keep) = lifetime.checked_sub(EXPIRY_MARGIN) else {
            return;
        };
        let now = Instant::now();
        let mut tokens = self.tokens.lock().unwrap_or_else(|p| p.into_inner());
        tokens.retain(|_, c| c.until > now);
        if tokens.len() >= MAX_CACHED
            && let Some(oldest) = tokens
                .iter()
                .min_by_key(|(_, c)| c.until)
                .map(|(k, _)| k.clone())
        {
            tokens.remove(&oldest);
        }
        tokens.insert(
            key.to_owned(),
            Cached {
                token: token.access_token.clone(),
                until: now + keep,
            },
        );
    }

    /// The cached token, else a fresh exchange (cached).
    pub async fn get_or_exchange(
        &self,
        key: &str,
        client: &TokenClient,
        subject_token: &SecretString,
        req: &ExchangeRequest<'_>,
    ) -> Result<SecretString> {
        if let Some(t) = self.get(key) {
            return Ok(t);
        }
        let token = exchange(client, subject_token, req).await?;
        self.put(key, &token);
        Ok(token.access_token)
    }

    /// Forgets `key` (the upstream refused the token).
    pub fn forget(&self, key: &str) {
        self.tokens
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn response(token: &str, expires_in: Option<u64>) -> TokenResponse {
        serde_json::from_value(serde_json::json!({
            "access_token": token, "token_type": "Bearer", "expires_in": expires_in,
        }))
        .unwrap()
    }

    #[test]
    fn cached_until_shortly_before_expiry() {
        let cache = ExchangeCache::default();
        cache.put("ns/t alice", &response("tok-a", Some(300)));
        assert_eq!(cache.get("ns/t alice").unwrap().expose_secret(), "tok-a");
        assert!(cache.get("ns/t bob").is_none(), "per user");
        // Expiring within the margin: never cached.
        cache.put("ns/t carol", &response("tok-c", Some(10)));
        assert!(cache.get("ns/t carol").is_none());
        cache.forget("ns/t alice");
        assert!(cache.get("ns/t alice").is_none());
    }
}
