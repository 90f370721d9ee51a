//! The `auth:` section of the gateway configuration: trusted issuers, their keys, claim mapping
//! and verification knobs, plus the checks that refuse an unusable configuration up front.

use std::collections::HashSet;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer};

use super::error::AuthConfigError;

pub(crate) use reflow_crds::token::MIN_HS_SECRET_BYTES;

/// Bearer-token authentication for the gateway.
///
/// ```yaml
/// issuers:
///   - issuer: https://keycloak.example.com/realms/dev
///     audiences: [reflow]
///     discovery: true
///     claims: { user: preferred_username, roles: realm_access.roles }
/// leewaySeconds: 30
/// ```
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AuthConfig {
    /// Trusted issuers; a token is matched to one by its `iss` claim.
    pub issuers: Vec<IssuerConfig>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Refuse tokens without `exp`. Only turn off for IdPs that really mint eternal tokens.
    #[serde(default = "default_true")]
    pub require_exp: bool,
    /// A token with an unknown `kid` triggers a JWKS refetch at most this often, so a flood of
    /// bad tokens cannot make the gateway hammer the IdP.
    #[serde(
        default = "default_min_refresh",
        rename = "jwksMinRefreshSeconds",
        deserialize_with = "seconds"
    )]
    pub jwks_min_refresh_interval: Duration,
    /// Keys older than this are refetched in the background, so keys the IdP has retired stop
    /// verifying even when no token ever carries an unknown `kid`.
    #[serde(
        default = "default_max_age",
        rename = "jwksMaxAgeSeconds",
        deserialize_with = "seconds"
    )]
    pub jwks_max_age: Duration,
    /// Timeout for each discovery or JWKS request.
    #[serde(
        default = "default_http_timeout",
        rename = "httpTimeoutSeconds",
        deserialize_with = "seconds"
    )]
    pub http_timeout: Duration,
    /// How long a verified token's identity is reused without re-verifying the signature
    /// (never past the token's `exp`). Zero disables the cache.
    #[serde(
        default = "default_cache_ttl",
        rename = "cacheTtlSeconds",
        deserialize_with = "seconds"
    )]
    pub cache_ttl: Duration,
    /// Advertised as `scopes_supported` in the protected-resource metadata when not empty.
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    /// This gateway's environment (`production`, `staging`, `development`…). When set, a
    /// token's `env` claim, if present, must equal it.
    #[serde(default)]
    pub environment: Option<String>,
    /// Also refuse tokens that carry no `env` claim (needs `environment`).
    #[serde(default)]
    pub require_env_claim: bool,
}

impl AuthConfig {
    /// A configuration with the given issuers and every knob at its default.
    pub fn new(issuers: Vec<IssuerConfig>) -> Self {
        Self {
            issuers,
            leeway_seconds: default_leeway(),
            require_exp: true,
            jwks_min_refresh_interval: default_min_refresh(),
            jwks_max_age: default_max_age(),
            http_timeout: default_http_timeout(),
            cache_ttl: default_cache_ttl(),
            scopes_supported: Vec::new(),
            environment: None,
            require_env_claim: false,
        }
    }

    /// Checks everything that can be checked without the network. Key material is parsed later,
    /// by [`Authenticator::new`](super::Authenticator::new), which also calls this.
    pub fn validate(&self) -> Result<(), AuthConfigError> {
        if self.issuers.is_empty() {
            return Err(AuthConfigError::NoIssuers);
        }
        if self.require_env_claim && self.environment.is_none() {
            return Err(AuthConfigError::EnvClaimWithoutEnvironment);
        }
        let mut seen = HashSet::new();
        for issuer in &self.issuers {
            issuer.validate()?;
            if !seen.insert(issuer.issuer.as_str()) {
                return Err(AuthConfigError::DuplicateIssuer(issuer.issuer.clone()));
            }
        }
        Ok(())
    }
}

