//! The one constant-time bearer check every static-token endpoint uses (the controller's API,
//! the STDIO bridge): the token kept only as its SHA-256 digest, compared without early exit.

use sha2::{Digest, Sha256};

/// A static bearer token, held as its digest. `Debug` shows nothing of it.
#[derive(Clone, PartialEq, Eq)]
pub struct BearerDigest([u8; 32]);

impl std::fmt::Debug for BearerDigest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BearerDigest(..)")
    }
}

impl BearerDigest {
    /// The digest of `token` (surrounding whitespace, such as a file's newline, ignored);
    /// `None` for an empty token, which must never admit anyone.
    pub fn of(token: &str) -> Option<Self> {
        let token = token.trim();
        (!token.is_empty()).then(|| Self(Sha256::digest(token.as_bytes()).into()))
    }

    /// True when an `Authorization` header value is `Bearer <this token>`. Both sides are
    /// digests, so the comparison takes the same time whatever the length or content presented.
    pub fn matches_header(&self, value: Option<&str>) -> bool {
        let Some(presented) = value.and_then(|v| v.strip_prefix("Bearer ")) else {
            return false;
        };
        let digest: [u8; 32] = Sha256::digest(presented.trim().as_bytes()).into();
        let diff = digest
            .iter()
            .zip(self.0.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        diff == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_token_after_bearer_matches() {
        let d = BearerDigest::of("s3cret\n").unwrap_or_else(|| unreachable!());
        assert!(d.matches_header(Some("Bearer s3cret")));
        for wrong in [
            None,
            Some(""),
            Some("Bearer "),
            Some("Bearer s3cre"),
            Some("Bearer s3cret2"),
            Some("Basic s3cret"),
            Some("s3cret"),
        ] {
            assert!(!d.matches_header(wrong), "{wrong:?}");
        }
    }

    #[test]
    fn an_empty_token_is_refused_and_debug_shows_nothing() {
        assert!(BearerDigest::of(" \n").is_none());
        let d = BearerDigest::of("s3cret").unwrap_or_else(|| unreachable!());
        assert_eq!(format!("{d:?}"), "BearerDigest(..)");
    }
}
