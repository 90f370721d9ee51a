//! The Postgres session store: every replica can resume every session. Each replica keeps a
//! local cache in front of the table so the hot path reads memory:
//!
//! * `create` and `put` write through (another replica may get the next request at once); if the
//!   database is away they are kept and written by the flusher when it returns; a `put` merges
//!   upstream states and resource routes into the row, so two replicas adding entries to one
//!   session concurrently both keep theirs;
//! * `touch` is write-behind: the flusher extends `expires_at` for the sessions used since its
//!   last run, in one statement;
//! * a changed or deleted session is announced on `LISTEN/NOTIFY` (channel `reflow_session`) and
//!   other replicas drop their cached copy; a cached copy is also re-read after `cache_ttl`, in
//!   case a notification was missed while the listening connection was down.
//!
//! Upstream session ids are sealed (AES-256-GCM, AAD bound to the session and target) before
//! they are stored: with them, anyone reading the table could talk to upstreams as the user.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use reflow_crds::seal::SealedValue;
use reflow_crds::{Fingerprint, SealingKey};
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use super::bus::{SESSION_CHANNEL, SessionChange};
use super::{Database, PgError};
use crate::session::{ExpiryHook, Scope, Session, SessionError, SessionStore, UpstreamState};

#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// Sliding expiry: a session unused this long is gone.
    pub idle: Duration,
    /// A cached copy older than this is re-read from the database.
    pub cache_ttl: Duration,
    /// How often touches and unsaved writes are flushed.
    pub flush_interval: Duration,
    /// How often expired rows are deleted.
    pub cleanup_interval: Duration,
}

impl SessionSettings {
    pub fn new(idle: Duration) -> Self {
        Self {
            idle,
            cache_ttl: Duration::from_secs(30),
            flush_interval: Duration::from_secs(1),
            cleanup_interval: Duration::from_secs(60),
        }
    }
}

struct Cached {
    session: Arc<Session>,
    loaded: Instant,
    last_used: Instant,
}

pub struct PgSessionStore {
    db: Database,
    key: SealingKey,
    settings: SessionSettings,
    /// Tags this replica's change notifications so it ignores its own.
    replica: String,
    cache: Mutex<HashMap<String, Cached>>,
    touched: Mutex<HashSet<String>>,
    /// Creates and puts the database did not take yet.
    unsaved: Mutex<HashMap<String, Arc<Session>>>,
    hooks: Mutex<Vec<ExpiryHook>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(e: impl std::fmt::Display) -> SessionError {
    SessionError::Unavailable(e.to_string())
}

impl PgSessionStore {
    /// The store and its flusher task (on the current runtime). `changes` carries other
    /// replicas' change notifications (from [`super::PgBus::session_changes`]).
    pub fn start(
        db: Database,
        key: SealingKey,
        settings: SessionSettings,
        replica: String,
        changes: Option<broadcast::Receiver<SessionChange>>,
    ) -> Arc<Self> {
        let store = Arc::new(Self {
            db,
            key,
            settings,
            replica,
            cache: Mutex::new(HashMap::new()),
            touched: Mutex::new(HashSet::new()),
            unsaved: Mutex::new(HashMap::new()),
            hooks: Mutex::new(Vec::new()),
        });
        let weak = Arc::downgrade(&store);
        tokio::spawn(async move { flusher(weak).await });
        if let Some(mut rx) = changes {
            let weak = Arc::downgrade(&store);
            tokio::spawn(async move {
                loop {
                    match rx.recv().await {
                        Ok(change) => match weak.upgrade() {
                            Some(store) if change.replica != store.replica => {
                                lock(&store.cache).remove(&change.session_id);
                            }
                            Some(_) => {}
                            None => return,
                        },
                        // Missed some: drop the whole cache rather than serve a stale copy.
                        Err(broadcast::error::RecvError::Lagged(_)) => match weak.upgrade() {
                            Some(store) => lock(&store.cache).clear(),
                            None => return,
                        },
                        Err(broadcast::error::RecvError::Closed) => return,
                    }
                }
            });
        }
        store
    }

