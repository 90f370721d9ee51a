//! What can go wrong on the way to an upstream, one enum for every transport, with the
//! short label the metrics and audit rows carry.

use std::time::Duration;

use super::{SseError, StdioError, instance};

#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("cannot connect to the upstream")]
    Connect,
    #[error("the upstream did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the upstream answered HTTP {0}")]
    Status(u16),
    #[error("the upstream no longer knows our session")]
    SessionExpired,
    #[error("the upstream sent an invalid reply: {0}")]
    Protocol(String),
    #[error("the {0} transport is not supported by this gateway yet")]
    Unsupported(&'static str),
    #[error("a credential for this target cannot be opened")]
    Credential,
    #[error("the caller's identity cannot be forwarded: {0}")]
    Identity(String),
    /// `userCredential.mode: tokenExchange`: no exchanged token (never carries a token).
    #[error("no token for the caller: {0}")]
    TokenExchange(String),
    #[error("http client: {0}")]
    Client(String),
    #[error("the client cancelled the request")]
    Cancelled,
    #[error("{0}")]
    Sse(#[from] SseError),
    #[error("{0}")]
    Stdio(#[from] StdioError),
    #[error("{0}")]
    Instance(#[from] instance::InstanceError),
}

impl UpstreamError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Connect => "connect",
            Self::Timeout(_) => "timeout",
            Self::Status(_) => "status",
            Self::SessionExpired => "session_expired",
            Self::Protocol(_) => "protocol",
            Self::Unsupported(_) => "unsupported",
            Self::Credential => "credential",
            Self::Identity(_) => "identity",
            Self::TokenExchange(_) => "token_exchange",
            Self::Client(_) => "client",
            Self::Cancelled => "cancelled",
            Self::Sse(e) => e.label(),
            Self::Stdio(e) => e.label(),
            Self::Instance(e) => e.label(),
        }
    }
}
