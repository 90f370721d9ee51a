//! Errors of the auth boundary: why a request was refused (`AuthError`) and why a configuration
//! was refused (`AuthConfigError`). Messages never carry a token, a secret or key material.

use std::sync::Arc;

/// Why a request's credentials were refused. Every message is safe to log and to send back in
/// `error_description`: it names the failed check, never the token or any key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthError {
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    #[error("the Authorization header does not use the Bearer scheme")]
    UnsupportedScheme,
    #[error("the bearer token is not a well-formed JWT")]
    Malformed,
    #[error("the token has expired")]
    Expired,
    #[error("the token is not valid yet")]
    NotYetValid,
    #[error("the token signature is invalid")]
    BadSignature,
    #[error("the token issuer is not trusted")]
    UnknownIssuer,
    #[error("the token audience does not include this resource")]
    WrongAudience,
    #[error("no signing key matches the token's key id")]
    UnknownKey,
    #[error("the token's signing algorithm is not accepted for this issuer")]
    UnsupportedAlg,
    #[error("the issuer's signing keys are unavailable")]
    JwksUnavailable,
    /// The claim name comes from configuration (or is a registered claim), never from the token.
    #[error("the token lacks the required claim `{0}`")]
    MissingClaim(Arc<str>),
    #[error("the token's `{0}` claim has an unexpected type")]
    InvalidClaim(Arc<str>),
    #[error("the token was issued for another environment")]
    WrongEnvironment,
}

impl AuthError {
    /// Stable, low-cardinality label for metrics (`reason="…"`).
    pub fn label(&self) -> &'static str {
        match self {
            Self::MissingToken => "missing_token",
            Self::UnsupportedScheme => "unsupported_scheme",
            Self::Malformed => "malformed",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::BadSignature => "bad_signature",
            Self::UnknownIssuer => "unknown_issuer",
            Self::WrongAudience => "wrong_audience",
            Self::UnknownKey => "unknown_key",
            Self::UnsupportedAlg => "unsupported_alg",
            Self::JwksUnavailable => crate::authn::JWKS_UNAVAILABLE,
            Self::MissingClaim(_) => "missing_claim",
            Self::InvalidClaim(_) => "invalid_claim",
            Self::WrongEnvironment => "wrong_environment",
        }
    }

    /// Whether the client presented a bearer token at all. RFC 6750 §3.1: a challenge answering
    /// a request without one carries no `error` attribute.
    pub fn token_presented(&self) -> bool {
        !matches!(self, Self::MissingToken | Self::UnsupportedScheme)
    }

    pub(crate) fn missing(claim: &str) -> Self {
        Self::MissingClaim(claim.into())
    }

    pub(crate) fn invalid(claim: &str) -> Self {
        Self::InvalidClaim(claim.into())
    }
}

/// Why an [`AuthConfig`](super::AuthConfig) cannot be used. Names the issuer (configuration,
/// not secret) and the failed rule; never echoes a secret or a key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    #[error("auth: at least one issuer must be configured")]
    NoIssuers,
    #[error("auth: requireEnvClaim needs `environment` to be set")]
    EnvClaimWithoutEnvironment,
    #[error("auth: issuer must not be empty")]
    EmptyIssuer,
    #[error("auth: issuer {0:?} is configured twice")]
    DuplicateIssuer(String),
    #[error("auth: issuer {0:?} needs at least one audience")]
    NoAudience(String),
    #[error("auth: issuer {0:?} has no key source (hs256Secret, publicKeys, jwksUri or discovery)")]
    NoKeySource(String),
    #[error("auth: issuer {0:?} sets both jwksUri and discovery; choose one")]
    ConflictingJwksSource(String),
    #[error("auth: issuer {0:?}: hs256Secret must be at least 32 bytes (RFC 7518 §3.2)")]
    WeakHsSecret(String),
    #[error("auth: issuer {issuer:?}: publicKeys[{index}]: {reason}")]
    InvalidPublicKey {
        issuer: String,
        index: usize,
        reason: &'static str,
    },
    #[error("auth: issuer {issuer:?}: claim mapping for `{claim}` is an empty path")]
    EmptyClaimPath { issuer: String, claim: &'static str },
    #[error("auth: issuer {issuer:?}: {reason}")]
    InvalidUri {
        issuer: String,
        reason: &'static str,
    },
    #[error("auth: cannot build the HTTP client for JWKS: {0}")]
    HttpClient(String),
}

impl AuthConfigError {
    /// Stable label for metrics and status conditions.
    pub fn label(&self) -> &'static str {
        match self {
            Self::NoIssuers => "no_issuers",
            Self::EnvClaimWithoutEnvironment => "env_claim_without_environment",
            Self::EmptyIssuer => "empty_issuer",
            Self::DuplicateIssuer(_) => "duplicate_issuer",
            Self::NoAudience(_) => "no_audience",
            Self::NoKeySource(_) => "no_key_source",
            Self::ConflictingJwksSource(_) => "conflicting_jwks_source",
            Self::WeakHsSecret(_) => "weak_hs_secret",
            Self::InvalidPublicKey { .. } => "invalid_public_key",
            Self::EmptyClaimPath { .. } => "empty_claim_path",
            Self::InvalidUri { .. } => "invalid_uri",
            Self::HttpClient(_) => "http_client",
        }
    }
}
