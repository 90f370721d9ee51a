//! The token endpoint (RFC 6749 §3.2), generic over the grant: authorization code + PKCE,
//! refresh, and any other grant (RFC 8693 exchange, client credentials) through
//! [`TokenClient::request`]; plus RFC 7009 revocation with the same client authentication.

use std::time::{Duration, SystemTime};

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use reqwest::Url;
use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::http::{OAuthHttp, endpoint, form_encode, parse_json};
use crate::{OAuthError, Result};

/// How the client authenticates at the token and revocation endpoints (RFC 6749 §2.3).
#[derive(Clone, Debug)]
pub enum ClientAuth {
    /// A public client: `client_id` in the form, PKCE is its proof.
    None { client_id: String },
    /// `client_secret_basic`: HTTP Basic with the form-encoded id and secret.
    Basic {
        client_id: String,
        secret: SecretString,
    },
    /// `client_secret_post`: id and secret in the form.
    Post {
        client_id: String,
        secret: SecretString,
    },
}

impl ClientAuth {
    /// A confidential client with the method the AS prefers among those it lists (`basic` when
    /// it lists none or both), or a public client without a secret.
    pub fn choose(client_id: &str, secret: Option<SecretString>, methods: &[String]) -> Self {
        let method = Self::choose_method(secret.is_some(), methods);
        Self::from_method(method, client_id, secret)
    }

    /// The method [`ClientAuth::choose`] picks, by name, for a client with or without a secret
    /// at an AS listing `methods` (its `token_endpoint_auth_methods_supported`).
    pub fn choose_method(has_secret: bool, methods: &[String]) -> &'static str {
        let post_only = !methods.is_empty()
            && methods.iter().any(|m| m == "client_secret_post")
            && !methods.iter().any(|m| m == "client_secret_basic");
        match (has_secret, post_only) {
            (false, _) => "none",
            (true, true) => "client_secret_post",
            (true, false) => "client_secret_basic",
        }
    }

    /// The RFC 7591 `token_endpoint_auth_method` name of this method.
    pub fn method(&self) -> &'static str {
        match self {
            Self::None { .. } => "none",
            Self::Basic { .. } => "client_secret_basic",
            Self::Post { .. } => "client_secret_post",
        }
    }

    /// The method a grant was obtained with, by its [`ClientAuth::method`] name (kept beside a
    /// stored grant, so a refresh or revocation authenticates as the connect did): a secret
    /// with `client_secret_post` goes in the form, any other secret by HTTP Basic; no secret
    /// is a public client.
    pub fn from_method(method: &str, client_id: &str, secret: Option<SecretString>) -> Self {
        let client_id = client_id.to_owned();
        match (method, secret) {
            ("client_secret_post", Some(secret)) => Self::Post { client_id, secret },
            (_, Some(secret)) => Self::Basic { client_id, secret },
            (_, None) => Self::None { client_id },
        }
    }

    pub fn client_id(&self) -> &str {
        match self {
            Self::None { client_id }
            | Self::Basic { client_id, .. }
            | Self::Post { client_id, .. } => client_id,
        }
    }

    /// The Authorization header (Basic) and the form pairs this method adds.
    fn apply<'a>(&'a self, form: &mut Vec<(&'a str, &'a str)>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        match self {
            Self::None { client_id } => form.push(("client_id", client_id)),
            Self::Post { client_id, secret } => {
                form.push(("client_id", client_id));
                form.push(("client_secret", secret.expose_secret()));
            }
            Self::Basic { client_id, secret } => {
                // RFC 6749 §2.3.1: both parts form-encoded before Base64.
                let id = form_encode(&[("", client_id)]);
                let pw = form_encode(&[("", secret.expose_secret())]);
                let pair = format!("{}:{}", &id[1..], &pw[1..]);
                let value = format!("Basic {}", STANDARD.encode(pair));
                if let Ok(mut v) = HeaderValue::from_str(&value) {
                    v.set_sensitive(true);
                    headers.insert(AUTHORIZATION, v);
                }
            }
        }
        headers
    }
}

/// A successful token response (RFC 6749 §5.1; RFC 8693 §2.2.1 adds `issued_token_type`).
/// The tokens are [`SecretString`]s: `Debug` prints `[REDACTED]`.
#[derive(Clone, Debug, Deserialize)]
pub struct TokenResponse {
    pub access_token: SecretString,
    #[serde(default = "bearer")]
    pub token_type: String,
    #[serde(default, deserialize_with = "lenient_seconds")]
    pub expires_in: Option<u64>,
    #[serde(default)]
    pub refresh_token: Option<SecretString>,
    #[serde(default)]
    pub scope: Option<String>,
    #[serde(default)]
    pub issued_token_type: Option<String>,
    #[serde(default)]
    pub id_token: Option<SecretString>,
}

