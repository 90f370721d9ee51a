//! Where sessions, audit and the notification bus live: in Postgres when a database is
//! configured, else in memory and on a JSON-lines sink.

use std::sync::Arc;
use std::time::Duration;

use reflow_crds::SealingKey;
use tracing::{info, warn};

use super::error::{AppError, Context};
use crate::config::{AuditTarget, Config, DATABASE_URL_ENV};
use crate::process_guard::secret_env;
use crate::{audit, postgres, session};
use secrecy::ExposeSecret;

/// Sessions, audit and the notification bus, in Postgres when a database is configured.
pub struct Stores {
    pub sessions: Arc<dyn session::SessionStore>,
    pub audit: Arc<dyn audit::AuditSink>,
    /// Closed (flushed or spilled) on shutdown.
    pub pg_audit: Option<Arc<postgres::PgAuditSink>>,
    /// Only with a database: one replica needs no bus (its own streams are all there is).
    pub bus: Option<Arc<dyn postgres::NotificationBus>>,
    /// The database itself, when configured (the web console reads audit and sessions there).
    pub database: Option<postgres::Database>,
    /// With a database and a replica token: where replicas find what each owns.
    pub replicas: Option<Arc<postgres::ReplicaRegistry>>,
}

/// Opens the stores the configuration names (migrating the database first). `listening` is the
/// address this replica serves on, advertised to the others when no `gateway.replicas.advertise`
/// is set.
pub async fn stores(
    config: &Config,
    key: &SealingKey,
    listening: &str,
) -> Result<Stores, AppError> {
    let idle = Duration::from_secs(config.gateway.session_idle_seconds);
    let env_url = secret_env(DATABASE_URL_ENV).map(|s| s.expose_secret().to_owned());
    let db = match config.database_url(env_url.as_deref())? {
        Some(url) => {
            let max = config.database.as_ref().map_or(16, |d| d.max_connections);
            let db = postgres::Database::new(&url, max)?;
            // Several replicas may start together: the migrations take a lock.
            db.connect_and_migrate(Duration::from_secs(60))
                .await
                .context("preparing the database")?;
            info!("sessions and audit in Postgres");
            Some(db)
        }
        None => None,
    };
    let (audit, pg_audit) = audit_sink(config, db.as_ref())?;
    let database = db.clone();
    let replica = uuid::Uuid::new_v4().simple().to_string();
    let replicas = match &db {
        Some(db) => replica_registry(config, db, &replica, listening).await?,
        None => None,
    };
    let (sessions, bus) = session_store(db, key, idle, replica);
    Ok(Stores {
        sessions,
        audit,
        pg_audit,
        bus,
        database,
        replicas,
    })
}

/// The replica registry, when the replica token is set (without it no replica trusts another,
/// and each serves only what reaches it: the client's load balancer must be sticky).
async fn replica_registry(
    config: &Config,
    db: &postgres::Database,
    replica: &str,
    listening: &str,
) -> Result<Option<Arc<postgres::ReplicaRegistry>>, AppError> {
    let Some(token) = secret_env(postgres::REPLICA_TOKEN_ENV) else {
        warn!(
            "{} is not set: replicas do not hand requests to each other",
            postgres::REPLICA_TOKEN_ENV
        );
        return Ok(None);
    };
    if token.expose_secret().len() < 16 {
        return Err(AppError::Invalid(format!(
            "{} must be at least 16 characters",
            postgres::REPLICA_TOKEN_ENV
        )));
    }
    let r = &config.gateway.replicas;
    let address = match &r.advertise {
        Some(a) => a.clone(),
        None if listening.contains("://0.0.0.0:") || listening.contains("://[::]:") => {
            return Err(AppError::Invalid(
                "gateway.replicas.advertise is required when listening on every address".into(),
            ));
        }
        None => listening.to_owned(),
    };
    let registry = postgres::ReplicaRegistry::start(
        db.clone(),
        replica.to_owned(),
        address,
        postgres::ReplicaToken::new(token),
        r.registry_settings(),
    )
    .await
    .context("registering this replica")?;
    Ok(Some(registry))
}

type AuditSinks = (
    Arc<dyn audit::AuditSink>,
    Option<Arc<postgres::PgAuditSink>>,
);

fn audit_sink(config: &Config, db: Option<&postgres::Database>) -> Result<AuditSinks, AppError> {
    let capacity = config.audit.capacity;
    let fail_closed = config.audit.failure_policy == postgres::FailurePolicy::FailClosed;
    Ok(match &config.audit.target {
        AuditTarget::Stdout => (
            Arc::new(audit::JsonLinesSink::spawn_with(
                std::io::stdout(),
                capacity,
                fail_closed,
            )),
            None,
        ),
        AuditTarget::File(p) => (
            Arc::new(audit::JsonLinesSink::spawn_with(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .with_context(|| format!("opening audit file {}", p.display()))?,
                capacity,
                fail_closed,
            )),
            None,
        ),
        AuditTarget::Postgres(pg) => {
            let Some(db) = db else {
                return Err(AppError::Invalid(
                    "audit sink postgres needs a database URL".into(),
                ));
            };
            let mut settings = postgres::AuditSettings::new(pg.spill_dir.clone());
            settings.batch_size = pg.batch_size;
            settings.capacity = capacity.max(pg.batch_size);
            settings.policy = pg.failure_policy;
            let sink = postgres::PgAuditSink::start(db.clone(), settings)?;
            if let Some(retention) = pg.retention {
                let db = db.clone();
                tokio::spawn(async move {
                    loop {
                        match postgres::purge_expired_audit(&db, retention).await {
                            Ok(Some(n)) if n > 0 => info!(deleted = n, "audit retention"),
                            Ok(_) => {}
                            Err(e) => warn!(error = %e, "audit retention job failed"),
                        }
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                    }
                });
            }
            (sink.clone(), Some(sink))
        }
    })
}

type SessionStores = (
    Arc<dyn session::SessionStore>,
    Option<Arc<dyn postgres::NotificationBus>>,
);

fn session_store(
    db: Option<postgres::Database>,
    key: &SealingKey,
    idle: Duration,
    replica: String,
) -> SessionStores {
    match db {
        Some(db) => {
            let bus = postgres::PgBus::start(db.clone());
            let store = postgres::PgSessionStore::start(
                db,
                key.clone(),
                postgres::SessionSettings::new(idle),
                replica,
                Some(bus.session_changes()),
            );
            (store, Some(bus as Arc<dyn postgres::NotificationBus>))
        }
        None => {
            let store = session::MemorySessionStore::new(idle);
            let sweeper = store.clone();
            tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    sweeper.sweep();
                }
            });
            (store, None)
        }
    }
}
