//! The console's error boundary: what a handler can fail with, and the page each one shows.
//! Nothing here echoes a token, a code or a secret back.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Not logged in (pages redirect to the login page instead).
    #[error("not logged in")]
    Unauthenticated,
    /// Logged in, not allowed: shown as 404, like a row that does not exist.
    #[error("not found")]
    NotFound,
    #[error("the form expired or came from another site; reload the page and try again")]
    Csrf,
    #[error("login failed: {0}")]
    Login(String),
    #[error("bad request: {0}")]
    BadRequest(String),
    #[error("OIDC configuration: {0}")]
    Config(String),
    #[error("the audit store is unavailable")]
    Store(#[from] crate::postgres::PgError),
}

impl ConsoleError {
    /// A stable label for logs and metrics.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::NotFound => "not_found",
            Self::Csrf => "csrf",
            Self::Login(_) => "login",
            Self::BadRequest(_) => "bad_request",
            Self::Config(_) => "config",
            Self::Store(_) => "store",
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::Csrf => StatusCode::FORBIDDEN,
            Self::Login(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Config(_) | Self::Store(_) => StatusCode::SERVICE_UNAVAILABLE,
        }
    }
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        if let Self::Store(e) = &self {
            tracing::warn!(error = %e, "console: audit store");
        }
        let status = self.status();
        let body = super::html::page(
            "Error",
            None,
            &format!(
                "<h1>{}</h1><p>{}</p><p><a href=\"/console/me\">Back to the console</a></p>",
                status.as_u16(),
                super::html::esc(&self.to_string())
            ),
        );
        (status, body).into_response()
    }
}
