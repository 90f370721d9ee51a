//! The bodies of the `fuzz/` targets that belong to the dataplane: the JSON-RPC envelope parser,
//! the `text/event-stream` parser, and JWT header/claims parsing. Plain functions, so cargo-fuzz
//! (nightly) and the stable corpus test (`e2e/tests/fuzz_corpus.rs`) run the same checks.
//!
//! Each checks properties, not only the absence of panics; a broken property panics.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::jsonrpc::{self, Message};

/// The HS256 secret, issuer and audience of the JWT target (corpus tokens are signed with it).
pub const JWT_SECRET: &str = "reflow-fuzz-hs256-secret-0123456789abcdef";
pub const JWT_ISSUER: &str = "reflow-fuzz";
pub const JWT_AUDIENCE: &str = "reflow";

/// One body: a message that parses serializes back to one that parses equal, with the
/// classification's invariants; a refusal answers a well-formed JSON-RPC error.
pub fn jsonrpc(data: &[u8]) {
    let message = match jsonrpc::parse(data) {
        Ok(m) => m,
        Err(e) => {
            let reply = e.to_response();
            let code = reply.pointer("/error/code").and_then(Value::as_i64);
            assert!(
                matches!(code, Some(jsonrpc::PARSE_ERROR | jsonrpc::INVALID_REQUEST)),
                "{reply}"
            );
            assert_eq!(reply["jsonrpc"], "2.0");
            assert!(reply["id"].is_null());
            return;
        }
    };
    let object = match &message {
        Message::Request(r) => {
            assert!(
                r.id.is_string() || r.id.is_i64() || r.id.is_u64(),
                "{:?}",
                r.id
            );
            assert_eq!(
                r.object.get("method"),
                Some(&Value::String(r.method.clone()))
            );
            assert_eq!(r.object.get("id"), Some(&r.id));
            &r.object
        }
        Message::Notification { method, object } => {
            assert!(!object.contains_key("id"));
            assert_eq!(object.get("method"), Some(&Value::String(method.clone())));
            object
        }
        Message::Response(object) => {
            assert!(object.contains_key("result") || object.contains_key("error"));
            object
        }
    };
    assert_eq!(object.get("jsonrpc"), Some(&Value::String("2.0".into())));
    let bytes = serde_json::to_vec(object).expect("a parsed object serializes");
    let again = jsonrpc::parse(&bytes).expect("what was accepted is accepted again");
    assert_eq!(again, message, "parse -> serialize -> parse");
}

/// One response body of `text/event-stream`: parsed whole, and cut into chunks at positions the
/// input itself chooses, the events, last id and retry are the same; no complete event is left
/// buffered; events written back out parse to the same events.
pub fn sse(data: &[u8]) {
    use crate::upstream::events::EventParser;

    let mut whole = EventParser::default();
    let events = whole.feed(data);
    let mut chunked = EventParser::default();
    let mut from_chunks = Vec::new();
    let mut rest = data;
    let mut step = data.first().map_or(1, |b| usize::from(*b % 7) + 1);
    while !rest.is_empty() {
        let (chunk, tail) = rest.split_at(step.min(rest.len()));
        from_chunks.extend(chunked.feed(chunk));
        rest = tail;
        step = step * 5 % 11 + 1;
    }
    assert_eq!(from_chunks, events, "chunk boundaries change nothing");
    assert_eq!(chunked.last_id(), whole.last_id());
    assert_eq!(chunked.retry_ms(), whole.retry_ms());
    assert!(whole.buffered() <= data.len());
    for e in &events {
        assert!(!e.name.is_empty());
        assert!(e.data.split('\n').any(|l| !l.trim().is_empty()));
    }
    // Written back out (data without CR: a lone CR ends a line for `str::lines`).
    let plain: Vec<_> = events
        .iter()
        .filter(|e| !e.data.contains('\r') && !e.name.contains('\r'))
        .cloned()
        .collect();
    let mut text = String::new();
    for e in &plain {
        text.push_str(&format!("event: {}\n", e.name));
        for line in e.data.split('\n') {
            text.push_str(&format!("data: {line}\n"));
        }
        text.push('\n');
    }
    let mut back = EventParser::default();
    assert_eq!(
        back.feed(text.as_bytes()),
        plain,
        "events written back parse the same"
    );
    assert_eq!(back.buffered(), 0);
}

