//! Console logins held by this replica: a random cookie id → who logged in and their CSRF
//! token, and the OIDC logins in flight (state → PKCE verifier, nonce, browser binding).
//! Both are bounded and expire; a login always gets a fresh id (no session fixation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine;
use rand::RngExt;
use reflow_crds::Identity;

/// At most this many live console logins per replica (the oldest go first).
const MAX_LOGINS: usize = 10_000;
/// At most this many OIDC logins in flight.
const MAX_PENDING: usize = 1_000;
/// How long a user has at the IdP.
pub const PENDING_TTL: Duration = Duration::from_secs(600);

/// 256 random bits, base64url without padding.
pub fn random_token() -> String {
    let bytes: [u8; 32] = rand::rng().random();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// Equal without leaking where they differ.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

pub struct Login {
    pub identity: Identity,
    pub admin: bool,
    pub csrf: String,
    expires: Instant,
}

/// An OIDC login between the redirect to the IdP and the callback.
pub struct Pending {
    pub verifier: String,
    pub nonce: String,
    /// The value of the browser's login cookie: the callback must come from the same browser.
    pub binding: String,
    expires: Instant,
}

pub struct Logins {
    ttl: Duration,
    logins: Mutex<HashMap<String, Arc<Login>>>,
    pending: Mutex<HashMap<String, Pending>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Logins {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            logins: Mutex::default(),
            pending: Mutex::default(),
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// A new login under a new random id.
    pub fn create(&self, identity: Identity, admin: bool) -> (String, Arc<Login>) {
        let now = Instant::now();
        let login = Arc::new(Login {
            identity,
            admin,
            csrf: random_token(),
            expires: now + self.ttl,
        });
        let id = random_token();
        let mut map = lock(&self.logins);
        map.retain(|_, l| l.expires > now);
        while map.len() >= MAX_LOGINS {
            let Some(oldest) = map
                .iter()
                .min_by_key(|(_, l)| l.expires)
                .map(|(k, _)| k.clone())
            else {
                break;
            };
            map.remove(&oldest);
        }
        map.insert(id.clone(), login.clone());
        (id, login)
    }

    pub fn get(&self, id: &str) -> Option<Arc<Login>> {
        let map = lock(&self.logins);
        map.get(id).filter(|l| l.expires > Instant::now()).cloned()
    }

    pub fn remove(&self, id: &str) {
        lock(&self.logins).remove(id);
    }

    /// Remembers an OIDC login in flight under `state`.
    pub fn start(&self, state: String, verifier: String, nonce: String, binding: String) {
        let now = Instant::now();
        let mut map = lock(&self.pending);
        map.retain(|_, p| p.expires > now);
        if map.len() >= MAX_PENDING {
            // A flood of unfinished logins: the newest attempt wins over stale ones.
            if let Some(k) = map
                .iter()
                .min_by_key(|(_, p)| p.expires)
                .map(|(k, _)| k.clone())
            {
                map.remove(&k);
            }
        }
        map.insert(
            state,
            Pending {
                verifier,
                nonce,
                binding,
                expires: now + PENDING_TTL,
            },
        );
    }

    /// The login in flight under `state`, once: a replayed callback finds nothing.
    pub fn finish(&self, state: &str) -> Option<Pending> {
        let p = lock(&self.pending).remove(state)?;
        (p.expires > Instant::now()).then_some(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logins_are_fresh_random_and_removable() {
        let logins = Logins::new(Duration::from_secs(60));
        let alice = Identity::new("alice", Vec::<String>::new(), Vec::<String>::new());
        let (a, la) = logins.create(alice.clone(), false);
        let (b, lb) = logins.create(alice, false);
        assert_ne!(a, b);
        assert_ne!(la.csrf, lb.csrf);
        assert_eq!(a.len(), 43);
        assert!(logins.get(&a).is_some());
        logins.remove(&a);
        assert!(logins.get(&a).is_none());
        assert!(logins.get("made-up").is_none());
    }

    #[test]
    fn expired_logins_are_gone() {
        let logins = Logins::new(Duration::ZERO);
        let (id, _) = logins.create(
            Identity::new("a", Vec::<String>::new(), Vec::<String>::new()),
            false,
        );
        assert!(logins.get(&id).is_none());
    }

    #[test]
    fn a_pending_login_is_taken_once() {
        let logins = Logins::new(Duration::from_secs(60));
        logins.start("s".into(), "v".into(), "n".into(), "b".into());
        assert_eq!(logins.finish("s").map(|p| p.verifier), Some("v".into()));
        assert!(logins.finish("s").is_none(), "replay");
        assert!(same("abc", "abc") && !same("abc", "abd") && !same("abc", "ab"));
    }
}
