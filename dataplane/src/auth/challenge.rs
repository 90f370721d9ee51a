//! What a 401 tells the client: the `WWW-Authenticate` challenge (RFC 6750 §3, RFC 9728 §5.1)
//! and the RFC 9728 protected-resource metadata document that points at the issuers.

use http::{HeaderValue, StatusCode};
use serde::Serialize;

use super::error::AuthError;

/// RFC 9728 §2 protected-resource metadata, served at [`resource_metadata_url`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    pub authorization_servers: Vec<String>,
    pub bearer_methods_supported: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
}

/// Builds the metadata for `resource` (the gateway's public MCP URL). Only issuers that are
/// http(s) URLs are advertised: a bare dev issuer such as `reflow-dev` is no authorization
/// server a client could discover.
pub fn protected_resource_metadata(
    resource: &str,
    issuers: &[String],
    scopes_supported: &[String],
) -> ProtectedResourceMetadata {
    ProtectedResourceMetadata {
        resource: resource.to_string(),
        authorization_servers: issuers
            .iter()
            .filter(|iss| {
                reqwest::Url::parse(iss).is_ok_and(|u| matches!(u.scheme(), "https" | "http"))
            })
            .cloned()
            .collect(),
        bearer_methods_supported: vec!["header".to_string()],
        scopes_supported: scopes_supported.to_vec(),
    }
}

/// RFC 9728 §3.1: `https://gw.example.com/mcp` →
/// `https://gw.example.com/.well-known/oauth-protected-resource/mcp`. `None` if `resource` is
/// not an absolute http(s) URL.
pub fn resource_metadata_url(resource: &str) -> Option<String> {
    let url = reqwest::Url::parse(resource).ok()?;
    if !matches!(url.scheme(), "https" | "http") || url.host_str().is_none() {
        return None;
    }
    let mut origin = url.origin().ascii_serialization();
    origin.push_str("/.well-known/oauth-protected-resource");
    let path = url.path().trim_end_matches('/');
    origin.push_str(path);
    if let Some(query) = url.query() {
        origin.push('?');
        origin.push_str(query);
    }
    Some(origin)
}

/// The `WWW-Authenticate` value for a 401. Without an error (or for a request that carried no
/// bearer token) it is just the challenge with `resource_metadata`; for a rejected token it adds
/// `error="invalid_token"` and the error's safe description. Never fails: characters that
/// cannot appear in a quoted-string are escaped or replaced.
pub fn www_authenticate(resource_metadata_url: &str, error: Option<&AuthError>) -> HeaderValue {
    let mut value = format!(
        "Bearer resource_metadata=\"{}\"",
        quote(resource_metadata_url)
    );
    if let Some(err) = error.filter(|e| e.token_presented()) {
        value.push_str(", error=\"invalid_token\", error_description=\"");
        value.push_str(&quote(&err.to_string()));
        value.push('"');
    }
    HeaderValue::from_str(&value).unwrap_or_else(|_| HeaderValue::from_static("Bearer"))
}

/// The status a refusal should be answered with: 401 for the caller's token, 503 when the
/// issuer's keys cannot be fetched (the client should retry, not re-authenticate).
pub fn status_for(error: &AuthError) -> StatusCode {
    match error {
        AuthError::JwksUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::UNAUTHORIZED,
    }
}

/// Escapes for an RFC 9110 quoted-string and keeps to visible ASCII so the header is valid.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const PRM: &str = "https://gw.example.com/.well-known/oauth-protected-resource/mcp";

    fn text(v: &HeaderValue) -> &str {
        v.to_str().unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn auth_challenge_without_token_has_no_error() {
        let v = www_authenticate(PRM, Some(&AuthError::MissingToken));
        assert_eq!(text(&v), format!("Bearer resource_metadata=\"{PRM}\""));
        let v = www_authenticate(PRM, None);
        assert_eq!(text(&v), format!("Bearer resource_metadata=\"{PRM}\""));
        let v = www_authenticate(PRM, Some(&AuthError::UnsupportedScheme));
        assert!(!text(&v).contains("error="));
    }

    #[test]
    fn auth_challenge_for_rejected_token_says_invalid_token() {
        let v = www_authenticate(PRM, Some(&AuthError::Expired));
        assert_eq!(
            text(&v),
            format!(
                "Bearer resource_metadata=\"{PRM}\", error=\"invalid_token\", \
                 error_description=\"the token has expired\""
            )
        );
    }

    #[test]
    fn auth_challenge_escapes_quotes_and_control_characters() {
        let v = www_authenticate("https://x/\"a\\b\n", Some(&AuthError::Malformed));
        assert!(text(&v).starts_with(r#"Bearer resource_metadata="https://x/\"a\\b?""#));
    }

    #[test]
    fn auth_metadata_url_inserts_well_known() {
        assert_eq!(
            resource_metadata_url("https://gw.example.com/mcp").as_deref(),
            Some(PRM)
        );
        assert_eq!(
            resource_metadata_url("https://gw.example.com/").as_deref(),
            Some("https://gw.example.com/.well-known/oauth-protected-resource")
        );
        assert_eq!(
            resource_metadata_url("http://127.0.0.1:8080/a/b/").as_deref(),
            Some("http://127.0.0.1:8080/.well-known/oauth-protected-resource/a/b")
        );
        assert_eq!(resource_metadata_url("not a url"), None);
    }

    #[test]
    fn auth_protected_resource_metadata_json() {
        let issuers = vec![
            "https://idp.example.com/realms/dev".to_string(),
            "reflow-dev".to_string(),
        ];
        let m =
            protected_resource_metadata("https://gw.example.com/mcp", &issuers, &["mcp".into()]);
        let json = serde_json::to_value(&m).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            json,
            serde_json::json!({
                "resource": "https://gw.example.com/mcp",
                "authorization_servers": ["https://idp.example.com/realms/dev"],
                "bearer_methods_supported": ["header"],
                "scopes_supported": ["mcp"],
            })
        );
        let m = protected_resource_metadata("https://gw/mcp", &issuers, &[]);
        let json = serde_json::to_value(&m).unwrap_or_else(|e| panic!("{e}"));
        assert!(json.get("scopes_supported").is_none());
    }

    #[test]
    fn auth_status_for_errors() {
        assert_eq!(status_for(&AuthError::Expired), StatusCode::UNAUTHORIZED);
        assert_eq!(
            status_for(&AuthError::JwksUnavailable),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