/// One token (as the `Authorization: Bearer` value): what the header check lets through is a
/// bounded b64token; what `peek` reads agrees with an independent decode; a token that verifies
/// carries a correct HMAC over its first two parts; the claims map to an identity whose user is
/// the `sub` claim.
pub fn jwt(data: &[u8]) {
    use crate::auth::jwt;

    let text = String::from_utf8_lossy(data);
    let mut headers = http::HeaderMap::new();
    if let Ok(v) = http::HeaderValue::from_str(&format!("Bearer {text}")) {
        headers.insert(http::header::AUTHORIZATION, v);
    }
    let Ok(token) = jwt::bearer_token(&headers) else {
        claims(&text);
        return;
    };
    assert!(!token.is_empty() && token.len() <= jwt::MAX_TOKEN_BYTES);
    let parts: Vec<&str> = token.split('.').collect();
    if let Some(payload) = parts.get(1) {
        claims(&String::from_utf8_lossy(
            &URL_SAFE_NO_PAD.decode(payload).unwrap_or_default(),
        ));
    }
    let Ok(seen) = jwt::peek(token) else {
        return;
    };
    assert_eq!(parts.len(), 3, "only signed tokens (three parts) are read");
    assert!(!parts[2].is_empty());
    let header = decode_object(parts[0]).expect("peek read an object header");
    assert!(!header.contains_key("crit"));
    assert_eq!(
        header.get("alg").and_then(Value::as_str),
        Some(format!("{:?}", seen.alg).as_str())
    );
    assert_eq!(
        header.get("kid").and_then(Value::as_str),
        seen.kid.as_deref()
    );
    let payload = decode_object(parts[1]).expect("peek read an object payload");
    assert_eq!(
        payload.get("iss").and_then(Value::as_str),
        Some(seen.iss.as_str())
    );
    let key = crate::auth::keys::VerifyingKey::hs256(&JWT_SECRET.to_owned().into());
    let validations = jwt::Validations::new(JWT_ISSUER, &[JWT_AUDIENCE.to_owned()], 0, false);
    if let Ok(verified) = jwt::verify(token, seen.alg, &key, &validations) {
        assert_eq!(seen.alg, jsonwebtoken::Algorithm::HS256);
        let signed = format!("{}.{}", parts[0], parts[1]);
        let mac = hmac_sha256(JWT_SECRET.as_bytes(), signed.as_bytes());
        assert_eq!(
            URL_SAFE_NO_PAD.decode(parts[2]).ok(),
            Some(mac),
            "a verified token is signed"
        );
        assert_eq!(Value::Object(verified), Value::Object(payload));
    }
}

/// Claims (a JSON object as text) to an identity with the default mapping.
fn claims(text: &str) {
    let Ok(Value::Object(claims)) = serde_json::from_str::<Value>(text) else {
        return;
    };
    let mapping = crate::auth::ClaimMapping::default();
    let Ok(identity) = crate::auth::claims::identity(&claims, &mapping) else {
        return;
    };
    assert_eq!(
        claims.get("sub").and_then(Value::as_str),
        Some(&*identity.user)
    );
    assert!(!identity.user.is_empty());
    let listed = |field: &str| match claims.get(field) {
        Some(Value::String(s)) if !s.is_empty() => 1,
        Some(Value::Array(a)) => a.len(),
        _ => 0,
    };
    assert!(identity.groups.len() <= listed("groups"));
    assert!(identity.roles.len() <= listed("roles"));
}

fn decode_object(part: &str) -> Option<Map<String, Value>> {
    match serde_json::from_slice(&URL_SAFE_NO_PAD.decode(part).ok()?).ok()? {
        Value::Object(o) => Some(o),
        _ => None,
    }
}

/// RFC 2104 over SHA-256, written out so the check does not reuse the verifier's code.
pub fn hmac_sha256(key: &[u8], message: &[u8]) -> Vec<u8> {
    let mut block = [0u8; 64];
    if key.len() > 64 {
        block[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block.iter().map(|b| b ^ byte).collect::<Vec<u8>>();
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .to_vec()
}

/// A token signed with [`JWT_SECRET`] over `claims` (corpus seeds and tests).
pub fn signed_token(claims: &Value) -> String {
    let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"HS256","typ":"JWT"}"#);
    let payload = URL_SAFE_NO_PAD.encode(claims.to_string());
    let signed = format!("{header}.{payload}");
    let mac = hmac_sha256(JWT_SECRET.as_bytes(), signed.as_bytes());
    format!("{signed}.{}", URL_SAFE_NO_PAD.encode(mac))
}
