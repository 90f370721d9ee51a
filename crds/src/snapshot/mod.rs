//! The compiled, immutable model every dataplane serves from: targets with routing, policy index
//! and sealed credentials. Versioned, content-hashed, cheap to clone, validated on deserialize.

pub mod condition;
mod credentials;
mod pinning;
mod policy;
pub mod rate_limit;
mod revocations;
mod sandbox;
mod target;
mod user_credential;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use credentials::{
    CompiledCredential, CredentialMatch, CredentialSet, InjectAs, ResolvedCredentials,
    ResolvedEntry, SealedEntry,
};
pub use pinning::{DIGESTED_FIELDS, PinMode, PinVerdict, ToolPins, tool_digest, valid_digest};
pub use policy::{
    CompiledRule, Decision, Effect, ItemKind, PolicySet, PolicyView, RuleKind, SubjectMatch, covers,
};
pub use rate_limit::RateLimitScope;
pub use revocations::Revocations;
pub use sandbox::{
    DEFAULT_MEMORY_MIB, DEFAULT_OPEN_FILES, EffectiveLimits, NamespaceMode, StdioSandbox,
};
pub use target::{ForwardedJwt, IdentityForwarding, Isolation, PodTemplate, PodTransport};
pub use user_credential::{
    CompiledClient, CompiledOAuth2, CompiledTokenExchange, CompiledUserCredential,
    SealedClientSecret, UserCredentialMode,
};

/// Separates a Target's prefix from an item name on the aggregated endpoint (`github_create_issue`).
/// Prefixes cannot contain it, so the first occurrence always splits correctly.
pub const PREFIX_SEPARATOR: char = '_';

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", tag = "transport")]
pub enum Upstream {
    StreamableHttp {
        url: Arc<str>,
    },
    Sse {
        url: Arc<str>,
    },
    /// Try Streamable HTTP, fall back to legacy SSE.
    Auto {
        url: Arc<str>,
    },
    Stdio {
        command: Arc<str>,
        args: Vec<Arc<str>>,
        env: Vec<(Arc<str>, Arc<str>)>,
        /// How each child is confined (absent in older snapshots: enforced, defaults).
        #[serde(default)]
        sandbox: StdioSandbox,
    },
    Kubernetes {
        pod: PodTemplate,
        env: Vec<(Arc<str>, Arc<str>)>,
    },
}

impl Upstream {
    pub fn transport_name(&self) -> &'static str {
        match self {
            Upstream::StreamableHttp { .. } => "streamableHttp",
            Upstream::Sse { .. } => "sse",
            Upstream::Auto { .. } => "auto",
            Upstream::Stdio { .. } => "stdio",
            Upstream::Kubernetes { .. } => "kubernetes",
        }
    }
}

/// Effective timeouts (defaults filled in), in milliseconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveTimeouts {
    pub connect_ms: u32,
    pub request_ms: u32,
    pub init_ms: u32,
}

impl Default for EffectiveTimeouts {
    fn default() -> Self {
        Self {
            connect_ms: 5_000,
            request_ms: 60_000,
            init_ms: 30_000,
        }
    }
}

/// Effective lifetimes of spawned processes and pods, in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EffectiveLifetimes {
    pub idle_seconds: u32,
    pub max_seconds: Option<u32>,
}

impl Default for EffectiveLifetimes {
    fn default() -> Self {
        Self {
            idle_seconds: 900,
            max_seconds: None,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledTarget {
    pub namespace: Arc<str>,
    pub name: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    pub prefix: Arc<str>,
    pub upstream: Upstream,
    pub isolation: Isolation,
    pub stateful: bool,
    pub timeouts: EffectiveTimeouts,
    pub lifetimes: EffectiveLifetimes,
    pub policy: PolicySet,
    pub credentials: CredentialSet,
    /// Opted-in identity forwarding (absent: the upstream learns nothing about the caller).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity_forwarding: Option<IdentityForwarding>,
    /// Approved tool definitions (`spec.toolPinning`); absent: every definition is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pinning: Option<ToolPins>,
    /// What each user brings (`spec.userCredential`); absent: nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_credential: Option<CompiledUserCredential>,
}

impl CompiledTarget {
    /// `namespace/name`, for logs, audit and metrics labels.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error("two targets share the prefix {0:?}")]
    DuplicatePrefix(String),
    #[error("target {0} appears twice")]
    DuplicateTarget(String),
    #[error("content hash mismatch: snapshot says {claimed}, content is {actual}")]
    HashMismatch { claimed: String, actual: String },
    #[error("snapshot does not serialize: {0}")]
    Serialize(String),
}

impl SnapshotError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::DuplicatePrefix(_) => "duplicate_prefix",
            Self::DuplicateTarget(_) => "duplicate_target",
            Self::HashMismatch { .. } => "hash_mismatch",
            Self::Serialize(_) => "serialize",
        }
    }
}

