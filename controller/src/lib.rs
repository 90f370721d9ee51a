//! Reflow's control plane: watches Targets, Policies, Credentials, MCPInstances and the Secrets
//! they reference, compiles them with `reflow-crds`, and publishes snapshots to dataplanes.
//!
//! Not built yet (tracked as the controller issue): this crate only reserves its place in the
//! workspace so the dependency rule (controller and dataplane never depend on each other) holds.
