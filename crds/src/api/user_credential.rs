//! `Target.spec.userCredential`: what each user brings for a Target (their own upstream account)
//! and where it is injected. Grants land as user-managed `Credential`s (see `USER_MANAGED_LABEL`).

use kube::KubeSchema;
use serde::{Deserialize, Serialize};

use super::common::SecretKeyRef;

/// On a Credential (and its Secret): written for one user by the gateway from a grant the user
/// brought, not by an admin. GitOps tools can ignore objects carrying it.
pub const USER_MANAGED_LABEL: &str = "mcp.reflow.io/user-managed";

/// Exactly the block of the chosen `mode` is set (`secret` may be omitted).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[x_kube(
    validation = Rule::new("self.mode == 'oauth2' || !has(self.oauth2)").message("oauth2 is only valid with mode: oauth2"),
    validation = Rule::new("self.mode != 'oauth2' || has(self.oauth2)").message("mode: oauth2 needs the oauth2 block").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.mode == 'tokenExchange' || !has(self.tokenExchange)").message("tokenExchange is only valid with mode: tokenExchange"),
    validation = Rule::new("self.mode != 'tokenExchange' || has(self.tokenExchange)").message("mode: tokenExchange needs the tokenExchange block").reason(Reason::FieldValueRequired),
    validation = Rule::new("self.mode == 'secret' || !has(self.secret)").message("secret is only valid with mode: secret")
)]
#[serde(rename_all = "camelCase")]
pub struct UserCredential {
    pub mode: UserCredentialMode,
    /// The one header (HTTP Targets) or env var (STDIO and kubernetes Targets) the user's value
    /// fills. Admin Credentials of group, role or default subjects never fill this slot.
    pub inject: UserInjection,
    /// Name shown on the connect page and in link texts (default: the Target's name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 64))]
    pub display_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<SecretMode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<OAuth2Mode>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<TokenExchangeMode>,
}

#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub enum UserCredentialMode {
    /// The user pastes a personal token or API key once on the connect page.
    Secret,
    /// The user consents at the upstream's authorization server; the gateway keeps and
    /// refreshes the grant.
    #[serde(rename = "oauth2")]
    OAuth2,
    /// RFC 8693 at the caller's IdP: no connect step, an audience-scoped token per caller.
    TokenExchange,
}

impl UserCredentialMode {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Secret => "secret",
            Self::OAuth2 => "oauth2",
            Self::TokenExchange => "tokenExchange",
        }
    }
}

/// Exactly one of `header` or `env`; the value sent is `prefix` + the user's value.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[x_kube(validation = Rule::new("has(self.header) != has(self.env)").message("inject names exactly one of header or env"))]
#[serde(rename_all = "camelCase")]
pub struct UserInjection {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z0-9!#$%&*+.^_|~`-]+$') && !(self.lowerAscii() in ['host', 'content-length', 'transfer-encoding', 'connection', 'upgrade', 'te', 'mcp-session-id', 'mcp-protocol-version'])").message("header must be an HTTP token and not a hop-by-hop or MCP protocol header"))]
    pub header: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 256),
        regex(pattern = r"^[A-Za-z_][A-Za-z0-9_]*$")
    )]
    pub env: Option<String>,
    /// e.g. `"Bearer "` (the default for oauth2 and tokenExchange on a header).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 256))]
    pub prefix: Option<String>,
}

/// `mode: secret`: what the connect page tells the user to paste.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretMode {
    /// One line of help on the connect page, e.g. where to create the token and which scopes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 512))]
    pub hint: Option<String>,
}

/// `mode: oauth2`: the upstream's authorization server and the gateway's client there.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct OAuth2Mode {
    /// The authorization server's issuer; default: discovered from the upstream's RFC 9728
    /// protected-resource metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("authorizationServer must be an http(s) URL"))]
    pub authorization_server: Option<String>,
    /// A pre-registered client; without it the gateway registers itself (RFC 7591).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<OAuthClient>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
    /// RFC 8707 `resource` (default: the Target's URL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 2048))]
    pub resource: Option<String>,
}

/// A client registered at an authorization server; the secret lives in a same-namespace Secret.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Hash)]
#[serde(rename_all = "camelCase")]
pub struct OAuthClient {
    #[schemars(length(min = 1, max = 256))]
    pub client_id: String,
    /// Absent: a public client (PKCE only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret_ref: Option<SecretKeyRef>,
}

/// `mode: tokenExchange`: RFC 8693 at the caller's IdP.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct TokenExchangeMode {
    /// The IdP's token endpoint.
    #[schemars(length(min = 1, max = 2048))]
    #[x_kube(validation = Rule::new("self.startsWith('https://') || self.startsWith('http://')").message("tokenEndpoint must be an http(s) URL"))]
    pub token_endpoint: String,
    /// `audience` of the exchanged token (what the upstream expects in `aud`).
    #[schemars(length(min = 1, max = 2048))]
    pub audience: String,
    pub client: OAuthClient,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    pub scopes: Vec<String>,
}
