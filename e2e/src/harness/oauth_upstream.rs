//! `e2e/js/oauth-mcp-server.cjs` as an upstream peer: an MCP server on the official TypeScript
//! SDK behind its `requireBearerAuth` middleware, verifying each bearer token by RFC 7662
//! introspection at an [`OidcProvider`](super::oidc::OidcProvider) and serving RFC 9728
//! metadata. Its `whoami` tool names the token's subject; `auth_stats` counts 401s.

use std::process::Command;
use std::time::Duration;

use super::error::{HarnessError, Result};
use super::net::{accepts, free_loopback_port, loopback, poll_until};
use super::node::{node_bin, npm_package};
use super::paths;
use super::process::{ManagedChild, SpawnOptions};
use super::typescript::TS_SDK_SPEC;

const READY_TIMEOUT: Duration = Duration::from_secs(30);
const SPAWN_ATTEMPTS: usize = 3;

/// A running OAuth-protected upstream; stopped by PID on drop.
#[derive(Debug)]
pub struct OAuthUpstream {
    child: ManagedChild,
    port: u16,
}

impl OAuthUpstream {
    /// Starts the server against `issuer`, introspecting with the confidential client
    /// `client_id`/`client_secret` (registered at the provider).
    pub fn spawn(issuer: &str, client_id: &str, client_secret: &str) -> Result<Self> {
        Self::spawn_with(
            issuer,
            &[
                "--introspection-client",
                &format!("{client_id}:{client_secret}"),
            ],
        )
    }

    /// Starts the server against `issuer`, verifying tokens locally: RS256 JWTs signed by a
    /// key of the issuer's JWKS, with `aud` = [`Self::mcp_url`] (RFC 8693 exchanged tokens,
    /// which the provider does not introspect).
    pub fn spawn_jwt(issuer: &str) -> Result<Self> {
        Self::spawn_with(issuer, &["--verify", "jwt"])
    }

    fn spawn_with(issuer: &str, verify: &[&str]) -> Result<Self> {
        let sdk = npm_package(TS_SDK_SPEC)?;
        let script = paths::js_dir().join("oauth-mcp-server.cjs");
        let preload = paths::js_dir().join("force-loopback.cjs");
        let mut last_failure = String::new();
        for _ in 0..SPAWN_ATTEMPTS {
            let port = free_loopback_port()?;
            let mut cmd = Command::new(node_bin());
            cmd.arg("--require")
                .arg(&preload)
                .arg(&script)
                .arg("--sdk")
                .arg(&sdk)
                .arg("--port")
                .arg(port.to_string())
                .arg("--issuer")
                .arg(issuer)
                .args(verify);
            let mut child =
                ManagedChild::spawn("oauth-upstream", &mut cmd, SpawnOptions::default())?;
            let addr = loopback(port);
            let ready = poll_until(READY_TIMEOUT, || {
                if child.try_status().is_some() {
                    Some(false)
                } else {
                    accepts(addr).then_some(true)
                }
            });
            match ready {
                Some(true) => return Ok(Self { child, port }),
                Some(false) => last_failure = format!("exited early:\n{}", child.output()),
                None => {
                    return Err(HarnessError::NotReady {
                        what: "oauth-upstream".to_owned(),
                        detail: format!("nothing listening on {addr}\n{}", child.output()),
                    });
                }
            }
        }
        Err(HarnessError::NotReady {
            what: "oauth-upstream".to_owned(),
            detail: last_failure,
        })
    }

    /// `http://127.0.0.1:PORT/mcp`: the MCP endpoint and the RFC 8707 resource.
    pub fn mcp_url(&self) -> String {
        format!("http://127.0.0.1:{}/mcp", self.port)
    }

    /// The next token check fails once with 401, as if the token had been revoked.
    pub async fn reject_next(&self) -> Result<()> {
        let resp = super::http_client()?
            .post(format!("http://127.0.0.1:{}/test/reject-next", self.port))
            .send()
            .await
            .map_err(|e| HarnessError::Other(format!("oauth-upstream reject-next: {e}")))?;
        if resp.status().is_success() {
            Ok(())
        } else {
            Err(HarnessError::Other(format!(
                "oauth-upstream reject-next: {}",
                resp.status()
            )))
        }
    }

    pub fn output(&self) -> String {
        self.child.output()
    }
}
