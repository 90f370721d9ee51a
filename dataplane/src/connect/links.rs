//! Connect links: 256-bit random, single-use, short-lived, bound to one caller and one Target.
//! Only a SHA-256 of each link is kept, so a memory or log leak of the table opens nothing.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngExt;
use sha2::{Digest, Sha256};

use super::ConnectError;

/// How long a link stays valid.
pub const LINK_TTL: Duration = Duration::from_secs(600);
/// Live links kept at most (oldest dropped first): a caller looping on calls cannot grow it.
const MAX_LINKS: usize = 10_000;

/// Who a link connects, for which Target.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkGrant {
    pub user: String,
    pub namespace: String,
    pub target: String,
}

struct Entry {
    grant: LinkGrant,
    expires: Instant,
}

#[derive(Default)]
pub struct ConnectLinks {
    live: Mutex<HashMap<[u8; 32], Entry>>,
}

fn digest(link: &str) -> [u8; 32] {
    Sha256::digest(link.as_bytes()).into()
}

impl ConnectLinks {
    /// A new link token (URL-safe) for `grant`.
    pub fn mint(&self, grant: LinkGrant) -> String {
        let raw: [u8; 32] = rand::rng().random();
        let token = URL_SAFE_NO_PAD.encode(raw);
        let now = Instant::now();
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        live.retain(|_, e| e.expires > now);
        if live.len() >= MAX_LINKS
            && let Some(oldest) = live.iter().min_by_key(|(_, e)| e.expires).map(|(k, _)| *k)
        {
            live.remove(&oldest);
        }
        live.insert(
            digest(&token),
            Entry {
                grant,
                expires: now + LINK_TTL,
            },
        );
        token
    }

    /// What a live link connects, without using it up (the page that shows the form).
    pub fn peek(&self, link: &str) -> Result<LinkGrant, ConnectError> {
        let live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.get(&digest(link)) {
            Some(e) if e.expires > Instant::now() => Ok(e.grant.clone()),
            _ => Err(ConnectError::BadLink),
        }
    }

    /// Uses the link up: it answers once, then never again.
    pub fn consume(&self, link: &str) -> Result<LinkGrant, ConnectError> {
        let mut live = self.live.lock().unwrap_or_else(|p| p.into_inner());
        match live.remove(&digest(link)) {
            Some(e) if e.expires > Instant::now() => Ok(e.grant),
            _ => Err(ConnectError::BadLink),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn grant(user: &str) -> LinkGrant {
        LinkGrant {
            user: user.into(),
            namespace: "ns".into(),
            target: "gh".into(),
        }
    }

    #[test]
    fn a_link_is_single_use_and_bound_to_its_caller() {
        let links = ConnectLinks::default();
        let a = links.mint(grant("alice"));
        let b = links.mint(grant("bob"));
        assert_ne!(a, b);
        assert!(a.len() >= 43, "256 bits of randomness");
        assert_eq!(links.peek(&a).unwrap().user, "alice");
        assert_eq!(links.consume(&a).unwrap().user, "alice");
        assert!(matches!(links.consume(&a), Err(ConnectError::BadLink)));
        assert!(links.peek(&a).is_err());
        assert_eq!(links.consume(&b).unwrap().user, "bob");
        assert!(links.consume("made-up").is_err());
        let mut tampered = links.mint(grant("alice"));
        tampered.pop();
        assert!(links.consume(&tampered).is_err());
    }

    #[test]
    fn expired_links_are_refused() {
        let links = ConnectLinks::default();
        let a = links.mint(grant("alice"));
        links
            .live
            .lock()
            .unwrap()
            .values_mut()
            .for_each(|e| e.expires = Instant::now() - Duration::from_secs(1));
        assert!(links.peek(&a).is_err());
        assert!(links.consume(&a).is_err());
    }
}
