//! What this dataplane last saw of each Target's upstream: reachable or why not, and the digest
//! of each tool definition of its last tools/list. The gateway records, pin checks read, and the
//! controller client reports it (the controller writes Target status from it).

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use reflow_crds::Snapshot;
use reflow_crds::api::ToolDigest;
use reflow_crds::observed::{
    MAX_TARGETS, MAX_TOOL_NAME, MAX_TOOLS, ObservedReason, ObservedReport, TargetObservation,
    clean_error,
};
use tokio::sync::watch;

#[derive(Clone, Debug, Default)]
struct Entry {
    reachable: bool,
    reason: Option<ObservedReason>,
    error: Option<String>,
    /// Upstream tool name → digest, from the last successful tools/list.
    tools: Option<BTreeMap<String, String>>,
}

/// Observations per `(namespace, name)`; bounded by the Targets of the served snapshot (the
/// report leaves out the others, and `retain` drops them).
pub struct Observations {
    inner: Mutex<HashMap<(String, String), Entry>>,
    changed: watch::Sender<u64>,
}

impl Default for Observations {
    fn default() -> Self {
        Self {
            inner: Mutex::default(),
            changed: watch::channel(0).0,
        }
    }
}

/// One Target as this dataplane last saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetHealth {
    pub reachable: bool,
    /// The last failure (cleaned of credentials), while unreachable.
    pub error: Option<String>,
    /// Upstream tool names of the last good tools/list.
    pub tools: Option<Vec<String>>,
}

/// What a recorded list changed, for the pin checks and `list_changed`.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ListChange {
    /// Tools whose definition differs from the previous list (or that are new or gone).
    pub changed: Vec<String>,
    /// The first list recorded for this Target (nothing to compare with).
    pub first: bool,
}

impl Observations {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Entry>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bump(&self) {
        self.changed.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Ticks on every change worth reporting.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.changed.subscribe()
    }

    /// A successful tools/list of the Target: `tools` are (upstream name, digest).
    pub fn record_tools(&self, ns: &str, name: &str, tools: &[(String, String)]) -> ListChange {
        let new: BTreeMap<String, String> = tools
            .iter()
            .filter(|(n, _)| !n.is_empty() && n.len() <= MAX_TOOL_NAME)
            .take(MAX_TOOLS)
            .cloned()
            .collect();
        let mut map = self.lock();
        let entry = map.entry((ns.to_owned(), name.to_owned())).or_default();
        let change = match &entry.tools {
            None => ListChange {
                changed: Vec::new(),
                first: true,
            },
            Some(old) => {
                let mut changed: Vec<String> = new
                    .iter()
                    .filter(|(n, d)| old.get(*n) != Some(*d))
                    .map(|(n, _)| n.clone())
                    .collect();
                changed.extend(old.keys().filter(|n| !new.contains_key(*n)).cloned());
                ListChange {
                    changed,
                    first: false,
                }
            }
        };
        let moved = !entry.reachable || entry.tools.as_ref() != Some(&new);
        *entry = Entry {
            reachable: true,
            reason: None,
            error: None,
            tools: Some(new),
        };
        drop(map);
        if moved {
            self.bump();
        }
        change
    }

    /// A failed tools/list of the Target; the tools of the last good list are kept.
    pub fn record_failure(&self, ns: &str, name: &str, reason: ObservedReason, error: &str) {
        let error = clean_error(error);
        let mut map = self.lock();
        let entry = map.entry((ns.to_owned(), name.to_owned())).or_default();
        let moved = entry.reachable
            || entry.reason != Some(reason)
            || entry.error.as_deref() != Some(&error);
        entry.reachable = false;
        entry.reason = Some(reason);
        entry.error = Some(error);
        drop(map);
        if moved {
            self.bump();
        }
    }

    /// The digest of the upstream tool `tool` in the Target's last list, if it had one.
    pub fn digest_of(&self, ns: &str, name: &str, tool: &str) -> Option<Option<String>> {
        let map = self.lock();
        let tools = map.get(&(ns.to_owned(), name.to_owned()))?.tools.as_ref()?;
        Some(tools.get(tool).cloned())
    }

    /// What was last seen of one Target (the web console's health view); `None` before any list.
    pub fn health(&self, ns: &str, name: &str) -> Option<TargetHealth> {
        let map = self.lock();
        let e = map.get(&(ns.to_owned(), name.to_owned()))?;
        Some(TargetHealth {
            reachable: e.reachable,
            error: e.error.clone(),
            tools: e.tools.as_ref().map(|t| t.keys().cloned().collect()),
        })
    }

    /// The report for the Targets of `snapshot` (others are dropped here too).
    pub fn report(&self, dataplane: &str, snapshot: &Snapshot) -> ObservedReport {
        let mut map = self.lock();
        map.retain(|(ns, name), _| snapshot.target(ns, name).is_some());
        let mut targets: Vec<TargetObservation> = map
            .iter()
            .map(|((ns, name), e)| TargetObservation {
                namespace: ns.clone(),
                name: name.clone(),
                reachable: e.reachable,
                reason: e.reason,
                error: e.error.clone(),
                tools: e.tools.as_ref().map(|t| {
                    t.iter()
                        .map(|(n, d)| ToolDigest {
                            name: n.clone(),
                            digest: d.clone(),
                        })
                        .collect()
                }),
            })
            .collect();
        targets.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
        targets.truncate(MAX_TARGETS);
        ObservedReport {
            dataplane: dataplane.to_owned(),
            targets,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tools(list: &[(&str, char)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, c)| ((*n).to_owned(), c.to_string().repeat(64)))
            .collect()
    }

    #[test]
    fn lists_record_digests_and_say_what_changed() {
        let o = Observations::default();
        let mut ticks = o.subscribe();
        let c = o.record_tools("ns", "t", &tools(&[("a", '1'), ("b", '2')]));
        assert!(c.first);
        assert!(ticks.has_changed().unwrap());
        ticks.mark_unchanged();
        let c = o.record_tools("ns", "t", &tools(&[("a", '1'), ("b", '2')]));
        assert_eq!(c, ListChange::default());
        assert!(
            !ticks.has_changed().unwrap(),
            "an unchanged list is not news"
        );
        let c = o.record_tools("ns", "t", &tools(&[("a", '9'), ("c", '3')]));
        assert_eq!(c.changed, vec!["a", "c", "b"]);
        assert_eq!(o.digest_of("ns", "t", "a"), Some(Some("9".repeat(64))));
        assert_eq!(o.digest_of("ns", "t", "b"), Some(None));
        assert_eq!(o.digest_of("ns", "other", "a"), None);
        o.record_failure(
            "ns",
            "t",
            ObservedReason::UpstreamUnreachable,
            "GET http://u:p@h/x?k=v: refused",
        );
        assert_eq!(
            o.digest_of("ns", "t", "a"),
            Some(Some("9".repeat(64))),
            "kept"
        );
        let r = o.report("dp", &Snapshot::empty());
        assert!(
            r.targets.is_empty(),
            "Targets not in the snapshot are left out"
        );
    }
}
