//! The one error of the wiring layer: what was being done, and why it failed (the cause kept
//! as the source, so `main` prints the whole chain as it always has).

/// A start-up or command failure.
#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// `what` was being done when `source` failed.
    #[error("{what}")]
    Failed {
        what: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Gateway(#[from] crate::mcp::GatewayError),
    #[error(transparent)]
    Database(#[from] crate::postgres::PgError),
    /// The arguments or the configuration do not allow the command.
    #[error("{0}")]
    Invalid(String),
}

/// Names what was being done on a failing result (the wiring's only use of an error chain).
pub(crate) trait Context<T> {
    fn context(self, what: &str) -> Result<T, AppError>;
    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, AppError>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for Result<T, E> {
    fn context(self, what: &str) -> Result<T, AppError> {
        self.with_context(|| what.to_owned())
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, AppError> {
        self.map_err(|e| AppError::Failed {
            what: what(),
            source: Box::new(e),
        })
    }
}

impl<T> Context<T> for Option<T> {
    fn context(self, what: &str) -> Result<T, AppError> {
        self.ok_or_else(|| AppError::Invalid(what.to_owned()))
    }

    fn with_context(self, what: impl FnOnce() -> String) -> Result<T, AppError> {
        self.ok_or_else(|| AppError::Invalid(what()))
    }
}
