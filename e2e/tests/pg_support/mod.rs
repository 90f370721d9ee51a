//! Shared by the Postgres test files: a client runtime, database handles, and Postgres-backed
//! stores (sessions, audit, notification bus) for in-process test gateways.
#![allow(dead_code)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use reflow_crds::SealingKey;
use reflow_dataplane::audit::AuditSink;
use reflow_dataplane::postgres::{
    AuditSettings, Database, FailurePolicy, NotificationBus, PgAuditSink, PgBus, PgSessionStore,
    SessionSettings,
};
use reflow_dataplane::session::SessionStore;
use reflow_e2e::harness::TestPostgres;
use reflow_e2e::harness::gateway::{StoresFactory, TestStores};
use secrecy::SecretString;

pub const WAIT: Duration = Duration::from_secs(30);

pub fn client_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("client runtime")
}

pub fn database(url: &str) -> Database {
    Database::new(&SecretString::from(url.to_owned()), 8).expect("database URL parses")
}

/// A folder inside the cluster's own folder, so it goes when the cluster is dropped.
pub fn temp_dir(pg: &TestPostgres, what: &str) -> PathBuf {
    let dir = pg
        .dir()
        .join(format!("{what}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

/// What a test keeps alive beside its gateway: the audit sink (to inspect) and the bus (whose
/// listener feeds the session store's cache invalidation).
#[derive(Default)]
pub struct Held {
    pub sink: Option<Arc<PgAuditSink>>,
    pub buses: Vec<Arc<PgBus>>,
}

/// Postgres sessions and audit for a test gateway, and what must outlive the builder.
pub fn pg_stores(
    url: &str,
    spill: PathBuf,
    policy: FailurePolicy,
) -> (StoresFactory, Arc<std::sync::Mutex<Held>>) {
    pg_stores_on(url, spill, policy, false)
}

/// As [`pg_stores`], with the gateway on the notification bus (as a replica in production).
pub fn pg_replica_stores(
    url: &str,
    spill: PathBuf,
    policy: FailurePolicy,
) -> (StoresFactory, Arc<std::sync::Mutex<Held>>) {
    pg_stores_on(url, spill, policy, true)
}

fn pg_stores_on(
    url: &str,
    spill: PathBuf,
    policy: FailurePolicy,
    on_bus: bool,
) -> (StoresFactory, Arc<std::sync::Mutex<Held>>) {
    let url = url.to_owned();
    let held = Arc::new(std::sync::Mutex::new(Held::default()));
    let slot = held.clone();
    let factory: StoresFactory = Arc::new(move |key: &SealingKey| {
        let db = database(&url);
        let bus = PgBus::start(db.clone());
        let sessions: Arc<dyn SessionStore> = PgSessionStore::start(
            db.clone(),
            key.clone(),
            SessionSettings::new(Duration::from_secs(3600)),
            uuid::Uuid::new_v4().simple().to_string(),
            Some(bus.session_changes()),
        );
        let mut settings = AuditSettings::new(spill.clone());
        settings.policy = policy;
        settings.batch_size = 64;
        settings.retry_interval = Duration::from_millis(200);
        let sink = PgAuditSink::start(db, settings).expect("audit sink starts");
        let mut held = slot.lock().unwrap();
        held.sink = Some(sink.clone());
        held.buses.push(bus.clone());
        let mut stores = TestStores::new(sessions, sink as Arc<dyn AuditSink>);
        if on_bus {
            stores.bus = Some(bus as Arc<dyn NotificationBus>);
        }
        stores
    });
    (factory, held)
}

pub fn migrated(url: &str) {
    let rt = client_runtime();
    rt.block_on(database(url).connect_and_migrate(WAIT))
        .expect("migrations apply");
}
