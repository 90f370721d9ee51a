//! reflow-e2e: Reflow's whole-system test support.
//! `fixture` is the hand-written MCP server behind the `reflow-fixture` binary; `harness` starts and drives real peers.

pub mod fixture;
pub mod harness;