    fn cache_insert(&self, session: Arc<Session>) {
        let now = Instant::now();
        lock(&self.cache).insert(
            session.id.clone(),
            Cached {
                session,
                loaded: now,
                last_used: now,
            },
        );
    }

    /// A fresh cached copy, if there is one.
    fn cached(&self, id: &str, touch: bool) -> Option<Arc<Session>> {
        let mut cache = lock(&self.cache);
        let e = cache.get_mut(id)?;
        let now = Instant::now();
        if now.duration_since(e.loaded) >= self.settings.cache_ttl
            || now.duration_since(e.last_used) >= self.settings.idle
        {
            return None;
        }
        if touch {
            e.last_used = now;
        }
        Some(e.session.clone())
    }

    /// Any cached copy, however old (served while the database is away). It counts as fresh
    /// for another `cache_ttl`, so an outage costs one failed read per session per TTL, not
    /// one per request.
    fn stale(&self, id: &str) -> Option<Arc<Session>> {
        lock(&self.cache).get_mut(id).map(|e| {
            e.loaded = Instant::now();
            e.session.clone()
        })
    }

    async fn lookup(&self, id: &str, touch: bool) -> Result<Option<Arc<Session>>, SessionError> {
        if let Some(s) = self.cached(id, touch) {
            if touch {
                lock(&self.touched).insert(id.to_owned());
            }
            return Ok(Some(s));
        }
        match self.load(id).await {
            Ok(Some(session)) => {
                let session = Arc::new(session);
                self.cache_insert(session.clone());
                if touch {
                    lock(&self.touched).insert(id.to_owned());
                }
                Ok(Some(session))
            }
            Ok(None) => {
                if lock(&self.unsaved).contains_key(id) {
                    return Ok(self.stale(id));
                }
                lock(&self.cache).remove(id);
                Ok(None)
            }
            Err(e) => match self.stale(id) {
                // Static stability: a session this replica knows keeps working.
                Some(s) => {
                    debug!(error = %e, "session store unreachable; serving the cached session");
                    Ok(Some(s))
                }
                None => Err(unavailable(e)),
            },
        }
    }

    async fn load(&self, id: &str) -> Result<Option<Session>, PgError> {
        let client = self.db.client().await?;
        let stmt = client
            .prepare_cached(
                "SELECT owner, scope, protocol_version, client_info, client_capabilities,
                        upstreams, resources, claims, log_level, subscriptions
                 FROM reflow_sessions WHERE id = $1 AND expires_at > now()",
            )
            .await?;
        let Some(row) = client.query_opt(&stmt, &[&id]).await? else {
            return Ok(None);
        };
        let owner: String = row.get(0);
        let Some(owner) = parse_fingerprint(&owner) else {
            warn!(
                session = id,
                "stored session has a malformed owner; ignored"
            );
            return Ok(None);
        };
        let scope: String = row.get(1);
        let scope = match scope.split_once('/') {
            Some((namespace, name)) => Scope::Target {
                namespace: namespace.to_owned(),
                name: name.to_owned(),
            },
            None => Scope::Aggregated,
        };
        let upstreams: Value = row.get(5);
        let upstreams: BTreeMap<String, StoredUpstream> =
            serde_json::from_value(upstreams).unwrap_or_default();
        let upstreams = upstreams
            .into_iter()
            .map(|(k, u)| {
                let state = u.open(&self.key, id, &k);
                (k, state)
            })
            .collect();
        let resources: Value = row.get(6);
        let claims: Option<Value> = row.get(7);
        let log_level: Option<String> = row.get(8);
        let subscriptions: Option<Value> = row.get(9);
        Ok(Some(Session {
            id: id.to_owned(),
            owner,
            claims: claims.as_ref().and_then(claims_from_json),
            scope,
            protocol_version: row.get(2),
            client_info: row.get(3),
            client_capabilities: row.get(4),
            upstreams,
            resources: serde_json::from_value(resources).unwrap_or_default(),
            log_level: log_level.and_then(|l| l.parse().ok()),
            subscriptions: subscriptions
                .and_then(|v| serde_json::from_value(v).ok())
                .unwrap_or_default(),
        }))
    }

