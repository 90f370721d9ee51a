//! Reflow's data plane: terminates MCP, authenticates, enforces policy, injects credentials,
//! routes to upstreams and audits.
//!
//! # Layers
//!
//! The top-level modules form five layers; a module uses (`crate::…`) only modules of its own
//! layer or of a lower one, never a higher one, and the uses within a layer have no cycle:
//!
//! 1. **app**: `app` (the one wiring entry, `App::build`, and the commands) and `config`.
//! 2. **http**: `http` (routes, the Streamable HTTP / legacy SSE / stateless envelopes, the
//!    request preamble, hardening, TLS, trusted proxies, the connection loop) and `bridge`
//!    (one STDIO server over HTTP).
//! 3. **mcp**: `mcp` (the transport-agnostic MCP router: dispatch, relay, server-to-client
//!    calls, subscriptions, log fan-out, list cache, list_changed, pins, rate limits, parked
//!    calls, cross-replica delivery), `limits` (per-user and global quotas), `console` (the web console at
//!    `/console`) and `metrics`
//!    (which reads every lower layer's counters).
//! 4. **upstream**: `upstream`, every transport to an MCP server (HTTP, SSE, auto, stateless,
//!    STDIO, instances) behind one type, `upstream::Upstreams`, which also keeps the sessions'
//!    upstream sessions, and `fuzzing` (the bodies of the `fuzz/` targets: JSON-RPC, SSE and JWT parsing).
//! 5. **model and stores**: `auth`, `authn`, `audit`, `session`, `postgres`, `source`,
//!    `controller_client`, `connect` (user-brought credentials: connect links and the local
//!    store), `observed` (what this dataplane saw of each upstream), `identity_token`, `era`, `jsonrpc`, `log_level`, `scope`,
//!    `process_guard` (the gateway's own secrets kept out of `/proc`), `server_config` (the
//!    HTTP server's settings as data, held by `mcp::GatewayConfig`, given behaviour in `http`).
//!
//! `tests/layers.rs` reads every `crate::` path under `src/` and keeps this true; a new
//! top-level module must be given a layer there.

pub mod app;
pub mod audit;
pub mod auth;
pub mod authn;
pub mod bridge;
pub mod config;
pub mod connect;
pub mod console;
pub mod controller_client;
pub mod era;
#[doc(hidden)]
pub mod fuzzing;
pub mod http;
pub mod identity_token;
pub mod jsonrpc;
pub mod limits;
pub mod log_level;
pub mod mcp;
pub mod metrics;
pub mod observed;
pub mod postgres;
pub mod process_guard;
pub mod server_config;
/// Token scopes live in the model (`reflow_crds::token::scope`) so every minting binary shares them.
pub use reflow_crds::token::scope;
pub mod session;
pub mod source;
pub mod upstream;
