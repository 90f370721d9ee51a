//! A reqwest client for tests talking raw HTTP to peers: ring crypto provider installed, proxies ignored.
//! Proxies are bypassed so loopback traffic never leaves the machine whatever the environment says.

use std::time::Duration;

use super::error::{HarnessError, Result};

/// A client with a 30 s request timeout and no proxy.
pub fn http_client() -> Result<reqwest::Client> {
    // Installing twice is harmless: the second attempt reports the provider already set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .map_err(|e| HarnessError::Other(format!("cannot build the HTTP client: {e}")))
}
