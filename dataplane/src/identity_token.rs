//! Identity forwarding: short-lived JWTs the gateway signs (EdDSA, Ed25519) to tell an upstream
//! who is calling, the JWKS upstreams verify them with, and the plain-header alternative.
//!
//! Every replica must sign with the same key (`gateway.identityTokens.signingKeyFile`, a PKCS#8
//! Ed25519 PEM) or an upstream that fetched one replica's JWKS would refuse another replica's
//! tokens. Without a key file each process generates one and says so at start.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{HeaderName, HeaderValue};
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rand::RngExt;
use reflow_crds::Identity;
use reflow_crds::snapshot::IdentityForwarding;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Default header for the forwarded JWT.
pub const IDENTITY_HEADER: &str = "x-reflow-identity";
pub const JWKS_PATH: &str = "/.well-known/jwks.json";

/// PKCS#8 v1 prefix of an Ed25519 private key; the 32-byte seed follows.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

#[derive(Debug, thiserror::Error)]
pub enum IdentityTokenError {
    #[error("identity signing key {path}: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("the identity signing key cannot be used: {0}")]
    Unusable(String),
    #[error("the caller's {0} cannot be sent in an HTTP header")]
    HeaderValue(&'static str),
    #[error("signing the identity token failed")]
    Signing,
}

/// `gateway.identityTokens` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct IdentityTokensConfig {
    /// `iss` of forwarded tokens (default: `publicUrl`, else `reflow`).
    pub issuer: Option<String>,
    /// PKCS#8 Ed25519 private key (PEM); relative to the config file.
    pub signing_key_file: Option<PathBuf>,
    /// Lifetime of each forwarded token.
    pub ttl_seconds: u64,
}

impl Default for IdentityTokensConfig {
    fn default() -> Self {
        Self {
            issuer: None,
            signing_key_file: None,
            ttl_seconds: 300,
        }
    }
}

#[derive(Serialize)]
struct ForwardedClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    email: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    groups: Vec<&'a str>,
    roles: Vec<&'a str>,
    iat: u64,
    nbf: u64,
    exp: u64,
}

pub struct IdentitySigner {
    key: EncodingKey,
    header: Header,
    issuer: String,
    ttl: u64,
    jwks: Arc<JwkSet>,
    /// Whether the key was generated for this process only.
    pub ephemeral: bool,
}

impl std::fmt::Debug for IdentitySigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IdentitySigner")
            .field("kid", &self.header.kid)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

impl IdentitySigner {
    /// From the configuration: the key file, or a fresh key for this process.
    pub fn from_config(
        config: &IdentityTokensConfig,
        public_url: Option<&str>,
    ) -> Result<Self, IdentityTokenError> {
        let issuer = config
            .issuer
            .clone()
            .or_else(|| public_url.map(|u| u.trim_end_matches('/').to_owned()))
            .unwrap_or_else(|| "reflow".to_owned());
        let (key, ephemeral) = match &config.signing_key_file {
            Some(path) => {
                let pem = std::fs::read(path).map_err(|e| IdentityTokenError::Key {
                    path: path.clone(),
                    reason: e.to_string(),
                })?;
                let key = EncodingKey::from_ed_pem(&pem).map_err(|_| IdentityTokenError::Key {
                    path: path.clone(),
                    reason: "not a PKCS#8 Ed25519 private key (PEM)".to_owned(),
                })?;
                (key, false)
            }
            None => {
                let mut der = ED25519_PKCS8_PREFIX.to_vec();
                let seed: [u8; 32] = rand::rng().random();
                der.extend_from_slice(&seed);
                (EncodingKey::from_ed_der(&der), true)
            }
        };
        Self::new(key, issuer, config.ttl_seconds.max(1), ephemeral)
    }

    fn new(
        key: EncodingKey,
        issuer: String,
        ttl: u64,
        ephemeral: bool,
    ) -> Result<Self, IdentityTokenError> {
        let mut jwk = Jwk::from_encoding_key(&key, Algorithm::EdDSA)
            .map_err(|e| IdentityTokenError::Unusable(e.to_string()))?;
        let x = match &jwk.algorithm {
            jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => p.x.clone(),
            _ => return Err(IdentityTokenError::Unusable("not an Ed25519 key".into())),
        };
        let kid = hex::encode(&Sha256::digest(x.as_bytes())[..8]);
        jwk.common.key_id = Some(kid.clone());
        jwk.common.public_key_use = Some(PublicKeyUse::Signature);
        jwk.common.key_algorithm = Some(KeyAlgorithm::EdDSA);
        let mut header = Header::new(Algorithm::EdDSA);
        header.kid = Some(kid);
        Ok(Self {
            key,
            header,
            issuer,
            ttl,
            jwks: Arc::new(JwkSet { keys: vec![jwk] }),
            ephemeral,
        })
    }