fn bearer() -> String {
    "Bearer".to_owned()
}

/// `expires_in` as a number or (some servers) a numeric string.
fn lenient_seconds<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    Ok(match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_u64(),
        serde_json::Value::String(s) => s.parse().ok(),
        _ => None,
    })
}

impl TokenResponse {
    /// When the access token expires, counted from `received` (None: the AS did not say).
    pub fn expires_at(&self, received: SystemTime) -> Option<SystemTime> {
        self.expires_in
            .map(|s| received + Duration::from_secs(s.min(10 * 365 * 24 * 3600)))
    }
}

/// RFC 6749 §5.2 error body.
#[derive(Deserialize)]
struct ErrorBody {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// The error an OAuth endpoint answered: its RFC 6749 `error` when the body has one, else the
/// status. Never the body itself.
pub(crate) fn endpoint_error(url: &Url, status: u16, body: &[u8]) -> OAuthError {
    match serde_json::from_slice::<ErrorBody>(body) {
        Ok(e) if !e.error.is_empty() => OAuthError::Refused {
            error: e
                .error
                .chars()
                .filter(|c| c.is_ascii_graphic())
                .take(64)
                .collect(),
            description: e
                .error_description
                .map(|d| d.chars().filter(|c| !c.is_control()).take(200).collect()),
        },
        _ => OAuthError::Status {
            url: url.to_string(),
            status,
        },
    }
}

/// One client at one token endpoint (and optionally its revocation endpoint).
#[derive(Clone, Debug)]
pub struct TokenClient {
    http: OAuthHttp,
    token_endpoint: Url,
    revocation_endpoint: Option<Url>,
    auth: ClientAuth,
}

impl TokenClient {
    /// Refuses endpoints that are not `https` (or loopback `http`).
    pub fn new(
        http: OAuthHttp,
        token_endpoint: &str,
        revocation_endpoint: Option<&str>,
        auth: ClientAuth,
    ) -> Result<Self> {
        Ok(Self {
            http,
            token_endpoint: endpoint(token_endpoint)?,
            revocation_endpoint: revocation_endpoint.map(endpoint).transpose()?,
            auth,
        })
    }

    pub fn auth(&self) -> &ClientAuth {
        &self.auth
    }

    pub fn token_endpoint(&self) -> &Url {
        &self.token_endpoint
    }

    pub fn revocation_endpoint(&self) -> Option<&Url> {
        self.revocation_endpoint.as_ref()
    }

    /// Any grant: `grant_type` plus `params`, with the client's authentication. A 200 must carry
    /// a token; any other status is parsed as an RFC 6749 error.
    pub async fn request(
        &self,
        grant_type: &str,
        params: &[(&str, &str)],
    ) -> Result<TokenResponse> {
        let mut form: Vec<(&str, &str)> = vec![("grant_type", grant_type)];
        form.extend_from_slice(params);
        let headers = self.auth.apply(&mut form);
        let answer = self
            .http
            .post_form(&self.token_endpoint, headers, &form)
            .await?;
        if answer.status != 200 {
            return Err(endpoint_error(
                &self.token_endpoint,
                answer.status,
                &answer.body,
            ));
        }
        let token: TokenResponse = parse_json(&self.token_endpoint, &answer.body)?;
        if token.access_token.expose_secret().is_empty() {
            return Err(OAuthError::Json {
                url: self.token_endpoint.to_string(),
                message: "empty access_token".to_owned(),
            });
        }
        Ok(token)
    }

    /// The authorization-code grant with the PKCE verifier and (RFC 8707) the resource.
    pub async fn exchange_code(
        &self,
        code: &str,
        redirect_uri: &str,
        verifier: &SecretString,
        resource: Option<&str>,
    ) -> Result<TokenResponse> {
        let mut params = vec![
            ("code", code),
            ("redirect_uri", redirect_uri),
            ("code_verifier", verifier.expose_secret()),
        ];
        if let Some(r) = resource {
            params.push(("resource", r));
        }
        self.request("authorization_code", &params).await
    }

