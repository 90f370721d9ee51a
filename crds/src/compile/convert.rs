//! CRD (`api`, v1alpha1) → snapshot types. The only place both meet: a field or variant renamed
//! in the CRD changes a line here, never the snapshot's wire format.

use std::sync::Arc;

use crate::api;
use crate::snapshot::{
    Effect, EffectiveLimits, ForwardedJwt, IdentityForwarding, Isolation, NamespaceMode, PinMode,
    PodTemplate, PodTransport, RateLimitScope, RuleKind, StdioSandbox, UserCredentialMode,
};

impl From<api::Isolation> for Isolation {
    fn from(i: api::Isolation) -> Self {
        match i {
            api::Isolation::Shared => Self::Shared,
            api::Isolation::PerRole => Self::PerRole,
            api::Isolation::PerGroup => Self::PerGroup,
            api::Isolation::PerUser => Self::PerUser,
        }
    }
}

impl From<api::PodTransport> for PodTransport {
    fn from(t: api::PodTransport) -> Self {
        match t {
            api::PodTransport::Stdio => Self::Stdio,
            api::PodTransport::StreamableHttp => Self::StreamableHttp,
        }
    }
}

impl From<&api::PodSpecTemplate> for PodTemplate {
    fn from(p: &api::PodSpecTemplate) -> Self {
        Self {
            template: p.template.clone(),
            transport: p.transport.into(),
            port: p.port,
            path: p.path.clone(),
        }
    }
}

impl From<&api::IdentityForwarding> for IdentityForwarding {
    fn from(f: &api::IdentityForwarding) -> Self {
        Self {
            jwt: f.jwt.as_ref().map(|j| ForwardedJwt {
                header: j.header.clone(),
                audience: j.audience.clone(),
            }),
            headers: f.headers,
        }
    }
}

impl From<api::PinMode> for PinMode {
    fn from(m: api::PinMode) -> Self {
        match m {
            api::PinMode::Enforce => Self::Enforce,
            api::PinMode::Warn => Self::Warn,
        }
    }
}

impl From<api::UserCredentialMode> for UserCredentialMode {
    fn from(m: api::UserCredentialMode) -> Self {
        match m {
            api::UserCredentialMode::Secret => Self::Secret,
            api::UserCredentialMode::OAuth2 => Self::OAuth2,
            api::UserCredentialMode::TokenExchange => Self::TokenExchange,
        }
    }
}

impl From<api::NamespaceMode> for NamespaceMode {
    fn from(m: api::NamespaceMode) -> Self {
        match m {
            api::NamespaceMode::Auto => Self::Auto,
            api::NamespaceMode::Required => Self::Required,
            api::NamespaceMode::Off => Self::Off,
        }
    }
}

impl From<api::RateLimitScope> for RateLimitScope {
    fn from(s: api::RateLimitScope) -> Self {
        match s {
            api::RateLimitScope::Tool => Self::Tool,
            api::RateLimitScope::Target => Self::Target,
        }
    }
}

impl From<api::RuleKind> for RuleKind {
    fn from(k: api::RuleKind) -> Self {
        match k {
            api::RuleKind::All => Self::All,
            api::RuleKind::Tool => Self::Tool,
            api::RuleKind::Resource => Self::Resource,
            api::RuleKind::Prompt => Self::Prompt,
        }
    }
}

impl From<api::Effect> for Effect {
    fn from(e: api::Effect) -> Self {
        match e {
            api::Effect::Deny => Self::Deny,
            api::Effect::Allow => Self::Allow,
        }
    }
}

/// The effective sandbox of `spec` (absent: enforced with default limits).
pub(super) fn stdio_sandbox(spec: Option<&api::SandboxSpec>) -> StdioSandbox {
    let Some(spec) = spec else {
        return StdioSandbox::default();
    };
    let d = EffectiveLimits::default();
    let l = spec.limits.clone().unwrap_or_default();
    StdioSandbox {
        enforce: spec.mode == api::SandboxMode::Enforce,
        limits: EffectiveLimits {
            memory_mib: l.memory_mib.or(d.memory_mib),
            cpu_seconds: l.cpu_seconds.or(d.cpu_seconds),
            processes: l.processes.or(d.processes),
            open_files: l.open_files.or(d.open_files),
        },
        read_only_paths: spec
            .read_only_paths
            .iter()
            .map(|p| Arc::from(p.as_str()))
            .collect(),
        namespaces: spec.namespaces.map(Into::into),
    }
}
