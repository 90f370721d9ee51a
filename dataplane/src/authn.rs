//! The gateway's view of authentication: one `Authenticate` trait (headers → Identity) that the
//! JWT authenticator in `auth` plugs into, plus the 401 challenge and RFC 9728 metadata shape.

use std::sync::Arc;

use futures::future::BoxFuture;
use http::HeaderMap;
use reflow_crds::Identity;
use serde_json::{Value, json};

use crate::scope::TokenScope;

/// Who is calling, and what their token says beyond the identity: the token id and issue time
/// (for revocation) and its scope (which only narrows what policies allow).
#[derive(Debug, Clone)]
pub struct Principal {
    pub identity: Identity,
    /// `jti`, when the token carries one.
    pub token_id: Option<Arc<str>>,
    /// `iat` in seconds since the epoch, when the token carries one.
    pub issued_at: Option<u64>,
    pub scope: Arc<TokenScope>,
    /// The `iss` of a verified bearer JWT; `None` for certificates, trusted proxies and fixed
    /// identities (callers whose token, if any, the gateway did not verify).
    pub issuer: Option<Arc<str>>,
    /// The bearer token's `exp` in seconds since the epoch, when it carries one.
    pub expires_at: Option<u64>,
}

impl Principal {
    /// An identity with no token facts and nothing narrowed (fixed identities, tests).
    pub fn from_identity(identity: Identity) -> Self {
        Self {
            identity,
            token_id: None,
            issued_at: None,
            scope: TokenScope::unrestricted(),
            issuer: None,
            expires_at: None,
        }
    }
}

/// Why a request was not authenticated. `message` is safe to log and to return.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct AuthFailure {
    pub label: &'static str,
    pub message: String,
    /// False when no credentials were presented at all (no `error=` in the challenge).
    pub token_presented: bool,
}

/// The label of a refusal because the issuer's keys cannot be fetched right now.
pub const JWKS_UNAVAILABLE: &str = "jwks_unavailable";

impl AuthFailure {
    pub fn label(&self) -> &'static str {
        self.label
    }

    /// The status a refusal is answered with, decided here for every handler: 503 when the
    /// issuer's keys cannot be fetched (the client should retry, not re-authenticate), else 401.
    pub fn status(&self) -> http::StatusCode {
        if self.label == JWKS_UNAVAILABLE {
            http::StatusCode::SERVICE_UNAVAILABLE
        } else {
            http::StatusCode::UNAUTHORIZED
        }
    }
}

pub trait Authenticate: Send + Sync + 'static {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthFailure>>;

    /// Authorization servers advertised in the protected-resource metadata.
    fn authorization_servers(&self) -> Vec<String> {
        Vec::new()
    }

    fn scopes_supported(&self) -> Vec<String> {
        Vec::new()
    }
}

/// Every request is the same identity (local development, tests).
pub struct FixedIdentity(pub Identity);

impl Authenticate for FixedIdentity {
    fn authenticate<'a>(
        &'a self,
        _: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthFailure>> {
        let id = self.0.clone();
        Box::pin(async move { Ok(Principal::from_identity(id)) })
    }
}

/// `WWW-Authenticate` for a 401 (RFC 6750 + RFC 9728 `resource_metadata`).
pub fn challenge(failure: &AuthFailure, metadata_url: &str) -> String {
    let mut v = format!("Bearer resource_metadata=\"{metadata_url}\"");
    if failure.token_presented {
        let desc = failure.message.replace(['"', '\\'], "'");
        v.push_str(&format!(
            ", error=\"invalid_token\", error_description=\"{desc}\""
        ));
    }
    v
}

/// RFC 9728 protected-resource metadata for `resource`.
pub fn resource_metadata(auth: &dyn Authenticate, resource: &str) -> Value {
    json!({
        "resource": resource,
        "authorization_servers": auth.authorization_servers(),
        "bearer_methods_supported": ["header"],
        "scopes_supported": auth.scopes_supported(),
    })
}
