//! The compiled credentials of one Target and their resolution for a caller: per injected key,
//! user > user-brought > group > role > default, ties broken by subject name then Credential name.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::identity::{Fingerprint, Identity};
use crate::seal::SealedValue;

/// Who a compiled credential applies to. Declaration order is precedence order.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum CredentialMatch {
    User(Arc<str>),
    /// A user's own value for the Target's `userCredential` slot (a Credential labelled
    /// `mcp.reflow.io/user-managed`): below an admin's explicit user Credential, above groups.
    UserBrought(Arc<str>),
    Group(Arc<str>),
    Role(Arc<str>),
    Default,
}

impl CredentialMatch {
    pub fn applies_to(&self, id: &Identity) -> bool {
        match self {
            CredentialMatch::User(u) | CredentialMatch::UserBrought(u) => **u == *id.user,
            CredentialMatch::Group(g) => id.in_group(g),
            CredentialMatch::Role(r) => id.has_role(r),
            CredentialMatch::Default => true,
        }
    }

    /// The label used in AADs and status messages, e.g. `group:developers`.
    pub fn label(&self) -> String {
        match self {
            CredentialMatch::User(u) => format!("user:{u}"),
            CredentialMatch::UserBrought(u) => format!("user-brought:{u}"),
            CredentialMatch::Group(g) => format!("group:{g}"),
            CredentialMatch::Role(r) => format!("role:{r}"),
            CredentialMatch::Default => "default".to_owned(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum InjectAs {
    Header,
    Env,
}

impl InjectAs {
    pub fn as_str(self) -> &'static str {
        match self {
            InjectAs::Header => "header",
            InjectAs::Env => "env",
        }
    }
}

/// One injected value in its slot. `aad` is what the value was sealed with; the dataplane opens
/// it with exactly this string, so a value copied to another slot does not open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedEntry {
    pub inject_as: InjectAs,
    /// Header names are lower-cased; env names are kept as written.
    pub name: Arc<str>,
    pub aad: Arc<str>,
    pub value: SealedValue,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledCredential {
    /// Name of the Credential (in the Target's namespace).
    pub credential: Arc<str>,
    pub subject: CredentialMatch,
    pub entries: Vec<SealedEntry>,
}

/// All credentials of one Target, sorted by (subject, credential name): resolution takes the first
/// applicable entry per key, which is exactly the documented precedence.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Vec<CompiledCredential>", into = "Vec<CompiledCredential>")]
pub struct CredentialSet {
    credentials: Vec<CompiledCredential>,
}

impl From<Vec<CompiledCredential>> for CredentialSet {
    fn from(mut credentials: Vec<CompiledCredential>) -> Self {
        credentials.sort_by(|a, b| (&a.subject, &a.credential).cmp(&(&b.subject, &b.credential)));
        Self { credentials }
    }
}

impl From<CredentialSet> for Vec<CompiledCredential> {
    fn from(set: CredentialSet) -> Self {
        set.credentials
    }
}

impl CredentialSet {
    pub fn all(&self) -> &[CompiledCredential] {
        &self.credentials
    }

    pub fn is_empty(&self) -> bool {
        self.credentials.is_empty()
    }

    pub fn resolve(&self, id: &Identity) -> ResolvedCredentials {
        let mut chosen: Vec<ResolvedEntry> = Vec::new();
        for cred in self.credentials.iter().filter(|c| c.subject.applies_to(id)) {
            for e in &cred.entries {
                if !chosen
                    .iter()
                    .any(|c| c.entry.inject_as == e.inject_as && c.entry.name == e.name)
                {
                    chosen.push(ResolvedEntry {
                        entry: e.clone(),
                        credential: cred.credential.clone(),
                    });
                }
            }
        }
        chosen.sort_by(|a, b| {
            (a.entry.inject_as, &a.entry.name).cmp(&(b.entry.inject_as, &b.entry.name))
        });
        let mut h = Sha256::new();
        for c in &chosen {
            h.update(c.entry.inject_as.as_str());
            h.update([0]);
            h.update(c.entry.name.as_bytes());
            h.update([0]);
            h.update(c.entry.value.digest.as_bytes());
            h.update([0]);
        }
        ResolvedCredentials {
            entries: chosen,
            fingerprint: Fingerprint(h.finalize().into()),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedEntry {
    pub entry: SealedEntry,
    /// The Credential the value came from (for audit; never the value).
    pub credential: Arc<str>,
}

/// What one caller gets injected for one Target, still sealed. `fingerprint` changes exactly when
/// any injected value changes: processes and pods are keyed by it (no credential bleed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResolvedCredentials {
    pub entries: Vec<ResolvedEntry>,
    pub fingerprint: Fingerprint,
}

impl ResolvedCredentials {
    pub fn headers(&self) -> impl Iterator<Item = &SealedEntry> {
        self.entries
            .iter()
            .map(|e| &e.entry)
            .filter(|e| e.inject_as == InjectAs::Header)
    }

    pub fn env(&self) -> impl Iterator<Item = &SealedEntry> {
        self.entries
            .iter()
            .map(|e| &e.entry)
            .filter(|e| e.inject_as == InjectAs::Env)
    }
}
