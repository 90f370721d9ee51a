//! Reflow's data plane: terminates MCP, authenticates, enforces policy, injects credentials,
//! routes to upstreams and audits.

pub mod app;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod bridge;
pub mod config;
pub mod controller_client;
pub mod era;
pub mod gateway;
pub mod identity_token;
pub mod jsonrpc;
pub mod log_level;
pub mod metrics;
pub mod net;
pub mod postgres;
/// Token scopes live in the model (`reflow_crds::token::scope`) so every minting binary shares them.
pub use reflow_crds::token::scope;
pub mod session;
pub mod source;
pub mod upstream;
