//! RFC 7591 dynamic client registration: the gateway registers itself where the authorization
//! server offers a `registration_endpoint` and no client was configured.

use reqwest::Url;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use crate::Result;
use crate::http::{OAuthHttp, endpoint, parse_json};
use crate::token::{ClientAuth, endpoint_error};

/// RFC 7591 §2 client metadata the gateway sends.
#[derive(Clone, Debug, Serialize)]
pub struct RegistrationRequest {
    pub redirect_uris: Vec<String>,
    pub client_name: String,
    pub grant_types: Vec<String>,
    pub response_types: Vec<String>,
    /// `none` (public client, PKCE) or `client_secret_basic`.
    pub token_endpoint_auth_method: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scope: Option<String>,
}

impl RegistrationRequest {
    /// A confidential web client for the code and refresh grants at `redirect_uri`.
    pub fn web_client(redirect_uri: &str, client_name: &str, scopes: &[String]) -> Self {
        Self {
            redirect_uris: vec![redirect_uri.to_owned()],
            client_name: client_name.to_owned(),
            grant_types: vec!["authorization_code".into(), "refresh_token".into()],
            response_types: vec!["code".into()],
            token_endpoint_auth_method: "client_secret_basic".into(),
            scope: (!scopes.is_empty()).then(|| scopes.join(" ")),
        }
    }
}

/// RFC 7591 §3.2.1 (the fields the gateway keeps). The secret is redacted in `Debug`.
#[derive(Clone, Debug, Deserialize)]
pub struct RegisteredClient {
    pub client_id: String,
    #[serde(default)]
    pub client_secret: Option<SecretString>,
    #[serde(default)]
    pub token_endpoint_auth_method: Option<String>,
}

impl RegisteredClient {
    /// How this client authenticates at the token endpoint.
    pub fn auth(&self) -> ClientAuth {
        let methods: Vec<String> = self.token_endpoint_auth_method.iter().cloned().collect();
        ClientAuth::choose(&self.client_id, self.client_secret.clone(), &methods)
    }
}

/// Registers `req` at `registration_endpoint` (201, or 200 from lenient servers).
pub async fn register(
    http: &OAuthHttp,
    registration_endpoint: &str,
    req: &RegistrationRequest,
) -> Result<RegisteredClient> {
    let url: Url = endpoint(registration_endpoint)?;
    let body = serde_json::to_value(req).unwrap_or_default();
    let answer = http.post_json(&url, &body).await?;
    if answer.status != 201 && answer.status != 200 {
        return Err(endpoint_error(&url, answer.status, &answer.body));
    }
    parse_json(&url, &answer.body)
}
