//! The user-facing resources of group `mcp.reflow.io/v1alpha1`: Target, Policy, Credential,
//! MCPInstance and TokenRevocation, with their CEL rules and printer columns. `make crds` renders them to `crds/yaml/`.

// Every `printcolumn(...)` of a `#[kube(...)]` repeats `type_ = "string"` etc.; clippy reads the
// repeated key-value pairs as duplicated attributes.
#![allow(clippy::duplicated_attributes)]

mod common;
mod credential;
mod instance;
mod policy;
mod revocation;
mod sandbox;
mod target;
mod user_credential;

pub use common::{Condition, LocalRef, ObjectStatus, SecretKeyRef};
pub use credential::{Credential, CredentialSpec, CredentialSubject, InjectedValue};
pub use instance::{InstanceIdentity, InstancePhase, InstanceSpec, InstanceStatus, MCPInstance};
pub use policy::{
    Effect, Policy, PolicyRule, PolicySpec, RateLimit, RateLimitScope, RuleKind, Subject,
};
pub use revocation::{RevokedSubject, TokenRevocation, TokenRevocationSpec};
pub use sandbox::{NamespaceMode, ProcessLimits, SandboxMode, SandboxSpec};
pub use target::{
    EnvVar, ForwardedJwt, IdentityForwarding, Isolation, Lifetimes, PinMode, PodSpecTemplate,
    PodTransport, Target, TargetSpec, TargetStatus, Timeouts, ToolDigest, ToolPinning, Transport,
};
pub use user_credential::{
    OAuth2Mode, OAuthClient, SecretMode, TokenExchangeMode, USER_MANAGED_LABEL, UserCredential,
    UserCredentialMode, UserInjection,
};

pub const GROUP: &str = "mcp.reflow.io";
pub const VERSION: &str = "v1alpha1";
