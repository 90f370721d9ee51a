//! Gateway API tokens: HS256 JWTs minted from a shared secret (by `reflow-dataplane token` and
//! `reflow-controller token`), carrying the claims the default claim mapping reads, a `jti`,
//! and optionally an `env` and a scope.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use secrecy::{ExposeSecret, SecretString};
use serde::Serialize;

#[derive(Serialize)]
struct DevClaims<'a> {
    iss: &'a str,
    aud: &'a str,
    sub: &'a str,
    groups: &'a [String],
    roles: &'a [String],
    iat: u64,
    nbf: u64,
    exp: u64,
    jti: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    env: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    reflow: Option<&'a serde_json::Value>,
}

/// What a minted token says: who, for how long, and what it is narrowed to.
#[derive(Debug, Clone, Default)]
pub struct TokenRequest {
    pub user: String,
    pub groups: Vec<String>,
    pub roles: Vec<String>,
    pub ttl: Duration,
    /// Valid only from this many seconds after now (`nbf`).
    pub not_before_secs: u64,
    /// The gateway environment the token is for (`env` claim).
    pub env: Option<String>,
    /// The `reflow` scope claim (see `scope::TokenScope::claim`).
    pub scope: Option<serde_json::Value>,
}

/// A minted token and its id (`jti`), which is what a revocation names.
#[derive(Debug, Clone)]
pub struct MintedToken {
    pub token: String,
    pub jti: String,
}

/// Minimum HS256 key length: RFC 7518 §3.2 requires a key at least as long as the hash output.
pub const MIN_HS_SECRET_BYTES: usize = 32;

/// Why a token could not be minted. Never carries the secret.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum MintError {
    #[error("the HS256 secret must be at least 32 bytes")]
    WeakSecret,
    #[error("the token lifetime must be at least one second")]
    ZeroTtl,
    #[error("the user must not be empty")]
    EmptyUser,
    #[error("signing the token failed")]
    Signing,
}

/// Mints an HS256 token valid from now for `ttl`, with `iat`, `nbf`, `exp` and a random `jti`.
pub fn mint_dev_token(
    secret: &SecretString,
    issuer: &str,
    audience: &str,
    user: &str,
    groups: &[String],
    roles: &[String],
    ttl: Duration,
) -> Result<String, MintError> {
    let request = TokenRequest {
        user: user.to_owned(),
        groups: groups.to_vec(),
        roles: roles.to_vec(),
        ttl,
        ..TokenRequest::default()
    };
    mint_token(secret, issuer, audience, &request).map(|m| m.token)
}

/// Mints an HS256 gateway API token: always with `exp` and a random `jti`; optionally delayed
/// (`nbf`), bound to an environment and narrowed by a scope.
pub fn mint_token(
    secret: &SecretString,
    issuer: &str,
    audience: &str,
    request: &TokenRequest,
) -> Result<MintedToken, MintError> {
    let secret = secret.expose_secret().as_bytes();
    if secret.len() < MIN_HS_SECRET_BYTES {
        return Err(MintError::WeakSecret);
    }
    if request.ttl.as_secs() == 0 {
        return Err(MintError::ZeroTtl);
    }
    if request.user.is_empty() {
        return Err(MintError::EmptyUser);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|_| MintError::Signing)?
        .as_secs();
    let nbf = now.saturating_add(request.not_before_secs);
    let jti = uuid::Uuid::new_v4().to_string();
    let claims = DevClaims {
        iss: issuer,
        aud: audience,
        sub: &request.user,
        groups: &request.groups,
        roles: &request.roles,
        iat: now,
        nbf,
        exp: nbf.saturating_add(request.ttl.as_secs()),
        jti: &jti,
        env: request.env.as_deref(),
        reflow: request.scope.as_ref(),
    };
    let token = jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret),
    )
    .map_err(|_| MintError::Signing)?;
    Ok(MintedToken { token, jti })
}

#[cfg(test)]
mod tests {
    use jsonwebtoken::{DecodingKey, Validation};
    use serde_json::Value;

    use super::*;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn auth_minted_token_carries_the_expected_claims() {
        let secret = SecretString::from(SECRET);
        let groups = vec!["dev".to_string()];
        let roles = vec!["admin".to_string()];
        let token = mint_dev_token(
            &secret,
            "reflow-dev",
            "reflow",
            "alice",
            &groups,
            &roles,
            Duration::from_secs(600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let mut v = Validation::new(Algorithm::HS256);
        v.set_audience(&["reflow"]);
        v.set_issuer(&["reflow-dev"]);
        v.validate_nbf = true;
        let data =
            jsonwebtoken::decode::<Value>(&token, &DecodingKey::from_secret(SECRET.as_bytes()), &v)
                .unwrap_or_else(|e| panic!("{e}"));
        let c = &data.claims;
        assert_eq!(c["sub"], "alice");
        assert_eq!(c["groups"], serde_json::json!(["dev"]));
        assert_eq!(c["roles"], serde_json::json!(["admin"]));
        let (iat, nbf, exp) = (c["iat"].as_u64(), c["nbf"].as_u64(), c["exp"].as_u64());
        assert_eq!(iat, nbf);
        assert_eq!(exp.zip(iat).map(|(e, i)| e - i), Some(600));
        assert!(c["jti"].as_str().is_some_and(|j| j.len() == 36));

        let again = mint_dev_token(
            &secret,
            "reflow-dev",
            "reflow",
            "alice",
            &groups,
            &roles,
            Duration::from_secs(600),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_ne!(token, again, "jti makes every token unique");
    }

    #[test]
    fn auth_mint_refuses_weak_inputs() {
        let weak = SecretString::from("short");
        let ok = SecretString::from(SECRET);
        let ttl = Duration::from_secs(60);
        assert_eq!(
            mint_dev_token(&weak, "i", "a", "u", &[], &[], ttl),
            Err(MintError::WeakSecret)
        );
        assert_eq!(
            mint_dev_token(&ok, "i", "a", "u", &[], &[], Duration::from_millis(10)),
            Err(MintError::ZeroTtl)
        );
        assert_eq!(
            mint_dev_token(&ok, "i", "a", "", &[], &[], ttl),
            Err(MintError::EmptyUser)
        );
    }
}
