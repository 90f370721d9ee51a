//! The published state every replica serves: the current snapshot as a ready-to-send watch
//! frame, the compiler's per-object reports, and the last source error. Sources write it; the
//! watch server and the status writer read it through a `tokio::sync::watch` channel.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use reflow_crds::Snapshot;
use reflow_crds::compile::{Compiled, ObjectReport};
use reflow_crds::wire::WatchFrame;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("snapshot does not serialize: {0}")]
    Serialize(#[from] serde_json::Error),
}

/// One published state. Cheap to clone (`Arc`s and `Bytes`).
#[derive(Clone, Debug)]
pub struct Published {
    pub snapshot: Snapshot,
    /// The `snapshot` frame of the watch stream, serialized once for every subscriber.
    pub frame: Bytes,
    pub reports: Arc<[ObjectReport]>,
    /// Why the newest inputs could not be compiled; `snapshot` is then the last good one.
    pub source_error: Option<String>,
}

impl Published {
    pub fn version(&self) -> u64 {
        self.snapshot.version()
    }

    pub fn hash(&self) -> &str {
        self.snapshot.hash()
    }
}

/// The single writer of [`Published`] states.
pub struct Publisher {
    tx: watch::Sender<Option<Published>>,
}

impl Default for Publisher {
    fn default() -> Self {
        Self::new()
    }
}

impl Publisher {
    pub fn new() -> Self {
        Self {
            tx: watch::channel(None).0,
        }
    }

    /// `None` until the first compilation succeeds.
    pub fn subscribe(&self) -> watch::Receiver<Option<Published>> {
        self.tx.subscribe()
    }

    pub fn current(&self) -> Option<Published> {
        self.tx.borrow().clone()
    }

    /// Publishes a compilation. The version only moves when the content hash changes, so
    /// recompiling unchanged inputs sends nothing to dataplanes; reports are always replaced.
    /// Versions start from the wall clock (milliseconds) so they keep rising across restarts.
    pub fn publish(&self, compiled: Compiled) -> Result<u64, PublishError> {
        let reports: Arc<[ObjectReport]> = compiled.reports.into();
        let current = self.current();
        if let Some(cur) = current
            .as_ref()
            .filter(|c| c.hash() == compiled.snapshot.hash())
        {
            let version = cur.version();
            let next = Published {
                reports,
                source_error: None,
                ..cur.clone()
            };
            self.tx.send_replace(Some(next));
            return Ok(version);
        }
        let version = current
            .map(|c| c.version() + 1)
            .unwrap_or(0)
            .max(now_millis());
        let snapshot = compiled.snapshot.with_version(version);
        let frame = Bytes::from(WatchFrame::snapshot_line(&snapshot)?);
        self.tx.send_replace(Some(Published {
            snapshot,
            frame,
            reports,
            source_error: None,
        }));
        Ok(version)
    }

    /// Records that the newest inputs failed to load or compile; the last good snapshot stays.
    pub fn fail(&self, message: String) {
        self.tx.send_modify(|p| {
            if let Some(p) = p {
                p.source_error = Some(message);
            }
        });
    }
}

fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reflow_crds::{Inputs, SealingKey, compile};

    fn compiled(yaml: &str) -> Compiled {
        let mut loaded = reflow_crds::loader::Loaded::default();
        reflow_crds::loader::load_str(std::path::Path::new("t.yaml"), yaml, &mut loaded).unwrap();
        compile(&loaded.inputs, &SealingKey::from_bytes(&[7; 32])).unwrap()
    }

    const TARGET: &str = "apiVersion: mcp.reflow.io/v1alpha1\nkind: Target\nmetadata: {name: a}\nspec: {transport: streamableHttp, url: 'http://x'}\n";

    #[test]
    fn version_moves_only_when_content_changes() {
        let p = Publisher::new();
        let mut rx = p.subscribe();
        assert!(rx.borrow_and_update().is_none());
        let v1 = p
            .publish(compile(&Inputs::default(), &SealingKey::from_bytes(&[7; 32])).unwrap())
            .unwrap();
        assert!(v1 > 1_600_000_000_000, "wall-clock based: {v1}");
        let v2 = p.publish(compiled(TARGET)).unwrap();
        assert!(v2 > v1);
        let same = p.publish(compiled(TARGET)).unwrap();
        assert_eq!(same, v2);
        let cur = p.current().unwrap();
        assert_eq!(cur.version(), v2);
        assert_eq!(cur.reports.len(), 1);
        let frame: WatchFrame = serde_json::from_slice(&cur.frame).unwrap();
        assert_eq!(frame.version, Some(v2));
    }

    #[test]
    fn a_failure_keeps_the_snapshot_and_the_next_success_clears_it() {
        let p = Publisher::new();
        p.fail("ignored before the first snapshot".into());
        assert!(p.current().is_none());
        let v = p.publish(compiled(TARGET)).unwrap();
        p.fail("t.yaml: document 1: bad".into());
        let cur = p.current().unwrap();
        assert_eq!(cur.version(), v);
        assert_eq!(cur.source_error.as_deref(), Some("t.yaml: document 1: bad"));
        p.publish(compiled(TARGET)).unwrap();
        assert!(p.current().unwrap().source_error.is_none());
    }
}
