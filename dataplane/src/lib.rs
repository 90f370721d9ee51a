//! Reflow's data plane: terminates MCP, authenticates, enforces policy, injects credentials,
//! routes to upstreams and audits.

pub mod audit;
pub mod auth;
pub mod authn;
pub mod config;
pub mod controller_client;
pub mod gateway;
pub mod jsonrpc;
pub mod metrics;
pub mod session;
pub mod source;
pub mod upstream;