struct Inner {
    version: u64,
    hash: String,
    targets: Vec<Arc<CompiledTarget>>,
    by_prefix: HashMap<Arc<str>, usize>,
    by_key: HashMap<Arc<str>, HashMap<Arc<str>, usize>>,
    revocations: Arc<Revocations>,
}

/// An immutable compiled model. Clone is an `Arc` bump.
#[derive(Clone)]
pub struct Snapshot(Arc<Inner>);

#[derive(Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct SnapshotWire {
    version: u64,
    hash: String,
    targets: Vec<Arc<CompiledTarget>>,
    #[serde(default, skip_serializing_if = "Revocations::is_empty")]
    revocations: Revocations,
}

impl Snapshot {
    /// Builds a snapshot from compiled targets (sorted by namespace/name), computing its hash.
    pub fn new(targets: Vec<Arc<CompiledTarget>>) -> Result<Self, SnapshotError> {
        Self::with_revocations(targets, Revocations::default())
    }

    /// Like [`new`](Self::new), also carrying revoked tokens.
    pub fn with_revocations(
        mut targets: Vec<Arc<CompiledTarget>>,
        revocations: Revocations,
    ) -> Result<Self, SnapshotError> {
        targets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        let hash = content_hash(&targets, &revocations)?;
        Self::assemble(0, hash, targets, Arc::new(revocations))
    }

    pub fn empty() -> Self {
        Self::new(Vec::new()).unwrap_or_else(|_| unreachable!("an empty snapshot always builds"))
    }

    fn assemble(
        version: u64,
        hash: String,
        targets: Vec<Arc<CompiledTarget>>,
        revocations: Arc<Revocations>,
    ) -> Result<Self, SnapshotError> {
        let mut by_prefix = HashMap::with_capacity(targets.len());
        let mut by_key = HashMap::with_capacity(targets.len());
        for (i, t) in targets.iter().enumerate() {
            if by_prefix.insert(t.prefix.clone(), i).is_some() {
                return Err(SnapshotError::DuplicatePrefix(t.prefix.to_string()));
            }
            let names: &mut HashMap<Arc<str>, usize> =
                by_key.entry(t.namespace.clone()).or_default();
            if names.insert(t.name.clone(), i).is_some() {
                return Err(SnapshotError::DuplicateTarget(t.key()));
            }
        }
        Ok(Self(Arc::new(Inner {
            version,
            hash,
            targets,
            by_prefix,
            by_key,
            revocations,
        })))
    }

    /// The same content under a new version number (set by whoever publishes it).
    pub fn with_version(&self, version: u64) -> Self {
        Self(Arc::new(Inner {
            version,
            hash: self.0.hash.clone(),
            targets: self.0.targets.clone(),
            by_prefix: self.0.by_prefix.clone(),
            by_key: self.0.by_key.clone(),
            revocations: self.0.revocations.clone(),
        }))
    }

    pub fn version(&self) -> u64 {
        self.0.version
    }

    /// SHA-256 of the content (sealed ciphertexts excluded; their keyed digests included), so
    /// recompiling unchanged inputs gives the same hash.
    pub fn hash(&self) -> &str {
        &self.0.hash
    }

    pub fn targets(&self) -> &[Arc<CompiledTarget>] {
        &self.0.targets
    }

