//! Postgres for the two things Reflow keeps durably: MCP sessions (any replica resumes any
//! session) and audit events (batched, spilled to disk while the database is away).
//!
//! One `Database` (a deadpool of tokio-postgres connections) is shared by the session store,
//! the audit sink, the notification bus and the retention job. The URL is a secret: it is held
//! as a `SecretString`, never logged, and errors never quote it.

/// `SELECT <the columns of an AuditRow> FROM reflow_audit_events`, for `concat!` with a
/// `WHERE` clause; `query::audit_row` reads a row in this order.
macro_rules! select_audit_rows {
    () => {
        "SELECT id::text, (extract(epoch FROM time) * 1000)::int8, user_name, session_id, \
         method, target, name, decision, policy, outcome, duration_ms, trace_id \
         FROM reflow_audit_events"
    };
}

mod audit;
mod bus;
mod console_queries;
mod journal;
mod migrations;
mod query;
mod replicas;
mod sessions;

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use secrecy::{ExposeSecret, SecretString};
use tokio_postgres::NoTls;

pub use audit::{AuditSettings, FailurePolicy, PgAuditSink, SPILL_FILE};
pub use bus::{BusError, BusMessage, LocalBus, NotificationBus, PgBus};
pub use console_queries::{
    MinuteStats, audit_event_by_id, audit_events_since, console_is_revoked, console_revoke,
    console_take_once, live_session_ids, minute_stats,
};
pub use journal::{JournalEvent, JournalSettings, REPLAY_BYTES, REPLAY_EVENTS, StreamJournal};
pub use migrations::{MIGRATIONS, migrate};
pub use query::{AuditFilter, AuditRow, purge_expired_audit, query_audit};
pub use replicas::{
    Ownership, Peer, REPLICA_TOKEN_ENV, RegistryError, RegistrySettings, ReplicaRegistry,
    ReplicaStatus, ReplicaToken, SnapshotProbe, list_replicas,
};
pub use sessions::{PgSessionStore, SessionSettings};

/// How long one connection attempt may take: a dead database must not hold requests long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// The URL does not parse. The message never repeats it (it may hold a password).
    #[error("database URL is not a valid Postgres connection string")]
    BadUrl,
    #[error("database pool: {0}")]
    Pool(String),
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    #[error("migration {version} ({name}): {source}")]
    Migration {
        version: i32,
        name: &'static str,
        source: tokio_postgres::Error,
    },
    #[error("audit spill file {path}: {source}")]
    Spill {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

impl PgError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::BadUrl => "bad_url",
            Self::Pool(_) => "pool",
            Self::Db(_) => "db",
            Self::Migration { .. } => "migration",
            Self::Spill { .. } => "spill",
        }
    }
}

impl From<deadpool_postgres::PoolError> for PgError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        // deadpool's messages name the failure (timeout, backend error), never the URL.
        Self::Pool(e.to_string())
    }
}

/// A pool of connections to one database, plus what is needed to open the dedicated
/// `LISTEN` connection of the notification bus.
#[derive(Clone)]
pub struct Database {
    pool: Pool,
    config: tokio_postgres::Config,
}

impl std::fmt::Debug for Database {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Database(<redacted>)")
    }
}

impl Database {
    /// A pool of at most `max_connections`; connects lazily (a database that is down at start
    /// is not an error here: `migrate` is what waits for it).
    pub fn new(url: &SecretString, max_connections: usize) -> Result<Self, PgError> {
        let mut config =
            tokio_postgres::Config::from_str(url.expose_secret()).map_err(|_| PgError::BadUrl)?;
        config.connect_timeout(CONNECT_TIMEOUT);
        if config.get_application_name().is_none() {
            config.application_name("reflow-dataplane");
        }
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(max_connections.max(2))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(CONNECT_TIMEOUT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|e| PgError::Pool(e.to_string()))?;
        Ok(Self { pool, config })
    }

    pub async fn client(&self) -> Result<deadpool_postgres::Object, PgError> {
        Ok(self.pool.get().await?)
    }

    /// A connection outside the pool (the bus keeps one open for `LISTEN`).
    pub(crate) async fn dedicated(
        &self,
    ) -> Result<
        (
            tokio_postgres::Client,
            tokio_postgres::Connection<tokio_postgres::Socket, tokio_postgres::tls::NoTlsStream>,
        ),
        PgError,
    > {
        Ok(self.config.connect(NoTls).await?)
    }

    /// Waits (bounded) until the database answers, then applies the embedded migrations.
    pub async fn connect_and_migrate(&self, wait: Duration) -> Result<(), PgError> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match migrate(self).await {
                Ok(()) => return Ok(()),
                Err(e @ PgError::Migration { .. }) => return Err(e),
                Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
                Err(e) => {
                    tracing::warn!(error = %e, "database not ready; retrying");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }
}
