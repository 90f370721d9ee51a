//! Reflow's control plane: watches Targets, Policies, Credentials and the Secrets they reference
//! (or a manifests folder), compiles them with `reflow-crds`, streams snapshots to every
//! dataplane, and writes status conditions back as the lease holder.

pub mod conditions;
pub mod fleet;
pub mod grant_oauth;
pub mod grants;
pub mod instance;
pub mod lease;
pub mod metrics;
pub mod policy_status;
pub mod publish;
pub mod refresher;
pub mod roster;
pub mod server;
pub mod source;
pub mod status;
pub mod target_status;
pub mod token;