    /// The refresh grant. A response without a new refresh token keeps the old one valid
    /// (RFC 6749 §6); callers keep theirs then.
    pub async fn refresh(
        &self,
        refresh_token: &SecretString,
        scopes: &[String],
        resource: Option<&str>,
    ) -> Result<TokenResponse> {
        let scope = scopes.join(" ");
        let mut params = vec![("refresh_token", refresh_token.expose_secret())];
        if !scopes.is_empty() {
            params.push(("scope", &scope));
        }
        if let Some(r) = resource {
            params.push(("resource", r));
        }
        self.request("refresh_token", &params).await
    }

    /// RFC 7009: revokes `token` (`hint`: `refresh_token` or `access_token`). An AS that offers
    /// no revocation endpoint answers [`OAuthError::Unsupported`]; 200 means revoked (or
    /// already invalid, which RFC 7009 §2.2 also answers 200).
    pub async fn revoke(&self, token: &SecretString, hint: Option<&str>) -> Result<()> {
        let Some(url) = &self.revocation_endpoint else {
            return Err(OAuthError::Unsupported("revocation endpoint"));
        };
        let mut form = vec![("token", token.expose_secret())];
        if let Some(h) = hint {
            form.push(("token_type_hint", h));
        }
        let headers = self.auth.apply(&mut form);
        let answer = self.http.post_form(url, headers, &form).await?;
        if answer.status == 200 {
            Ok(())
        } else {
            Err(endpoint_error(url, answer.status, &answer.body))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_responses_parse_and_never_print_their_tokens() {
        let t: TokenResponse = serde_json::from_str(
            r#"{"access_token":"at-123","token_type":"Bearer","expires_in":"60","refresh_token":"rt-456","scope":"a b"}"#,
        )
        .unwrap();
        assert_eq!(t.expires_in, Some(60));
        let shown = format!("{t:?}");
        assert!(
            !shown.contains("at-123") && !shown.contains("rt-456"),
            "{shown}"
        );
        assert_eq!(t.refresh_token.unwrap().expose_secret(), "rt-456");
    }

    #[test]
    fn error_bodies_give_the_rfc6749_error_and_never_the_body() {
        let url = Url::parse("https://as.example/token").unwrap();
        let e = endpoint_error(
            &url,
            400,
            br#"{"error":"invalid_grant","error_description":"grant revoked"}"#,
        );
        assert!(e.is_invalid_grant());
        assert_eq!(
            e.to_string(),
            "the authorization server refused: invalid_grant (grant revoked)"
        );
        let e = endpoint_error(&url, 500, b"secret-token-in-html");
        assert!(!e.to_string().contains("secret-token"));
    }

    #[test]
    fn basic_auth_form_encodes_before_base64_and_post_puts_the_secret_in_the_form() {
        let basic = ClientAuth::choose("id:1", Some(SecretString::from("p w")), &[]);
        let mut form = Vec::new();
        let h = basic.apply(&mut form);
        let v = h.get(AUTHORIZATION).unwrap();
        assert!(v.is_sensitive());
        let decoded = STANDARD
            .decode(v.to_str().unwrap().trim_start_matches("Basic "))
            .unwrap();
        assert_eq!(decoded, b"id%3A1:p+w");
        assert!(form.is_empty());
        let post = ClientAuth::choose(
            "id",
            Some(SecretString::from("s")),
            &["client_secret_post".to_owned()],
        );
        let mut form = Vec::new();
        assert!(post.apply(&mut form).is_empty());
        assert_eq!(form, vec![("client_id", "id"), ("client_secret", "s")]);
        assert!(!format!("{post:?}").contains("\"s\""));
    }

    #[test]
    fn a_stored_method_name_round_trips_to_the_same_client_authentication() {
        let secret = || Some(SecretString::from("s"));
        let post_only = ["client_secret_post".to_owned()];
        for (methods, secret, want) in [
            (&post_only[..], secret(), "client_secret_post"),
            (&[][..], secret(), "client_secret_basic"),
            (&post_only[..], None, "none"),
        ] {
            let chosen = ClientAuth::choose("id", secret.clone(), methods);
            assert_eq!(chosen.method(), want);
            let back = ClientAuth::from_method(chosen.method(), "id", secret);
            assert_eq!(back.method(), want);
            assert_eq!(back.client_id(), "id");
        }
        // A method named without a secret to go with it is a public client.
        let public = ClientAuth::from_method("client_secret_basic", "id", None);
        assert_eq!(public.method(), "none");
    }
}