    /// Inserts or replaces the row (`insert`), or only replaces it, and tells other replicas.
    /// Subscriptions are taken as they are (only the session's owner changes them).
    async fn save(&self, s: &Session, insert: bool) -> Result<(), PgError> {
        let client = self.db.client().await?;
        let scope = match &s.scope {
            Scope::Aggregated => String::new(),
            Scope::Target { namespace, name } => format!("{namespace}/{name}"),
        };
        let upstreams: BTreeMap<&str, StoredUpstream> = s
            .upstreams
            .iter()
            .map(|(k, u)| (k.as_str(), StoredUpstream::seal(&self.key, &s.id, k, u)))
            .collect();
        // Maps of strings always serialize; an empty object keeps the row's merge well-formed.
        let upstreams =
            serde_json::to_value(upstreams).unwrap_or_else(|_| Value::Object(Default::default()));
        let resources = serde_json::to_value(&s.resources)
            .unwrap_or_else(|_| Value::Object(Default::default()));
        let claims = s.claims.as_ref().map(claims_to_json);
        let log_level = s.log_level.map(|l| l.as_str());
        let subscriptions = serde_json::to_value(&s.subscriptions)
            .unwrap_or_else(|_| Value::Object(Default::default()));
        let idle = self.settings.idle.as_secs_f64();
        let change = format!("{} {}", self.replica, s.id);
        if insert {
            let stmt = client
                .prepare_cached(
                    "WITH w AS (
                       INSERT INTO reflow_sessions (id, owner, scope, protocol_version, client_info,
                           client_capabilities, upstreams, resources, expires_at, claims, log_level,
                           subscriptions)
                       VALUES ($1, $2, $3, $4, $5, $6, $7, $8, now() + make_interval(secs => $9),
                           $12, $13, $14)
                       ON CONFLICT (id) DO UPDATE
                       SET upstreams = reflow_sessions.upstreams || EXCLUDED.upstreams,
                           resources = reflow_sessions.resources || EXCLUDED.resources,
                           claims = COALESCE(EXCLUDED.claims, reflow_sessions.claims),
                           log_level = COALESCE(EXCLUDED.log_level, reflow_sessions.log_level),
                           subscriptions = EXCLUDED.subscriptions,
                           updated_at = now(),
                           expires_at = EXCLUDED.expires_at
                       RETURNING id)
                     SELECT pg_notify($10, $11) FROM w",
                )
                .await?;
            client
                .query(
                    &stmt,
                    &[
                        &s.id,
                        &s.owner.to_hex(),
                        &scope,
                        &s.protocol_version,
                        &s.client_info,
                        &s.client_capabilities,
                        &upstreams,
                        &resources,
                        &idle,
                        &SESSION_CHANNEL,
                        &change,
                        &claims,
                        &log_level,
                        &subscriptions,
                    ],
                )
                .await?;
        } else {
            // A session deleted meanwhile stays deleted. Upstream states and resource routes
            // only ever gain or replace entries, so merging keeps what another replica added
            // concurrently instead of the last writer erasing it.
            let stmt = client
                .prepare_cached(
                    "WITH w AS (
                       UPDATE reflow_sessions SET upstreams = upstreams || $2,
                           resources = resources || $3, updated_at = now(),
                           claims = COALESCE($7, claims), log_level = COALESCE($8, log_level),
                           subscriptions = $9,
                           expires_at = now() + make_interval(secs => $4)
                       WHERE id = $1
                       RETURNING id)
                     SELECT pg_notify($5, $6) FROM w",
                )
                .await?;
            client
                .query(
                    &stmt,
                    &[
                        &s.id,
                        &upstreams,
                        &resources,
                        &idle,
                        &SESSION_CHANNEL,
                        &change,
                        &claims,
                        &log_level,
                        &subscriptions,
                    ],
                )
                .await?;
        }
        Ok(())
    }

    /// Writes creates/puts kept while the database was away; extends touched sessions.
    async fn flush(&self) {
        let unsaved: Vec<Arc<Session>> = lock(&self.unsaved).values().cloned().collect();
        for s in unsaved {
            if self.save(&s, true).await.is_err() {
                return;
            }
            let mut pending = lock(&self.unsaved);
            // Only forget it if no newer version arrived meanwhile.
            if pending.get(&s.id).is_some_and(|p| Arc::ptr_eq(p, &s)) {
                pending.remove(&s.id);
            }
        }
        let touched: Vec<String> = lock(&self.touched).drain().collect();
        if touched.is_empty() {
            return;
        }
        let done = async {
            let client = self.db.client().await?;
            let stmt = client
                .prepare_cached(
                    "UPDATE reflow_sessions SET expires_at = now() + make_interval(secs => $2)
                     WHERE id = ANY($1) AND expires_at > now()",
                )
                .await?;
            client
                .execute(&stmt, &[&touched, &self.settings.idle.as_secs_f64()])
                .await?;
            Ok::<_, PgError>(())
        }
        .await;
        if let Err(e) = done {
            debug!(error = %e, "session touches not flushed; retrying");
            lock(&self.touched).extend(touched);
        }
    }

    /// Evicts cache entries idle here for longer than the idle timeout. A session that is still
    /// alive in the database (used on another replica) stays; one that is gone is reported to
    /// the expiry hooks so its upstream links here are closed.
    async fn sweep(&self) {
        let now = Instant::now();
        let idle: Vec<String> = lock(&self.cache)
            .iter()
            .filter(|(_, e)| now.duration_since(e.last_used) >= self.settings.idle)
            .map(|(id, _)| id.clone())
            .collect();
        if idle.is_empty() {
            return;
        }
        let alive = async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "SELECT id FROM reflow_sessions WHERE id = ANY($1) AND expires_at > now()",
                    &[&idle],
                )
                .await?;
            Ok::<_, PgError>(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<HashSet<_>>(),
            )
        }
        .await;
        let Ok(alive) = alive else { return };
        let gone: Vec<String> = {
            let mut cache = lock(&self.cache);
            idle.into_iter()
                .filter(|id| !alive.contains(id))
                .filter(|id| cache.remove(id).is_some())
                .collect()
        };
        self.expired(&gone);
    }

    /// Deletes expired rows (any replica may do it; the statement is idempotent).
    async fn cleanup(&self) {
        let done = async {
            let client = self.db.client().await?;
            let rows = client
                .query(
                    "DELETE FROM reflow_sessions WHERE expires_at <= now() RETURNING id",
                    &[],
                )
                .await?;
            Ok::<_, PgError>(
                rows.iter()
                    .map(|r| r.get::<_, String>(0))
                    .collect::<Vec<_>>(),
            )
        }
        .await;
        if let Ok(ids) = done {
            let gone: Vec<String> = {
                let mut cache = lock(&self.cache);
                ids.into_iter()
                    .filter(|id| cache.remove(id).is_some())
                    .collect()
            };
            self.expired(&gone);
        }
    }

    fn expired(&self, ids: &[String]) {
        if ids.is_empty() {
            return;
        }
        let hooks = lock(&self.hooks).clone();
        for id in ids {
            for hook in &hooks {
                hook(id);
            }
        }
    }
}