/// One trusted token issuer and where its verification keys come from. Key sources combine:
/// an issuer may have an HS256 secret, static public keys and a JWKS at once; each key only
/// ever verifies the algorithms of its own type.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct IssuerConfig {
    /// Exact `iss` value.
    pub issuer: String,
    /// Accepted `aud` values; the token must name at least one.
    pub audiences: Vec<String>,
    /// Shared HS256 secret (at least 32 bytes). Loaded from a literal, file or env by the caller.
    #[serde(default)]
    pub hs256_secret: Option<SecretString>,
    /// Static public keys (RSA, EC P-256/P-384, Ed25519) as PEM.
    #[serde(default)]
    pub public_keys: Vec<PublicKeyConfig>,
    /// Where to fetch the issuer's JWKS.
    #[serde(default)]
    pub jwks_uri: Option<String>,
    /// Find the JWKS through `{issuer}/.well-known/openid-configuration`.
    #[serde(default)]
    pub discovery: bool,
    /// Which claims become the identity.
    #[serde(default)]
    pub claims: ClaimMapping,
}

impl IssuerConfig {
    /// An issuer with no key source yet and the default claim mapping.
    pub fn new(
        issuer: impl Into<String>,
        audiences: impl IntoIterator<Item = impl Into<String>>,
    ) -> Self {
        Self {
            issuer: issuer.into(),
            audiences: audiences.into_iter().map(Into::into).collect(),
            hs256_secret: None,
            public_keys: Vec::new(),
            jwks_uri: None,
            discovery: false,
            claims: ClaimMapping::default(),
        }
    }

    pub(crate) fn has_jwks(&self) -> bool {
        self.jwks_uri.is_some() || self.discovery
    }

    fn validate(&self) -> Result<(), AuthConfigError> {
        let name = || self.issuer.clone();
        if self.issuer.is_empty() {
            return Err(AuthConfigError::EmptyIssuer);
        }
        if self.audiences.is_empty() || self.audiences.iter().any(String::is_empty) {
            return Err(AuthConfigError::NoAudience(name()));
        }
        if self.hs256_secret.is_none() && self.public_keys.is_empty() && !self.has_jwks() {
            return Err(AuthConfigError::NoKeySource(name()));
        }
        if self.jwks_uri.is_some() && self.discovery {
            return Err(AuthConfigError::ConflictingJwksSource(name()));
        }
        if let Some(secret) = &self.hs256_secret
            && secret.expose_secret().len() < MIN_HS_SECRET_BYTES
        {
            return Err(AuthConfigError::WeakHsSecret(name()));
        }
        if let Some(uri) = &self.jwks_uri {
            check_http_url(uri).map_err(|reason| AuthConfigError::InvalidUri {
                issuer: name(),
                reason,
            })?;
        }
        if self.discovery {
            check_http_url(&self.issuer).map_err(|_| AuthConfigError::InvalidUri {
                issuer: name(),
                reason: "discovery needs the issuer to be an http(s) URL",
            })?;
        }
        for (claim, path) in self.claims.paths() {
            if path.segments().is_empty() || path.segments().iter().any(String::is_empty) {
                return Err(AuthConfigError::EmptyClaimPath {
                    issuer: name(),
                    claim,
                });
            }
        }
        Ok(())
    }
}

fn check_http_url(uri: &str) -> Result<(), &'static str> {
    let url = reqwest::Url::parse(uri).map_err(|_| "jwksUri is not a valid URL")?;
    match url.scheme() {
        "http" | "https" => Ok(()),
        _ => Err("jwksUri must be an http or https URL"),
    }
}

/// A static verification key. `alg` pins one algorithm; without it the key accepts every
/// algorithm of its own type (RSA: RS*/PS*, EC: the curve's ES*, Ed25519: EdDSA).
#[derive(Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PublicKeyConfig {
    /// `-----BEGIN PUBLIC KEY-----` (SPKI) or `-----BEGIN RSA PUBLIC KEY-----` (PKCS#1).
    pub pem: String,
    /// When set, only tokens whose header names this `kid` use the key; when unset, the key is
    /// tried for any token of a matching algorithm.
    #[serde(default)]
    pub kid: Option<String>,
    #[serde(default)]
    pub alg: Option<String>,
}

impl fmt::Debug for PublicKeyConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKeyConfig")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("pem", &format_args!("<{} bytes>", self.pem.len()))
            .finish()
    }
}

