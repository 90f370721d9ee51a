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
}
