//! A short-lived cache from a verified token to its principal, so a client that sends the same
//! token on every MCP message pays for signature verification once, not per request.
//!
//! Entries are found by a keyed 64-bit hash of the token (SipHash with a key drawn at random
//! when the cache is made; SHA-256 here cost ~21k instructions per request, issue #24), and an
//! entry answers only a request presenting the very same token: the whole token is kept in the
//! entry (zeroized when dropped, never shown by `Debug`) and compared in constant time. So a
//! hash collision, found or forced, can at worst evict an entry (one more verification); it
//! never hands one caller another caller's identity. Without the key an attacker cannot aim
//! for collisions in the first place.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(test)]
use reflow_crds::Identity;
use secrecy::{ExposeSecret, SecretBox};

use crate::authn::Principal;

/// Entries beyond this are evicted (expired first, then everything) so memory stays bounded.
const MAX_ENTRIES: usize = 16 * 1024;
/// Longer tokens are verified every time instead of cached: an entry keeps the whole token,
/// so this bounds the cache's token bytes at 64 MiB however large the tokens presented.
const MAX_CACHED_TOKEN_BYTES: usize = 4 * 1024;

#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    /// SipHash-1-3 keyed with 128 random bits per cache (`RandomState::new`).
    keyed: RandomState,
    entries: Mutex<HashMap<u64, Entry>>,
}

#[derive(Debug)]
struct Entry {
    /// The token itself: a hit must present exactly it (`Debug` prints `[REDACTED]`).
    token: SecretBox<[u8]>,
    principal: Principal,
    expires: Instant,
}

impl Entry {
    fn is_for(&self, token: &str) -> bool {
        same_bytes(self.token.expose_secret(), token.as_bytes())
    }
}

/// Whether `a` and `b` are equal, looking at every byte whatever the first difference (only the
/// lengths, public in the request anyway, end it early).
fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    // Eight bytes at a time (a token is a few hundred bytes, compared on every request).
    let (a_words, b_words) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail = a_words
        .remainder()
        .iter()
        .zip(b_words.remainder())
        .fold(0u64, |acc, (x, y)| acc | u64::from(x ^ y));
    let diff = a_words.zip(b_words).fold(tail, |acc, (x, y)| {
        acc | (u64::from_ne_bytes(word(x)) ^ u64::from_ne_bytes(word(y)))
    });
    std::hint::black_box(diff) == 0
}

fn word(chunk: &[u8]) -> [u8; 8] {
    let mut w = [0u8; 8];
    w.copy_from_slice(chunk);
    w
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            keyed: RandomState::new(),
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(&self, token: &str) -> u64 {
        self.keyed.hash_one(token.as_bytes())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Entry>> {
        // The map holds no invariant a panicking holder could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, token: &str) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = self.key(token);
        let mut entries = self.lock();
        match entries.get(&key) {
            // Another token with the same hash: not this caller's entry.
            Some(e) if !e.is_for(token) => None,
            Some(e) if e.expires > Instant::now() => Some(e.principal.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until the earlier of the cache TTL and the token's `exp`
    /// (without leeway, so a cached answer is never more lenient than a fresh check).
    pub fn insert(&self, token: &str, principal: &Principal, exp: Option<u64>) {
        if self.ttl.is_zero() || token.len() > MAX_CACHED_TOKEN_BYTES {
            return;
        }
        let mut lifetime = self.ttl;
        if let Some(exp) = exp {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(u64::MAX);
            match exp.checked_sub(now) {
                Some(left) if left > 0 => lifetime = lifetime.min(Duration::from_secs(left)),
                _ => return,
            }
        }
        let now = Instant::now();
        let key = self.key(token);
        let entry = Entry {
            token: SecretBox::new(token.as_bytes().into()),
            principal: principal.clone(),
            expires: now + lifetime,
        };
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        // A colliding token's entry is replaced: that caller is verified again next time.
        entries.insert(key, entry);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0)
    }

    #[test]
    fn auth_cache_returns_identity_until_expiry() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let id = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        cache.insert("tok", &id, Some(now() + 300));
        assert_eq!(
            cache.get("tok").map(|p| p.identity),
            Some(id.identity.clone())
        );
        assert!(cache.get("other").is_none());

        cache.insert("expired", &id, Some(now().saturating_sub(1)));
        assert!(
            cache.get("expired").is_none(),
            "an expired token is never cached"
        );
    }

    #[test]
    fn auth_cache_disabled_with_zero_ttl() {
        let cache = TokenCache::new(Duration::ZERO);
        let id = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        cache.insert("tok", &id, None);
        assert!(cache.get("tok").is_none());
    }

    /// Two tokens that land on the same key: the entry answers only its own token, and the
    /// other caller is verified afresh (never handed the first caller's identity).
    #[test]
    fn auth_cache_collision_never_shares_an_identity() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let alice = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        let mallory = Principal::from_identity(Identity::new("mallory", ["g"], ["r"]));
        cache.insert("token-alice", &alice, Some(now() + 300));
        // Force a collision: move alice's entry under the key of mallory's token.
        {
            let mut entries = cache.lock();
            let e = entries
                .remove(&cache.key("token-alice"))
                .unwrap_or_else(|| unreachable!("just inserted"));
            entries.insert(cache.key("token-mallory"), e);
        }
        assert!(
            cache.get("token-mallory").is_none(),
            "a colliding token must not get the entry's identity"
        );
        // Mallory verified and cached: alice's entry is replaced, not shared.
        cache.insert("token-mallory", &mallory, Some(now() + 300));
        assert_eq!(
            cache
                .get("token-mallory")
                .map(|p| p.identity.user.to_string()),
            Some("mallory".to_owned())
        );
        assert!(cache.get("token-alice").is_none());
        // Same length, one byte different: no hit either.
        assert!(cache.get("token-mallorz").is_none());
    }

    #[test]
    fn auth_cache_debug_never_shows_a_token() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let id = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        cache.insert("eyJ-secret-token-value", &id, None);
        let shown = format!("{cache:?}");
        assert!(!shown.contains("secret-token"), "{shown}");
    }

    #[test]
    fn auth_cache_keeps_no_token_longer_than_its_cap() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let id = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        let long = "a".repeat(MAX_CACHED_TOKEN_BYTES + 1);
        cache.insert(&long, &id, None);
        assert!(cache.get(&long).is_none(), "verified every time instead");
        let at_cap = "a".repeat(MAX_CACHED_TOKEN_BYTES);
        cache.insert(&at_cap, &id, None);
        assert!(cache.get(&at_cap).is_some());
    }

    #[test]
    fn same_bytes_is_plain_equality() {
        assert!(same_bytes(b"abc", b"abc"));
        assert!(same_bytes(b"", b""));
        assert!(!same_bytes(b"abc", b"abd"));
        assert!(!same_bytes(b"abc", b"ab"));
        assert!(!same_bytes(b"xbc", b"abc"));
        // A difference in a whole word, and in the tail after the words.
        assert!(same_bytes(b"0123456789abcdefXYZ", b"0123456789abcdefXYZ"));
        assert!(!same_bytes(b"0123456789abcdefXYZ", b"0123456789abcdeeXYZ"));
        assert!(!same_bytes(b"0123456789abcdefXYZ", b"0123456789abcdefXYz"));
    }

    #[test]
    fn auth_cache_entry_lapses_at_ttl() {
        let cache = TokenCache::new(Duration::from_millis(20));
        let id = Principal::from_identity(Identity::new("alice", ["g"], ["r"]));
        cache.insert("tok", &id, None);
        assert!(cache.get("tok").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert!(cache.get("tok").is_none());
    }
}
