//! Which replica owns what: each replica registers its address (with a proof only holders of
//! the replica token can make) and beats a heartbeat; each session (and each parked stateless
//! call) is owned by the replica that opened it, until that replica dies and another claims it.
//!
//! The gateway hands a request for something another replica owns to that replica (see the
//! handoff layer of the HTTP surface); this module is only the table side: registration,
//! heartbeat, ownership records, lookups (cached for a short time) and claims.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, Weak};
use std::time::{Duration, Instant};

use hmac::{KeyInit, Mac};
use secrecy::{ExposeSecret, SecretString};
use sha2::Sha256;
use tracing::{debug, info, warn};

use super::journal::{JournalSettings, StreamJournal};
use super::{Database, PgError};

type HmacSha256 = hmac::Hmac<Sha256>;

/// Environment variable holding the replica token (shared by all replicas of one database).
pub const REPLICA_TOKEN_ENV: &str = "REFLOW_REPLICA_TOKEN";

/// Timing of the registry (defaults suit a cluster network; tests shorten them).
#[derive(Debug, Clone)]
pub struct RegistrySettings {
    /// How often this replica marks itself alive.
    pub heartbeat: Duration,
    /// A replica not seen for this long is dead: what it owned may be claimed.
    pub dead_after: Duration,
    /// How long an ownership lookup is reused before it is read again.
    pub cache_ttl: Duration,
    /// Ownership rows of sessions that no longer exist are removed after this long.
    pub orphan_after: Duration,
}

impl Default for RegistrySettings {
    fn default() -> Self {
        Self {
            heartbeat: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
            cache_ttl: Duration::from_secs(2),
            orphan_after: Duration::from_secs(600),
        }
    }
}

/// Another replica, as its verified row names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub id: String,
    /// Base URL (`http://10.0.0.7:8080`) requests are handed to.
    pub address: String,
    /// How long ago it last beat, as the database saw it.
    pub silent_for: Duration,
}

/// Who owns a key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ownership {
    /// Nobody recorded it (not a shared session, or one from before ownership was recorded).
    Unowned,
    Mine,
    Theirs(Peer),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("replica registry: {0}")]
    Db(#[from] PgError),
    /// The owner's row does not carry a proof made with the replica token: written by someone
    /// who does not hold it, so its address is not trusted with a client's request.
    #[error("replica registry: the owner row of replica {0} fails verification")]
    Forged(String),
}

impl RegistryError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Db(e) => e.label(),
            Self::Forged(_) => "forged_owner",
        }
    }
}

/// The shared secret between replicas: it proves registry rows and signs handed-off requests.
#[derive(Clone)]
pub struct ReplicaToken(SecretString);

impl std::fmt::Debug for ReplicaToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ReplicaToken(<redacted>)")
    }
}

impl ReplicaToken {
    pub fn new(secret: SecretString) -> Self {
        Self(secret)
    }

    /// HMAC-SHA256 of `parts` (joined by newlines) under the token, hex.
    pub fn sign(&self, parts: &[&str]) -> String {
        hex::encode(self.mac(parts).finalize().into_bytes())
    }

    /// Whether `signature` (hex) is [`Self::sign`] of `parts`, compared in constant time.
    pub fn verify(&self, parts: &[&str], signature: &str) -> bool {
        match hex::decode(signature) {
            Ok(bytes) => self.mac(parts).verify_slice(&bytes).is_ok(),
            Err(_) => false,
        }
    }

    fn mac(&self, parts: &[&str]) -> HmacSha256 {
        let mut mac = <HmacSha256 as KeyInit>::new_from_slice(self.0.expose_secret().as_bytes())
            .unwrap_or_else(|_| unreachable!("HMAC takes keys of any length"));
        for (i, p) in parts.iter().enumerate() {
            if i > 0 {
                mac.update(b"\n");
            }
            mac.update(p.as_bytes());
        }
        mac
    }
}

struct CachedOwner {
    ownership: Ownership,
    read: Instant,
}

/// This replica's entry in the registry and its view of everyone else's.
pub struct ReplicaRegistry {
    db: Database,
    me: String,
    /// The snapshot (version, hash) this replica serves, written with every beat.
    serving: OnceLock<SnapshotProbe>,
    address: String,
    token: ReplicaToken,
    settings: RegistrySettings,
    cache: Mutex<HashMap<String, CachedOwner>>,
    /// The persisted replay buffers of the sessions this replica owns.
    journal: Arc<StreamJournal>,
}

/// Reads the snapshot (version, hash) a replica serves now.
pub type SnapshotProbe = Box<dyn Fn() -> (u64, String) + Send + Sync>;

/// A replica's row as the console lists it (every replica, live or stale).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub id: String,
    pub address: String,
    /// The snapshot it served at its last beat (none before it reported one).
    pub snapshot_version: Option<i64>,
    pub snapshot_hash: Option<String>,
    /// How long ago it last beat, as the database saw it.
    pub silent_for: Duration,
}

