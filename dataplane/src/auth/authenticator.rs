//! `Authenticator`: turns a request's headers into an `Identity` — pick the issuer by `iss`,
//! pick keys by `kid` and key type, verify, map claims — refreshing JWKS when a key is unknown.

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use serde_json::{Map, Value};
use tracing::{Instrument, Span, debug, debug_span, field, info_span, instrument};

use super::cache::TokenCache;
use super::claims;
use super::config::{AuthConfig, ClaimMapping};
use super::error::{AuthConfigError, AuthError};
use super::jwks::{self, Jwks, Refresh};
use super::jwt::{self, Unverified, Validations};
use super::keys::VerifyingKey;
use super::metadata::{self, ProtectedResourceMetadata};
use crate::authn::Principal;
use crate::scope::{SCOPE_CLAIM, TokenScope};

/// Verifies bearer tokens against the configured issuers. Cheap to clone; all clones share the
/// JWKS caches and the verified-token cache.
#[derive(Clone)]
pub struct Authenticator {
    inner: Arc<Inner>,
}

struct Inner {
    by_iss: HashMap<String, Issuer>,
    issuers: Vec<String>,
    scopes_supported: Vec<String>,
    cache: TokenCache,
    /// This gateway's environment; a token's `env` claim must equal it.
    environment: Option<String>,
    require_env: bool,
}

struct Issuer {
    name: String,
    static_keys: Vec<VerifyingKey>,
    jwks: Option<Arc<Jwks>>,
    validations: Validations,
    claims: ClaimMapping,
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("issuers", &self.inner.issuers)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Validates the configuration, parses static keys and prepares (but does not fetch) JWKS.
    /// Keys are fetched on first use or by [`warm_up`](Self::warm_up).
    pub fn new(config: AuthConfig) -> Result<Self, AuthConfigError> {
        let client = jwks::http_client(config.http_timeout)?;
        Self::with_http_client(config, client)
    }

    /// Like [`new`](Self::new) with a caller-supplied HTTP client for discovery and JWKS (custom
    /// CA roots, proxies, tests). The client should carry its own timeout.
    pub fn with_http_client(
        config: AuthConfig,
        client: reqwest::Client,
    ) -> Result<Self, AuthConfigError> {
        config.validate()?;
        let mut by_iss = HashMap::new();
        for cfg in &config.issuers {
            let mut static_keys = Vec::new();
            if let Some(secret) = &cfg.hs256_secret {
                static_keys.push(VerifyingKey::hs256(secret));
            }
            for (index, pk) in cfg.public_keys.iter().enumerate() {
                let key = VerifyingKey::from_pem(pk).map_err(|reason| {
                    AuthConfigError::InvalidPublicKey {
                        issuer: cfg.issuer.clone(),
                        index,
                        reason,
                    }
                })?;
                static_keys.push(key);
            }
            let jwks = cfg.has_jwks().then(|| {
                Arc::new(Jwks::new(
                    &cfg.issuer,
                    cfg.jwks_uri.as_deref(),
                    client.clone(),
                    config.jwks_min_refresh_interval,
                    config.jwks_max_age,
                ))
            });
            let issuer = Issuer {
                name: cfg.issuer.clone(),
                static_keys,
                jwks,
                validations: Validations::new(
                    &cfg.issuer,
                    &cfg.audiences,
                    config.leeway_seconds,
                    config.require_exp,
                ),
                claims: cfg.claims.clone(),
            };
            by_iss.insert(cfg.issuer.clone(), issuer);
        }
        Ok(Self {
            inner: Arc::new(Inner {
                by_iss,
                issuers: config.issuers.iter().map(|i| i.issuer.clone()).collect(),
                scopes_supported: config.scopes_supported.clone(),
                cache: TokenCache::new(config.cache_ttl),
                environment: config.environment.clone(),
                require_env: config.require_env_claim,
            }),
        })
    }

