//! The gateway's OAuth Client ID Metadata Document (draft-ietf-oauth-client-id-metadata-document,
//! the MCP 2025-11-25 authorization spec's preferred client identity). With `gateway.publicUrl`
//! set, `GET /connect/client-metadata.json` describes the gateway as a public client (PKCE S256,
//! no secret) whose `client_id` is that very URL; an authorization server that advertises
//! `client_id_metadata_document_supported` fetches it instead of asking for a registration.
//!
//! The document's URL is built from the configured `publicUrl` only, never from a request's
//! `Host` or any other input: an attacker who could choose it could make the AS trust a document
//! (and redirect URIs) of their own under the gateway's name.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use reflow_oauth::AuthServerMetadata;
use serde_json::{Value, json};

use crate::mcp::{CONNECT_PATH, Gateway};

/// Where the document is served, under `gateway.publicUrl`.
pub const CLIENT_METADATA_PATH: &str = "/connect/client-metadata.json";

/// How long an AS may cache the document (it changes only with `publicUrl`).
const MAX_AGE: &str = "public, max-age=3600";

/// The name the AS shows on its consent page.
const CLIENT_NAME: &str = "Reflow gateway";

/// The client identity the connect flow presents at an AS, in the order of preference.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ClientSource {
    /// The Target's `oauth2.client` (pre-registered; its secret from a Secret).
    Configured,
    /// This gateway's metadata document URL as a public client's `client_id`.
    MetadataDocument(String),
    /// RFC 7591 dynamic registration at the AS's `registration_endpoint`.
    Register,
    /// None of these: the flow cannot start; the text says what to configure.
    Unavailable(&'static str),
}

/// A pre-registered client wins; else the metadata document where the AS accepts one and the
/// gateway has a usable `publicUrl`; else dynamic registration where offered; else nothing.
pub(crate) fn client_source(
    configured: bool,
    meta: &AuthServerMetadata,
    public_url: Option<&str>,
) -> ClientSource {
    if configured {
        return ClientSource::Configured;
    }
    let document = document_url(public_url);
    if meta.client_id_metadata_document_supported
        && let Some(url) = document
    {
        return ClientSource::MetadataDocument(url);
    }
    if meta.registration_endpoint.is_some() {
        return ClientSource::Register;
    }
    ClientSource::Unavailable(if meta.client_id_metadata_document_supported {
        "dynamic client registration, and its client ID metadata document needs gateway.publicUrl (https) (or configure oauth2.client)"
    } else {
        "client ID metadata documents or dynamic client registration (configure oauth2.client)"
    })
}

/// `<publicUrl>/connect/client-metadata.json` when `publicUrl` is an https URL (plain http only
/// to a loopback host, for tests) without credentials, query or fragment, in canonical form.
pub(crate) fn document_url(public_url: Option<&str>) -> Option<String> {
    let base = public_url?.trim_end_matches('/');
    let url = format!("{base}{CLIENT_METADATA_PATH}");
    let parsed = reflow_oauth::http::endpoint(&url).ok()?;
    (parsed.query().is_none() && parsed.as_str() == url).then_some(url)
}

/// The document itself: no secret, nothing but what an AS needs to trust the redirect.
pub(crate) fn client_metadata(public_url: Option<&str>) -> Option<Value> {
    let client_id = document_url(public_url)?;
    let base = public_url?.trim_end_matches('/');
    Some(json!({
        "client_id": client_id,
        "client_name": CLIENT_NAME,
        "client_uri": base,
        "redirect_uris": [format!("{base}{CONNECT_PATH}/callback")],
        "grant_types": ["authorization_code", "refresh_token"],
        "response_types": ["code"],
        "token_endpoint_auth_method": "none",
    }))
}

