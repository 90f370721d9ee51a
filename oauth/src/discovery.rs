//! Finding an upstream's authorization server: RFC 9728 protected-resource metadata (its URL
//! from a 401's `WWW-Authenticate: Bearer resource_metadata="…"`, else the well-known URL), then
//! RFC 8414 authorization-server metadata (or OpenID Connect discovery). Metadata naming another
//! resource (RFC 9728 §3.3) or another issuer (RFC 8414 §3.3) is refused.

use reqwest::Url;
use serde::Deserialize;

use crate::http::{OAuthHttp, endpoint};
use crate::{OAuthError, Result};

/// RFC 9728 §2 (the fields the gateway uses).
#[derive(Clone, Debug, Deserialize)]
pub struct ProtectedResourceMetadata {
    pub resource: String,
    #[serde(default)]
    pub authorization_servers: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
}

/// RFC 8414 §2 (the fields the gateway uses).
#[derive(Clone, Debug, Deserialize)]
pub struct AuthServerMetadata {
    pub issuer: String,
    pub authorization_endpoint: String,
    pub token_endpoint: String,
    #[serde(default)]
    pub revocation_endpoint: Option<String>,
    #[serde(default)]
    pub registration_endpoint: Option<String>,
    #[serde(default)]
    pub introspection_endpoint: Option<String>,
    #[serde(default)]
    pub code_challenge_methods_supported: Vec<String>,
    #[serde(default)]
    pub token_endpoint_auth_methods_supported: Vec<String>,
    #[serde(default)]
    pub scopes_supported: Vec<String>,
    #[serde(default)]
    pub grant_types_supported: Vec<String>,
    /// Whether the AS accepts an `https` URL as `client_id` and fetches the client's metadata
    /// from it (OAuth Client ID Metadata Document; MCP 2025-11-25 authorization).
    #[serde(default)]
    pub client_id_metadata_document_supported: bool,
}

impl AuthServerMetadata {
    /// Whether the AS lists S256 (absent list: no PKCE, and the flow must not proceed).
    pub fn supports_s256(&self) -> bool {
        self.code_challenge_methods_supported
            .iter()
            .any(|m| m == "S256")
    }
}

/// What discovery found for one resource.
#[derive(Clone, Debug)]
pub struct Discovered {
    /// Absent when the issuer was configured rather than discovered.
    pub resource: Option<ProtectedResourceMetadata>,
    pub server: AuthServerMetadata,
}

/// The `resource_metadata` parameter of a `WWW-Authenticate` header (RFC 9728 §5.1), if any.
pub fn resource_metadata_param(www_authenticate: &str) -> Option<String> {
    let lower = www_authenticate.to_ascii_lowercase();
    let mut from = 0;
    while let Some(i) = lower[from..].find("resource_metadata") {
        let start = from + i;
        from = start + "resource_metadata".len();
        // Must be a whole parameter name: preceded by start, space or comma.
        let before = lower[..start].chars().next_back();
        if before.is_some_and(|c| !(c == ' ' || c == ',' || c == '\t')) {
            continue;
        }
        let rest = www_authenticate[from..].trim_start();
        let Some(rest) = rest.strip_prefix('=') else {
            continue;
        };
        let rest = rest.trim_start();
        return if let Some(q) = rest.strip_prefix('"') {
            q.split('"').next().map(str::to_owned)
        } else {
            rest.split([',', ' ']).next().map(str::to_owned)
        };
    }
    None
}

/// `https://host/.well-known/<suffix><path>` (RFC 8414 §3.1 / RFC 9728 §3.1: the well-known
/// part goes between the host and the path; query and fragment dropped).
pub fn well_known(base: &Url, suffix: &str) -> Url {
    let mut url = base.clone();
    let path = base.path().trim_end_matches('/').to_owned();
    url.set_path(&format!("/.well-known/{suffix}{path}"));
    url.set_query(None);
    url.set_fragment(None);
    url
}

fn same_url(a: &str, b: &str) -> bool {
    match (Url::parse(a), Url::parse(b)) {
        (Ok(a), Ok(b)) => a == b,
        _ => a == b,
    }
}

/// RFC 9728 metadata for `resource`, from `metadata_url` (a 401 named it) or the well-known URL;
/// refused unless its `resource` is `resource`.
pub async fn protected_resource(
    http: &OAuthHttp,
    resource: &str,
    metadata_url: Option<&str>,
) -> Result<ProtectedResourceMetadata> {
    let resource_url = endpoint(resource)?;
    let url = match metadata_url {
        Some(m) => endpoint(m)?,
        None => well_known(&resource_url, "oauth-protected-resource"),
    };
    let meta: ProtectedResourceMetadata = http.get_json(&url).await?;
    if !same_url(&meta.resource, resource) {
        return Err(OAuthError::ResourceMismatch {
            expected: resource.to_owned(),
            got: meta.resource.chars().take(200).collect(),
        });
    }
    if meta.authorization_servers.is_empty() {
        return Err(OAuthError::Metadata(
            "the protected-resource metadata names no authorization server".to_owned(),
        ));
    }
    Ok(meta)
}

