//! The token itself: taking it from `Authorization: Bearer`, peeking at its header and issuer
//! before trust, and verifying it against one key with the issuer's registered-claim checks.

use std::str::FromStr;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::HeaderMap;
use http::header::AUTHORIZATION;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::AuthError;
use super::keys::VerifyingKey;

/// Upper bound on a token we are willing to parse; real access tokens are a few KiB.
pub(crate) const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Every algorithm a key could be tied to, so validations can be prepared once per issuer.
pub(crate) const ALL_ALGS: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// The token from the one `Authorization` header, which must use the Bearer scheme (RFC 6750
/// §2.1). Query strings, form bodies and cookies are deliberately never looked at.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Result<&str, AuthError> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let value = values.next().ok_or(AuthError::MissingToken)?;
    if values.next().is_some() {
        return Err(AuthError::Malformed);
    }
    let value = value.to_str().map_err(|_| AuthError::Malformed)?.trim();
    let (scheme, token) = value.split_once(' ').unwrap_or((value, ""));
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(AuthError::UnsupportedScheme);
    }
    let token = token.trim_start_matches(' ');
    if token.is_empty() || token.len() > MAX_TOKEN_BYTES || !token.bytes().all(is_b64token_byte) {
        return Err(AuthError::Malformed);
    }
    Ok(token)
}

/// RFC 6750 `b64token` characters.
fn is_b64token_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~' | b'+' | b'/' | b'=')
}

/// What can be read from a token before its signature is checked. Used only to choose the
/// issuer and key; nothing here is trusted.
#[derive(Debug)]
pub(crate) struct Unverified {
    pub alg: Algorithm,
    pub kid: Option<String>,
    pub iss: String,
}

#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

#[derive(Deserialize)]
struct RawPayload {
    #[serde(default)]
    iss: Option<Value>,
}

pub(crate) fn peek(token: &str) -> Result<Unverified, AuthError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        // Five parts would be a JWE; we only accept signed tokens.
        return Err(AuthError::Malformed);
    };
    let header: RawHeader = decode_part(header)?;
    // `none`, and anything else we do not implement, is refused before any key is looked at.
    let alg = Algorithm::from_str(&header.alg).map_err(|_| AuthError::UnsupportedAlg)?;
    if header.crit.is_some() {
        // RFC 7515 §4.1.11: extensions we do not understand make the token invalid.
        return Err(AuthError::Malformed);
    }
    if signature.is_empty() {
        return Err(AuthError::Malformed);
    }
    let payload: RawPayload = decode_part(payload)?;
    let iss = match payload.iss {
        Some(Value::String(iss)) => iss,
        None | Some(Value::Null) => return Err(AuthError::missing("iss")),
        Some(_) => return Err(AuthError::invalid("iss")),
    };
    Ok(Unverified {
        alg,
        kid: header.kid,
        iss,
    })
}

fn decode_part<T: for<'de> Deserialize<'de>>(part: &str) -> Result<T, AuthError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| AuthError::Malformed)?;
    // JSON is UTF-8 (RFC 8259 §8.1). `from_slice` does not check the strings of fields it
    // skips, so a header or payload that is not JSON at all was read (found by fuzzing).
    let text = std::str::from_utf8(&bytes).map_err(|_| AuthError::Malformed)?;
    serde_json::from_str(text).map_err(|_| AuthError::Malformed)
}

/// The registered-claim checks of one issuer, prepared once per algorithm so a request only
/// looks one up.
pub(crate) struct Validations {
    by_alg: Vec<(Algorithm, Validation)>,
}

impl Validations {
    pub fn new(issuer: &str, audiences: &[String], leeway: u64, require_exp: bool) -> Self {
        let by_alg = ALL_ALGS
            .iter()
            .map(|&alg| {
                let mut v = Validation::new(alg);
                v.leeway = leeway;
                v.validate_exp = true;
                v.validate_nbf = true;
                v.validate_aud = true;
                v.set_issuer(&[issuer]);
                v.set_audience(audiences);
                let mut required = vec!["iss", "aud"];
                if require_exp {
                    required.push("exp");
                }
                v.set_required_spec_claims(&required);
                (alg, v)
            })
            .collect();
        Self { by_alg }
    }

    fn get(&self, alg: Algorithm) -> Option<&Validation> {
        self.by_alg.iter().find(|(a, _)| *a == alg).map(|(_, v)| v)
    }
}

