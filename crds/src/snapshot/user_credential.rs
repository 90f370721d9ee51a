//! A Target's compiled `userCredential`: the slot each user's own value fills and how the
//! gateway obtains that value (pasted secret, OAuth 2 grant, RFC 8693 exchange).

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::credentials::{InjectAs, SealedEntry};
use crate::seal::SealedValue;

/// How the gateway obtains a user's value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
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

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledUserCredential {
    pub mode: UserCredentialMode,
    pub inject_as: InjectAs,
    /// Header names are lower-cased; env names kept as written.
    pub name: Arc<str>,
    /// Put before the user's value (`"Bearer "` by default for oauth2/tokenExchange headers).
    pub prefix: Arc<str>,
    pub display_name: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<Arc<str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth2: Option<CompiledOAuth2>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_exchange: Option<CompiledTokenExchange>,
}

impl CompiledUserCredential {
    /// Whether `entry` fills this slot.
    pub fn is_slot(&self, entry: &SealedEntry) -> bool {
        entry.inject_as == self.inject_as && entry.name == self.name
    }
}

/// A client secret sealed under its own AAD (opened only when the gateway talks to the AS).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SealedClientSecret {
    pub aad: Arc<str>,
    pub value: SealedValue,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledClient {
    pub client_id: Arc<str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_secret: Option<SealedClientSecret>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledOAuth2 {
    /// Absent: discovered from the upstream's RFC 9728 metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization_server: Option<Arc<str>>,
    /// Absent: dynamic client registration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<CompiledClient>,
    pub scopes: Vec<Arc<str>>,
    pub resource: Arc<str>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CompiledTokenExchange {
    pub token_endpoint: Arc<str>,
    pub audience: Arc<str>,
    pub client: CompiledClient,
    pub scopes: Vec<Arc<str>>,
}