async fn flusher(store: std::sync::Weak<PgSessionStore>) {
    let Some(s) = store.upgrade() else { return };
    let flush_every = s.settings.flush_interval;
    let cleanup_every = s.settings.cleanup_interval;
    drop(s);
    let mut last_cleanup = Instant::now();
    loop {
        tokio::time::sleep(flush_every).await;
        let Some(s) = store.upgrade() else { return };
        s.flush().await;
        if last_cleanup.elapsed() >= cleanup_every {
            last_cleanup = Instant::now();
            s.cleanup().await;
            s.sweep().await;
        }
    }
}

fn parse_fingerprint(hex_text: &str) -> Option<Fingerprint> {
    let bytes = hex::decode(hex_text).ok()?;
    Some(Fingerprint(bytes.try_into().ok()?))
}

/// The claims a session last saw, as stored: what policy and isolation depend on.
fn claims_to_json(id: &reflow_crds::Identity) -> Value {
    serde_json::json!({
        "user": &*id.user,
        "groups": id.groups.iter().map(|g| &**g).collect::<Vec<&str>>(),
        "roles": id.roles.iter().map(|r| &**r).collect::<Vec<&str>>(),
    })
}

/// Stored claims back; malformed ones read as unknown (the next request records them again).
fn claims_from_json(v: &Value) -> Option<reflow_crds::Identity> {
    let strings = |key: &str| -> Option<Vec<String>> {
        v.get(key)?
            .as_array()?
            .iter()
            .map(|s| s.as_str().map(str::to_owned))
            .collect()
    };
    let user = v.get("user")?.as_str()?;
    Some(reflow_crds::Identity::new(
        user,
        strings("groups")?,
        strings("roles")?,
    ))
}

