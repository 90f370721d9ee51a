//! The active Snapshot (lock-free reads, change notification) and the standalone source that
//! compiles a manifests folder, watches it, and swaps in each valid recompilation.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::ArcSwap;
use reflow_crds::{SealingKey, Snapshot};
use tokio::sync::watch;
use tracing::{error, info, info_span, warn};

/// How long the folder must stay quiet before it is recompiled (editors write in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(200);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("loading manifests: {0}")]
    Load(#[from] reflow_crds::loader::LoadError),
    #[error("compiling manifests: {0}")]
    Compile(#[from] reflow_crds::snapshot::SnapshotError),
    #[error("watching {path}: {message}")]
    Watch { path: PathBuf, message: String },
}

impl SourceError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Load(e) => e.label(),
            Self::Compile(e) => e.label(),
            Self::Watch { .. } => "watch",
        }
    }
}

/// Holds the snapshot every request reads. Readers never block; writers publish whole snapshots.
pub struct SnapshotStore {
    current: ArcSwap<Snapshot>,
    ready: AtomicBool,
    version: AtomicU64,
    changed: watch::Sender<u64>,
}

impl SnapshotStore {
    /// Empty and not ready until the first snapshot is published.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            current: ArcSwap::from_pointee(Snapshot::empty()),
            ready: AtomicBool::new(false),
            version: AtomicU64::new(0),
            changed: watch::channel(0).0,
        })
    }

    pub fn load(&self) -> Arc<Snapshot> {
        self.current.load_full()
    }

    /// Installs a snapshot (renumbered with the next local version) and notifies subscribers.
    pub fn publish(&self, snapshot: Snapshot) -> u64 {
        let version = self.version.fetch_add(1, Ordering::SeqCst) + 1;
        self.current.store(Arc::new(snapshot.with_version(version)));
        self.ready.store(true, Ordering::SeqCst);
        self.changed.send_replace(version);
        version
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Yields the version number each time a snapshot is published.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }
}

/// Loads and compiles a folder. Per-object problems are logged as warnings; the objects that
/// compiled are still served.
pub fn compile_dir(dir: &Path, key: &SealingKey) -> Result<Snapshot, SourceError> {
    let mut loaded = reflow_crds::loader::load_dir(dir)?;
    // What users connected (`spec.userCredential`), as the user-managed Credentials the
    // controller would write in cluster mode.
    let refused =
        crate::connect::ConnectionStore::in_manifests(dir, key.clone()).add_to(&mut loaded.inputs);
    if refused > 0 {
        warn!(refused, "stored connections that do not open were left out");
    }
    for skipped in &loaded.skipped {
        info!(%skipped, "ignoring a manifest of another kind");
    }
    let compiled = reflow_crds::compile(&loaded.inputs, key)?;
    for report in compiled.problems() {
        for c in &report.conditions {
            warn!(
                kind = ?report.kind,
                namespace = %report.namespace,
                name = %report.name,
                condition = %c.type_,
                status = c.status,
                reason = %c.reason,
                message = %c.message,
                "manifest problem"
            );
        }
    }
    Ok(compiled.snapshot)
}

/// A running folder watch; dropping it stops watching.
pub type ManifestsWatch = reflow_host::FolderWatch;

/// Compiles `dir` into `store` (failing if it does not load), then keeps recompiling on change.
/// A failed recompilation is logged and the last good snapshot stays active.
pub fn watch_manifests(
    dir: PathBuf,
    key: SealingKey,
    store: Arc<SnapshotStore>,
) -> Result<ManifestsWatch, SourceError> {
    let first = compile_dir(&dir, &key)?;
    let version = store.publish(first);
    info!(dir = %dir.display(), version, "manifests loaded");

    let span = info_span!("manifests_watch", dir = %dir.display());
    let watched = dir.clone();
    reflow_host::watch_folder(&watched, DEBOUNCE, span, move || {
        match compile_dir(&dir, &key) {
            Ok(snapshot) if snapshot.hash() == store.load().hash() => {}
            Ok(snapshot) => {
                let version = store.publish(snapshot);
                info!(version, "manifests reloaded");
            }
            Err(e) => {
                error!(error = %e, label = e.label(), "manifests do not load; keeping the last good snapshot")
            }
        }
    })
    .map_err(|e| SourceError::Watch {
        path: e.path,
        message: e.message,
    })
}
