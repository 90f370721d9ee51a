//! The caller as policy and credentials see it: a user, their groups and roles.
//! Built by the dataplane's authenticators; consumed by the evaluator and credential resolution.

use std::sync::Arc;

use sha2::{Digest, Sha256};

/// An authenticated caller. Groups and roles are sorted and de-duplicated so that two identities
/// with the same claims compare equal and share one fingerprint.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    /// Stable user name (e.g. the `sub` or `preferred_username` claim).
    pub user: Arc<str>,
    pub email: Option<Arc<str>>,
    pub name: Option<Arc<str>>,
    pub groups: Arc<[Arc<str>]>,
    pub roles: Arc<[Arc<str>]>,
    /// The verified token's claims, for policy conditions (`claims.department`). Not part of
    /// equality's meaning beyond content, nor of the fingerprint; never logged.
    pub claims: Claims,
}

/// A caller's raw claims (empty for callers without a JWT). Compared by content; hashes to
/// nothing, so identities that differ only in claims still hash alike (and compare unequal).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Claims(Option<Arc<serde_json::Map<String, serde_json::Value>>>);

impl Claims {
    pub fn new(map: serde_json::Map<String, serde_json::Value>) -> Self {
        Self(Some(Arc::new(map)))
    }

    pub fn map(&self) -> Option<&serde_json::Map<String, serde_json::Value>> {
        self.0.as_deref()
    }
}

impl std::hash::Hash for Claims {
    fn hash<H: std::hash::Hasher>(&self, _: &mut H) {}
}

impl Identity {
    pub fn new<U, G, R>(user: U, groups: G, roles: R) -> Self
    where
        U: Into<Arc<str>>,
        G: IntoIterator,
        G::Item: Into<Arc<str>>,
        R: IntoIterator,
        R::Item: Into<Arc<str>>,
    {
        Self {
            user: user.into(),
            email: None,
            name: None,
            groups: sorted_unique(groups),
            roles: sorted_unique(roles),
            claims: Claims::default(),
        }
    }

    pub fn in_group(&self, group: &str) -> bool {
        self.groups.binary_search_by(|g| (**g).cmp(group)).is_ok()
    }

    pub fn has_role(&self, role: &str) -> bool {
        self.roles.binary_search_by(|r| (**r).cmp(role)).is_ok()
    }

    /// SHA-256 over user, groups and roles (length-prefixed, so no two claim sets collide by
    /// concatenation). Sessions are bound to it; a change means the caller's claims changed.
    pub fn fingerprint(&self) -> Fingerprint {
        let mut h = Sha256::new();
        let mut put = |tag: u8, s: &str| {
            h.update([tag]);
            h.update((s.len() as u64).to_be_bytes());
            h.update(s.as_bytes());
        };
        put(b'u', &self.user);
        for g in self.groups.iter() {
            put(b'g', g);
        }
        for r in self.roles.iter() {
            put(b'r', r);
        }
        Fingerprint(h.finalize().into())
    }
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("groups", &self.groups)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

fn sorted_unique<I>(items: I) -> Arc<[Arc<str>]>
where
    I: IntoIterator,
    I::Item: Into<Arc<str>>,
{
    let mut v: Vec<Arc<str>> = items.into_iter().map(Into::into).collect();
    v.sort();
    v.dedup();
    v.into()
}

/// A 32-byte digest used as a cache and isolation key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }
}

impl std::fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Fingerprint({})", &self.to_hex()[..16])
    }
}

impl std::fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn claims_are_normalised_so_order_does_not_matter() {
        let a = Identity::new("alice", ["b", "a", "a"], ["x"]);
        let b = Identity::new("alice", ["a", "b"], ["x"]);
        assert_eq!(a, b);
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert!(a.in_group("a") && a.in_group("b") && !a.in_group("c"));
        assert!(a.has_role("x") && !a.has_role("y"));
    }

    #[test]
    fn fingerprint_changes_with_any_claim_and_resists_concatenation() {
        let base = Identity::new("alice", ["dev"], Vec::<String>::new());
        assert_ne!(
            base.fingerprint(),
            Identity::new("alice", ["ops"], Vec::<String>::new()).fingerprint()
        );
        assert_ne!(
            base.fingerprint(),
            Identity::new("alice", Vec::<String>::new(), ["dev"]).fingerprint()
        );
        assert_ne!(
            Identity::new("ab", ["c"], Vec::<String>::new()).fingerprint(),
            Identity::new("a", ["bc"], Vec::<String>::new()).fingerprint()
        );
    }
}
