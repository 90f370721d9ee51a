//! Credential values at rest inside a Snapshot: AES-256-GCM with a random nonce and AAD binding
//! each value to its slot (namespace/target/subject/key), plus a keyed digest for change detection.

use std::fmt;

use aes_gcm::aead::{Aead, Generate, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::Mac;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use sha2::Sha256;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealing key must be 32 bytes of standard base64")]
    BadKey,
    #[error("sealed value is malformed")]
    Malformed,
    #[error("sealed value does not open with this key for this slot")]
    Open,
    #[error("sealed value is not UTF-8")]
    NotUtf8,
}

impl SealError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadKey => "bad_key",
            Self::Malformed => "malformed",
            Self::Open => "open_failed",
            Self::NotUtf8 => "not_utf8",
        }
    }
}

/// The 32-byte key shared by the controller and every dataplane. Never printed.
#[derive(Clone)]
pub struct SealingKey {
    cipher: Aes256Gcm,
    /// HMAC state keyed with the derived digest key (cloned per use; the key never leaves it).
    digest_mac: hmac::Hmac<Sha256>,
}

impl SealingKey {
    pub fn from_base64(text: &str) -> Result<Self, SealError> {
        let bytes = B64.decode(text.trim()).map_err(|_| SealError::BadKey)?;
        let raw: [u8; 32] = bytes.as_slice().try_into().map_err(|_| SealError::BadKey)?;
        Ok(Self::from_bytes(&raw))
    }

    pub fn from_bytes(raw: &[u8; 32]) -> Self {
        // A separate key for digests, derived so that a digest never reveals anything usable
        // against the cipher key.
        let digest_key = hmac_sha256(raw, b"reflow/credential-digest/v1");
        Self {
            cipher: Aes256Gcm::new(raw.into()),
            digest_mac: keyed_mac(&digest_key),
        }
    }

    /// A fresh random key, base64-encoded (for `make run` and tests).
    pub fn generate_base64() -> String {
        let key = aes_gcm::Key::<Aes256Gcm>::generate();
        B64.encode(key.as_slice())
    }

    pub fn seal(&self, aad: &str, plaintext: &str) -> SealedValue {
        let nonce = Nonce::generate();
        let ciphertext = self
            .cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext.as_bytes(),
                    aad: aad.as_bytes(),
                },
            )
            // AES-GCM encryption only fails for messages over ~64 GiB.
            .unwrap_or_default();
        let mut blob = nonce.to_vec();
        blob.extend_from_slice(&ciphertext);
        SealedValue {
            sealed: B64.encode(blob),
            digest: hex::encode(self.digest(aad, plaintext)),
        }
    }

    pub fn open(&self, aad: &str, value: &SealedValue) -> Result<SecretString, SealError> {
        let blob = B64
            .decode(&value.sealed)
            .map_err(|_| SealError::Malformed)?;
        if blob.len() < 12 + 16 {
            return Err(SealError::Malformed);
        }
        let (nonce, ciphertext) = blob.split_at(12);
        let nonce = Nonce::try_from(nonce).map_err(|_| SealError::Malformed)?;
        let plain = self
            .cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad: aad.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)?;
        String::from_utf8(plain)
            .map(SecretString::from)
            .map_err(|_| SealError::NotUtf8)
    }

    /// A keyed digest of `data` for `purpose` (a constant naming the use): unguessable without
    /// the key, and the same on every replica sharing it.
    pub fn mac(&self, purpose: &str, data: &[u8]) -> [u8; 32] {
        let mut mac = self.digest_mac.clone();
        mac.update(purpose.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    fn digest(&self, aad: &str, plaintext: &str) -> [u8; 32] {
        let mut data = Vec::with_capacity(aad.len() + plaintext.len() + 1);
        data.extend_from_slice(aad.as_bytes());
        data.push(0);
        data.extend_from_slice(plaintext.as_bytes());
        let mut mac = self.digest_mac.clone();
        mac.update(&data);
        mac.finalize().into_bytes().into()
    }
}

fn keyed_mac(key: &[u8]) -> hmac::Hmac<Sha256> {
    <hmac::Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key)
        .unwrap_or_else(|_| unreachable!("HMAC accepts keys of any length"))
}

fn hmac_sha256(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = keyed_mac(key);
    mac.update(data);
    mac.finalize().into_bytes().into()
}

impl fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SealingKey(<redacted>)")
    }
}

/// A sealed credential value. `digest` is an HMAC of slot and plaintext under a key derived from
/// the sealing key: equal values give equal digests across compiles (so unchanged credentials do
/// not restart processes or change the snapshot hash) without revealing the value.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SealedValue {
    pub sealed: String,
    pub digest: String,
}

impl fmt::Debug for SealedValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SealedValue(<redacted>, digest={}…)",
            &self.digest[..self.digest.len().min(8)]
        )
    }
}

/// The AAD that binds a sealed value to its slot; a value moved to another slot will not open.
pub fn slot_aad(namespace: &str, target: &str, subject: &str, kind: &str, key: &str) -> String {
    format!("reflow/v1/{namespace}/{target}/{subject}/{kind}/{key}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use secrecy::ExposeSecret;

    fn key() -> SealingKey {
        SealingKey::from_base64(&SealingKey::generate_base64()).unwrap()
    }

    #[test]
    fn round_trip_and_random_nonce() {
        let k = key();
        let a = k.seal("slot", "ghp_supersecret");
        let b = k.seal("slot", "ghp_supersecret");
        assert_ne!(a.sealed, b.sealed, "nonce must be random");
        assert_eq!(a.digest, b.digest, "digest must be stable");
        assert_eq!(
            k.open("slot", &a).unwrap().expose_secret(),
            "ghp_supersecret"
        );
    }

    #[test]
    fn aad_binds_value_to_its_slot() {
        let k = key();
        let v = k.seal(
            &slot_aad("ns", "t", "user:alice", "header", "authorization"),
            "x",
        );
        let other = slot_aad("ns", "t", "user:bob", "header", "authorization");
        assert!(matches!(k.open(&other, &v), Err(SealError::Open)));
    }

    #[test]
    fn wrong_key_and_tampering_fail_closed() {
        let (k1, k2) = (key(), key());
        let v = k1.seal("s", "value");
        assert!(matches!(k2.open("s", &v), Err(SealError::Open)));
        let mut t = v.clone();
        let mut blob = B64.decode(&t.sealed).unwrap();
        let last = blob.len() - 1;
        blob[last] ^= 1;
        t.sealed = B64.encode(blob);
        assert!(matches!(k1.open("s", &t), Err(SealError::Open)));
        t.sealed = "@@".into();
        assert!(matches!(k1.open("s", &t), Err(SealError::Malformed)));
    }

    #[test]
    fn bad_keys_are_rejected() {
        assert!(matches!(
            SealingKey::from_base64("short"),
            Err(SealError::BadKey)
        ));
        assert!(matches!(
            SealingKey::from_base64(&B64.encode([0u8; 16])),
            Err(SealError::BadKey)
        ));
    }

    #[test]
    fn nothing_secret_in_debug() {
        let k = key();
        let v = k.seal("s", "hunter2-secret");
        let dbg = format!("{k:?} {v:?}");
        assert!(!dbg.contains("hunter2"));
        assert!(!dbg.contains(&v.sealed));
    }
}
