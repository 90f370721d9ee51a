//! The OIDC client of the console login: discovery, the authorization URL with PKCE (S256),
//! state and nonce, the code exchange at the token endpoint, and the ID token's verification
//! (signature through the issuer's JWKS, issuer, audience = this console's client id, expiry,
//! and the nonce bound to the login). Who the user is comes from the access token, verified by
//! the gateway's own authenticator exactly as `/mcp` verifies it, for the same subject.

use std::time::Duration;

use base64::Engine;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::html::url_component;
use super::logins::same;
use super::{ConsoleError, OidcConfig};
use crate::auth::{AuthConfig, Authenticator, IssuerConfig};

const HTTP_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Deserialize)]
struct Discovery {
    issuer: String,
    authorization_endpoint: String,
    token_endpoint: String,
}

/// What the token endpoint answered (only what the console uses; never logged).
#[derive(Deserialize)]
pub struct Tokens {
    #[serde(default)]
    pub id_token: Option<String>,
    #[serde(default)]
    pub access_token: Option<String>,
}

pub struct OidcClient {
    config: OidcConfig,
    secret: Option<SecretString>,
    http: reqwest::Client,
    discovery: Mutex<Option<Discovery>>,
    /// Verifies ID tokens: this issuer only, audience = the console's client id, no cache.
    id_tokens: Authenticator,
}

/// What a verified ID token says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdToken {
    pub subject: String,
}

/// The PKCE S256 challenge of `verifier`.
pub fn challenge(verifier: &str) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

impl OidcClient {
    pub fn new(config: &OidcConfig) -> Result<Self, ConsoleError> {
        let secret = match &config.client_secret_file {
            Some(path) => Some(SecretString::from(
                std::fs::read_to_string(path)
                    .map_err(|e| {
                        ConsoleError::Config(format!("client secret file {}: {e}", path.display()))
                    })?
                    .trim()
                    .to_owned(),
            )),
            None => None,
        };
        if rustls::crypto::CryptoProvider::get_default().is_none() {
            let _ = rustls::crypto::ring::default_provider().install_default();
        }
        let http = reqwest::Client::builder()
            .timeout(HTTP_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("reflow-console/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ConsoleError::Config(e.without_url().to_string()))?;
        let mut issuer = IssuerConfig::new(&config.issuer, [config.client_id.as_str()]);
        issuer.discovery = true;
        let mut auth = AuthConfig::new(vec![issuer]);
        auth.cache_ttl = Duration::ZERO;
        auth.http_timeout = HTTP_TIMEOUT;
        let id_tokens = Authenticator::new(auth)
            .map_err(|e| ConsoleError::Config(format!("ID token verification: {e}")))?;
        Ok(Self {
            config: config.clone(),
            secret,
            http,
            discovery: Mutex::new(None),
            id_tokens,
        })
    }

    /// Verifies an ID token for the login that sent `nonce` (OIDC Core §3.1.3.7): signed by
    /// the issuer's key (JWKS), `iss` the issuer, `aud` this console's client id, unexpired,
    /// `nonce` the login's.
    pub async fn verify_id_token(&self, token: &str, nonce: &str) -> Result<IdToken, ConsoleError> {
        let principal = self
            .id_tokens
            .authenticate_token(token)
            .await
            .map_err(|e| {
                ConsoleError::Login(format!("the ID token was refused ({})", e.label()))
            })?;
        let claims = principal.identity.claims.map();
        let claim = |name: &str| claims.and_then(|m| m.get(name)).and_then(|v| v.as_str());
        if claim("nonce").is_none_or(|n| !same(n, nonce)) {
            return Err(ConsoleError::Login(
                "the ID token's nonce does not match this login".into(),
            ));
        }
        let subject = claim("sub")
            .filter(|s| !s.is_empty())
            .ok_or_else(|| ConsoleError::Login("the ID token names no subject".into()))?;
        Ok(IdToken {
            subject: subject.to_owned(),
        })
    }

    async fn discovery(&self) -> Result<Discovery, ConsoleError> {
        let mut cached = self.discovery.lock().await;
        if let Some(d) = cached.as_ref() {
            return Ok(d.clone());
        }
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.config.issuer.trim_end_matches('/')
        );
        let fail =
            |e: reqwest::Error| ConsoleError::Login(format!("OIDC discovery: {}", e.without_url()));
        let d: Discovery = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(fail)?
            .error_for_status()
            .map_err(fail)?
            .json()
            .await
            .map_err(fail)?;
        if d.issuer.trim_end_matches('/') != self.config.issuer.trim_end_matches('/') {
            return Err(ConsoleError::Login(
                "OIDC discovery names another issuer".into(),
            ));
        }
        *cached = Some(d.clone());
        Ok(d)
    }

    /// Where to send the browser: the IdP's authorization endpoint with every parameter.
    pub async fn authorize_url(
        &self,
        state: &str,
        nonce: &str,
        verifier: &str,
    ) -> Result<String, ConsoleError> {
        let d = self.discovery().await?;
        let scopes = if self.config.scopes.is_empty() {
            "openid profile email".to_owned()
        } else {
            self.config.scopes.join(" ")
        };
        let sep = if d.authorization_endpoint.contains('?') {
            '&'
        } else {
            '?'
        };
        let resource = self
            .config
            .resource
            .as_deref()
            .map(|r| format!("&resource={}", url_component(r)))
            .unwrap_or_default();
        Ok(format!(
            "{}{sep}response_type=code&client_id={}&redirect_uri={}&scope={}&state={}&nonce={}\
             &code_challenge={}&code_challenge_method=S256{resource}",
            d.authorization_endpoint,
            url_component(&self.config.client_id),
            url_component(&self.config.redirect_url),
            url_component(&scopes),
            url_component(state),
            url_component(nonce),
            challenge(verifier),
        ))
    }

    /// Trades the code (with the PKCE verifier) for tokens, in a back-channel POST.
    pub async fn exchange(&self, code: &str, verifier: &str) -> Result<Tokens, ConsoleError> {
        let d = self.discovery().await?;
        let mut form = vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_url.as_str()),
            ("client_id", self.config.client_id.as_str()),
            ("code_verifier", verifier),
        ];
        if let Some(secret) = &self.secret {
            form.push(("client_secret", secret.expose_secret()));
        }
        if let Some(resource) = &self.config.resource {
            form.push(("resource", resource.as_str()));
        }
        let body = form
            .iter()
            .map(|(k, v)| format!("{k}={}", url_component(v)))
            .collect::<Vec<_>>()
            .join("&");
        let resp = self
            .http
            .post(&d.token_endpoint)
            .header("content-type", "application/x-www-form-urlencoded")
            .header("accept", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| ConsoleError::Login(format!("token endpoint: {}", e.without_url())))?;
        if !resp.status().is_success() {
            // The IdP's error body may echo the code: only the status is shown.
            return Err(ConsoleError::Login(format!(
                "the token endpoint refused the code ({})",
                resp.status()
            )));
        }
        resp.json()
            .await
            .map_err(|_| ConsoleError::Login("the token endpoint answered no tokens".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pkce_s256_matches_rfc7636_appendix_b() {
        assert_eq!(
            challenge("dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"),
            "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"
        );
    }
}
