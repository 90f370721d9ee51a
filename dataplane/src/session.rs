//! MCP sessions: who opened them (the subject; the claims they last came with), what was
//! negotiated, per-upstream state and learned resource routes. `SessionStore`: memory or Postgres.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reflow_crds::{Fingerprint, Identity};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::log_level::LogLevel;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    #[error("session store unavailable: {0}")]
    Unavailable(String),
}

impl SessionError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Unavailable(_) => "unavailable",
        }
    }
}

/// Which targets a session may reach: everything (aggregated `/mcp`) or one target.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Scope {
    Aggregated,
    Target { namespace: String, name: String },
}

/// What the gateway knows about its own session with one upstream (keyed by `namespace/name`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UpstreamState {
    pub session_id: Option<String>,
    pub protocol_version: Option<String>,
    pub initialized: bool,
}

#[derive(Debug, Clone)]
pub struct Session {
    /// 128 random bits (uuid v4), hyphen-free.
    pub id: String,
    /// The subject (user) that opened it: [`subject_of`]. A token of the same user with other
    /// groups or roles still owns the session; another user's does not.
    pub owner: Fingerprint,
    /// The identity the session was last used with (groups and roles decide what it sees);
    /// `None` when the store did not keep it.
    pub claims: Option<Identity>,
    pub scope: Scope,
    pub protocol_version: String,
    pub client_info: Value,
    pub client_capabilities: Value,
    pub upstreams: BTreeMap<String, UpstreamState>,
    /// Resource URI → target key, learned from resources/list (see gateway docs).
    pub resources: HashMap<String, String>,
    /// What `logging/setLevel` asked for; `None` until the client sets one.
    pub log_level: Option<LogLevel>,
    /// Resources subscribed on the session's own children (stateful STDIO Targets), by target
    /// key: a child started for the session on another replica is subscribed to them again.
    pub subscriptions: BTreeMap<String, std::collections::BTreeSet<String>>,
}

impl Session {
    pub fn new(owner: Fingerprint, scope: Scope, protocol_version: String) -> Self {
        Self {
            id: uuid::Uuid::new_v4().simple().to_string(),
            owner,
            claims: None,
            scope,
            protocol_version,
            client_info: Value::Null,
            client_capabilities: Value::Null,
            upstreams: BTreeMap::new(),
            resources: HashMap::new(),
            log_level: None,
            subscriptions: BTreeMap::new(),
        }
    }
}

/// Who owns sessions: the user name alone (issuer-qualified by the authenticator's user prefix),
/// hashed apart from [`Identity::fingerprint`] so the two can never be mistaken for each other.
pub fn subject_of(identity: &Identity) -> Fingerprint {
    let mut h = Sha256::new();
    h.update(b"reflow/session-subject\0");
    h.update(identity.user.as_bytes());
    Fingerprint(h.finalize().into())
}

impl Session {
    /// A session owned by `identity`'s subject, remembering its claims.
    pub fn opened_by(identity: &Identity, scope: Scope, protocol_version: String) -> Self {
        let mut s = Self::new(subject_of(identity), scope, protocol_version);
        s.claims = Some(identity.clone());
        s
    }

    /// True if `identity` comes with other groups or roles than the session last saw.
    pub fn claims_differ(&self, identity: &Identity) -> bool {
        self.claims
            .as_ref()
            .is_none_or(|c| c.groups != identity.groups || c.roles != identity.roles)
    }
}

/// Called with the id of each session a store expired on its own (idle), so whatever else
/// the gateway holds for it (upstream links) can be released. Runs on the expiring thread:
/// it must not block.
pub type ExpiryHook = Arc<dyn Fn(&str) + Send + Sync>;

/// Sessions are shared (`Arc`): reading one on the request path copies nothing. Changes go
/// through `put` with an updated copy (rare: upstream state, resource routes).
pub trait SessionStore: Send + Sync + 'static {
    fn create(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>>;
    /// The session, if it exists and has not expired.
    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>>;
    /// Replaces the stored session (upstream state, resource routes) and refreshes last-used.
    fn put(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>>;
    fn touch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionError>>;
    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, SessionError>>;
    /// Live sessions (for the sessions gauge).
    fn count(&self) -> usize;

    /// Live sessions `owner` holds here (for the per-user limit); a store that cannot tell
    /// answers 0, which leaves only the global limit.
    fn count_owned(&self, owner: &Fingerprint) -> usize {
        let _ = owner;
        0
    }

    /// `get` and, when found, `touch`, in one step where the store can.
    fn get_touched<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>> {
        Box::pin(async move {
            let found = self.get(id).await?;
            if found.is_some() {
                self.touch(id).await?;
            }
            Ok(found)
        })
    }

    /// Registers `hook` for sessions this store expires itself. A store that never expires
    /// sessions on its own (or cannot tell) ignores it.
    fn on_expire(&self, hook: ExpiryHook) {
        let _ = hook;
    }

    /// Live sessions, most recently used first, at most `limit`: `owner`'s, or everyone's
    /// with `None` (the web console). A store that cannot list answers none.
    fn list<'a>(
        &'a self,
        owner: Option<&'a Fingerprint>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Session>>, SessionError>> {
        let _ = (owner, limit);
        Box::pin(async { Ok(Vec::new()) })
    }
}

