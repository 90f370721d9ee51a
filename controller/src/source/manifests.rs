//! Folder mode: the same manifests folder standalone dataplanes read, compiled by the controller
//! and pushed to every dataplane. Watched with `notify`, recompiled after `DEBOUNCE` of quiet.

use std::path::PathBuf;
use std::sync::Arc;

use reflow_crds::SealingKey;
use tokio::sync::mpsc;
use tracing::{Instrument, error, info_span};

use super::{DEBOUNCE, SourceError, compile_and_publish};
use crate::metrics::Metrics;
use crate::publish::Publisher;

/// A running folder watch; dropping it stops watching.
pub struct ManifestsSource {
    _watcher: notify::RecommendedWatcher,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for ManifestsSource {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn load_and_publish(
    dir: &std::path::Path,
    key: &SealingKey,
    publisher: &Publisher,
    metrics: &Metrics,
) -> Result<u64, SourceError> {
    match reflow_crds::loader::load_dir(dir) {
        Ok(loaded) => compile_and_publish(&loaded.inputs, key, publisher, metrics, |_| {}),
        Err(e) => {
            Metrics::inc(&metrics.compiles, "failed");
            error!(error = %e, "manifests do not load; the last good snapshot is served");
            publisher.fail(e.to_string());
            Err(e.into())
        }
    }
}

/// Compiles `dir` (failing if it does not load at all), then recompiles on every change.
pub fn watch(
    dir: PathBuf,
    key: SealingKey,
    publisher: Arc<Publisher>,
    metrics: Arc<Metrics>,
) -> Result<ManifestsSource, SourceError> {
    load_and_publish(&dir, &key, &publisher, &metrics)?;
    let watch_err = |e: notify::Error| SourceError::Watch {
        path: dir.clone(),
        message: e.to_string(),
    };
    let (tx, mut rx) = mpsc::channel::<()>(1);
    let mut watcher = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok_and(|e| !e.kind.is_access()) {
            // A full channel already means "recompile soon".
            let _ = tx.try_send(());
        }
    })
    .map_err(watch_err)?;
    notify::Watcher::watch(&mut watcher, &dir, notify::RecursiveMode::Recursive)
        .map_err(watch_err)?;

    let span = info_span!("manifests_source", dir = %dir.display());
    let task = tokio::spawn(
        async move {
            while rx.recv().await.is_some() {
                while let Ok(Some(())) = tokio::time::timeout(DEBOUNCE, rx.recv()).await {}
                let (d, k, p, m) = (dir.clone(), key.clone(), publisher.clone(), metrics.clone());
                // Errors are recorded on the publisher and logged inside.
                if let Err(e) =
                    tokio::task::spawn_blocking(move || load_and_publish(&d, &k, &p, &m)).await
                {
                    error!(error = %e, "manifest compilation panicked");
                }
            }
        }
        .instrument(span),
    );
    Ok(ManifestsSource {
        _watcher: watcher,
        task,
    })
}