/// RFC 8414 metadata of `issuer` (then OpenID discovery); refused unless it names `issuer` and
/// its endpoints are https (or loopback http).
pub async fn authorization_server(http: &OAuthHttp, issuer: &str) -> Result<AuthServerMetadata> {
    let base = endpoint(issuer)?;
    if base.query().is_some() {
        return Err(OAuthError::Metadata("an issuer has no query".to_owned()));
    }
    let mut oidc = base.clone();
    oidc.set_path(&format!(
        "{}/.well-known/openid-configuration",
        base.path().trim_end_matches('/')
    ));
    let candidates = [
        well_known(&base, "oauth-authorization-server"),
        oidc,
        well_known(&base, "openid-configuration"),
    ];
    let mut last = None;
    for url in candidates {
        match http.get_json::<AuthServerMetadata>(&url).await {
            Ok(meta) => return check_server(meta, issuer),
            Err(e @ OAuthError::Status { .. }) => last = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or(OAuthError::Metadata("no metadata".to_owned())))
}

fn check_server(meta: AuthServerMetadata, issuer: &str) -> Result<AuthServerMetadata> {
    if !same_url(&meta.issuer, issuer) {
        return Err(OAuthError::IssuerMismatch {
            expected: issuer.to_owned(),
            got: meta.issuer.chars().take(200).collect(),
        });
    }
    endpoint(&meta.authorization_endpoint)?;
    endpoint(&meta.token_endpoint)?;
    for e in [
        &meta.revocation_endpoint,
        &meta.registration_endpoint,
        &meta.introspection_endpoint,
    ]
    .into_iter()
    .flatten()
    {
        endpoint(e)?;
    }
    Ok(meta)
}

/// The whole discovery for an upstream `upstream_url` whose tokens are for `resource`:
/// a configured `issuer` is used as is; otherwise the upstream is probed for its 401's
/// `resource_metadata`, falling back to the well-known URL, and the first authorization server
/// it names is read.
pub async fn discover(
    http: &OAuthHttp,
    upstream_url: &str,
    resource: &str,
    issuer: Option<&str>,
) -> Result<Discovered> {
    if let Some(issuer) = issuer {
        return Ok(Discovered {
            resource: None,
            server: authorization_server(http, issuer).await?,
        });
    }
    let upstream = endpoint(upstream_url)?;
    let challenge = http.probe_www_authenticate(&upstream).await?;
    let metadata_url = challenge.as_deref().and_then(resource_metadata_param);
    let prm = protected_resource(http, resource, metadata_url.as_deref()).await?;
    let server = authorization_server(http, &prm.authorization_servers[0]).await?;
    Ok(Discovered {
        resource: Some(prm),
        server,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_resource_metadata_parameter_is_found_quoted_or_not() {
        assert_eq!(
            resource_metadata_param(
                r#"Bearer error="invalid_token", resource_metadata="https://r.example/.well-known/oauth-protected-resource/mcp""#
            )
            .as_deref(),
            Some("https://r.example/.well-known/oauth-protected-resource/mcp")
        );
        assert_eq!(
            resource_metadata_param("Bearer Resource_Metadata=https://r/x, scope=a").as_deref(),
            Some("https://r/x")
        );
        assert_eq!(resource_metadata_param("Bearer realm=\"x\""), None);
        assert_eq!(
            resource_metadata_param("Bearer xresource_metadata=\"https://e\""),
            None
        );
    }

    #[test]
    fn well_known_urls_go_between_host_and_path() {
        let u = Url::parse("https://as.example/tenant/?q=1").unwrap();
        assert_eq!(
            well_known(&u, "oauth-authorization-server").as_str(),
            "https://as.example/.well-known/oauth-authorization-server/tenant"
        );
        let u = Url::parse("http://127.0.0.1:9/").unwrap();
        assert_eq!(
            well_known(&u, "oauth-protected-resource").as_str(),
            "http://127.0.0.1:9/.well-known/oauth-protected-resource"
        );
    }

    #[test]
    fn an_issuer_mismatch_or_a_plain_http_endpoint_is_refused() {
        let meta = |issuer: &str, token: &str| AuthServerMetadata {
            issuer: issuer.into(),
            authorization_endpoint: "https://as.example/auth".into(),
            token_endpoint: token.into(),
            revocation_endpoint: None,
            registration_endpoint: None,
            introspection_endpoint: None,
            code_challenge_methods_supported: vec!["S256".into()],
            token_endpoint_auth_methods_supported: vec![],
            scopes_supported: vec![],
            grant_types_supported: vec![],
            client_id_metadata_document_supported: false,
        };
        assert!(
            check_server(
                meta("https://as.example", "https://as.example/t"),
                "https://as.example/"
            )
            .is_ok()
        );
        assert!(matches!(
            check_server(
                meta("https://evil.example", "https://as.example/t"),
                "https://as.example"
            ),
            Err(OAuthError::IssuerMismatch { .. })
        ));
        assert!(matches!(
            check_server(
                meta("https://as.example", "http://as.example/t"),
                "https://as.example"
            ),
            Err(OAuthError::Url { .. })
        ));
    }
}
