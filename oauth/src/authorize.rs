//! The authorization request (RFC 6749 §4.1.1 with PKCE, RFC 8707 `resource`) and the
//! parameters of the redirect back to the client (§4.1.2, errors §4.1.2.1).

use reqwest::Url;

use crate::discovery::AuthServerMetadata;
use crate::pkce::Pkce;
use crate::{OAuthError, Result};

/// What goes into one authorization URL.
#[derive(Debug)]
pub struct AuthorizationRequest<'a> {
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    pub scopes: &'a [String],
    pub state: &'a str,
    pub resource: Option<&'a str>,
}

impl AuthorizationRequest<'_> {
    /// The URL to send the browser to, with `code_challenge` from `pkce` (S256). Refused when
    /// the AS says it does not support S256.
    pub fn url(&self, meta: &AuthServerMetadata, pkce: &Pkce) -> Result<Url> {
        if !meta.supports_s256() {
            return Err(OAuthError::Unsupported("PKCE S256"));
        }
        let mut url = crate::http::endpoint(&meta.authorization_endpoint)?;
        {
            let mut q = url.query_pairs_mut();
            q.append_pair("response_type", "code")
                .append_pair("client_id", self.client_id)
                .append_pair("redirect_uri", self.redirect_uri)
                .append_pair("state", self.state)
                .append_pair("code_challenge", &pkce.challenge)
                .append_pair("code_challenge_method", Pkce::METHOD);
            if !self.scopes.is_empty() {
                q.append_pair("scope", &self.scopes.join(" "));
            }
            if let Some(r) = self.resource {
                q.append_pair("resource", r);
            }
        }
        Ok(url)
    }
}

/// The query of the redirect to the client's callback.
#[derive(Debug, PartialEq, Eq)]
pub enum CallbackParams {
    /// `code` and `state` (the code is single-use and short-lived; still never logged).
    Code {
        code: String,
        state: String,
        iss: Option<String>,
    },
    /// The AS refused (e.g. `access_denied`), with the `state` it was given.
    Error {
        error: String,
        description: Option<String>,
        state: Option<String>,
    },
}

impl CallbackParams {
    /// Parses a callback query string (without `?`). Duplicated parameters are refused.
    pub fn parse(query: &str) -> Result<Self> {
        let url = Url::parse(&format!("http://callback.invalid/?{query}"))
            .map_err(|_| OAuthError::Callback("malformed query"))?;
        let mut code = None;
        let mut state = None;
        let mut error = None;
        let mut description = None;
        let mut iss = None;
        for (k, v) in url.query_pairs() {
            let slot = match k.as_ref() {
                "code" => &mut code,
                "state" => &mut state,
                "error" => &mut error,
                "error_description" => &mut description,
                "iss" => &mut iss,
                _ => continue,
            };
            if slot.replace(v.into_owned()).is_some() {
                return Err(OAuthError::Callback("a parameter appears twice"));
            }
        }
        match (code, error) {
            (_, Some(error)) => Ok(Self::Error {
                error: error.chars().take(64).collect(),
                description: description.map(|d| d.chars().take(200).collect()),
                state,
            }),
            (Some(code), None) => Ok(Self::Code {
                code,
                state: state.ok_or(OAuthError::Callback("no state"))?,
                iss,
            }),
            (None, None) => Err(OAuthError::Callback("neither code nor error")),
        }
    }

    pub fn state(&self) -> Option<&str> {
        match self {
            Self::Code { state, .. } => Some(state),
            Self::Error { state, .. } => state.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn callbacks_parse_and_duplicates_are_refused() {
        assert_eq!(
            CallbackParams::parse("code=abc&state=xyz").unwrap(),
            CallbackParams::Code {
                code: "abc".into(),
                state: "xyz".into(),
                iss: None
            }
        );
        assert!(matches!(
            CallbackParams::parse("error=access_denied&state=s").unwrap(),
            CallbackParams::Error { ref error, .. } if error == "access_denied"
        ));
        assert!(CallbackParams::parse("code=a&code=b&state=s").is_err());
        assert!(CallbackParams::parse("code=a").is_err());
        assert!(CallbackParams::parse("").is_err());
    }
}
