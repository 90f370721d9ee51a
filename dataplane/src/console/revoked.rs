//! What must not be accepted again on any replica: logged-out console logins and used OIDC
//! login states. Kept in Postgres when there is one (every replica reads the same table), else
//! in this process's memory. Entries carry their own expiry (that of the cookie they refuse)
//! and are swept after it.

use std::collections::HashMap;
use std::sync::Mutex;

use super::logins::unix_now;
use crate::postgres::{self, Database};

/// In-memory entries kept at most (the soonest to expire go first).
const MAX_LOCAL: usize = 100_000;

pub struct Revocations {
    db: Option<Database>,
    /// key -> expiry (seconds since the epoch). With a database, a cache of what it said.
    local: Mutex<HashMap<String, u64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Revocations {
    pub fn new(db: Option<Database>) -> Self {
        Self {
            db,
            local: Mutex::default(),
        }
    }

    fn remember(&self, key: &str, until: u64) -> bool {
        let now = unix_now();
        let mut map = lock(&self.local);
        if map.len() >= MAX_LOCAL {
            map.retain(|_, exp| *exp > now);
            while map.len() >= MAX_LOCAL {
                let Some(k) = map.iter().min_by_key(|(_, e)| **e).map(|(k, _)| k.clone()) else {
                    break;
                };
                map.remove(&k);
            }
        }
        map.insert(key.to_owned(), until).is_none()
    }

    /// Refuses `key` from now until `until` (seconds since the epoch), on every replica.
    pub async fn revoke(&self, key: &str, until: u64) {
        self.remember(key, until);
        if let Some(db) = &self.db
            && let Err(e) = postgres::console_revoke(db, key, until).await
        {
            tracing::warn!(error = %e, "console: recording a logout failed");
        }
    }

    /// Whether `key` was revoked. With a database that cannot be read, refuses (fails closed).
    pub async fn is_revoked(&self, key: &str) -> bool {
        if lock(&self.local).contains_key(key) {
            return true;
        }
        match &self.db {
            None => false,
            Some(db) => match postgres::console_is_revoked(db, key).await {
                Ok(revoked) => revoked,
                Err(e) => {
                    tracing::warn!(error = %e, "console: reading logouts failed");
                    true
                }
            },
        }
    }

    /// Records `key` as used; `true` only for the first use across replicas.
    pub async fn take_once(&self, key: &str, until: u64) -> bool {
        let first_here = self.remember(key, until);
        match &self.db {
            None => first_here,
            Some(db) => {
                first_here
                    && postgres::console_take_once(db, key, until)
                        .await
                        .unwrap_or(false)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn revoked_keys_stay_refused_and_states_are_used_once() {
        let r = Revocations::new(None);
        let until = unix_now() + 60;
        assert!(!r.is_revoked("login-a").await);
        r.revoke("login-a", until).await;
        assert!(r.is_revoked("login-a").await);
        assert!(!r.is_revoked("login-b").await);
        assert!(r.take_once("state:x", until).await);
        assert!(!r.take_once("state:x", until).await, "replayed");
        assert!(r.take_once("state:y", until).await);
    }
}
