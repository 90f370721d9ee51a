//! Reflow's OAuth 2 client, shared by the dataplane (the connect flow, standalone refresh) and the
//! controller (the lease-holder refresher, RFC 8693 exchange).
//!
//! * [`token`]: the token endpoint, generic over the grant ([`TokenClient::request`]), with
//!   [`TokenClient::exchange_code`], [`TokenClient::refresh`] and RFC 7009 [`TokenClient::revoke`];
//!   client authentication `client_secret_basic`, `client_secret_post` or `none` (PKCE).
//! * [`discovery`]: RFC 9728 protected-resource metadata (from a 401's `WWW-Authenticate:
//!   Bearer resource_metadata=…` or the well-known URL), then RFC 8414 / OpenID metadata.
//! * [`registration`]: RFC 7591 dynamic client registration.
//! * [`pkce`]: PKCE S256 and `state` values; [`authorize`]: the authorization request URL and
//!   the callback's parameters.
//!
//! Every remote is treated as hostile: [`http::OAuthHttp`] follows no redirect, bounds time and
//! response size, and speaks only `https` (plain `http` to loopback hosts only, for tests and
//! sidecars). Tokens live in [`secrecy::SecretString`]: `Debug` prints `[REDACTED]`, there is no
//! `Display`, and no error of this crate carries a token or a response body.

pub mod authorize;
pub mod discovery;
pub mod http;
pub mod pkce;
pub mod registration;
pub mod token;

pub use authorize::{AuthorizationRequest, CallbackParams};
pub use discovery::{AuthServerMetadata, Discovered, ProtectedResourceMetadata};
pub use http::OAuthHttp;
pub use pkce::Pkce;
pub use registration::{RegisteredClient, RegistrationRequest};
pub use secrecy::{ExposeSecret, SecretString};
pub use token::{ClientAuth, TokenClient, TokenResponse};

/// Everything this crate can fail with. No variant carries a token, a secret or a response body
/// (an authorization server's `error_description` is kept, cut to 200 characters).
#[derive(Debug, thiserror::Error)]
pub enum OAuthError {
    #[error("{url} is not an allowed OAuth endpoint: {why}")]
    Url { url: String, why: &'static str },
    #[error("request to {url} failed: {message}")]
    Transport { url: String, message: String },
    #[error("{url} answered HTTP {status}")]
    Status { url: String, status: u16 },
    #[error("{url} answered a body larger than {limit} bytes")]
    TooLarge { url: String, limit: usize },
    #[error("{url} answered something that is not the expected JSON: {message}")]
    Json { url: String, message: String },
    /// RFC 6749 §5.2 (or RFC 7591 §3.2.2, RFC 7009 §2.2.1) error response.
    #[error("the authorization server refused: {error}{}", in_parens(.description))]
    Refused {
        error: String,
        description: Option<String>,
    },
    #[error("metadata refused: {0}")]
    Metadata(String),
    #[error(
        "the protected-resource metadata names resource {got:?}, not {expected:?} (RFC 9728 §3.3)"
    )]
    ResourceMismatch { expected: String, got: String },
    #[error(
        "the authorization-server metadata names issuer {got:?}, not {expected:?} (RFC 8414 §3.3)"
    )]
    IssuerMismatch { expected: String, got: String },
    #[error("the authorization server offers no {0}")]
    Unsupported(&'static str),
    #[error("the callback is not valid: {0}")]
    Callback(&'static str),
}

impl OAuthError {
    /// A short, stable label for metrics and audit outcomes.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Url { .. } => "url",
            Self::Transport { .. } => "transport",
            Self::Status { .. } => "status",
            Self::TooLarge { .. } => "too_large",
            Self::Json { .. } => "json",
            Self::Refused { .. } => "refused",
            Self::Metadata(_) => "metadata",
            Self::ResourceMismatch { .. } => "resource_mismatch",
            Self::IssuerMismatch { .. } => "issuer_mismatch",
            Self::Unsupported(_) => "unsupported",
            Self::Callback(_) => "callback",
        }
    }

    /// Whether the grant itself is dead (`invalid_grant`: revoked, expired or rotated away), as
    /// opposed to a passing failure worth retrying.
    pub fn is_invalid_grant(&self) -> bool {
        matches!(self, Self::Refused { error, .. } if error == "invalid_grant")
    }
}

fn in_parens(d: &Option<String>) -> String {
    d.as_deref().map(|d| format!(" ({d})")).unwrap_or_default()
}

pub type Result<T, E = OAuthError> = std::result::Result<T, E>;