/// Verifies signature and registered claims with one key. The caller has already checked that
/// the key allows `alg`; this re-checks so no path can verify with a key of another type.
pub(crate) fn verify(
    token: &str,
    alg: Algorithm,
    key: &VerifyingKey,
    validations: &Validations,
) -> Result<Map<String, Value>, AuthError> {
    if !key.allows(alg) {
        return Err(AuthError::UnsupportedAlg);
    }
    let validation = validations.get(alg).ok_or(AuthError::UnsupportedAlg)?;
    let data = jsonwebtoken::decode::<Value>(token, &key.key, validation).map_err(map_error)?;
    match data.claims {
        Value::Object(claims) => Ok(claims),
        _ => Err(AuthError::Malformed),
    }
}

/// Maps the library's errors onto ours without carrying their text, which can quote input.
fn map_error(err: jsonwebtoken::errors::Error) -> AuthError {
    match err.kind() {
        ErrorKind::InvalidSignature => AuthError::BadSignature,
        ErrorKind::ExpiredSignature => AuthError::Expired,
        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
        ErrorKind::InvalidAudience => AuthError::WrongAudience,
        ErrorKind::InvalidIssuer => AuthError::UnknownIssuer,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::MissingAlgorithm
        | ErrorKind::UnsupportedAlgorithm
        | ErrorKind::InvalidAlgorithmName => AuthError::UnsupportedAlg,
        ErrorKind::MissingRequiredClaim(claim) => AuthError::missing(claim),
        ErrorKind::InvalidClaimFormat(claim) => AuthError::invalid(claim),
        // A key that cannot be used for the algorithm verifies nothing.
        ErrorKind::InvalidKeyFormat
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::Signing(_)
        | ErrorKind::Provider(_) => AuthError::BadSignature,
        _ => AuthError::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(
                AUTHORIZATION,
                HeaderValue::from_str(v).unwrap_or_else(|e| panic!("{e}")),
            );
        }
        h
    }

    fn b64(json: &str) -> String {
        URL_SAFE_NO_PAD.encode(json)
    }

    #[test]
    fn auth_bearer_token_extraction() {
        assert_eq!(
            bearer_token(&HeaderMap::new()),
            Err(AuthError::MissingToken)
        );
        assert_eq!(bearer_token(&headers(&["Bearer a.b.c"])), Ok("a.b.c"));
        assert_eq!(bearer_token(&headers(&["bearer   a.b.c  "])), Ok("a.b.c"));
        assert_eq!(
            bearer_token(&headers(&["Basic dXNlcjpwYXNz"])),
            Err(AuthError::UnsupportedScheme)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a b"])),
            Err(AuthError::Malformed)
        );
        assert_eq!(
            bearer_token(&headers(&["Bearer a.b.c", "Bearer d.e.f"])),
            Err(AuthError::Malformed)
        );
        let huge = format!("Bearer {}", "a".repeat(MAX_TOKEN_BYTES + 1));
        assert_eq!(bearer_token(&headers(&[&huge])), Err(AuthError::Malformed));
    }

    #[test]
    fn auth_peek_reads_alg_kid_iss_and_refuses_none() {
        let tok = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","kid":"k1"}"#),
            b64(r#"{"iss":"https://idp"}"#)
        );
        let u = peek(&tok).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            (u.alg, u.kid.as_deref(), u.iss.as_str()),
            (Algorithm::RS256, Some("k1"), "https://idp")
        );

        let none = format!("{}.{}.", b64(r#"{"alg":"none"}"#), b64(r#"{"iss":"x"}"#));
        assert_eq!(peek(&none).err(), Some(AuthError::UnsupportedAlg));

        let crit = format!(
            "{}.{}.sig",
            b64(r#"{"alg":"RS256","crit":["exp"]}"#),
            b64(r#"{"iss":"x"}"#)
        );
        assert_eq!(peek(&crit).err(), Some(AuthError::Malformed));

        let no_iss = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(r#"{}"#));
        assert_eq!(peek(&no_iss).err(), Some(AuthError::missing("iss")));
        let num_iss = format!("{}.{}.sig", b64(r#"{"alg":"RS256"}"#), b64(r#"{"iss":1}"#));
        assert_eq!(peek(&num_iss).err(), Some(AuthError::invalid("iss")));

        assert_eq!(peek("a.b").err(), Some(AuthError::Malformed));
        assert_eq!(peek("a.b.c.d.e").err(), Some(AuthError::Malformed));
        assert_eq!(peek("!!.??.sig").err(), Some(AuthError::Malformed));
    }
}
