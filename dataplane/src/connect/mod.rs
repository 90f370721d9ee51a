//! User-brought credentials (`Target.spec.userCredential`): the single-use connect links a caller
//! who has not connected is sent to, and the sealed local store of what users connected
//! (standalone mode), which the manifests compiler reads as user-managed Credentials.

pub mod links;
pub mod store;

pub use links::{ConnectLinks, LinkGrant};
pub use store::{CONNECTIONS_DIR, Connection, ConnectionStore};

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("the connect link is unknown, used or expired")]
    BadLink,
    #[error("the value is empty, too long, or contains control characters")]
    BadValue,
    #[error("connection store {path}: {message}")]
    Store { path: String, message: String },
    #[error("a stored connection does not open (sealing key changed or file tampered)")]
    Sealed,
}

impl ConnectError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadLink => "bad_link",
            Self::BadValue => "bad_value",
            Self::Store { .. } => "store",
            Self::Sealed => "sealed",
        }
    }
}
