//! One user's grant for one Target (`spec.userCredential`), as a dataplane hands it to the
//! controller (`POST` [`GRANTS_PATH`]) and as it is kept at rest: the value (and for `oauth2`
//! the refresh material) sealed with AES-256-GCM under the sealing key, bound to its owner by
//! [`connection_aad`], the AAD standalone mode's connection files use too.
//!
//! Secrets travel only inside [`Redacted`]: `Debug` never prints them, and they are sealed
//! before they are written anywhere.

use std::collections::BTreeMap;
use std::fmt;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use sha2::{Digest, Sha256};

use crate::seal::{SealedValue, SealingKey};

/// `POST` a [`Grant`]: the controller writes (or replaces) the user's Secret and Credential.
pub const GRANTS_PATH: &str = "/v1/connections";
/// `POST` a [`GrantKey`]: the controller deletes the user's Secret and Credential.
pub const DISCONNECT_PATH: &str = "/v1/connections/disconnect";
/// `POST` a [`GrantKey`]: an upstream answered 401; the lease holder refreshes at once.
pub const REFRESH_PATH: &str = "/v1/connections/refresh";
/// Largest request body those paths take.
pub const MAX_GRANT_BYTES: usize = 32 * 1024;
/// Longest value (access token, pasted key, refresh token).
pub const MAX_VALUE_BYTES: usize = 8 * 1024;
/// Data keys of a grant's Secret: the sealed value, and the sealed oauth2 refresh material.
pub const SECRET_VALUE_KEY: &str = "value";
pub const SECRET_OAUTH2_KEY: &str = "oauth2";
/// Prefix of the Secret and Credential names a grant is kept under.
pub const OBJECT_PREFIX: &str = "reflow-connection-";

/// A secret string that serializes as itself (it crosses the authenticated controller API) and
/// never prints.
#[derive(Clone)]
pub struct Redacted(SecretString);

impl Redacted {
    pub fn new(s: impl Into<String>) -> Self {
        Self(SecretString::from(s.into()))
    }

    pub fn expose(&self) -> &str {
        self.0.expose_secret()
    }
}

impl From<SecretString> for Redacted {
    fn from(s: SecretString) -> Self {
        Self(s)
    }
}

impl fmt::Debug for Redacted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Redacted {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.expose())
    }
}

impl<'de> Deserialize<'de> for Redacted {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Self::new)
    }
}

/// Which user's connection to which Target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantKey {
    pub namespace: String,
    pub target: String,
    pub user: String,
}

/// What a dataplane hands to the controller after a user connected.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Grant {
    #[serde(flatten)]
    pub key: GrantKey,
    /// What is injected (after the Target's prefix): the pasted key, or the access token.
    pub value: Redacted,
    /// `mode: oauth2` only: what the lease holder refreshes with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Grant>,
}

/// The refresh material of an `oauth2` grant.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Grant {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<Redacted>,
    /// When the access token expires (Unix ms); `None`: the AS did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at_ms: Option<u64>,
    pub token_endpoint: String,
    /// The authorization server's issuer (what the token endpoint was discovered from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub issuer: Option<String>,
    /// RFC 7009 revocation endpoint of the authorization server (disconnect revokes there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation_endpoint: Option<String>,
    pub client: GrantClient,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
    /// RFC 8707 `resource`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
}

/// The client the grant was obtained with: a pre-registered one (its secret stays in the
/// Target's `clientSecretRef`, resolved by whoever refreshes) or one registered dynamically
/// (RFC 7591; its secret, if any, travels with the grant).
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GrantClient {
    pub client_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registered_secret: Option<Redacted>,
    /// How the client authenticates at the token and revocation endpoints (RFC 7591 names:
    /// `none`, `client_secret_basic`, `client_secret_post`), as chosen from the authorization
    /// server's `token_endpoint_auth_methods_supported`. Absent: HTTP Basic when there is a secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth_method: Option<String>,
}