/// Every registered replica, most recently seen first.
pub async fn list_replicas(db: &Database) -> Result<Vec<ReplicaStatus>, PgError> {
    let rows = db
        .client()
        .await?
        .query(
            "SELECT id, address, snapshot_version, snapshot_hash,
                    EXTRACT(EPOCH FROM (now() - seen_at))::float8
             FROM reflow_replicas ORDER BY seen_at DESC, id LIMIT 500",
            &[],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReplicaStatus {
            id: r.get(0),
            address: r.get(1),
            snapshot_version: r.get(2),
            snapshot_hash: r.get(3),
            silent_for: Duration::from_secs_f64(r.get::<_, f64>(4).max(0.0)),
        })
        .collect())
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn proof_parts<'a>(id: &'a str, address: &'a str) -> [&'a str; 3] {
    ["reflow-replica", id, address]
}

impl ReplicaRegistry {
    /// Registers this replica (`me` at `address`) and starts its heartbeat on the current
    /// runtime; the first registration is awaited so peers can find it once this returns.
    pub async fn start(
        db: Database,
        me: String,
        address: String,
        token: ReplicaToken,
        settings: RegistrySettings,
    ) -> Result<Arc<Self>, PgError> {
        let journal = StreamJournal::start(db.clone(), JournalSettings::default());
        let registry = Arc::new(Self {
            db,
            journal,
            me,
            serving: OnceLock::new(),
            address,
            token,
            settings,
            cache: Mutex::new(HashMap::new()),
        });
        registry.beat().await?;
        info!(replica = %registry.me, address = %registry.address, "replica registered");
        tokio::spawn(heartbeat(Arc::downgrade(&registry)));
        Ok(registry)
    }

    pub fn id(&self) -> &str {
        &self.me
    }

    pub fn token(&self) -> &ReplicaToken {
        &self.token
    }

    /// Reports the snapshot this replica serves with each beat (set once, by the app).
    pub fn report_snapshot(&self, probe: SnapshotProbe) {
        let _ = self.serving.set(probe);
    }

    pub fn settings(&self) -> &RegistrySettings {
        &self.settings
    }

    /// Where the sessions' stream events are kept for a replica that takes them over.
    pub fn journal(&self) -> &Arc<StreamJournal> {
        &self.journal
    }