struct Entry {
    session: Arc<Session>,
    last_used: Instant,
}

/// Sessions in process memory, expired after `idle` without use.
pub struct MemorySessionStore {
    sessions: Mutex<HashMap<String, Entry>>,
    idle: Duration,
    hooks: Mutex<Vec<ExpiryHook>>,
}

impl MemorySessionStore {
    pub fn new(idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            sessions: Mutex::new(HashMap::new()),
            idle,
            hooks: Mutex::new(Vec::new()),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        // A panic while holding the lock cannot leave a half-written map entry.
        self.sessions.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Tells the hooks (outside the map lock) about expired sessions.
    fn expired(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let hooks = self.hooks.lock().unwrap_or_else(|p| p.into_inner()).clone();
        for id in ids {
            for hook in &hooks {
                hook(id);
            }
        }
    }

    /// Drops expired sessions (telling the expiry hooks); returns how many.
    pub fn sweep(&self) -> usize {
        let now = Instant::now();
        let mut gone = Vec::new();
        {
            let mut map = self.lock();
            map.retain(|id, e| {
                let live = now.duration_since(e.last_used) < self.idle;
                if !live {
                    gone.push(id.clone());
                }
                live
            });
        }
        self.expired(&gone);
        gone.len()
    }

    /// The live session, refreshed if `touch`; an expired one is removed (and reported).
    fn lookup(&self, id: &str, touch: bool) -> Option<Arc<Session>> {
        let now = Instant::now();
        let mut map = self.lock();
        match map.get_mut(id) {
            Some(e) if now.duration_since(e.last_used) >= self.idle => {
                map.remove(id);
                drop(map);
                self.expired(&[id.to_owned()]);
                None
            }
            Some(e) => {
                if touch {
                    e.last_used = now;
                }
                Some(e.session.clone())
            }
            None => None,
        }
    }
}

impl SessionStore for MemorySessionStore {
    fn create(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>> {
        let entry = Entry {
            session: Arc::new(session),
            last_used: Instant::now(),
        };
        self.lock().insert(entry.session.id.clone(), entry);
        Box::pin(async { Ok(()) })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>> {
        let found = self.lookup(id, false);
        Box::pin(async move { Ok(found) })
    }

    fn get_touched<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>> {
        let found = self.lookup(id, true);
        Box::pin(async move { Ok(found) })
    }

    fn put(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>> {
        let mut map = self.lock();
        // A session deleted meanwhile stays deleted.
        if let Some(slot) = map.get_mut(&session.id) {
            slot.session = Arc::new(session);
            slot.last_used = Instant::now();
        }
        Box::pin(async { Ok(()) })
    }

    fn touch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionError>> {
        if let Some(e) = self.lock().get_mut(id) {
            e.last_used = Instant::now();
        }
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, SessionError>> {
        let removed = self.lock().remove(id).is_some();
        Box::pin(async move { Ok(removed) })
    }

    fn count(&self) -> usize {
        self.lock().len()
    }

    fn count_owned(&self, owner: &Fingerprint) -> usize {
        owned_by(owner, self.lock().values().map(|e| &*e.session))
    }

    fn on_expire(&self, hook: ExpiryHook) {
        self.hooks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(hook);
    }

    fn list<'a>(
        &'a self,
        owner: Option<&'a Fingerprint>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Session>>, SessionError>> {
        let mut found: Vec<(Instant, Arc<Session>)> = self
            .lock()
            .values()
            .filter(|e| e.last_used.elapsed() < self.idle)
            .filter(|e| owner.is_none_or(|o| &e.session.owner == o))
            .map(|e| (e.last_used, e.session.clone()))
            .collect();
        found.sort_by_key(|(used, _)| std::cmp::Reverse(*used));
        found.truncate(limit);
        Box::pin(async move { Ok(found.into_iter().map(|(_, s)| s).collect()) })
    }
}

/// Live sessions of `owner` among `sessions` (what a store counts per user for the limits).
pub fn owned_by<'a>(owner: &Fingerprint, sessions: impl Iterator<Item = &'a Session>) -> usize {
    sessions.filter(|s| &s.owner == owner).count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::Identity;

    fn fp(user: &str) -> Fingerprint {
        Identity::new(user, Vec::<String>::new(), Vec::<String>::new()).fingerprint()
    }

    #[tokio::test]
    async fn create_get_put_delete() {
        let store = MemorySessionStore::new(Duration::from_secs(60));
        let s = Session::new(fp("alice"), Scope::Aggregated, "2025-06-18".into());
        let id = s.id.clone();
        assert_eq!(id.len(), 32);
        store.create(s).await.unwrap();
        let mut got = Session::clone(&store.get(&id).await.unwrap().unwrap());
        assert_eq!(got.owner, fp("alice"));
        got.resources.insert("file:///a".into(), "ns/t".into());
        store.put(got).await.unwrap();
        let got = store.get(&id).await.unwrap().unwrap();
        assert_eq!(
            got.resources.get("file:///a").map(String::as_str),
            Some("ns/t")
        );
        assert!(store.delete(&id).await.unwrap());
        assert!(store.get(&id).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn list_gives_one_owners_sessions_newest_use_first() {
        let store = MemorySessionStore::new(Duration::from_secs(60));
        let mut ids = Vec::new();
        for user in ["alice", "bob", "alice"] {
            let s = Session::new(fp(user), Scope::Aggregated, "2025-06-18".into());
            ids.push(s.id.clone());
            store.create(s).await.unwrap();
        }
        store.touch(&ids[0]).await.unwrap();
        let alice: Vec<String> = store
            .list(Some(&fp("alice")), 10)
            .await
            .unwrap()
            .iter()
            .map(|s| s.id.clone())
            .collect();
        assert_eq!(alice, [ids[0].clone(), ids[2].clone()]);
        assert_eq!(store.list(None, 10).await.unwrap().len(), 3);
        assert_eq!(store.list(None, 1).await.unwrap().len(), 1);
        assert!(store.list(Some(&fp("carol")), 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn idle_sessions_expire() {
        let store = MemorySessionStore::new(Duration::from_millis(20));
        let s = Session::new(fp("bob"), Scope::Aggregated, "2025-06-18".into());
        let id = s.id.clone();
        store.create(s).await.unwrap();
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert!(store.get(&id).await.unwrap().is_none());
        assert_eq!(store.count(), 0);
    }

    #[tokio::test]
    async fn expiry_hooks_hear_swept_and_lazily_expired_sessions_but_not_deleted_ones() {
        let store = MemorySessionStore::new(Duration::from_millis(30));
        let heard = Arc::new(Mutex::new(Vec::<String>::new()));
        let h = heard.clone();
        store.on_expire(Arc::new(move |id: &str| {
            h.lock().unwrap().push(id.to_owned())
        }));
        let [a, b, c, d] = ["a", "b", "c", "d"]
            .map(|u| Session::new(fp(u), Scope::Aggregated, "2025-06-18".into()));
        let ids = [&a, &b, &c, &d].map(|s| s.id.clone());
        for s in [a, b, c, d] {
            store.create(s).await.unwrap();
        }
        assert!(store.delete(&ids[2]).await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Kept alive by use.
        assert!(store.get_touched(&ids[3]).await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(20)).await;
        // Found expired on lookup, then the rest by the sweep.
        assert!(store.get(&ids[0]).await.unwrap().is_none());
        assert_eq!(store.sweep(), 1);
        let mut got = heard.lock().unwrap().clone();
        got.sort();
        let mut want = vec![ids[0].clone(), ids[1].clone()];
        want.sort();
        assert_eq!(got, want);
        assert_eq!(store.count(), 1);
    }

    #[test]
    fn sessions_belong_to_the_subject_and_notice_other_claims() {
        let dev = Identity::new("alice", ["dev"], Vec::<String>::new());
        let ops = Identity::new("alice", ["ops"], Vec::<String>::new());
        let bob = Identity::new("bob", ["dev"], Vec::<String>::new());
        let s = Session::opened_by(&dev, Scope::Aggregated, String::new());
        assert_eq!(s.owner, subject_of(&ops));
        assert_ne!(s.owner, subject_of(&bob));
        assert_ne!(s.owner, dev.fingerprint());
        assert!(!s.claims_differ(&dev));
        assert!(s.claims_differ(&ops));
        assert!(s.claims_differ(&Identity::new("alice", ["dev"], ["admin"])));
    }

    #[test]
    fn ids_are_unique() {
        let a = Session::new(fp("a"), Scope::Aggregated, String::new());
        let b = Session::new(fp("a"), Scope::Aggregated, String::new());
        assert_ne!(a.id, b.id);
    }
}