    /// Revoked gateway API tokens.
    pub fn revocations(&self) -> &Revocations {
        &self.0.revocations
    }

    pub fn target(&self, namespace: &str, name: &str) -> Option<&Arc<CompiledTarget>> {
        self.0
            .by_key
            .get(namespace)?
            .get(name)
            .map(|i| &self.0.targets[*i])
    }

    pub fn target_by_prefix(&self, prefix: &str) -> Option<&Arc<CompiledTarget>> {
        self.0.by_prefix.get(prefix).map(|i| &self.0.targets[*i])
    }

    /// Splits an aggregated name (`prefix_name`) into its Target and the upstream's own name.
    pub fn route<'n>(&self, prefixed: &'n str) -> Option<(&Arc<CompiledTarget>, &'n str)> {
        let (prefix, rest) = prefixed.split_once(PREFIX_SEPARATOR)?;
        self.target_by_prefix(prefix).map(|t| (t, rest))
    }

    pub fn to_json(&self) -> Result<Vec<u8>, SnapshotError> {
        let wire = SnapshotWire {
            version: self.0.version,
            hash: self.0.hash.clone(),
            targets: self.0.targets.clone(),
            revocations: Revocations::clone(&self.0.revocations),
        };
        serde_json::to_vec(&wire).map_err(|e| SnapshotError::Serialize(e.to_string()))
    }

    /// The normalized content (sealed ciphertexts removed) for golden tests and diffs.
    pub fn normalized(&self) -> serde_json::Value {
        normalized(&self.0.targets).unwrap_or(serde_json::Value::Null)
    }
}

impl Serialize for Snapshot {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        SnapshotWire {
            version: self.0.version,
            hash: self.0.hash.clone(),
            targets: self.0.targets.clone(),
            revocations: Revocations::clone(&self.0.revocations),
        }
        .serialize(s)
    }
}

impl<'de> Deserialize<'de> for Snapshot {
    /// Refuses a snapshot whose hash does not match its content or whose routing is ambiguous:
    /// a model that fails to validate is never served.
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let wire = SnapshotWire::deserialize(d)?;
        let actual =
            content_hash(&wire.targets, &wire.revocations).map_err(serde::de::Error::custom)?;
        if actual != wire.hash {
            return Err(serde::de::Error::custom(SnapshotError::HashMismatch {
                claimed: wire.hash,
                actual,
            }));
        }
        Self::assemble(
            wire.version,
            wire.hash,
            wire.targets,
            Arc::new(wire.revocations),
        )
        .map_err(serde::de::Error::custom)
    }
}

impl fmt::Debug for Snapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Snapshot")
            .field("version", &self.0.version)
            .field("hash", &self.0.hash)
            .field("targets", &self.0.targets)
            .field("revocations", &self.0.revocations)
            .finish()
    }
}

impl PartialEq for Snapshot {
    fn eq(&self, other: &Self) -> bool {
        self.0.version == other.0.version && self.0.hash == other.0.hash
    }
}

fn normalized(targets: &[Arc<CompiledTarget>]) -> Result<serde_json::Value, SnapshotError> {
    let mut v =
        serde_json::to_value(targets).map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    strip_sealed(&mut v);
    Ok(v)
}

fn strip_sealed(v: &mut serde_json::Value) {
    match v {
        serde_json::Value::Object(map) => {
            map.remove("sealed");
            map.values_mut().for_each(strip_sealed);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(strip_sealed),
        _ => {}
    }
}

/// Without revocations the hash covers the targets alone, so snapshots (and their goldens)
/// from before revocations existed keep their hashes.
fn content_hash(
    targets: &[Arc<CompiledTarget>],
    revocations: &Revocations,
) -> Result<String, SnapshotError> {
    let mut v = normalized(targets)?;
    if !revocations.is_empty() {
        let r = serde_json::to_value(revocations)
            .map_err(|e| SnapshotError::Serialize(e.to_string()))?;
        v = serde_json::json!({"targets": v, "revocations": r});
    }
    let bytes = serde_json::to_vec(&v).map_err(|e| SnapshotError::Serialize(e.to_string()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}
