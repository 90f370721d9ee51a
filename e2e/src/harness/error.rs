//! The harness's error boundary: everything that can go wrong starting, installing or driving a peer.
//! Messages carry the tail of the peer's output so a failing test explains itself.

use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("cannot start {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    #[error("{what} did not finish within {after:?}; output:\n{output}")]
    Timeout {
        what: String,
        after: Duration,
        output: String,
    },
    #[error("{what} failed ({status}); output:\n{output}")]
    Failed {
        what: String,
        status: String,
        output: String,
    },
    #[error("{what} did not become ready: {detail}")]
    NotReady { what: String, detail: String },
    #[error("{what} printed no JSON report: {detail}")]
    NoReport { what: String, detail: String },
    #[error("i/o error on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{0}")]
    Other(String),
}

impl HarnessError {
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }
}

pub type Result<T, E = HarnessError> = std::result::Result<T, E>;