/// One upstream's state as stored: the upstream session id sealed.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct StoredUpstream {
    session_id: Option<SealedValue>,
    protocol_version: Option<String>,
    initialized: bool,
}

fn aad(session: &str, target: &str) -> String {
    format!("reflow/session-upstream/{session}/{target}")
}

impl StoredUpstream {
    fn seal(key: &SealingKey, session: &str, target: &str, u: &UpstreamState) -> Self {
        Self {
            session_id: u
                .session_id
                .as_deref()
                .map(|sid| key.seal(&aad(session, target), sid)),
            protocol_version: u.protocol_version.clone(),
            initialized: u.initialized,
        }
    }

    /// The state; an id that does not open (key rotated) is forgotten, so the upstream session
    /// is re-established on next use.
    fn open(self, key: &SealingKey, session: &str, target: &str) -> UpstreamState {
        let session_id = self
            .session_id
            .and_then(|v| key.open(&aad(session, target), &v).ok())
            .map(|s| s.expose_secret().to_owned());
        UpstreamState {
            initialized: self.initialized && session_id.is_some(),
            session_id,
            protocol_version: self.protocol_version,
        }
    }
}

impl SessionStore for PgSessionStore {
    fn create(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let session = Arc::new(session);
            self.cache_insert(session.clone());
            if let Err(e) = self.save(&session, true).await {
                warn!(error = %e, "session not written to the database yet; will retry");
                lock(&self.unsaved).insert(session.id.clone(), session);
            }
            Ok(())
        })
    }

    fn get<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>> {
        Box::pin(self.lookup(id, false))
    }

    fn get_touched<'a>(
        &'a self,
        id: &'a str,
    ) -> BoxFuture<'a, Result<Option<Arc<Session>>, SessionError>> {
        Box::pin(self.lookup(id, true))
    }

    fn put(&self, session: Session) -> BoxFuture<'_, Result<(), SessionError>> {
        Box::pin(async move {
            let session = Arc::new(session);
            // Not cached here (deleted, or invalidated by another replica's change): the row
            // is still updated if it exists, merged with that change.
            if let Some(e) = lock(&self.cache).get_mut(&session.id) {
                e.session = session.clone();
                e.last_used = Instant::now();
            }
            let pending = lock(&self.unsaved).contains_key(&session.id);
            if let Err(e) = self.save(&session, pending).await {
                warn!(error = %e, "session change not written to the database yet; will retry");
                lock(&self.unsaved).insert(session.id.clone(), session);
            }
            Ok(())
        })
    }

    fn touch<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<(), SessionError>> {
        if let Some(e) = lock(&self.cache).get_mut(id) {
            e.last_used = Instant::now();
        }
        lock(&self.touched).insert(id.to_owned());
        Box::pin(async { Ok(()) })
    }

    fn delete<'a>(&'a self, id: &'a str) -> BoxFuture<'a, Result<bool, SessionError>> {
        Box::pin(async move {
            let cached = lock(&self.cache).remove(id).is_some();
            let unsaved = lock(&self.unsaved).remove(id).is_some();
            lock(&self.touched).remove(id);
            let client = self.db.client().await.map_err(unavailable)?;
            let change = format!("{} {id}", self.replica);
            let rows = client
                .query(
                    "WITH d AS (DELETE FROM reflow_sessions WHERE id = $1 RETURNING id)
                     SELECT pg_notify($2, $3) FROM d",
                    &[&id, &SESSION_CHANNEL, &change],
                )
                .await
                .map_err(unavailable)?;
            Ok(cached || unsaved || !rows.is_empty())
        })
    }

    fn count(&self) -> usize {
        lock(&self.cache).len()
    }

    fn count_owned(&self, owner: &reflow_crds::Fingerprint) -> usize {
        crate::session::owned_by(owner, lock(&self.cache).values().map(|c| &*c.session))
    }

    fn on_expire(&self, hook: ExpiryHook) {
        lock(&self.hooks).push(hook);
    }

    fn list<'a>(
        &'a self,
        owner: Option<&'a Fingerprint>,
        limit: usize,
    ) -> BoxFuture<'a, Result<Vec<Arc<Session>>, SessionError>> {
        Box::pin(async move {
            let owner = owner.map(Fingerprint::to_hex);
            let limit = i64::try_from(limit).unwrap_or(i64::MAX);
            let ids = super::live_session_ids(&self.db, owner.as_deref(), limit)
                .await
                .map_err(unavailable)?;
            let mut out = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(s) = self.lookup(&id, false).await? {
                    out.push(s);
                }
            }
            Ok(out)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SealingKey {
        SealingKey::from_bytes(&[7; 32])
    }

    fn state() -> UpstreamState {
        UpstreamState {
            session_id: Some("upstream-session-secret".into()),
            protocol_version: Some("2025-06-18".into()),
            initialized: true,
        }
    }

    #[test]
    fn stored_upstream_ids_are_sealed_and_bound_to_session_and_target() {
        let stored = StoredUpstream::seal(&key(), "s1", "ns/t", &state());
        let text = serde_json::to_string(&stored).unwrap_or_default();
        assert!(!text.contains("upstream-session-secret"), "{text}");
        let back: StoredUpstream = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.open(&key(), "s1", "ns/t"), state());

        // Copied onto another session or target, or opened with another key: forgotten, so the
        // upstream session is re-established instead of borrowed.
        for (k, session, target) in [
            (key(), "s2", "ns/t"),
            (key(), "s1", "ns/other"),
            (SealingKey::from_bytes(&[8; 32]), "s1", "ns/t"),
        ] {
            let copy: StoredUpstream =
                serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}"));
            let opened = copy.open(&k, session, target);
            assert_eq!(opened.session_id, None);
            assert!(!opened.initialized);
        }
    }

    #[test]
    fn claims_round_trip_and_malformed_ones_read_as_unknown() {
        let id = reflow_crds::Identity::new("alice", ["ops", "dev"], ["admin"]);
        assert_eq!(claims_from_json(&claims_to_json(&id)), Some(id));
        assert_eq!(
            claims_from_json(&serde_json::json!({"user": "a", "groups": [1]})),
            None
        );
        assert_eq!(
            claims_from_json(&serde_json::json!({"groups": [], "roles": []})),
            None
        );
    }

    #[test]
    fn fingerprints_round_trip_through_hex_and_bad_ones_are_refused() {
        let fp = reflow_crds::Identity::new("a", Vec::<String>::new(), Vec::<String>::new())
            .fingerprint();
        assert_eq!(parse_fingerprint(&fp.to_hex()), Some(fp));
        assert_eq!(parse_fingerprint("zz"), None);
        assert_eq!(parse_fingerprint("abcd"), None);
    }
}