    /// The public keys, as served at [`JWKS_PATH`].
    pub fn jwks(&self) -> &JwkSet {
        &self.jwks
    }

    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// A token naming `identity`, for `audience`, valid for the configured lifetime.
    pub fn sign(&self, identity: &Identity, audience: &str) -> Result<String, IdentityTokenError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_err(|_| IdentityTokenError::Signing)?
            .as_secs();
        let claims = ForwardedClaims {
            iss: &self.issuer,
            aud: audience,
            sub: &identity.user,
            email: identity.email.as_deref(),
            name: identity.name.as_deref(),
            groups: identity.groups.iter().map(|g| &**g).collect(),
            roles: identity.roles.iter().map(|r| &**r).collect(),
            iat: now,
            nbf: now,
            exp: now.saturating_add(self.ttl),
        };
        jsonwebtoken::encode(&self.header, &claims, &self.key)
            .map_err(|_| IdentityTokenError::Signing)
    }

    /// The headers a target's `identityForwarding` asks for. A value that cannot travel in a
    /// header (control characters: a CR/LF injection attempt) refuses the call rather than
    /// sending a partial identity.
    pub fn headers(
        &self,
        forwarding: &IdentityForwarding,
        identity: &Identity,
        target_key: &str,
    ) -> Result<Vec<(HeaderName, HeaderValue)>, IdentityTokenError> {
        let mut out = Vec::new();
        if let Some(jwt) = &forwarding.jwt {
            let name = jwt.header.as_deref().unwrap_or(IDENTITY_HEADER);
            let name = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| IdentityTokenError::HeaderValue("identity header name"))?;
            let audience = jwt.audience.as_deref().unwrap_or(target_key);
            let token = self.sign(identity, audience)?;
            let mut value = HeaderValue::from_str(&token)
                .map_err(|_| IdentityTokenError::HeaderValue("token"))?;
            value.set_sensitive(true);
            out.push((name, value));
        }
        if forwarding.headers {
            let plain = |name: &'static str, what: &'static str, v: &str| {
                HeaderValue::from_str(v)
                    .map(|v| (HeaderName::from_static(name), v))
                    .map_err(|_| IdentityTokenError::HeaderValue(what))
            };
            out.push(plain("x-reflow-user", "user name", &identity.user)?);
            if let Some(email) = &identity.email {
                out.push(plain("x-reflow-email", "email", email)?);
            }
            if let Some(name) = &identity.name {
                // Display names are free text: percent-encode anything beyond visible ASCII.
                out.push(plain("x-reflow-name", "name", &encode_text(name))?);
            }
            out.push(plain(
                "x-reflow-groups",
                "groups",
                &join(&identity.groups)?,
            )?);
            out.push(plain("x-reflow-roles", "roles", &join(&identity.roles)?)?);
        }
        Ok(out)
    }
}

/// Comma-separated; a name containing a comma would be ambiguous and is refused.
fn join(items: &[Arc<str>]) -> Result<String, IdentityTokenError> {
    if items.iter().any(|i| i.contains(',')) {
        return Err(IdentityTokenError::HeaderValue("groups or roles"));
    }
    Ok(items.iter().map(|i| &**i).collect::<Vec<_>>().join(","))
}

fn encode_text(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// For tests and tools: the `x` of the first key, decoded.
pub fn first_public_key(jwks: &JwkSet) -> Option<Vec<u8>> {
    match &jwks.keys.first()?.algorithm {
        jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(p) => {
            URL_SAFE_NO_PAD.decode(&p.x).ok()
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    fn signer() -> IdentitySigner {
        IdentitySigner::from_config(
            &IdentityTokensConfig::default(),
            Some("https://gw.example/"),
        )
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn identity_tokens_verify_with_the_published_jwks() {
        let s = signer();
        assert!(s.ephemeral);
        assert_eq!(s.issuer(), "https://gw.example");
        assert_eq!(first_public_key(s.jwks()).map(|k| k.len()), Some(32));
        let mut id = Identity::new("alice", ["dev", "ops"], ["admin"]);
        id.email = Some("alice@example.com".into());
        let token = s.sign(&id, "t/search").unwrap_or_else(|e| panic!("{e}"));
        let jwk = &s.jwks().keys[0];
        let key = DecodingKey::from_jwk(jwk).unwrap_or_else(|e| panic!("{e}"));
        let mut v = Validation::new(Algorithm::EdDSA);
        v.set_audience(&["t/search"]);
        v.set_issuer(&["https://gw.example"]);
        let data =
            jsonwebtoken::decode::<Value>(&token, &key, &v).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(data.claims["sub"], "alice");
        assert_eq!(data.claims["groups"], serde_json::json!(["dev", "ops"]));
        assert_eq!(data.claims["email"], "alice@example.com");
        assert_eq!(data.header.kid, jwk.common.key_id);

        let other = signer();
        let wrong = DecodingKey::from_jwk(&other.jwks().keys[0]).unwrap_or_else(|e| panic!("{e}"));
        assert!(jsonwebtoken::decode::<Value>(&token, &wrong, &v).is_err());
    }

    #[test]
    fn identity_headers_refuse_injection() {
        let s = signer();
        let fwd = IdentityForwarding {
            jwt: None,
            headers: true,
        };
        let mut id = Identity::new("alice", ["dev"], Vec::<String>::new());
        id.name = Some("Zoë O'Brien".into());
        let h = s
            .headers(&fwd, &id, "t/x")
            .unwrap_or_else(|e| panic!("{e}"));
        let get = |n: &str| {
            h.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap_or(""))
        };
        assert_eq!(get("x-reflow-user"), Some("alice"));
        assert_eq!(get("x-reflow-name"), Some("Zo%C3%AB O'Brien"));
        assert_eq!(get("x-reflow-groups"), Some("dev"));
        assert_eq!(get("x-reflow-roles"), Some(""));

        let evil = Identity::new("alice\r\nx-admin: 1", ["dev"], Vec::<String>::new());
        assert!(matches!(
            s.headers(&fwd, &evil, "t/x"),
            Err(IdentityTokenError::HeaderValue("user name"))
        ));
        let comma = Identity::new("bob", ["a,b"], Vec::<String>::new());
        assert!(s.headers(&fwd, &comma, "t/x").is_err());
    }
}
