//! Gateway API tokens as a model shared by every binary that mints or checks them: how they are
//! minted (HS256 with `exp` and `jti`), what their `reflow` scope claim means, and the address
//! ranges scopes and trusted proxies use. Pure: no I/O, no runtime.

pub mod bearer;
pub mod cidr;
pub mod mint;
pub mod scope;

pub use bearer::BearerDigest;
pub use mint::{
    MIN_HS_SECRET_BYTES, MintError, MintedToken, TokenRequest, mint_dev_token, mint_token,
};
pub use scope::{OutOfScope, Permission, SCOPE_CLAIM, ScopeError, TokenScope};
