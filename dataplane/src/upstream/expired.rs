//! Whether an upstream's refusal means it forgot the session: a 404 (what the specification
//! asks), or a 400 whose JSON-RPC error names the session (what many servers answer instead).

use http::StatusCode;
use serde_json::Value;

/// How much of a 400's body is read to find out (a refusal is short; the rest is not read).
const MAX_REFUSAL_BYTES: usize = 4096;

/// Whether `resp`, the answer to a request that carried a session id, says the session is gone.
/// Servers built from the TypeScript SDK's examples (server-everything among them) answer an
/// unknown session id with `400 {"error": {"message": "Bad Request: No valid session ID
/// provided"}}`; any other 400 stays an error (it is not retried in a new session).
pub(super) async fn session_forgotten(mut resp: super::h1::Reply) -> bool {
    match resp.status() {
        StatusCode::NOT_FOUND => true,
        StatusCode::BAD_REQUEST => {
            let mut body = Vec::new();
            while let Ok(Some(chunk)) = resp.chunk().await {
                body.extend_from_slice(&chunk);
                if body.len() > MAX_REFUSAL_BYTES {
                    return false;
                }
            }
            names_the_session(&body)
        }
        _ => false,
    }
}

/// A JSON-RPC error whose message is about the session id (`"… session …"`, any case).
fn names_the_session(body: &[u8]) -> bool {
    let Ok(reply) = serde_json::from_slice::<Value>(body) else {
        return false;
    };
    reply
        .pointer("/error/message")
        .and_then(Value::as_str)
        .is_some_and(|m| m.to_ascii_lowercase().contains("session"))
}

#[cfg(test)]
mod tests {
    use super::names_the_session;

    #[test]
    fn only_an_error_about_the_session_means_it_is_gone() {
        let said = |body: &str| names_the_session(body.as_bytes());
        assert!(said(
            r#"{"jsonrpc":"2.0","error":{"code":-32000,"message":"Bad Request: No valid session ID provided"},"id":1}"#
        ));
        assert!(said(
            r#"{"error":{"message":"Invalid or expired SESSION"}}"#
        ));
        assert!(!said(
            r#"{"jsonrpc":"2.0","error":{"code":-32602,"message":"Invalid params"},"id":1}"#
        ));
        assert!(!said(r#"{"result":{"session":"x"}}"#));
        assert!(!said(r#"{"error":{"message":7}}"#));
        assert!(!said("session"));
        assert!(!said(""));
    }
}