/// Where each identity field is read from in the token's claims, plus optional prefixes that
/// keep identities from different issuers apart (like Kubernetes' OIDC `usernamePrefix`).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields, default)]
pub struct ClaimMapping {
    pub user: ClaimPath,
    pub groups: ClaimPath,
    pub roles: ClaimPath,
    pub email: ClaimPath,
    pub name: ClaimPath,
    pub user_prefix: String,
    pub groups_prefix: String,
    pub roles_prefix: String,
}

impl Default for ClaimMapping {
    fn default() -> Self {
        Self {
            user: ClaimPath::from("sub"),
            groups: ClaimPath::from("groups"),
            roles: ClaimPath::from("roles"),
            email: ClaimPath::from("email"),
            name: ClaimPath::from("name"),
            user_prefix: String::new(),
            groups_prefix: String::new(),
            roles_prefix: String::new(),
        }
    }
}

impl ClaimMapping {
    fn paths(&self) -> [(&'static str, &ClaimPath); 5] {
        [
            ("user", &self.user),
            ("groups", &self.groups),
            ("roles", &self.roles),
            ("email", &self.email),
            ("name", &self.name),
        ]
    }
}

/// A path into the claims object. In YAML either a dotted string (`realm_access.roles`) or,
/// for keys that themselves contain dots, a list of keys (`["https://example.com/claims", "roles"]`).
#[derive(Clone, PartialEq, Eq)]
pub struct ClaimPath {
    segments: Arc<[String]>,
    display: Arc<str>,
}

impl ClaimPath {
    pub fn from_segments(segments: impl IntoIterator<Item = impl Into<String>>) -> Self {
        let segments: Arc<[String]> = segments.into_iter().map(Into::into).collect();
        let display = segments.join(".").into();
        Self { segments, display }
    }

    pub fn segments(&self) -> &[String] {
        &self.segments
    }

    /// The path as written for messages (`a.b`), shared so errors can hold it cheaply.
    pub fn display(&self) -> &Arc<str> {
        &self.display
    }
}

impl From<&str> for ClaimPath {
    fn from(dotted: &str) -> Self {
        Self::from_segments(dotted.split('.'))
    }
}

impl fmt::Debug for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ClaimPath({:?})", self.segments)
    }
}

impl fmt::Display for ClaimPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.display)
    }
}

impl<'de> Deserialize<'de> for ClaimPath {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Dotted(String),
            Segments(Vec<String>),
        }
        Ok(match Raw::deserialize(d)? {
            Raw::Dotted(s) => ClaimPath::from(s.as_str()),
            Raw::Segments(v) => ClaimPath::from_segments(v),
        })
    }
}

fn default_leeway() -> u64 {
    30
}
fn default_true() -> bool {
    true
}
fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}
fn default_max_age() -> Duration {
    Duration::from_secs(300)
}
fn default_http_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}