/// The client authentication methods a grant may name.
pub const AUTH_METHODS: [&str; 3] = ["none", "client_secret_basic", "client_secret_post"];

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum GrantError {
    #[error("{0} must be a DNS name of at most 253 characters")]
    BadName(&'static str),
    #[error("user must be 1..=256 characters without control characters")]
    BadUser,
    #[error("{0} is empty, longer than 8 KiB, or contains control characters")]
    BadValue(&'static str),
    #[error("{0} must be an http(s) URL of at most 2048 characters")]
    BadUrl(&'static str),
    #[error("{0} is invalid")]
    BadField(&'static str),
    #[error("the sealed grant does not open (sealing key changed, or moved to another owner)")]
    Sealed,
    #[error("the sealed grant is malformed")]
    Malformed,
}

impl GrantError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadName(_) => "bad_name",
            Self::BadUser => "bad_user",
            Self::BadValue(_) => "bad_value",
            Self::BadUrl(_) => "bad_url",
            Self::BadField(_) => "bad_field",
            Self::Sealed => "sealed",
            Self::Malformed => "malformed",
        }
    }
}

fn dns_name(field: &'static str, s: &str) -> Result<(), GrantError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && !s.starts_with(['-', '.'])
        && !s.ends_with(['-', '.']);
    ok.then_some(()).ok_or(GrantError::BadName(field))
}

fn value(field: &'static str, v: &str) -> Result<(), GrantError> {
    let ok = !v.is_empty() && v.len() <= MAX_VALUE_BYTES && !v.chars().any(char::is_control);
    ok.then_some(()).ok_or(GrantError::BadValue(field))
}

fn url(field: &'static str, u: &str) -> Result<(), GrantError> {
    let ok = u.len() <= 2048
        && (u.starts_with("https://") || u.starts_with("http://"))
        && !u.chars().any(|c| c.is_whitespace() || c.is_control());
    ok.then_some(()).ok_or(GrantError::BadUrl(field))
}

impl GrantKey {
    pub fn validate(&self) -> Result<(), GrantError> {
        dns_name("namespace", &self.namespace)?;
        dns_name("target", &self.target)?;
        let ok = !self.user.is_empty()
            && self.user.len() <= 256
            && !self.user.chars().any(char::is_control);
        ok.then_some(()).ok_or(GrantError::BadUser)
    }

    /// The name of the Secret and the Credential the grant is kept under: fixed per
    /// (namespace, Target, user), and never one an admin would pick by hand.
    pub fn object_name(&self) -> String {
        format!(
            "{OBJECT_PREFIX}{}",
            connection_id(&self.namespace, &self.target, &self.user)
        )
    }

    pub fn aad(&self) -> String {
        connection_aad(&self.namespace, &self.target, &self.user)
    }
}

impl Grant {
    /// Bounds every field, so a hostile caller cannot make the receiver store more or other.
    pub fn validate(&self) -> Result<(), GrantError> {
        self.key.validate()?;
        value("value", self.value.expose())?;
        let Some(o) = &self.oauth2 else {
            return Ok(());
        };
        if let Some(r) = &o.refresh_token {
            value("oauth2.refreshToken", r.expose())?;
        }
        url("oauth2.tokenEndpoint", &o.token_endpoint)?;
        if let Some(i) = &o.issuer {
            url("oauth2.issuer", i)?;
        }
        if let Some(r) = &o.resource {
            url("oauth2.resource", r)?;
        }
        if let Some(r) = &o.revocation_endpoint {
            url("oauth2.revocationEndpoint", r)?;
        }
        let c = &o.client;
        if c.client_id.is_empty()
            || c.client_id.len() > 256
            || c.client_id.chars().any(char::is_control)
        {
            return Err(GrantError::BadField("oauth2.client.clientId"));
        }
        if let Some(s) = &c.registered_secret {
            value("oauth2.client.registeredSecret", s.expose())?;
        }
        if c.auth_method
            .as_deref()
            .is_some_and(|m| !AUTH_METHODS.contains(&m))
        {
            return Err(GrantError::BadField("oauth2.client.authMethod"));
        }
        let scope_ok = |s: &String| {
            !s.is_empty()
                && s.len() <= 256
                && s.bytes()
                    .all(|b| b > 0x20 && b < 0x7f && b != b'"' && b != b'\\')
        };
        if o.scopes.len() > 32 || !o.scopes.iter().all(scope_ok) {
            return Err(GrantError::BadField("oauth2.scopes"));
        }
        Ok(())
    }

    /// The Secret `data` (raw bytes, before Kubernetes' base64) the grant is kept as: the value
    /// and the refresh material sealed under the owner's AAD; no plaintext.
    pub fn seal(&self, key: &SealingKey) -> Result<BTreeMap<String, Vec<u8>>, GrantError> {
        let aad = self.key.aad();
        let sealed = |aad: &str, text: &str| {
            serde_json::to_vec(&key.seal(aad, text)).map_err(|_| GrantError::Malformed)
        };
        let mut data = BTreeMap::new();
        data.insert(
            SECRET_VALUE_KEY.to_owned(),
            sealed(&aad, self.value.expose())?,
        );
        if let Some(o) = &self.oauth2 {
            let json = serde_json::to_string(o).map_err(|_| GrantError::Malformed)?;
            data.insert(
                SECRET_OAUTH2_KEY.to_owned(),
                sealed(&format!("{aad}/oauth2"), &json)?,
            );
        }
        Ok(data)
    }

    /// Opens what [`Grant::seal`] wrote for `key` (a value moved to another user's Secret does
    /// not open).
    pub fn open(
        grant_key: GrantKey,
        data: &BTreeMap<String, Vec<u8>>,
        key: &SealingKey,
    ) -> Result<Self, GrantError> {
        let aad = grant_key.aad();
        let open = |aad: &str, bytes: &[u8]| -> Result<SecretString, GrantError> {
            let v: SealedValue =
                serde_json::from_slice(bytes).map_err(|_| GrantError::Malformed)?;
            key.open(aad, &v).map_err(|_| GrantError::Sealed)
        };
        let value = open(
            &aad,
            data.get(SECRET_VALUE_KEY).ok_or(GrantError::Malformed)?,
        )?;
        let oauth2 = match data.get(SECRET_OAUTH2_KEY) {
            None => None,
            Some(b) => {
                let json = open(&format!("{aad}/oauth2"), b)?;
                Some(
                    serde_json::from_str(json.expose_secret())
                        .map_err(|_| GrantError::Malformed)?,
                )
            }
        };
        Ok(Self {
            key: grant_key,
            value: Redacted(value),
            oauth2,
        })
    }
}

/// The AAD a user's connection value is sealed under (standalone files and cluster Secrets).
pub fn connection_aad(ns: &str, target: &str, user: &str) -> String {
    format!("reflow/connect/v1/{ns}/{target}/{user}")
}

/// A short stable id for (namespace, Target, user): 32 hex characters of a SHA-256.
pub fn connection_id(ns: &str, target: &str, user: &str) -> String {
    let mut h = Sha256::new();
    for part in [ns, target, user] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> GrantKey {
        GrantKey {
            namespace: "team".into(),
            target: "linear".into(),
            user: "alice@example.com".into(),
        }
    }

    fn oauth_grant() -> Grant {
        Grant {
            key: key(),
            value: Redacted::new("at-alice-123"),
            oauth2: Some(OAuth2Grant {
                refresh_token: Some(Redacted::new("rt-alice-456")),
                expires_at_ms: Some(1_800_000_000_000),
                token_endpoint: "https://as.example/token".into(),
                issuer: Some("https://as.example".into()),
                revocation_endpoint: Some("https://as.example/revoke".into()),
                client: GrantClient {
                    client_id: "reflow".into(),
                    registered_secret: None,
                    auth_method: Some("client_secret_post".into()),
                },
                scopes: vec!["read".into()],
                resource: Some("https://mcp.linear.example/mcp".into()),
            }),
        }
    }

    #[test]
    fn round_trips_on_the_wire_and_never_prints_a_secret() {
        let g = oauth_grant();
        g.validate().unwrap();
        let json = serde_json::to_string(&g).unwrap();
        let back: Grant = serde_json::from_str(&json).unwrap();
        assert_eq!(back.key, g.key);
        assert_eq!(back.value.expose(), "at-alice-123");
        let o = back.oauth2.unwrap();
        assert_eq!(o.refresh_token.unwrap().expose(), "rt-alice-456");
        assert_eq!(o.expires_at_ms, Some(1_800_000_000_000));
        assert_eq!(o.scopes, ["read"]);
        let dbg = format!("{g:?}");
        assert!(
            !dbg.contains("alice-123") && !dbg.contains("alice-456"),
            "{dbg}"
        );
        // The wire shape is flat: namespace/target/user beside value.
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(v["namespace"], "team");
        assert_eq!(v["oauth2"]["client"]["clientId"], "reflow");
    }

    #[test]
    fn sealed_at_rest_and_bound_to_its_owner() {
        let k = SealingKey::from_bytes(&[9; 32]);
        let g = oauth_grant();
        let data = g.seal(&k).unwrap();
        for bytes in data.values() {
            let text = String::from_utf8_lossy(bytes);
            assert!(!text.contains("alice-123") && !text.contains("alice-456"));
        }
        let back = Grant::open(key(), &data, &k).unwrap();
        assert_eq!(back.value.expose(), "at-alice-123");
        let mut bob = key();
        bob.user = "bob".into();
        assert!(matches!(
            Grant::open(bob, &data, &k),
            Err(GrantError::Sealed)
        ));
        assert!(matches!(
            Grant::open(key(), &data, &SealingKey::from_bytes(&[1; 32])),
            Err(GrantError::Sealed)
        ));
        assert_eq!(
            Grant::open(key(), &BTreeMap::new(), &k).unwrap_err(),
            GrantError::Malformed
        );
    }

    #[test]
    fn hostile_fields_are_refused() {
        let mut g = oauth_grant();
        g.key.namespace = "../kube-system".into();
        assert_eq!(g.validate(), Err(GrantError::BadName("namespace")));
        let mut g = oauth_grant();
        g.value = Redacted::new("x".repeat(MAX_VALUE_BYTES + 1));
        assert_eq!(g.validate(), Err(GrantError::BadValue("value")));
        let mut g = oauth_grant();
        g.value = Redacted::new("a\r\nX-Evil: 1");
        assert!(g.validate().is_err());
        let mut g = oauth_grant();
        g.key.user = String::new();
        assert_eq!(g.validate(), Err(GrantError::BadUser));
        let mut g = oauth_grant();
        if let Some(o) = g.oauth2.as_mut() {
            o.token_endpoint = "file:///etc/passwd".into();
        }
        assert_eq!(
            g.validate(),
            Err(GrantError::BadUrl("oauth2.tokenEndpoint"))
        );
        let mut g = oauth_grant();
        if let Some(o) = g.oauth2.as_mut() {
            o.revocation_endpoint = Some("javascript:alert(1)".into());
        }
        assert_eq!(
            g.validate(),
            Err(GrantError::BadUrl("oauth2.revocationEndpoint"))
        );
        let mut g = oauth_grant();
        if let Some(o) = g.oauth2.as_mut() {
            o.client.auth_method = Some("private_key_jwt\n".into());
        }
        assert_eq!(
            g.validate(),
            Err(GrantError::BadField("oauth2.client.authMethod"))
        );
        assert!(key().object_name().starts_with(OBJECT_PREFIX));
        assert_eq!(key().object_name().len(), OBJECT_PREFIX.len() + 32);
    }
}
