//! The HTTP server's settings as data: `gateway.http` (hardening, limits, timers),
//! `gateway.tls` and `gateway.trustedProxy`. They sit below the router so that
//! `mcp::GatewayConfig`, the settings file's type, can hold them without naming `http`; `http`
//! gives them their behaviour (`impl TlsConfig` in `http/tls.rs`, `impl TrustedProxyConfig` in
//! `http/proxy.rs`) and re-exports them under their old paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use reflow_crds::token::cidr::Cidr;

/// `gateway.http` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct HttpConfig {
    pub cors: CorsConfig,
    /// Sends `Strict-Transport-Security` (only meaningful behind TLS).
    pub hsts: bool,
    /// RFC 9116 contact (`mailto:…` or `https://…`); without one, no security.txt is served,
    /// since one without a real contact helps nobody.
    pub security_contact: Option<String>,
    /// `Expires` of security.txt (RFC 3339); RFC 9116 requires one.
    pub security_txt_expires: Option<String>,
    /// Requests handled at once; beyond it the gateway answers 503 with `Retry-After` instead of
    /// queueing without bound. 0 disables the cap.
    pub max_concurrent_requests: usize,
    /// TCP connections open at once; at the cap, idle connections are closed for newcomers
    /// (see `listener`), and further connections wait in the kernel backlog.
    pub max_connections: usize,
    /// Timers on every wait for a peer (`listener::Timeouts`).
    pub timeouts: Timeouts,
    /// Serve thread-per-core (`percore`): one single-threaded runtime, `SO_REUSEPORT` listener
    /// and upstream pool per CPU, instead of one multi-thread runtime. On by default (issue
    /// #24: the faster serving, with the e2e suite and conformance passing); `false` serves on
    /// one multi-thread runtime.
    pub thread_per_core: bool,
    /// With `threadPerCore`: plain-HTTP upstream POSTs on hyper's HTTP/1 client directly, one
    /// set of connections per serving thread (`upstream::h1`), instead of reqwest's pool. On by
    /// default.
    pub direct_upstream: bool,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            cors: CorsConfig::default(),
            hsts: false,
            security_contact: None,
            security_txt_expires: None,
            max_concurrent_requests: 4096,
            max_connections: 10_000,
            timeouts: Timeouts::default(),
            thread_per_core: true,
            direct_upstream: true,
        }
    }
}

/// Cross-origin browser access. Empty `allowedOrigins` (the default) means no CORS headers at
/// all, so browsers on other origins cannot read anything.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct CorsConfig {
    /// Exact origins (`https://app.example.com`).
    pub allowed_origins: Vec<String>,
    pub max_age_seconds: u32,
}

impl Default for CorsConfig {
    fn default() -> Self {
        Self {
            allowed_origins: Vec::new(),
            max_age_seconds: 600,
        }
    }
}

impl CorsConfig {
    pub fn allows(&self, origin: &str) -> bool {
        self.allowed_origins.iter().any(|o| o == origin)
    }
}

/// `gateway.http.timeouts`: every wait on a peer is bounded. 0 turns one timer off.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Timeouts {
    /// An HTTP/1 request head must arrive completely within this.
    pub header_read_ms: u64,
    /// A connection with no request in flight is closed after this (keep-alive idle, and a
    /// socket that never finishes its first request head).
    pub idle_ms: u64,
    /// A request body may start slowly for this long ...
    pub body_grace_ms: u64,
    /// ... and must then keep arriving at this average rate (bytes per second).
    pub body_min_bytes_per_second: u64,
    /// A write the peer does not read for this long closes the connection (a client that stops
    /// reading an SSE stream is dropped once the socket buffers are full).
    pub write_ms: u64,
    /// HTTP/2 PING interval; a peer that does not answer within the same time is dropped.
    pub http2_keep_alive_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            header_read_ms: 10_000,
            idle_ms: 30_000,
            body_grace_ms: 10_000,
            body_min_bytes_per_second: 1024,
            write_ms: 30_000,
            http2_keep_alive_ms: 20_000,
        }
    }
}

/// Whether clients must present a certificate.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientAuth {
    /// Plain TLS; no client certificates requested.
    #[default]
    None,
    /// Verified when presented; connections without one continue (bearer tokens apply).
    Optional,
    /// The handshake fails without a certificate signed by the client CA.
    Required,
}

/// What a verified client certificate means.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum ClientIdentity {
    /// The certificate admits the connection; the bearer token names the caller.
    #[default]
    Token,
    /// The certificate names the caller; no token needed.
    Certificate,
}

/// Which part of the certificate is the user.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum UserFrom {
    #[default]
    CommonName,
    SanEmail,
    SanUri,
    SanDns,
}

/// `gateway.tls` in the configuration. Paths are relative to the config file.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TlsConfig {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default)]
    pub client_ca_file: Option<PathBuf>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    #[serde(default)]
    pub client_identity: ClientIdentity,
    #[serde(default)]
    pub user_from: UserFrom,
    /// Prefix for users and groups taken from certificates (e.g. `cert:`), so they cannot be
    /// confused with IdP identities in policies.
    #[serde(default)]
    pub name_prefix: String,
    #[serde(default = "default_handshake_ms")]
    pub handshake_timeout_ms: u64,
}

fn default_handshake_ms() -> u64 {
    10_000
}

impl TlsConfig {
    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        self.cert_file = base.join(&self.cert_file);
        self.key_file = base.join(&self.key_file);
        if let Some(ca) = self.client_ca_file.take() {
            self.client_ca_file = Some(base.join(ca));
        }
    }
}

/// `gateway.trustedProxy` in the configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TrustedProxyConfig {
    /// Peer addresses allowed to assert identities (the proxy pods, never a whole cluster CIDR
    /// that clients can reach directly).
    pub sources: Vec<Cidr>,
    #[serde(default = "default_user_header")]
    pub user_header: String,
    #[serde(default = "default_groups_header")]
    pub groups_header: String,
    #[serde(default)]
    pub roles_header: Option<String>,
    #[serde(default = "default_email_header")]
    pub email_header: String,
    /// Take the client address from `X-Forwarded-For` (rightmost address that is not itself a
    /// trusted proxy) for token source ranges.
    #[serde(default = "default_true")]
    pub use_forwarded_for: bool,
}

fn default_user_header() -> String {
    "x-forwarded-user".into()
}
fn default_groups_header() -> String {
    "x-forwarded-groups".into()
}
fn default_email_header() -> String {
    "x-forwarded-email".into()
}
fn default_true() -> bool {
    true
}