    async fn beat(&self) -> Result<(), PgError> {
        let proof = self.token.sign(&proof_parts(&self.me, &self.address));
        let (version, hash) = match self.serving.get() {
            Some(probe) => {
                let (v, h) = probe();
                (i64::try_from(v).ok(), Some(h))
            }
            None => (None, None),
        };
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO reflow_replicas (id, address, proof, seen_at, snapshot_version,
                                             snapshot_hash)
                 VALUES ($1, $2, $3, now(), $4, $5)
                 ON CONFLICT (id) DO UPDATE
                 SET address = EXCLUDED.address, proof = EXCLUDED.proof, seen_at = now(),
                     snapshot_version = EXCLUDED.snapshot_version,
                     snapshot_hash = EXCLUDED.snapshot_hash",
                &[&self.me, &self.address, &proof, &version, &hash],
            )
            .await?;
        Ok(())
    }

    /// Records that this replica owns `key` (a key someone already owns keeps its owner).
    pub async fn record(&self, key: &str) -> Result<(), PgError> {
        self.db
            .client()
            .await?
            .execute(
                "INSERT INTO reflow_owners (key, replica) VALUES ($1, $2)
                 ON CONFLICT (key) DO NOTHING",
                &[&key, &self.me],
            )
            .await?;
        self.remember(key, Ownership::Mine);
        Ok(())
    }

    /// Forgets `key` (its session ended).
    pub async fn forget(&self, key: &str) -> Result<(), PgError> {
        lock(&self.cache).remove(key);
        self.db
            .client()
            .await?
            .execute("DELETE FROM reflow_owners WHERE key = $1", &[&key])
            .await?;
        Ok(())
    }

    /// Who owns `key`, from the cache when it is fresh.
    pub async fn owner_of(&self, key: &str) -> Result<Ownership, RegistryError> {
        if let Some(c) = lock(&self.cache).get(key)
            && c.read.elapsed() < self.settings.cache_ttl
        {
            return Ok(c.ownership.clone());
        }
        let ownership = self.read_owner(key).await?;
        self.remember(key, ownership.clone());
        Ok(ownership)
    }

    /// Reads the owner of `key` from the database (bypassing the cache), verifying its row.
    pub async fn read_owner(&self, key: &str) -> Result<Ownership, RegistryError> {
        let row = self
            .db
            .client()
            .await
            .map_err(RegistryError::Db)?
            .query_opt(
                "SELECT o.replica, r.address, r.proof,
                        EXTRACT(EPOCH FROM (now() - r.seen_at))::float8
                 FROM reflow_owners o LEFT JOIN reflow_replicas r ON r.id = o.replica
                 WHERE o.key = $1",
                &[&key],
            )
            .await
            .map_err(|e| RegistryError::Db(e.into()))?;
        let Some(row) = row else {
            return Ok(Ownership::Unowned);
        };
        let replica: String = row.get(0);
        if replica == self.me {
            return Ok(Ownership::Mine);
        }
        let (address, proof, silent): (Option<String>, Option<String>, Option<f64>) =
            (row.get(1), row.get(2), row.get(3));
        let (Some(address), Some(proof)) = (address, proof) else {
            // The owner never registered (or its row is gone): nobody can serve it but a claimant.
            return Ok(Ownership::Theirs(Peer {
                id: replica,
                address: String::new(),
                silent_for: Duration::MAX,
            }));
        };
        if !self.token.verify(&proof_parts(&replica, &address), &proof) {
            return Err(RegistryError::Forged(replica));
        }
        Ok(Ownership::Theirs(Peer {
            id: replica,
            address,
            silent_for: Duration::from_secs_f64(silent.unwrap_or(0.0).max(0.0)),
        }))
    }

    /// A replica's row as the heartbeat left it (unverified: for liveness only).
    pub async fn peer(&self, id: &str) -> Result<Option<Peer>, PgError> {
        let row = self
            .db
            .client()
            .await?
            .query_opt(
                "SELECT address, EXTRACT(EPOCH FROM (now() - seen_at))::float8
                 FROM reflow_replicas WHERE id = $1",
                &[&id],
            )
            .await?;
        Ok(row.map(|r| Peer {
            id: id.to_owned(),
            address: r.get(0),
            silent_for: Duration::from_secs_f64(r.get::<_, f64>(1).max(0.0)),
        }))
    }

    /// Whether `peer` has been silent long enough to be dead.
    pub fn is_dead(&self, peer: &Peer) -> bool {
        peer.silent_for >= self.settings.dead_after
    }

    /// Takes `key` over from `from` (a dead or unreachable replica); `true` when this replica
    /// owns it afterwards (it won the claim, or another claim already made it the owner).
    pub async fn claim(&self, key: &str, from: &str) -> Result<bool, PgError> {
        let row = self
            .db
            .client()
            .await?
            .query_one(
                "WITH u AS (UPDATE reflow_owners SET replica = $3 WHERE key = $1 AND replica = $2
                            RETURNING replica)
                 SELECT COALESCE((SELECT replica FROM u),
                                 (SELECT replica FROM reflow_owners WHERE key = $1))",
                &[&key, &from, &self.me],
            )
            .await?;
        let owner: Option<String> = row.get(0);
        let mine = owner.as_deref() == Some(self.me.as_str());
        if mine {
            warn!(key, from, "took ownership over from an unreachable replica");
            self.remember(key, Ownership::Mine);
        } else {
            lock(&self.cache).remove(key);
        }
        Ok(mine)
    }

    fn remember(&self, key: &str, ownership: Ownership) {
        let mut cache = lock(&self.cache);
        if cache.len() > 100_000 {
            let ttl = self.settings.cache_ttl;
            cache.retain(|_, c| c.read.elapsed() < ttl);
        }
        cache.insert(
            key.to_owned(),
            CachedOwner {
                ownership,
                read: Instant::now(),
            },
        );
    }

    async fn remove_orphans(&self) -> Result<u64, PgError> {
        let age = self.settings.orphan_after.as_secs_f64();
        Ok(self
            .db
            .client()
            .await?
            .execute(
                "DELETE FROM reflow_owners o
                 WHERE o.created_at < now() - make_interval(secs => $1)
                   AND NOT EXISTS (SELECT 1 FROM reflow_sessions s
                                   WHERE 's:' || s.id = o.key)",
                &[&age],
            )
            .await?)
    }
}

/// Beats until the registry is dropped. A replica whose beats stopped for longer than
/// `dead_after` (frozen, cut off) forgets its cached ownerships: others may have claimed them.
async fn heartbeat(registry: Weak<ReplicaRegistry>) {
    let mut last_ok = Instant::now();
    let mut last_sweep = Instant::now();
    loop {
        let Some(r) = registry.upgrade() else { return };
        let every = r.settings.heartbeat;
        tokio::time::sleep(every).await;
        if last_ok.elapsed() >= r.settings.dead_after {
            lock(&r.cache).clear();
        }
        match r.beat().await {
            Ok(()) => last_ok = Instant::now(),
            Err(e) => debug!(error = %e, "replica heartbeat failed"),
        }
        if last_sweep.elapsed() >= r.settings.orphan_after.min(Duration::from_secs(60)) {
            last_sweep = Instant::now();
            if let Err(e) = r.remove_orphans().await {
                debug!(error = %e, "ownership cleanup failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_verify_only_for_their_parts_and_token() {
        let t = ReplicaToken::new(SecretString::from("s3cret-token"));
        let other = ReplicaToken::new(SecretString::from("another-token"));
        let sig = t.sign(&["a", "b"]);
        assert!(t.verify(&["a", "b"], &sig));
        assert!(!t.verify(&["a", "c"], &sig));
        assert!(!other.verify(&["a", "b"], &sig));
        assert!(!t.verify(&["a", "b"], "zz-not-hex"));
        assert!(!format!("{t:?}").contains("s3cret"));
    }
}
