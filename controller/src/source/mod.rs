//! Where the controller's inputs come from: a manifests folder (`manifests`, no cluster) or the
//! Kubernetes API (`cluster`, reflectors). Both compile with `reflow_crds::compile` and publish.

pub mod cluster;
pub mod manifests;

use std::time::Duration;

use reflow_crds::compile::ObjectReport;
use reflow_crds::{Inputs, SealingKey};
use tracing::{error, info};

use crate::metrics::Metrics;
use crate::publish::Publisher;

/// How long inputs must stay quiet before they are recompiled (editors and `kubectl apply -f`
/// of a folder arrive in bursts).
pub const DEBOUNCE: Duration = Duration::from_millis(150);

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("loading manifests: {0}")]
    Load(#[from] reflow_crds::loader::LoadError),
    #[error("compiling: {0}")]
    Compile(#[from] reflow_crds::snapshot::SnapshotError),
    #[error("publishing: {0}")]
    Publish(#[from] crate::publish::PublishError),
    #[error("watching {path}: {message}")]
    Watch {
        path: std::path::PathBuf,
        message: String,
    },
}

impl SourceError {
    pub fn label(&self) -> &'static str {
        match self {
            Self::Load(e) => e.label(),
            Self::Compile(e) => e.label(),
            Self::Publish(_) => "publish",
            Self::Watch { .. } => "watch",
        }
    }
}

/// Compiles `inputs` and publishes the result; a failure is recorded on the publisher (the last
/// good snapshot stays) and returned.
pub fn compile_and_publish(
    inputs: &Inputs,
    key: &SealingKey,
    publisher: &Publisher,
    metrics: &Metrics,
    explain: fn(&mut [ObjectReport]),
) -> Result<u64, SourceError> {
    let before = publisher.current().map(|p| p.version());
    let result = reflow_crds::compile(inputs, key)
        .map_err(SourceError::from)
        .and_then(|mut c| {
            explain(&mut c.reports);
            publisher.publish(c).map_err(SourceError::from)
        });
    match &result {
        Ok(v) if before == Some(*v) => Metrics::inc(&metrics.compiles, "unchanged"),
        Ok(v) => {
            Metrics::inc(&metrics.compiles, "published");
            metrics.snapshot_version.set(*v);
            info!(version = v, "snapshot published");
        }
        Err(e) => {
            Metrics::inc(&metrics.compiles, "failed");
            error!(error = %e, label = e.label(), "compilation failed; the last good snapshot is served");
            publisher.fail(e.to_string());
        }
    }
    result
}
