//! Bearer-token authentication for MCP clients: JWT verification (HS256, RS*, PS*, ES*, EdDSA),
//! JWKS via OIDC discovery, claim mapping to `Identity`, 401 challenges and dev-token minting.
//!
//! The HTTP layer calls [`Authenticator::authenticate`] with the request headers; on error it
//! answers with [`status_for`] and [`www_authenticate`], and serves
//! [`Authenticator::protected_resource_metadata`] at [`resource_metadata_url`].

mod adapter;
mod authenticator;
mod cache;
mod challenge;
mod claims;
mod config;
mod error;
mod jwks;
mod jwt;
mod keys;

pub use authenticator::Authenticator;
pub use challenge::{
    ProtectedResourceMetadata, protected_resource_metadata, resource_metadata_url, status_for,
    www_authenticate,
};
pub use config::{AuthConfig, ClaimMapping, ClaimPath, IssuerConfig, PublicKeyConfig};
pub use error::{AuthConfigError, AuthError};
pub use reflow_crds::token::{MintError, MintedToken, TokenRequest, mint_dev_token, mint_token};
