//! Bearer-token authentication for MCP clients: JWT verification (HS256, RS*, PS*, ES*, EdDSA),
//! JWKS via OIDC discovery, claim mapping to `Identity`, RFC 9728 metadata and dev-token minting.
//!
//! The HTTP layer calls it through `authn::Authenticate`; a refusal becomes an
//! `authn::AuthFailure`, whose `status()` and `authn::challenge` are the one answer to it.

mod adapter;
mod authenticator;
mod cache;
pub(crate) mod claims;
mod config;
mod error;
mod jwks;
pub(crate) mod jwt;
pub(crate) mod keys;
mod metadata;

pub use authenticator::Authenticator;
pub use config::{AuthConfig, ClaimMapping, ClaimPath, IssuerConfig, PublicKeyConfig};
pub use error::{AuthConfigError, AuthError};
pub use metadata::{ProtectedResourceMetadata, protected_resource_metadata};
pub use reflow_crds::token::{MintError, MintedToken, TokenRequest, mint_dev_token, mint_token};
