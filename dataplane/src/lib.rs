//! Reflow's data plane: terminates MCP, authenticates, enforces policy, injects credentials,
//! routes to upstreams and audits.

