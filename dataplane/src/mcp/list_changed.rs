//! `notifications/{tools,resources,prompts}/list_changed` after a snapshot change: for each live
//! GET stream, a digest of what its session's identity may see, compared between snapshots.

use std::collections::HashMap;
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Weak};

use reflow_crds::snapshot::Effect;
use reflow_crds::snapshot::{CompiledRule, covers};
use reflow_crds::{CompiledTarget, Identity, ItemKind, Snapshot};
use serde_json::{Map, Value};
use tracing::{debug, info_span};

use super::Gateway;
use crate::session::Scope;
use crate::source::SnapshotStore;

/// Who watches a GET stream: the identity that opened it and the session's endpoint.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Viewer {
    pub(crate) identity: Identity,
    pub(crate) scope: Scope,
}

/// The notification method for each kind, in `ItemKind::ALL` order.
const METHODS: [&str; 3] = [
    "notifications/tools/list_changed",
    "notifications/resources/list_changed",
    "notifications/prompts/list_changed",
];

/// One digest per kind, in `ItemKind::ALL` order.
type Digests = [u64; 3];

/// Everything a list of one kind from this target depends on for this identity: where the target
/// is (prefix, upstream), the credentials it resolves to (an upstream may list by caller), and the
/// rules that could decide an item of that kind for it, in rule order (ties are broken by it).
/// Rules for other subjects or kinds do not enter, so editing them changes nothing here; a target
/// with no allow rule for the caller shows nothing (default deny) and enters as nothing.
fn hash_target(target: &CompiledTarget, id: &Identity, kind: ItemKind, h: &mut DefaultHasher) {
    let rules: Vec<(usize, &CompiledRule)> = target
        .policy
        .rules()
        .iter()
        .enumerate()
        .filter(|(_, r)| r.subject.applies_to(id) && covers(r.kind, kind))
        .collect();
    if !rules.iter().any(|(_, r)| r.effect == Effect::Allow) {
        return;
    }
    target.namespace.hash(h);
    target.name.hash(h);
    target.prefix.hash(h);
    // Serializing the upstream is the cheap, complete way to notice any change of where it is.
    serde_json::to_vec(&target.upstream)
        .unwrap_or_default()
        .hash(h);
    target.credentials.resolve(id).fingerprint.hash(h);
    for (i, rule) in rules {
        i.hash(h);
        rule.policy.hash(h);
        rule.priority.hash(h);
        (rule.effect == Effect::Allow).hash(h);
        for glob in &rule.names {
            glob.as_str().hash(h);
        }
        // A condition can hide or show items (claims, groups, time): its edit counts.
        rule.when.as_ref().map(|c| c.source()).hash(h);
    }
    // Ends the target, so rules cannot run into the next target's fields.
    u8::MAX.hash(h);
}

/// The viewer's digests in `snapshot`: over the targets its session can reach.
fn digests(snapshot: &Snapshot, viewer: &Viewer) -> Digests {
    let mut out = [0; 3];
    for (slot, kind) in ItemKind::ALL.into_iter().enumerate() {
        let mut h = DefaultHasher::new();
        for target in snapshot.targets() {
            let reachable = match &viewer.scope {
                Scope::Aggregated => true,
                Scope::Target { namespace, name } => {
                    *target.namespace == **namespace && *target.name == **name
                }
            };
            if reachable {
                hash_target(target, &viewer.identity, kind, &mut h);
            }
        }
        out[slot] = h.finish();
    }
    out
}

/// The kinds whose list the viewer sees differently in `new` than in `old`.
pub(crate) fn changed_kinds(old: &Snapshot, new: &Snapshot, viewer: &Viewer) -> Vec<ItemKind> {
    let (a, b) = (digests(old, viewer), digests(new, viewer));
    ItemKind::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| a[*i] != b[*i])
        .map(|(_, k)| k)
        .collect()
}

/// The kinds `after` sees differently from `before` in one snapshot (the caller's claims
/// changed).
pub(crate) fn changed_between(
    snapshot: &Snapshot,
    before: &Viewer,
    after: &Viewer,
) -> Vec<ItemKind> {
    let (a, b) = (digests(snapshot, before), digests(snapshot, after));
    ItemKind::ALL
        .into_iter()
        .enumerate()
        .filter(|(i, _)| a[*i] != b[*i])
        .map(|(_, k)| k)
        .collect()
}

pub(crate) fn method(kind: ItemKind) -> &'static str {
    match kind {
        ItemKind::Tool => METHODS[0],
        ItemKind::Resource => METHODS[1],
        ItemKind::Prompt => METHODS[2],
    }
}

impl Gateway {
    /// Sessions whose GET stream is live on this replica: the ones a snapshot change is
    /// announced to.
    pub fn live_get_streams(&self) -> usize {
        self.hubs.watched().len()
    }

    /// Tells every session with a live GET stream on this replica which of its lists changed
    /// between `old` and `new`. Work is one digest pair per distinct (identity, endpoint), never
    /// an upstream call; sessions without a live GET stream re-filter on their next list anyway.
    /// Returns how many notifications were sent.
    pub(crate) fn announce_list_changes(&self, old: &Snapshot, new: &Snapshot) -> usize {
        let mut seen: HashMap<Arc<Viewer>, Vec<ItemKind>> = HashMap::new();
        let mut sent = 0;
        for (session_id, hub, viewer) in self.hubs.watched() {
            let kinds = seen
                .entry(viewer.clone())
                .or_insert_with(|| changed_kinds(old, new, &viewer));
            for kind in kinds.iter() {
                let mut note = Map::new();
                note.insert("jsonrpc".into(), Value::from("2.0"));
                note.insert("method".into(), Value::from(method(*kind)));
                self.to_get_stream(&session_id, &hub, &note);
                sent += 1;
            }
        }
        sent
    }
}

/// Follows `snapshots` for the gateway's lifetime, announcing each change to live sessions.
pub(crate) fn follow_snapshots(
    gw: Weak<Gateway>,
    snapshots: &SnapshotStore,
    rt: &tokio::runtime::Handle,
) {
    let mut changes = snapshots.subscribe();
    let mut previous = snapshots.load();
    rt.spawn(async move {
        while changes.changed().await.is_ok() {
            let Some(gw) = gw.upgrade() else { return };
            // A Target's URL or credentials may differ now: nothing cached from before is kept.
            gw.list_cache.clear();
            let current = gw.snapshots.load();
            let span = info_span!("list_changed", version = current.version());
            let sent = span.in_scope(|| gw.announce_list_changes(&previous, &current));
            debug!(parent: &span, sent, "list_changed sent after a snapshot change");
            previous = current;
        }
    });
}