/// `GET /connect/client-metadata.json`: the document, or 404 without a usable `publicUrl`.
pub(super) async fn document(State(gw): State<Arc<Gateway>>) -> Response {
    let Some(doc) = client_metadata(gw.config.public_url.as_deref()) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let mut resp = axum::Json(doc).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(MAX_AGE));
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(cimd: bool, registration: bool) -> AuthServerMetadata {
        serde_json::from_value(json!({
            "issuer": "https://as.example",
            "authorization_endpoint": "https://as.example/auth",
            "token_endpoint": "https://as.example/token",
            "code_challenge_methods_supported": ["S256"],
            "client_id_metadata_document_supported": cimd,
            "registration_endpoint": registration.then_some("https://as.example/reg"),
        }))
        .unwrap()
    }

    const GW: Option<&str> = Some("https://gw.example.com/");
    const DOC: &str = "https://gw.example.com/connect/client-metadata.json";

    #[test]
    fn the_path_is_under_the_connect_pages() {
        assert!(CLIENT_METADATA_PATH.starts_with(&format!("{CONNECT_PATH}/")));
    }

    #[test]
    fn a_pre_registered_client_wins_over_everything_the_as_offers() {
        assert_eq!(
            client_source(true, &meta(true, true), GW),
            ClientSource::Configured
        );
        assert_eq!(
            client_source(true, &meta(false, false), None),
            ClientSource::Configured
        );
    }

    #[test]
    fn the_metadata_document_comes_before_registration_when_the_as_supports_it() {
        assert_eq!(
            client_source(false, &meta(true, true), GW),
            ClientSource::MetadataDocument(DOC.into())
        );
        assert_eq!(
            client_source(false, &meta(true, false), GW),
            ClientSource::MetadataDocument(DOC.into())
        );
    }

    #[test]
    fn without_the_flag_or_a_public_url_registration_is_next_then_an_error() {
        assert_eq!(
            client_source(false, &meta(false, true), GW),
            ClientSource::Register
        );
        assert_eq!(
            client_source(false, &meta(true, true), None),
            ClientSource::Register
        );
        assert!(matches!(
            client_source(false, &meta(false, false), GW),
            ClientSource::Unavailable(why) if why.contains("oauth2.client")
        ));
        assert!(matches!(
            client_source(false, &meta(true, false), None),
            ClientSource::Unavailable(why) if why.contains("publicUrl")
        ));
    }

    #[test]
    fn the_flag_defaults_to_false_when_the_as_does_not_mention_it() {
        let m: AuthServerMetadata = serde_json::from_value(json!({
            "issuer": "https://as.example",
            "authorization_endpoint": "https://as.example/auth",
            "token_endpoint": "https://as.example/token",
        }))
        .unwrap();
        assert!(!m.client_id_metadata_document_supported);
        assert_eq!(
            client_source(false, &m, GW),
            ClientSource::Unavailable(
                "client ID metadata documents or dynamic client registration (configure oauth2.client)"
            )
        );
    }

    #[test]
    fn only_a_canonical_https_or_loopback_public_url_gives_a_document() {
        assert_eq!(document_url(GW).as_deref(), Some(DOC));
        assert_eq!(
            document_url(Some("http://127.0.0.1:8080")).as_deref(),
            Some("http://127.0.0.1:8080/connect/client-metadata.json")
        );
        for bad in [
            "http://gw.example.com",
            "ftp://gw.example.com",
            "https://user:pw@gw.example.com",
            "https://gw.example.com/?x=1",
            "https://gw.example.com/#f",
            "https://gw.example.com/a/../b",
            "not a url",
        ] {
            assert_eq!(document_url(Some(bad)), None, "{bad}");
            assert_eq!(client_metadata(Some(bad)), None, "{bad}");
        }
        assert_eq!(document_url(None), None);
    }

    #[test]
    fn the_document_names_itself_and_the_callback_and_holds_no_secret() {
        let doc = client_metadata(Some("https://gw.example.com/base")).unwrap();
        assert_eq!(
            doc["client_id"],
            "https://gw.example.com/base/connect/client-metadata.json"
        );
        assert_eq!(
            doc["redirect_uris"],
            json!(["https://gw.example.com/base/connect/callback"])
        );
        assert_eq!(doc["token_endpoint_auth_method"], "none");
        assert_eq!(doc["response_types"], json!(["code"]));
        assert_eq!(
            doc["grant_types"],
            json!(["authorization_code", "refresh_token"])
        );
        assert_eq!(doc["client_name"], CLIENT_NAME);
        let text = doc.to_string();
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("jwks"), "{text}");
    }
}
