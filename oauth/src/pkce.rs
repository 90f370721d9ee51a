//! PKCE S256 (RFC 7636) and unguessable `state` values.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// 256 random bits, base64url (43 characters): a PKCE verifier, a `state`, a link.
pub fn random_token() -> String {
    let raw: [u8; 32] = rand::rng().random();
    URL_SAFE_NO_PAD.encode(raw)
}

/// One PKCE pair: the verifier stays with the gateway, the S256 challenge goes to the AS.
#[derive(Debug)]
pub struct Pkce {
    pub verifier: SecretString,
    pub challenge: String,
}

impl Pkce {
    pub const METHOD: &'static str = "S256";

    pub fn new() -> Self {
        Self::from_verifier(SecretString::from(random_token()))
    }

    /// The pair for a known verifier (RFC 7636 §4.2: BASE64URL(SHA256(verifier))).
    pub fn from_verifier(verifier: SecretString) -> Self {
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.expose_secret().as_bytes()));
        Self {
            verifier,
            challenge,
        }
    }
}

impl Default for Pkce {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn s256_matches_rfc7636_appendix_b() {
        let p = Pkce::from_verifier(SecretString::from(
            "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk",
        ));
        assert_eq!(p.challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        assert!(
            !format!("{p:?}").contains("dBjft"),
            "the verifier is redacted"
        );
        let (a, b) = (Pkce::new(), Pkce::new());
        assert_ne!(a.challenge, b.challenge);
        assert_eq!(random_token().len(), 43);
    }
}
