//! Verification keys: an HS256 secret, a static PEM or a JWK turned into a `DecodingKey` that is
//! tied to the algorithms of its own key type, which is what rules out algorithm confusion.

use std::fmt;
use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD_INDIFFERENT as B64URL;
use jsonwebtoken::{Algorithm, DecodingKey};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use super::config::PublicKeyConfig;

const RSA_ALGS: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
];
const HS_ALGS: &[Algorithm] = &[Algorithm::HS256];
const ES256_ALGS: &[Algorithm] = &[Algorithm::ES256];
const ES384_ALGS: &[Algorithm] = &[Algorithm::ES384];
const ED_ALGS: &[Algorithm] = &[Algorithm::EdDSA];

/// RSA moduli shorter than this are refused (NIST SP 800-131A); longer than the maximum are
/// refused so a hostile JWKS cannot make each verification arbitrarily expensive.
const RSA_MIN_MODULUS_BYTES: usize = 2048 / 8;
const RSA_MAX_MODULUS_BYTES: usize = 8192 / 8;

/// A key plus the only algorithms it may verify. The allowed set is derived from the key's own
/// type (optionally narrowed by a pinned `alg`), never from the token.
#[derive(Clone)]
pub(crate) struct VerifyingKey {
    pub kid: Option<String>,
    algs: Vec<Algorithm>,
    pub key: DecodingKey,
}

impl fmt::Debug for VerifyingKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("VerifyingKey")
            .field("kid", &self.kid)
            .field("algs", &self.algs)
            .finish_non_exhaustive()
    }
}

impl VerifyingKey {
    pub fn allows(&self, alg: Algorithm) -> bool {
        self.algs.contains(&alg)
    }

    pub fn hs256(secret: &SecretString) -> Self {
        Self {
            kid: None,
            algs: HS_ALGS.to_vec(),
            key: DecodingKey::from_secret(secret.expose_secret().as_bytes()),
        }
    }

    /// Parses a static public key. The error is a fixed reason, never the PEM itself.
    pub fn from_pem(cfg: &PublicKeyConfig) -> Result<Self, &'static str> {
        let label = cfg
            .pem
            .trim_start()
            .lines()
            .next()
            .map(str::trim)
            .unwrap_or_default();
        if label.contains("PRIVATE KEY") {
            return Err("a private key was given; configure the public key only");
        }
        if label != "-----BEGIN PUBLIC KEY-----" && label != "-----BEGIN RSA PUBLIC KEY-----" {
            return Err("expected a PEM `PUBLIC KEY` or `RSA PUBLIC KEY` block");
        }
        let pem = cfg.pem.as_bytes();
        let (key, algs) = if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
            (key, RSA_ALGS)
        } else if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            let algs = match key.try_get_as_bytes().map(<[u8]>::len) {
                Ok(65) => ES256_ALGS,
                Ok(97) => ES384_ALGS,
                _ => return Err("unsupported elliptic curve (P-256 and P-384 are supported)"),
            };
            (key, algs)
        } else if let Ok(key) = DecodingKey::from_ed_pem(pem) {
            if key.try_get_as_bytes().map(<[u8]>::len) != Ok(32) {
                return Err("unsupported Edwards curve (Ed25519 is supported)");
            }
            (key, ED_ALGS)
        } else {
            return Err("not an RSA, EC or Ed25519 public key");
        };
        let algs = pin(algs, cfg.alg.as_deref())?;
        Ok(Self {
            kid: cfg.kid.clone(),
            algs,
            key,
        })
    }

    /// Parses one entry of a JWKS. Keys that are not for signatures, or of a type we do not
    /// verify, are refused individually so one odd key does not poison the whole set.
    pub fn from_jwk(value: &serde_json::Value) -> Result<Self, &'static str> {
        let jwk = RawJwk::deserialize(value).map_err(|_| "not a JWK object")?;
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err("key is not for signatures");
        }
        if let Some(ops) = &jwk.key_ops
            && !ops.iter().any(|op| op == "verify")
        {
            return Err("key_ops does not include verify");
        }
        let (key, algs) = match (jwk.kty.as_str(), jwk.crv.as_deref()) {
            ("RSA", _) => {
                let n = b64(jwk.n.as_deref())?;
                let e = b64(jwk.e.as_deref())?;
                let n_len = n.iter().skip_while(|b| **b == 0).count();
                if !(RSA_MIN_MODULUS_BYTES..=RSA_MAX_MODULUS_BYTES).contains(&n_len) {
                    return Err("RSA modulus size out of range (2048 to 8192 bits)");
                }
                let e_len = e.iter().skip_while(|b| **b == 0).count();
                if e_len == 0 || e_len > 8 {
                    return Err("RSA exponent out of range");
                }
                (DecodingKey::from_rsa_raw_components(&n, &e), RSA_ALGS)
            }
            ("EC", Some(crv @ ("P-256" | "P-384"))) => {
                let (width, algs) = if crv == "P-256" {
                    (32, ES256_ALGS)
                } else {
                    (48, ES384_ALGS)
                };
                let x = b64(jwk.x.as_deref())?;
                let y = b64(jwk.y.as_deref())?;
                if x.len() != width || y.len() != width {
                    return Err("EC coordinates have the wrong length for the curve");
                }
                let mut point = Vec::with_capacity(1 + 2 * width);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (DecodingKey::from_ec_der(&point), algs)
            }
            ("OKP", Some("Ed25519")) => {
                let x = b64(jwk.x.as_deref())?;
                // The verifier slices the first 32 bytes; anything else must not reach it.
                if x.len() != 32 {
                    return Err("Ed25519 key must be 32 bytes");
                }
                (DecodingKey::from_ed_der(&x), ED_ALGS)
            }
            ("EC" | "OKP", _) => return Err("unsupported curve"),
            _ => return Err("unsupported key type"),
        };
        Ok(Self {
            kid: jwk.kid,
            algs: pin(algs, jwk.alg.as_deref())?,
            key,
        })
    }
}

