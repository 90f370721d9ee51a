//! The RFC 9728 protected-resource metadata of the JWT authenticator: which configured issuers
//! a client can discover as authorization servers. (The challenge itself is `authn::challenge`.)

use serde::Serialize;

/// RFC 9728 §2 protected-resource metadata (served at `/.well-known/oauth-protected-resource`).
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
