//! A short-lived cache from a verified token's SHA-256 to its identity, so a client that sends
//! the same token on every MCP message pays for signature verification once, not per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use reflow_crds::Identity;
use sha2::{Digest, Sha256};

/// Entries beyond this are evicted (expired first, then everything) so memory stays bounded.
const MAX_ENTRIES: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

#[derive(Debug)]
struct Entry {
    identity: Identity,
    expires: Instant,
}

impl TokenCache {
    pub fn new(ttl: Duration) -> Self {
        Self {
            ttl,
            entries: Mutex::new(HashMap::new()),
        }
    }

    fn key(token: &str) -> [u8; 32] {
        Sha256::digest(token.as_bytes()).into()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry>> {
        // The map holds no invariant a panicking holder could break.
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn get(&self, token: &str) -> Option<Identity> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = Self::key(token);
        let mut entries = self.lock();
        match entries.get(&key) {
            Some(e) if e.expires > Instant::now() => Some(e.identity.clone()),
            Some(_) => {
                entries.remove(&key);
                None
            }
            None => None,
        }
    }

    /// Remembers a verified token until the earlier of the cache TTL and the token's `exp`
    /// (without leeway, so a cached answer is never more lenient than a fresh check).
    pub fn insert(&self, token: &str, identity: &Identity, exp: Option<u64>) {
        if self.ttl.is_zero() {
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
        let mut entries = self.lock();
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, e| e.expires > now);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(
            Self::key(token),
            Entry {
                identity: identity.clone(),
                expires: now + lifetime,
            },
        );
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
        let id = Identity::new("alice", ["g"], ["r"]);
        cache.insert("tok", &id, Some(now() + 300));
        assert_eq!(cache.get("tok"), Some(id.clone()));
        assert_eq!(cache.get("other"), None);

        cache.insert("expired", &id, Some(now().saturating_sub(1)));
        assert_eq!(
            cache.get("expired"),
            None,
            "an expired token is never cached"
        );
    }

    #[test]
    fn auth_cache_disabled_with_zero_ttl() {
        let cache = TokenCache::new(Duration::ZERO);
        let id = Identity::new("alice", ["g"], ["r"]);
        cache.insert("tok", &id, None);
        assert_eq!(cache.get("tok"), None);
    }

    #[test]
    fn auth_cache_entry_lapses_at_ttl() {
        let cache = TokenCache::new(Duration::from_millis(20));
        let id = Identity::new("alice", ["g"], ["r"]);
        cache.insert("tok", &id, None);
        assert!(cache.get("tok").is_some());
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(cache.get("tok"), None);
    }
}
