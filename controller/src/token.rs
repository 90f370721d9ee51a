//! The shared bearer token dataplanes present on every controller API call. Compared in
//! constant time over SHA-256 digests, so neither content nor length leaks through timing.

use reflow_crds::token::BearerDigest;
use secrecy::{ExposeSecret, SecretString};

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the controller token is empty")]
    Empty,
    #[error("reading the controller token file {path}: {source}")]
    Read {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// Never printed; `Debug` shows nothing of it.
#[derive(Clone)]
pub struct ApiToken {
    digest: BearerDigest,
}

impl std::fmt::Debug for ApiToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiToken(..)")
    }
}

impl ApiToken {
    pub fn new(token: &SecretString) -> Result<Self, TokenError> {
        let digest = BearerDigest::of(token.expose_secret()).ok_or(TokenError::Empty)?;
        Ok(Self { digest })
    }

    pub fn from_file(path: &std::path::Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::new(&SecretString::from(text))
    }

    /// Checks an `Authorization` header value (`Bearer <token>`).
    pub fn verify_header(&self, header: Option<&str>) -> bool {
        self.digest.matches_header(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let t = ApiToken::new(&SecretString::from("s3cret-token\n")).unwrap();
        assert!(t.verify_header(Some("Bearer s3cret-token")));
        assert!(!t.verify_header(Some("Bearer s3cret-toke")));
        assert!(!t.verify_header(Some("Bearer s3cret-token2")));
        assert!(!t.verify_header(Some("s3cret-token")));
        assert!(!t.verify_header(Some("Basic s3cret-token")));
        assert!(!t.verify_header(None));
        assert!(!format!("{t:?}").contains("s3cret"));
        assert!(matches!(
            ApiToken::new(&SecretString::from("  \n")),
            Err(TokenError::Empty)
        ));
    }
}