    /// Fetches every issuer's JWKS once so the first request does not wait for the IdP.
    /// Failures are logged and retried on demand; they never stop the gateway.
    pub async fn warm_up(&self) {
        for issuer in self.inner.by_iss.values() {
            if let Some(jwks) = &issuer.jwks {
                jwks.refresh().await;
            }
        }
    }

    /// The configured issuer identifiers, in configuration order.
    pub fn issuers(&self) -> &[String] {
        &self.inner.issuers
    }

    /// RFC 9728 metadata for `resource` (the gateway's public MCP URL).
    pub fn protected_resource_metadata(&self, resource: &str) -> ProtectedResourceMetadata {
        metadata::protected_resource_metadata(
            resource,
            &self.inner.issuers,
            &self.inner.scopes_supported,
        )
    }

    /// The issuers a client can discover as authorization servers (the http(s) ones).
    pub fn authorization_servers(&self) -> Vec<String> {
        self.protected_resource_metadata("").authorization_servers
    }

    /// Scopes advertised in the protected-resource metadata.
    pub fn scopes_supported(&self) -> &[String] {
        &self.inner.scopes_supported
    }

    /// Authenticates a request by its `Authorization: Bearer` header only. Its span is at
    /// `info` when spans are exported, else at `debug` (off the hot path at the usual filter).
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let span = if reflow_telemetry::propagation::enabled() {
            info_span!("authenticate", issuer = field::Empty, user = field::Empty)
        } else {
            debug_span!("authenticate", issuer = field::Empty, user = field::Empty)
        };
        self.authenticate_headers(headers).instrument(span).await
    }

    async fn authenticate_headers(&self, headers: &HeaderMap) -> Result<Principal, AuthError> {
        let result = match jwt::bearer_token(headers) {
            Ok(token) => self.verify_token(token).await,
            Err(e) => Err(e),
        };
        match &result {
            Ok(p) => {
                Span::current().record("user", field::display(&p.identity.user));
            }
            Err(e) => debug!(reason = e.label(), "bearer token refused"),
        }
        result
    }

    /// Authenticates a bare token (e.g. one a bridge sidecar received out of band).
    #[instrument(name = "authenticate_token", skip_all, fields(issuer = field::Empty))]
    pub async fn authenticate_token(&self, token: &str) -> Result<Principal, AuthError> {
        if token.is_empty() || token.len() > jwt::MAX_TOKEN_BYTES {
            return Err(AuthError::Malformed);
        }
        self.verify_token(token).await
    }

    async fn verify_token(&self, token: &str) -> Result<Principal, AuthError> {
        if let Some(p) = self.inner.cache.get(token) {
            return Ok(p);
        }
        let unverified = jwt::peek(token)?;
        let issuer = self
            .inner
            .by_iss
            .get(&unverified.iss)
            .ok_or(AuthError::UnknownIssuer)?;
        Span::current().record("issuer", field::display(&issuer.name));
        let claims = issuer.verify(token, &unverified).await?;
        self.check_env(&claims)?;
        let identity = claims::identity(&claims, &issuer.claims)?;
        let scope = TokenScope::from_claim(claims.get(SCOPE_CLAIM))
            .map_err(|_| AuthError::invalid(SCOPE_CLAIM))?;
        let token_id = match claims.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(j)) if !j.is_empty() => Some(j.as_str().into()),
            Some(_) => return Err(AuthError::invalid("jti")),
        };
        let exp = claims.get("exp").and_then(numeric_date);
        let principal = Principal {
            identity,
            token_id,
            issued_at: claims.get("iat").and_then(numeric_date),
            scope: if scope.is_unrestricted() {
                TokenScope::unrestricted()
            } else {
                Arc::new(scope)
            },
            issuer: Some(Arc::from(unverified.iss.as_str())),
            expires_at: exp,
        };
        self.inner.cache.insert(token, &principal, exp);
        Ok(principal)
    }

    /// The `env` claim must name this gateway's environment when it has one; a token minted
    /// for staging is refused in production. Without `requireEnvClaim`, tokens that carry no
    /// `env` at all are accepted (most IdPs cannot add one).
    fn check_env(&self, claims: &Map<String, Value>) -> Result<(), AuthError> {
        let Some(expected) = &self.inner.environment else {
            return Ok(());
        };
        match claims.get("env") {
            Some(Value::String(env)) if env == expected => Ok(()),
            None | Some(Value::Null) if !self.inner.require_env => Ok(()),
            None | Some(Value::Null) => Err(AuthError::missing("env")),
            Some(_) => Err(AuthError::WrongEnvironment),
        }
    }
}

fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0)
            .map(|f| f as u64)
    })
}

impl Issuer {
    async fn verify(
        &self,
        token: &str,
        unverified: &Unverified,
    ) -> Result<Map<String, Value>, AuthError> {
        let Some(jwks) = &self.jwks else {
            return self.try_keys(token, unverified, &[], false);
        };
        // This request uses the keys as they are; a stale set is refreshed behind it.
        let mut keys = jwks.keys();
        jwks.refresh_in_background_if_stale();
        let kid_unknown = unverified
            .kid
            .as_deref()
            .is_some_and(|kid| !self.has_kid(kid, &keys.keys));
        if keys.fetched_at.is_none() || kid_unknown {
            // First use, or a key we have not seen (rotation): fetch, throttled.
            if jwks.refresh().await != Refresh::Fetched {
                debug!(issuer = %self.name, "JWKS not refetched (throttled or failed)");
            }
            keys = jwks.keys();
        }
        self.try_keys(token, unverified, &keys.keys, jwks.degraded())
    }

    fn has_kid(&self, kid: &str, jwks_keys: &[VerifyingKey]) -> bool {
        self.static_keys
            .iter()
            .chain(jwks_keys)
            .any(|k| k.kid.as_deref() == Some(kid))
    }

    /// Chooses candidate keys and verifies. A token naming a `kid` uses the keys with that kid;
    /// failing those (or without a kid) it uses keys that carry no kid, or every key when the
    /// token names none. Only keys whose type allows the token's `alg` are ever tried.
    fn try_keys(
        &self,
        token: &str,
        u: &Unverified,
        jwks_keys: &[VerifyingKey],
        jwks_degraded: bool,
    ) -> Result<Map<String, Value>, AuthError> {
        let all = || self.static_keys.iter().chain(jwks_keys);
        let exact: Vec<&VerifyingKey> = match u.kid.as_deref() {
            Some(kid) => all().filter(|k| k.kid.as_deref() == Some(kid)).collect(),
            None => Vec::new(),
        };
        let candidates: Vec<&VerifyingKey> = if !exact.is_empty() {
            exact
        } else {
            all()
                .filter(|k| k.kid.is_none() || u.kid.is_none())
                .collect()
        };
        let usable: Vec<&VerifyingKey> = candidates
            .iter()
            .copied()
            .filter(|k| k.allows(u.alg))
            .collect();
        if usable.is_empty() {
            let kid_unmatched = u
                .kid
                .as_deref()
                .is_some_and(|kid| !self.has_kid(kid, jwks_keys));
            // A key exists but is of another type: that is the token's algorithm, not a gap
            // in our keys (and how an HS256-signed-with-the-RSA-key forgery ends).
            return Err(if !kid_unmatched && !candidates.is_empty() {
                AuthError::UnsupportedAlg
            } else if self.jwks.is_some() && jwks_degraded {
                AuthError::JwksUnavailable
            } else {
                AuthError::UnknownKey
            });
        }
        for key in usable {
            match jwt::verify(token, u.alg, key, &self.validations) {
                Ok(claims) => return Ok(claims),
                // Only a signature mismatch means "maybe another key"; anything else was
                // decided by a key that did verify the signature, or by the token's shape.
                Err(AuthError::BadSignature) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(AuthError::BadSignature)
    }
}
