//! A short-lived cache from a verified token's SHA-256 to its principal, so a client that sends
//! the same token on every MCP message pays for signature verification once, not per request.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[cfg(test)]
use reflow_crds::Identity;
use sha2::{Digest, Sha256};

use crate::authn::Principal;

/// Entries beyond this are evicted (expired first, then everything) so memory stays bounded.
const MAX_ENTRIES: usize = 16 * 1024;

#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<[u8; 32], Entry>>,
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
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

    pub fn get(&self, token: &str) -> Option<Principal> {
        if self.ttl.is_zero() {
            return None;
        }
        let key = Self::key(token);
        let mut entries = self.lock();
        match entries.get(&key) {
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
                principal: principal.clone(),
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
