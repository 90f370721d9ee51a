//! Revoked gateway API tokens as the dataplane checks them on every request: token ids, and
//! per-user "issued before" cut-offs. Checked after signature verification and never cached, so
//! a revocation takes effect with the snapshot that carries it.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Revocations {
    /// Revoked `jti` values.
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub token_ids: BTreeSet<String>,
    /// User → tokens issued before this time (seconds since the epoch) are refused. When several
    /// revocations name one user, the latest cut-off wins.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub subjects: BTreeMap<String, i64>,
}

impl Revocations {
    pub fn is_empty(&self) -> bool {
        self.token_ids.is_empty() && self.subjects.is_empty()
    }

    /// Whether a verified token is revoked. A token without `iat` cannot show it was issued after
    /// a subject cut-off, so it is revoked by one.
    pub fn revokes(&self, token_id: Option<&str>, user: &str, issued_at: Option<u64>) -> bool {
        if token_id.is_some_and(|j| self.token_ids.contains(j)) {
            return true;
        }
        match self.subjects.get(user) {
            None => false,
            Some(cutoff) => issued_at.is_none_or(|iat| {
                // An `iat` beyond i64 is nonsense; refusing it is the safe reading.
                i64::try_from(iat).ok().is_none_or(|iat| iat < *cutoff)
            }),
        }
    }

    pub(crate) fn add_subject(&mut self, user: &str, issued_before: i64) {
        let cutoff = self
            .subjects
            .entry(user.to_owned())
            .or_insert(issued_before);
        *cutoff = (*cutoff).max(issued_before);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revocations_by_id_and_by_subject_cutoff() {
        let mut r = Revocations::default();
        assert!(r.is_empty());
        assert!(!r.revokes(Some("j1"), "alice", Some(10)));
        r.token_ids.insert("j1".into());
        r.add_subject("bob", 1_000);
        r.add_subject("bob", 500);
        assert_eq!(r.subjects["bob"], 1_000, "the latest cut-off wins");
        assert!(r.revokes(Some("j1"), "alice", Some(10)));
        assert!(!r.revokes(Some("j2"), "alice", Some(10)));
        assert!(!r.revokes(None, "alice", None));
        assert!(r.revokes(Some("j2"), "bob", Some(999)));
        assert!(!r.revokes(Some("j2"), "bob", Some(1_000)));
        assert!(
            r.revokes(Some("j2"), "bob", None),
            "no iat cannot prove it is newer"
        );
    }
}
