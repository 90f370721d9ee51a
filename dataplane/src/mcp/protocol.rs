//! The MCP facts the router speaks by: the revisions it negotiates and the `_meta` key naming
//! a relayed message's Target. A leaf: every other router module may use it.

pub const SUPPORTED_PROTOCOLS: [&str; 3] = ["2025-03-26", "2025-06-18", "2025-11-25"];
pub use crate::upstream::handshake::LATEST_PROTOCOL;
/// The HTTP+SSE revision: accepted only on sessions opened through the legacy `/sse` endpoint.
pub const LEGACY_PROTOCOL: &str = "2024-11-05";

/// Where in `_meta` a relayed notification names the Target it came from.
pub const TARGET_META: &str = "io.reflow/target";