/// Narrows a key type's algorithms to a pinned one, refusing a pin of another key type.
fn pin(algs: &'static [Algorithm], pinned: Option<&str>) -> Result<Vec<Algorithm>, &'static str> {
    match pinned {
        None => Ok(algs.to_vec()),
        Some(name) => match Algorithm::from_str(name) {
            Ok(alg) if algs.contains(&alg) => Ok(vec![alg]),
            Ok(_) => Err("alg does not match the key type"),
            Err(_) => Err("unsupported alg"),
        },
    }
}

fn b64(field: Option<&str>) -> Result<Vec<u8>, &'static str> {
    let field = field.ok_or("JWK lacks a required parameter")?;
    B64URL
        .decode(field)
        .map_err(|_| "JWK parameter is not base64url")
}

#[derive(Deserialize)]
struct RawJwk {
    kty: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default, rename = "use")]
    use_: Option<String>,
    #[serde(default)]
    key_ops: Option<Vec<String>>,
    #[serde(default)]
    alg: Option<String>,
    #[serde(default)]
    crv: Option<String>,
    #[serde(default)]
    n: Option<String>,
    #[serde(default)]
    e: Option<String>,
    #[serde(default)]
    x: Option<String>,
    #[serde(default)]
    y: Option<String>,
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pem(name: &str) -> String {
        let path = format!("{}/testdata/auth/{name}", env!("CARGO_MANIFEST_DIR"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"))
    }

    fn static_key(name: &str, alg: Option<&str>) -> Result<VerifyingKey, &'static str> {
        VerifyingKey::from_pem(&PublicKeyConfig {
            pem: pem(name),
            kid: None,
            alg: alg.map(str::to_string),
        })
    }

    #[test]
    fn auth_pem_keys_get_only_their_own_algorithms() {
        let rsa = static_key("rsa-public.pem", None).map_err(|e| e.to_string());
        let rsa = rsa.unwrap_or_else(|e| panic!("{e}"));
        assert!(rsa.allows(Algorithm::RS256) && rsa.allows(Algorithm::PS256));
        assert!(!rsa.allows(Algorithm::HS256) && !rsa.allows(Algorithm::ES256));

        let ec = static_key("ec-public.pem", None).unwrap_or_else(|e| panic!("{e}"));
        assert!(ec.allows(Algorithm::ES256) && !ec.allows(Algorithm::ES384));
        assert!(!ec.allows(Algorithm::HS256));

        let ed = static_key("ed25519-public.pem", None).unwrap_or_else(|e| panic!("{e}"));
        assert!(ed.allows(Algorithm::EdDSA) && !ed.allows(Algorithm::HS256));

        let pinned = static_key("rsa-public.pem", Some("RS256")).unwrap_or_else(|e| panic!("{e}"));
        assert!(pinned.allows(Algorithm::RS256) && !pinned.allows(Algorithm::PS256));
        assert!(static_key("rsa-public.pem", Some("HS256")).is_err());
        assert!(static_key("rsa-public.pem", Some("none")).is_err());
    }

    #[test]
    fn auth_private_keys_and_garbage_are_refused_without_echoing_them() {
        let err = static_key("rsa-private.pem", None).err();
        assert_eq!(
            err,
            Some("a private key was given; configure the public key only")
        );
        let garbage = VerifyingKey::from_pem(&PublicKeyConfig {
            pem: "-----BEGIN PUBLIC KEY-----\nnot base64 at all\n-----END PUBLIC KEY-----\n".into(),
            kid: None,
            alg: None,
        });
        assert_eq!(garbage.err(), Some("not an RSA, EC or Ed25519 public key"));
    }

    #[test]
    fn auth_jwks_entries_are_checked_individually() {
        let x32 = B64URL.encode([7u8; 32]);
        let ed = json!({"kty": "OKP", "crv": "Ed25519", "x": x32, "kid": "e1"});
        let key = VerifyingKey::from_jwk(&ed).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(key.kid.as_deref(), Some("e1"));
        assert!(key.allows(Algorithm::EdDSA));

        let short_ed = json!({"kty": "OKP", "crv": "Ed25519", "x": B64URL.encode([7u8; 16])});
        assert!(VerifyingKey::from_jwk(&short_ed).is_err());

        let enc = json!({"kty": "OKP", "crv": "Ed25519", "x": x32, "use": "enc"});
        assert!(VerifyingKey::from_jwk(&enc).is_err());

        let no_verify = json!({"kty": "OKP", "crv": "Ed25519", "x": x32, "key_ops": ["sign"]});
        assert!(VerifyingKey::from_jwk(&no_verify).is_err());

        let weak_rsa = json!({"kty": "RSA", "n": B64URL.encode([0xffu8; 128]), "e": "AQAB"});
        assert!(VerifyingKey::from_jwk(&weak_rsa).is_err());

        let rsa =
            json!({"kty": "RSA", "n": B64URL.encode([0xffu8; 256]), "e": "AQAB", "alg": "RS256"});
        let key = VerifyingKey::from_jwk(&rsa).unwrap_or_else(|e| panic!("{e}"));
        assert!(key.allows(Algorithm::RS256) && !key.allows(Algorithm::RS512));

        let wrong_pin =
            json!({"kty": "RSA", "n": B64URL.encode([0xffu8; 256]), "e": "AQAB", "alg": "HS256"});
        assert!(VerifyingKey::from_jwk(&wrong_pin).is_err());

        let ec_bad_len =
            json!({"kty": "EC", "crv": "P-256", "x": x32, "y": B64URL.encode([1u8; 31])});
        assert!(VerifyingKey::from_jwk(&ec_bad_len).is_err());

        let oct = json!({"kty": "oct", "k": "c2VjcmV0"});
        assert_eq!(
            VerifyingKey::from_jwk(&oct).err(),
            Some("unsupported key type")
        );
    }

    #[test]
    fn auth_verifying_key_debug_has_no_material() {
        let key = VerifyingKey::hs256(&SecretString::from("0123456789abcdef0123456789abcdef"));
        let dbg = format!("{key:?}");
        assert!(!dbg.contains("0123456789abcdef"), "{dbg}");
    }
}
