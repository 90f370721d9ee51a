//! Folder mode: the same manifests folder standalone dataplanes read, compiled by the controller
//! and pushed to every dataplane. Watched with `notify`, recompiled after `DEBOUNCE` of quiet.

use std::path::PathBuf;
use std::sync::Arc;

use reflow_crds::SealingKey;
use tracing::{error, info_span};

use super::{DEBOUNCE, SourceError, compile_and_publish};
use crate::metrics::Metrics;
use crate::publish::Publisher;

/// A running folder watch; dropping it stops watching.
pub type ManifestsSource = reflow_host::FolderWatch;

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
    let span = info_span!("manifests_source", dir = %dir.display());
    // Errors are recorded on the publisher and logged inside.
    let watched = dir.clone();
    reflow_host::watch_folder(&watched, DEBOUNCE, span, move || {
        let _ = load_and_publish(&dir, &key, &publisher, &metrics);
    })
    .map_err(|e| SourceError::Watch {
        path: e.path,
        message: e.message,
    })
}