/// Seconds as an integer or a fraction (`0.5`), as written in YAML.
fn seconds<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Whole(u64),
        Fraction(f64),
    }
    match Raw::deserialize(d)? {
        Raw::Whole(s) => Ok(Duration::from_secs(s)),
        Raw::Fraction(s) => Duration::try_from_secs_f64(s)
            .map_err(|_| serde::de::Error::custom("seconds must be a finite, non-negative number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
issuers:
  - issuer: https://idp.example.com/realms/dev
    audiences: [reflow, account]
    discovery: true
    claims:
      user: preferred_username
      roles: realm_access.roles
      groups: ["https://example.com/claims", "groups"]
      userPrefix: "idp:"
  - issuer: reflow-dev
    audiences: [reflow]
    hs256Secret: "super-secret-value-that-is-long-enough!!"
    publicKeys:
      - kid: k1
        pem: "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n"
leewaySeconds: 10
jwksMinRefreshSeconds: 0.5
scopesSupported: [mcp]
"#;

    fn parsed() -> AuthConfig {
        match serde_yaml::from_str::<AuthConfig>(YAML) {
            Ok(c) => c,
            Err(e) => panic!("sample config must parse: {e}"),
        }
    }

    #[test]
    fn auth_config_parses_yaml_with_defaults() {
        let cfg = parsed();
        assert_eq!(cfg.issuers.len(), 2);
        assert_eq!(cfg.leeway_seconds, 10);
        assert!(cfg.require_exp);
        assert_eq!(cfg.jwks_min_refresh_interval, Duration::from_millis(500));
        assert_eq!(cfg.http_timeout, Duration::from_secs(5));
        assert_eq!(cfg.scopes_supported, vec!["mcp".to_string()]);
        let kc = &cfg.issuers[0];
        assert!(kc.discovery);
        assert_eq!(kc.claims.user.segments(), ["preferred_username"]);
        assert_eq!(kc.claims.roles.segments(), ["realm_access", "roles"]);
        assert_eq!(
            kc.claims.groups.segments(),
            ["https://example.com/claims", "groups"]
        );
        assert_eq!(kc.claims.email.segments(), ["email"]);
        assert_eq!(kc.claims.user_prefix, "idp:");
        let dev = &cfg.issuers[1];
        assert_eq!(dev.public_keys[0].kid.as_deref(), Some("k1"));
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn auth_config_debug_never_prints_the_hs_secret_or_key_material() {
        let dbg = format!("{:?}", parsed());
        assert!(!dbg.contains("super-secret-value"), "{dbg}");
        assert!(!dbg.contains("BEGIN PUBLIC KEY"), "{dbg}");
        assert!(dbg.contains("REDACTED"), "{dbg}");
    }

    #[test]
    fn auth_config_rejects_unknown_fields() {
        let bad = "issuers: [{issuer: a, audiences: [b], hs256secret: x}]";
        assert!(serde_yaml::from_str::<AuthConfig>(bad).is_err());
    }

    #[test]
    fn auth_config_validation_refuses_unusable_issuers() {
        let secret = || Some(SecretString::from("0123456789abcdef0123456789abcdef"));
        let mut ok = IssuerConfig::new("iss", ["aud"]);
        ok.hs256_secret = secret();
        assert_eq!(AuthConfig::new(vec![ok.clone()]).validate(), Ok(()));

        assert_eq!(
            AuthConfig::new(vec![]).validate(),
            Err(AuthConfigError::NoIssuers)
        );
        assert_eq!(
            AuthConfig::new(vec![ok.clone(), ok.clone()]).validate(),
            Err(AuthConfigError::DuplicateIssuer("iss".into()))
        );

        let mut no_aud = ok.clone();
        no_aud.audiences.clear();
        assert_eq!(
            AuthConfig::new(vec![no_aud]).validate(),
            Err(AuthConfigError::NoAudience("iss".into()))
        );

        let no_keys = IssuerConfig::new("iss", ["aud"]);
        assert_eq!(
            AuthConfig::new(vec![no_keys]).validate(),
            Err(AuthConfigError::NoKeySource("iss".into()))
        );

        let mut weak = ok.clone();
        weak.hs256_secret = Some(SecretString::from("short"));
        assert_eq!(
            AuthConfig::new(vec![weak]).validate(),
            Err(AuthConfigError::WeakHsSecret("iss".into()))
        );

        let mut both = ok.clone();
        both.jwks_uri = Some("https://idp/jwks".into());
        both.discovery = true;
        assert_eq!(
            AuthConfig::new(vec![both]).validate(),
            Err(AuthConfigError::ConflictingJwksSource("iss".into()))
        );

        let mut bad_uri = ok.clone();
        bad_uri.jwks_uri = Some("file:///etc/jwks".into());
        assert!(matches!(
            AuthConfig::new(vec![bad_uri]).validate(),
            Err(AuthConfigError::InvalidUri { .. })
        ));

        let mut bad_discovery = ok.clone();
        bad_discovery.discovery = true;
        assert!(matches!(
            AuthConfig::new(vec![bad_discovery]).validate(),
            Err(AuthConfigError::InvalidUri { .. })
        ));

        let mut empty_path = ok;
        empty_path.claims.roles = ClaimPath::from("realm_access.");
        assert_eq!(
            AuthConfig::new(vec![empty_path]).validate(),
            Err(AuthConfigError::EmptyClaimPath {
                issuer: "iss".into(),
                claim: "roles"
            })
        );
    }
}
