//! Reflow's declarative model: the CRD types, the compiled Snapshot, the compiler and the policy
//! evaluator. Pure code: no Kubernetes client, no async runtime.

pub mod api;
pub mod compile;
pub mod crdgen;
#[doc(hidden)]
pub mod fuzzing;
pub mod glob;
pub mod grant;
pub mod identity;
pub mod instance_wire;
pub mod loader;
pub mod observed;
pub mod rate_limiter;
pub mod seal;
pub mod snapshot;
pub mod token;
pub mod wire;

pub use compile::{Compiled, Inputs, compile};
pub use identity::{Claims, Fingerprint, Identity};
pub use seal::SealingKey;
pub use snapshot::{CompiledTarget, Decision, ItemKind, Snapshot};
