//! Plugs the JWT `Authenticator` into the gateway's `authn::Authenticate` trait, translating
//! `AuthError` into the gateway's `AuthFailure` (label, safe message, token-presented flag).

use futures::future::BoxFuture;
use http::HeaderMap;

use super::authenticator::Authenticator;
use super::error::AuthError;
use crate::authn::{AuthFailure, Authenticate, Principal};

impl From<AuthError> for AuthFailure {
    fn from(e: AuthError) -> Self {
        AuthFailure {
            label: e.label(),
            message: e.to_string(),
            token_presented: e.token_presented(),
        }
    }
}

impl Authenticate for Authenticator {
    fn authenticate<'a>(
        &'a self,
        headers: &'a HeaderMap,
    ) -> BoxFuture<'a, Result<Principal, AuthFailure>> {
        Box::pin(async move {
            Authenticator::authenticate(self, headers)
                .await
                .map_err(AuthFailure::from)
        })
    }

    fn authorization_servers(&self) -> Vec<String> {
        Authenticator::authorization_servers(self)
    }

    fn scopes_supported(&self) -> Vec<String> {
        Authenticator::scopes_supported(self).to_vec()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auth_errors_become_gateway_failures() {
        let f = AuthFailure::from(AuthError::Expired);
        assert_eq!(
            (f.label, f.message.as_str(), f.token_presented),
            ("expired", "the token has expired", true)
        );
        let f = AuthFailure::from(AuthError::MissingToken);
        assert!(!f.token_presented);
        assert_eq!(f.label(), "missing_token");
    }

    const PRM: &str = "https://gw.example.com/.well-known/oauth-protected-resource";

    #[test]
    fn auth_challenge_without_token_has_no_error() {
        let f = AuthFailure::from(AuthError::MissingToken);
        assert_eq!(
            crate::authn::challenge(&f, PRM),
            format!("Bearer resource_metadata=\"{PRM}\"")
        );
        let f = AuthFailure::from(AuthError::UnsupportedScheme);
        assert!(!crate::authn::challenge(&f, PRM).contains("error="));
    }

    #[test]
    fn auth_challenge_for_rejected_token_says_invalid_token() {
        let f = AuthFailure::from(AuthError::Expired);
        assert_eq!(
            crate::authn::challenge(&f, PRM),
            format!(
                "Bearer resource_metadata=\"{PRM}\", error=\"invalid_token\", \
                 error_description=\"the token has expired\""
            )
        );
    }

    #[test]
    fn auth_challenge_keeps_quotes_out_of_the_description() {
        let f = AuthFailure {
            label: "invalid_claim",
            message: "claim \"a\\b\" is bad".into(),
            token_presented: true,
        };
        let v = crate::authn::challenge(&f, PRM);
        assert!(
            v.ends_with("error_description=\"claim 'a'b' is bad\""),
            "{v}"
        );
    }

    #[test]
    fn auth_status_for_errors() {
        assert_eq!(
            AuthFailure::from(AuthError::Expired).status(),
            http::StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            AuthFailure::from(AuthError::JwksUnavailable).status(),
            http::StatusCode::SERVICE_UNAVAILABLE
        );
    }
}
