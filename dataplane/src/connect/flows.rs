//! Authorization requests in flight (`mode: oauth2` connect flow): one per `state`, single use,
//! ten minutes at most, bound to the browser that started it (a cookie) and to the link's user.
//! Only a SHA-256 of each `state` is kept.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use reflow_oauth::SecretString;
use sha2::{Digest, Sha256};

use super::grant::GrantOrigin;
use super::links::LinkGrant;

/// How long a user has at the IdP / the upstream's AS.
pub const FLOW_TTL: Duration = Duration::from_secs(600);
const MAX_FLOWS: usize = 10_000;

/// Which authorization the callback finishes.
#[derive(Clone, Debug)]
pub enum Phase {
    /// The gateway's own IdP: proves who is at the browser before anything is stored.
    Login(GrantOrigin),
    /// The upstream's AS: the grant to store.
    Upstream(GrantOrigin),
    /// `mode: secret` after the IdP login: the paste form's single-use state.
    Paste,
}

/// One authorization request in flight.
#[derive(Debug)]
pub struct Pending {
    pub grant: LinkGrant,
    pub phase: Phase,
    pub verifier: SecretString,
    pub redirect_uri: String,
    /// SHA-256 of the browser-binding cookie value.
    pub binding: [u8; 32],
    expires: Instant,
}

#[derive(Default)]
pub struct Flows {
    live: Mutex<HashMap<[u8; 32], Pending>>,
}

pub fn digest(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

impl Flows {
    /// Remembers a request under `state`.
    pub fn start(
        &self,
        state: &str,
        grant: LinkGrant,
        phase: Phase,
        verifier: SecretString,
        redirect_uri: String,
        binding: &str,
    ) {
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, p| p.expires > now);
        if live.len() >= MAX_FLOWS
            && let Some(oldest) = live.iter().min_by_key(|(_, p)| p.expires).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(
            digest(state),
            Pending {
                grant,
                phase,
                verifier,
                redirect_uri,
                binding: digest(binding),
                expires: now + FLOW_TTL,
            },
        );
    }

    /// Uses a `state` up: once, within its lifetime.
    pub fn finish(&self, state: &str) -> Option<Pending> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.remove(&digest(state))
            .filter(|p| p.expires > Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_state_finishes_once() {
        let f = Flows::default();
        let grant = LinkGrant {
            user: "alice".into(),
            namespace: "ns".into(),
            target: "t".into(),
        };
        let phase = Phase::Login(GrantOrigin {
            issuer: "https://idp".into(),
            token_endpoint: "https://idp/token".into(),
            revocation_endpoint: None,
            client: reflow_oauth::ClientAuth::None {
                client_id: "console".into(),
            },
            resource: "https://gw/mcp".into(),
            scopes: vec!["openid".into()],
        });
        f.start(
            "s1",
            grant,
            phase,
            SecretString::from("v"),
            "https://gw/cb".into(),
            "cookie",
        );
        assert!(f.finish("s2").is_none());
        let p = f.finish("s1").expect("pending");
        assert_eq!(p.grant.user, "alice");
        assert_eq!(p.binding, digest("cookie"));
        assert!(f.finish("s1").is_none(), "single use");
    }
}
